//! Exact native encoder for SentencePiece BPE models (`tokenizer.model`: Llama 2, Mistral,
//! Gemma families), reproducing `SentencePieceProcessor::EncodeAsIds` of sentencepiece 0.2.
//!
//! 1. `Normalizer::Normalize`: user-defined symbols are kept as they are; otherwise the longest
//!    rule of the precompiled character map (a darts-clone double-array trie) that prefixes the
//!    input replaces it, else one character is copied; leading, trailing and repeated spaces are
//!    removed (`remove_extra_whitespaces`), a space is prepended (`add_dummy_prefix`) and spaces
//!    become U+2581 (`escape_whitespaces`).
//! 2. `bpe::Model::SampleEncode` (no dropout): the normalized text is split into characters
//!    (user-defined symbols whole and frozen), then the adjacent pair whose concatenation is the
//!    piece with the highest score is merged, leftmost first among equal scores, until no pair
//!    makes a piece.  Merging only depends on which adjacent pairs exist, so a text can be cut
//!    where no piece can span the cut (before the space symbol, unless some piece holds the
//!    preceding character followed by the space symbol) and the parts encoded separately, each
//!    once per process thanks to a word cache.
//! 3. `PopulateSentencePieceText`: a piece is looked up among control/unknown/byte pieces first,
//!    then normal ones, else it is unknown; unknown pieces become `<0xXX>` byte pieces with
//!    `byte_fallback`, otherwise consecutive unknown pieces are one unknown id.
//!
//! Models this does not reproduce are refused (`Err`), and the sentencepiece library encodes
//! them: other model types, `treat_whitespace_as_suffix`, UNUSED pieces (their resegmentation),
//! NaN scores.  `tests/test_native_sentencepiece.py` compares with the library.

use crate::cache::{push_ids, WordCache, IDS_MAX, MAX_CACHED_WORD};
use crate::table::{PairTable, ShortKey, NO_MERGE};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

type R<T> = Result<T, String>;

// ------------------------------------------------------------------------------------------------
// Protocol buffer wire format (just what a ModelProto needs)
// ------------------------------------------------------------------------------------------------

enum Wire<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

struct Fields<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let x = *self.b.get(self.i).ok_or("truncated protobuf")?;
            self.i += 1;
            v |= ((x & 0x7F) as u64) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        Err("bad protobuf varint".into())
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let s = self.b.get(self.i..self.i + n).ok_or("truncated protobuf")?;
        self.i += n;
        Ok(s)
    }

    fn next(&mut self) -> R<Option<(u64, Wire<'a>)>> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as u64),
            t => return Err(format!("protobuf wire type {t}")),
        };
        Ok(Some((key >> 3, w)))
    }
}

const NORMAL: u8 = 1;
const UNKNOWN: u8 = 2;
const CONTROL: u8 = 3;
const USER_DEFINED: u8 = 4;
const UNUSED: u8 = 5;
const BYTE: u8 = 6;

struct Spec {
    pieces: Vec<(Vec<u8>, f32, u8)>,
    model_type: u64,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    charsmap: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

fn parse_spec(data: &[u8]) -> R<Spec> {
    let mut s = Spec {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        treat_whitespace_as_suffix: false,
        charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut f = Fields::new(data);
    while let Some((field, w)) = f.next()? {
        match (field, w) {
            (1, Wire::Bytes(b)) => {
                let (mut piece, mut score, mut kind) = (Vec::new(), 0f32, NORMAL);
                let mut g = Fields::new(b);
                while let Some((field, w)) = g.next()? {
                    match (field, w) {
                        (1, Wire::Bytes(p)) => piece = p.to_vec(),
                        (2, Wire::Fixed(x)) => score = f32::from_bits(x as u32),
                        (3, Wire::Varint(t)) => kind = t as u8,
                        _ => {}
                    }
                }
                s.pieces.push((piece, score, kind));
            }
            (2, Wire::Bytes(b)) => {
                let mut g = Fields::new(b);
                while let Some((field, w)) = g.next()? {
                    match (field, w) {
                        (3, Wire::Varint(t)) => s.model_type = t,
                        (24, Wire::Varint(v)) => s.treat_whitespace_as_suffix = v != 0,
                        (35, Wire::Varint(v)) => s.byte_fallback = v != 0,
                        _ => {}
                    }
                }
            }
            (3, Wire::Bytes(b)) => {
                let mut g = Fields::new(b);
                while let Some((field, w)) = g.next()? {
                    match (field, w) {
                        (2, Wire::Bytes(m)) => s.charsmap = m.to_vec(),
                        (3, Wire::Varint(v)) => s.add_dummy_prefix = v != 0,
                        (4, Wire::Varint(v)) => s.remove_extra_whitespaces = v != 0,
                        (5, Wire::Varint(v)) => s.escape_whitespaces = v != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

// ------------------------------------------------------------------------------------------------
// Normalizer
// ------------------------------------------------------------------------------------------------

/// darts-clone `DoubleArray::commonPrefixSearch` over a precompiled character map.
struct Darts {
    units: Vec<u32>,
}

impl Darts {
    /// `(value, length)` of the keys that prefix `key`, shortest first, at most `max`.
    #[inline]
    fn common_prefixes(&self, key: &[u8], max: usize, out: &mut Vec<(u32, usize)>) {
        out.clear();
        let u = &self.units;
        let Some(&root) = u.first() else { return };
        let offset = |unit: u32| (unit >> 10) << ((unit & (1 << 9)) >> 6);
        let mut pos = offset(root) as usize;
        for (i, &c) in key.iter().enumerate() {
            pos ^= c as usize;
            let Some(&unit) = u.get(pos) else { return };
            if unit & ((1 << 31) | 0xFF) != c as u32 {
                return;
            }
            pos ^= offset(unit) as usize;
            if (unit >> 8) & 1 == 1 {
                if out.len() < max {
                    let value = u.get(pos).map(|v| v & ((1 << 31) - 1)).unwrap_or(0);
                    out.push((value, i + 1));
                } else {
                    return;
                }
            }
        }
    }

    /// Whether some key starts with byte `c`.
    fn has_keys_starting_with(&self, c: u8) -> bool {
        let u = &self.units;
        let Some(&root) = u.first() else { return false };
        let pos = (((root >> 10) << ((root & (1 << 9)) >> 6)) as usize) ^ c as usize;
        u.get(pos).is_some_and(|&unit| unit & ((1 << 31) | 0xFF) == c as u32)
    }
}

/// Longest-prefix matcher of user-defined symbols (a byte trie).
struct UserSymbols {
    nodes: Vec<FxHashMap<u8, u32>>,
    terminal: Vec<bool>,
}

impl UserSymbols {
    fn new(symbols: &[&[u8]]) -> Option<Self> {
        if symbols.is_empty() {
            return None;
        }
        let mut t = Self {
            nodes: vec![FxHashMap::default()],
            terminal: vec![false],
        };
        for s in symbols {
            let mut n = 0usize;
            for &c in s.iter() {
                n = match t.nodes[n].get(&c) {
                    Some(&m) => m as usize,
                    None => {
                        t.nodes.push(FxHashMap::default());
                        t.terminal.push(false);
                        let m = t.nodes.len() - 1;
                        t.nodes[n].insert(c, m as u32);
                        m
                    }
                };
            }
            t.terminal[n] = true;
        }
        Some(t)
    }

    /// Length of the longest symbol that prefixes `s` (0 if none).
    #[inline]
    fn longest(&self, s: &[u8]) -> usize {
        let (mut n, mut best) = (0usize, 0usize);
        for (i, c) in s.iter().enumerate() {
            match self.nodes[n].get(c) {
                Some(&m) => n = m as usize,
                None => break,
            }
            if self.terminal[n] {
                best = i + 1;
            }
        }
        best
    }
}

/// `string_util::OneCharLen` (the input is valid UTF-8).
#[inline(always)]
fn char_len(b: u8) -> usize {
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4][(b >> 4) as usize]
}

const SPACE_SYMBOL: &[u8] = "\u{2581}".as_bytes();
/// `Normalizer::kMaxTrieResultsSize`
const MAX_TRIE_RESULTS: usize = 32;

struct Normalizer {
    trie: Option<Darts>,
    /// `normalized_`: NUL-terminated replacement strings.
    replacements: Vec<u8>,
    /// Bytes no rule starts with: copied without a trie search.
    plain: [bool; 256],
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Normalizer {
    fn new(spec: &Spec) -> R<Self> {
        let mut n = Self {
            trie: None,
            replacements: Vec::new(),
            plain: [true; 256],
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
            escape_whitespaces: spec.escape_whitespaces,
        };
        let m = &spec.charsmap;
        if !m.is_empty() {
            if m.len() <= 4 {
                return Err("precompiled_charsmap is broken".into());
            }
            let size = u32::from_le_bytes(m[..4].try_into().unwrap()) as usize;
            if size >= m.len() || size % 4 != 0 {
                return Err("precompiled_charsmap trie size is broken".into());
            }
            let units = m[4..4 + size]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let trie = Darts { units };
            for b in 0..=255u8 {
                n.plain[b as usize] = !trie.has_keys_starting_with(b);
            }
            n.trie = Some(trie);
            n.replacements = m[4 + size..].to_vec();
        }
        Ok(n)
    }

    /// `NormalizePrefix`: the normalized form of the start of `input` and how many bytes it
    /// consumed.
    #[inline]
    fn prefix<'a>(&'a self, input: &'a [u8], user: Option<&UserSymbols>, hits: &mut Vec<(u32, usize)>) -> (&'a [u8], usize) {
        if let Some(u) = user {
            let n = u.longest(input);
            if n > 0 {
                return (&input[..n], n);
            }
        }
        if let Some(trie) = &self.trie {
            if !self.plain[input[0] as usize] {
                trie.common_prefixes(input, MAX_TRIE_RESULTS, hits);
                if let Some(&(value, len)) = hits.iter().max_by_key(|h| h.1) {
                    let start = (value as usize).min(self.replacements.len());
                    let end = self.replacements[start..]
                        .iter()
                        .position(|&c| c == 0)
                        .map_or(self.replacements.len(), |p| start + p);
                    return (&self.replacements[start..end], len);
                }
            }
        }
        let n = char_len(input[0]).min(input.len());
        (&input[..n], n)
    }

    /// `Normalizer::Normalize` (without the offset map), appending to `out`.
    fn normalize(&self, text: &str, user: Option<&UserSymbols>, out: &mut Vec<u8>) {
        out.clear();
        let mut input = text.as_bytes();
        let mut hits = Vec::with_capacity(MAX_TRIE_RESULTS);
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (p, n) = self.prefix(input, user, &mut hits);
                if p != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return;
        }
        let space: &[u8] = if self.escape_whitespaces { SPACE_SYMBOL } else { b" " };
        if self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let c = input[0];
            if c < 0x80 && c != b' ' && self.plain[c as usize] && user.is_none() {
                // no rule starts with this byte: copied as it is
                out.push(c);
                is_prev_space = false;
                input = &input[1..];
                continue;
            }
            let (mut p, n) = self.prefix(input, user, &mut hits);
            while is_prev_space && p.first() == Some(&b' ') {
                p = &p[1..];
            }
            if !p.is_empty() {
                if self.escape_whitespaces {
                    for &c in p {
                        if c == b' ' {
                            out.extend_from_slice(SPACE_SYMBOL);
                        } else {
                            out.push(c);
                        }
                    }
                } else {
                    out.extend_from_slice(p);
                }
                is_prev_space = p.last() == Some(&b' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Model
// ------------------------------------------------------------------------------------------------

/// Symbol id of a character that can never merge.
const DEAD: u32 = u32::MAX - 1;
/// Segments with at most this many symbols are merged by scanning, longer ones with a heap.
const SCAN_MAX: usize = 32;

pub struct SentencePiece {
    normalizer: Normalizer,
    user: Option<UserSymbols>,
    /// Normal, user-defined pieces → id (`pieces_`).
    pieces: FxHashMap<Vec<u8>, u32>,
    /// Control, unknown and byte pieces → id (`reserved_id_map_`).
    reserved: FxHashMap<Vec<u8>, u32>,
    /// `(left symbol, right symbol)` → (rank of the piece's score, piece id).
    merges: PairTable,
    /// Symbol of each single-byte character, and of the longer ones that are (part of) a piece.
    ascii_sym: [u32; 256],
    wide_sym: FxHashMap<Vec<u8>, u32>,
    /// Output id of a piece's symbol: its reserved id if it has one, else its id.
    out_id: Vec<u32>,
    n_pieces: u32,
    unk_id: u32,
    byte_fallback: bool,
    byte_ids: Vec<u32>,
    /// Characters after which a space symbol can be merged into the same piece.
    joins_space: Vec<Vec<u8>>,
    space: &'static [u8],
    pub cache_size: usize,
    caches: Vec<Mutex<SpCache>>,
}

pub struct SpCache {
    words: WordCache,
    normalized: Vec<u8>,
    sym: Vec<u32>,
    len: Vec<u32>,
}

impl SpCache {
    fn new(capacity: usize) -> Self {
        Self {
            words: WordCache::new(capacity.max(1)),
            normalized: Vec::new(),
            sym: Vec::new(),
            len: Vec::new(),
        }
    }
}

impl SentencePiece {
    pub fn from_bytes(data: &[u8], cache_size: usize) -> R<Self> {
        let spec = parse_spec(data)?;
        if spec.model_type != 2 {
            return Err(format!("model type {} (only BPE = 2)", spec.model_type));
        }
        if spec.treat_whitespace_as_suffix {
            return Err("treat_whitespace_as_suffix".into());
        }
        let mut pieces = FxHashMap::default();
        let mut reserved = FxHashMap::default();
        let mut unk_id = None;
        let mut user: Vec<&[u8]> = Vec::new();
        for (i, (p, score, kind)) in spec.pieces.iter().enumerate() {
            let i = i as u32;
            if p.is_empty() || p.contains(&0) {
                return Err("empty piece or NUL in a piece".into());
            }
            if score.is_nan() {
                return Err("NaN score".into());
            }
            let map = match *kind {
                NORMAL | USER_DEFINED => &mut pieces,
                UNUSED => return Err("UNUSED pieces".into()),
                UNKNOWN | CONTROL | BYTE => &mut reserved,
                k => return Err(format!("piece type {k}")),
            };
            if map.insert(p.clone(), i).is_some() {
                return Err(format!("piece {:?} defined twice", String::from_utf8_lossy(p)));
            }
            if *kind == USER_DEFINED {
                user.push(p);
            }
            if *kind == UNKNOWN {
                if unk_id.is_some() {
                    return Err("two unknown pieces".into());
                }
                unk_id = Some(i);
            }
        }
        let unk_id = unk_id.ok_or("no unknown piece")?;
        let mut byte_ids = Vec::new();
        if spec.byte_fallback {
            for b in 0..=255u8 {
                let name = format!("<0x{b:02X}>");
                let id = reserved
                    .get(name.as_bytes())
                    .copied()
                    .filter(|&id| spec.pieces[id as usize].2 == BYTE)
                    .ok_or("byte_fallback without all 256 byte pieces")?;
                byte_ids.push(id);
            }
        }
        // Ranks: distinct scores, highest first (equal scores share a rank: leftmost wins).
        let mut scores: Vec<f32> = spec.pieces.iter().map(|p| p.1).collect();
        scores.sort_by(|a, b| b.partial_cmp(a).unwrap());
        scores.dedup_by(|a, b| a == b);
        let rank_of = |s: f32| scores.partition_point(|&x| x > s) as u32;
        // Symbols: pieces by id; characters that are not pieces but part of a piece get ids
        // after the pieces.
        let n_pieces = spec.pieces.len() as u32;
        let mut char_sym: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
        let mut entries: Vec<(u32, u32, u32)> = Vec::new();
        let space: &'static [u8] = if spec.escape_whitespaces { SPACE_SYMBOL } else { b" " };
        let mut joins_space: Vec<Vec<u8>> = Vec::new();
        for (p, &id) in &pieces {
            let mut i = 0;
            let mut prev_char: Option<&[u8]> = None;
            while i < p.len() {
                let n = char_len(p[i]).min(p.len() - i);
                if i > 0 && p[i..].starts_with(space) {
                    if let Some(c) = prev_char {
                        if !joins_space.iter().any(|x| x == c) {
                            joins_space.push(c.to_vec());
                        }
                    }
                }
                prev_char = Some(&p[i..i + n]);
                i += n;
            }
            // every split at a character boundary into two possible symbols
            let mut i = char_len(p[0]).min(p.len());
            while i < p.len() {
                let (a, b) = (&p[..i], &p[i..]);
                let mut sym = |s: &[u8]| -> Option<u32> {
                    if let Some(&id) = pieces.get(s) {
                        return Some(id);
                    }
                    if char_len(s[0]) >= s.len() {
                        let next = n_pieces + char_sym.len() as u32;
                        return Some(*char_sym.entry(s.to_vec()).or_insert(next));
                    }
                    None
                };
                if let (Some(x), Some(y)) = (sym(a), sym(b)) {
                    entries.push((x, y, id));
                }
                i += char_len(p[i]).min(p.len() - i);
            }
        }
        // A pair maps to one piece (its concatenation); sort for a deterministic table.
        entries.sort_unstable();
        let ranks: Vec<u32> = spec.pieces.iter().map(|p| rank_of(p.1)).collect();
        let merges = PairTable::new(entries.into_iter().map(|(x, y, id)| (x, y, ranks[id as usize], id)))?;
        let out_id = (0..n_pieces)
            .map(|id| reserved.get(&spec.pieces[id as usize].0).copied().unwrap_or(id))
            .collect();
        let user = UserSymbols::new(&user);
        let sym_of = |c: &[u8]| pieces.get(c).copied().or_else(|| char_sym.get(c).copied()).unwrap_or(DEAD);
        let mut ascii_sym = [DEAD; 256];
        for b in 0..128u8 {
            ascii_sym[b as usize] = sym_of(&[b]);
        }
        let mut wide_sym: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
        for c in pieces.keys().chain(char_sym.keys()) {
            if c.len() > 1 && char_len(c[0]) == c.len() {
                wide_sym.insert(c.clone(), sym_of(c));
            }
        }
        Ok(Self {
            ascii_sym,
            wide_sym,
            normalizer: Normalizer::new(&spec)?,
            user,
            pieces,
            reserved,
            merges,
            out_id,
            n_pieces,
            unk_id,
            byte_fallback: spec.byte_fallback,
            byte_ids,
            joins_space,
            space,
            cache_size,
            caches: (0..4).map(|_| Mutex::new(SpCache::new(cache_size))).collect(),
        })
    }

    pub fn piece_size(&self) -> usize {
        self.n_pieces as usize
    }

    pub fn clear_cache(&self) {
        for c in &self.caches {
            if let Ok(mut c) = c.lock() {
                *c = SpCache::new(self.cache_size);
            }
        }
    }

    /// Run `f` with a cache no other thread is using (a fresh one if all are busy).
    pub fn with_cache<T>(&self, f: impl FnOnce(&mut SpCache) -> T) -> T {
        for c in &self.caches {
            if let Ok(mut guard) = c.try_lock() {
                return f(&mut guard);
            }
        }
        f(&mut SpCache::new(self.cache_size.min(1 << 12)))
    }

    /// Encode one document, appending its ids to `out`.
    pub fn encode_into(&self, text: &str, cache: &mut SpCache, out: &mut Vec<u32>) {
        let mut normalized = std::mem::take(&mut cache.normalized);
        self.normalizer.normalize(text, self.user.as_ref(), &mut normalized);
        let start = out.len();
        let b = &normalized[..];
        let mut seg = 0;
        let mut i = 0;
        let mut prev: &[u8] = &[];
        while i < b.len() {
            let n = char_len(b[i]).min(b.len() - i);
            if i > seg && b[i..].starts_with(self.space) && !self.joins_space.iter().any(|c| c == prev) {
                self.segment(&b[seg..i], cache, out);
                seg = i;
            }
            prev = &b[i..i + n];
            i += n;
        }
        if seg < b.len() {
            self.segment(&b[seg..], cache, out);
        }
        cache.normalized = normalized;
        if !self.byte_fallback {
            // consecutive unknown pieces are one
            let mut w = start;
            for r in start..out.len() {
                if out[r] == self.unk_id && w > start && out[w - 1] == self.unk_id {
                    continue;
                }
                out[w] = out[r];
                w += 1;
            }
            out.truncate(w);
        }
    }

    /// One segment (no piece spans its ends), through the word cache.
    fn segment(&self, s: &[u8], cache: &mut SpCache, out: &mut Vec<u32>) {
        if self.cache_size == 0 || s.len() > MAX_CACHED_WORD {
            self.encode_segment(s, cache, out);
            return;
        }
        if let Some(k) = ShortKey::new(s) {
            let mut ids = [0u32; IDS_MAX];
            if let Some(n) = cache.words.get_short(&k, &mut ids) {
                push_ids(out, &ids, n);
                return;
            }
            let start = out.len();
            self.encode_segment(s, cache, out);
            cache.words.put_short(&k, &out[start..]);
            return;
        }
        if let Some(ids) = cache.words.get_long(s) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.encode_segment(s, cache, out);
        let ids = out[start..].to_vec();
        cache.words.put_long(s, &ids);
    }

    /// `SampleEncode` + `PopulateSentencePieceText` (ids) of one segment.
    fn encode_segment(&self, s: &[u8], cache: &mut SpCache, out: &mut Vec<u32>) {
        let (sym, len) = (&mut cache.sym, &mut cache.len);
        sym.clear();
        len.clear();
        let mut i = 0;
        while i < s.len() {
            let u = self.user.as_ref().map_or(0, |u| u.longest(&s[i..]));
            let (n, id) = if u > 0 {
                (u, DEAD) // frozen
            } else {
                let n = char_len(s[i]).min(s.len() - i);
                let id = if n == 1 {
                    self.ascii_sym[s[i] as usize]
                } else {
                    self.wide_sym.get(&s[i..i + n]).copied().unwrap_or(DEAD)
                };
                (n, id)
            };
            sym.push(id);
            len.push(n as u32);
            i += n;
        }
        if sym.len() <= SCAN_MAX {
            merge_scan(&self.merges, sym, len);
        } else {
            merge_heap(&self.merges, sym, len);
        }
        let mut at = 0usize;
        for (&id, &n) in sym.iter().zip(len.iter()) {
            let piece = &s[at..at + n as usize];
            at += n as usize;
            let id = if id < self.n_pieces {
                self.out_id[id as usize]
            } else {
                self.reserved
                    .get(piece)
                    .or_else(|| self.pieces.get(piece))
                    .copied()
                    .unwrap_or(self.unk_id)
            };
            if id == self.unk_id && self.byte_fallback {
                out.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
            } else {
                out.push(id);
            }
        }
    }
}

/// Merge the adjacent pair with the lowest `(rank, position)` until none is left (short
/// segments: contiguous arrays, shifted on each merge).
fn merge_scan(merges: &PairTable, sym: &mut Vec<u32>, len: &mut Vec<u32>) {
    let n = sym.len();
    if n < 2 {
        return;
    }
    let mut rank: Vec<(u32, u32)> = sym.windows(2).map(|w| merges.get(w[0], w[1])).collect();
    loop {
        let mut best = 0;
        let mut best_rank = u32::MAX;
        for (i, &(r, _)) in rank.iter().enumerate() {
            if r < best_rank {
                best_rank = r;
                best = i;
            }
        }
        if best_rank == u32::MAX {
            return;
        }
        sym[best] = rank[best].1;
        len[best] += len[best + 1];
        sym.remove(best + 1);
        len.remove(best + 1);
        rank.remove(best);
        if best < rank.len() {
            rank[best] = merges.get(sym[best], sym[best + 1]);
        }
        if best > 0 {
            rank[best - 1] = merges.get(sym[best - 1], sym[best]);
        }
    }
}

/// The same with a priority queue on `(rank, position)` and a linked list (long segments).
fn merge_heap(merges: &PairTable, sym: &mut Vec<u32>, len: &mut Vec<u32>) {
    let n = sym.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    for i in 0..n - 1 {
        let (r, id) = merges.get(sym[i], sym[i + 1]);
        if (r, id) != NO_MERGE {
            heap.push(Reverse((r, i, id, sym[i + 1])));
        }
    }
    while let Some(Reverse((_, i, id, right_sym))) = heap.pop() {
        let j = next[i];
        // stale: the left symbol was absorbed or changed, or its right neighbour changed
        if !alive[i] || j >= n || sym[j] != right_sym || merges.get(sym[i], sym[j]).1 != id {
            continue;
        }
        sym[i] = id;
        len[i] += len[j];
        alive[j] = false;
        next[i] = next[j];
        if next[j] < n {
            prev[next[j]] = i;
        }
        let p = prev[i];
        if p != usize::MAX {
            let (r, m) = merges.get(sym[p], sym[i]);
            if (r, m) != NO_MERGE {
                heap.push(Reverse((r, p, m, sym[i])));
            }
        }
        let q = next[i];
        if q < n {
            let (r, m) = merges.get(sym[i], sym[q]);
            if (r, m) != NO_MERGE {
                heap.push(Reverse((r, i, m, sym[q])));
            }
        }
    }
    let mut w = 0;
    for r in 0..n {
        if alive[r] {
            sym[w] = sym[r];
            len[w] = len[r];
            w += 1;
        }
    }
    sym.truncate(w);
    len.truncate(w);
}
