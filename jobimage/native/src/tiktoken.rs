//! Build an [`Engine`] from a tiktoken BPE rank file (`<base64 token> <rank>` lines, the format
//! of Llama 3's `tokenizer.model`) that reproduces `tiktoken.Encoding.encode_ordinary`.
//!
//! tiktoken encodes each pre-token by looking the whole piece up first, then repeatedly merging
//! the adjacent pair whose concatenation has the lowest rank (leftmost on ties).  That is HF's
//! `ignore_merges` BPE with a merge table holding, for every token `t` and every split of `t`
//! into two tokens `a + b`, the pair `(a, b) -> (rank(t), t)`: the parts of a piece are always
//! tokens, so "the rank of the concatenation" and "the rank of the pair" are the same lookup,
//! and the engine's `(rank, position)` order is tiktoken's leftmost-lowest choice.  Special
//! tokens are ordinary text (`encode_ordinary`).

use crate::bpe::{BpeModel, ByteInit};
use crate::engine::{AddedMatcher, Engine, Normalizer, Stage};
use crate::pretok::Splitter;
use crate::table::{PairTable, TokenTable};
use rustc_hash::FxHashMap;

type R<T> = Result<T, String>;

fn b64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Strict standard base64 (what `base64.b64decode(s, validate=True)` accepts).
fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 != 0 {
        return None;
    }
    let pad = s.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &s[..s.len() - pad];
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in body {
        acc = (acc << 6) | b64_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The ranks of a rank file, indexed by rank (ranks must be `0..n` without gaps).
pub fn parse_ranks(data: &[u8]) -> R<Vec<Vec<u8>>> {
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    for (lineno, line) in data.split(|&c| c == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: not a '<base64 token> <rank>' line", lineno + 1);
        let mut parts = line.split(|&c| c == b' ');
        let (Some(tok), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let tok = b64_decode(tok).ok_or_else(bad)?;
        let rank: usize = std::str::from_utf8(rank)
            .ok()
            .and_then(|r| r.parse().ok())
            .ok_or_else(bad)?;
        if rank >= u32::MAX as usize {
            return Err(bad());
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].is_some() {
            return Err(format!("rank {rank} appears twice"));
        }
        by_rank[rank] = Some(tok);
    }
    if by_rank.is_empty() {
        return Err("no ranks".into());
    }
    let n = by_rank.len();
    let ranks: Vec<Vec<u8>> = by_rank
        .into_iter()
        .enumerate()
        .map(|(r, t)| t.ok_or_else(|| format!("ranks must be 0..{} without gaps (no rank {r})", n - 1)))
        .collect::<R<_>>()?;
    Ok(ranks)
}

pub fn build_engine(data: &[u8], pattern: &str, cache_size: usize) -> R<(Engine, usize)> {
    let splitter = Splitter::recognise(pattern)
        .ok_or("pattern is not one with a hand-written pre-tokenizer (GPT-2, Llama 3, Qwen 2)")?;
    let ranks = parse_ranks(data)?;
    let mut ids: FxHashMap<&[u8], u32> = FxHashMap::default();
    ids.reserve(ranks.len());
    for (r, t) in ranks.iter().enumerate() {
        if ids.insert(t.as_slice(), r as u32).is_some() {
            return Err(format!("token of rank {r} appears twice"));
        }
    }
    let mut byte_init = Vec::with_capacity(256);
    for b in 0..=255u8 {
        let id = *ids
            .get(&[b][..])
            .ok_or_else(|| format!("the rank file lacks single-byte tokens (e.g. byte {b})"))?;
        byte_init.push(ByteInit::Id(id));
    }
    let mut merges: Vec<(u32, u32, u32, u32)> = Vec::new();
    for (r, t) in ranks.iter().enumerate() {
        for i in 1..t.len() {
            if let (Some(&a), Some(&b)) = (ids.get(&t[..i]), ids.get(&t[i..])) {
                merges.push((a, b, r as u32, r as u32));
            }
        }
    }
    let merges = PairTable::new(merges.into_iter())?;
    let whole_word = TokenTable::new(ranks.iter().enumerate().map(|(r, t)| (t.clone(), r as u32)));
    let n = ranks.len();
    let bpe = BpeModel {
        byte_init,
        unk: None,
        merges,
        whole_word: Some(whole_word),
    };
    let engine = Engine::new(
        bpe,
        Normalizer::None,
        AddedMatcher::new(Vec::new())?,
        AddedMatcher::new(Vec::new())?,
        vec![Stage::Split(splitter)],
        1,
        false,
        None,
        false,
        cache_size,
    );
    Ok((engine, n))
}
