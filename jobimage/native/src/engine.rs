//! The encode pipeline, mirroring HF `TokenizerImpl::encode` for the supported configurations:
//!
//! 1. `AddedVocabulary::extract_and_normalize`: split the raw text on non-normalized added
//!    tokens (leftmost-longest), normalize the remaining pieces, split those on normalized added
//!    tokens.
//! 2. Pre-tokenize every remaining piece: `Split` regexes (Isolated), then `ByteLevel` (optional
//!    prefix space, optional GPT-2 regex).  Empty pieces are dropped, each regex runs on its piece
//!    as a standalone string (so anchors / look-arounds see the piece boundaries like HF).
//! 3. BPE on every pre-token (with a bounded word cache).
//! 4. Post-processing template (special tokens around the sequence) iff `add_special_tokens`.

use crate::bpe::{BpeModel, Scratch};
use crate::chunk::{ChunkRule, Classes};
use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use rustc_hash::FxHashMap;
use std::sync::Mutex;
use unicode_normalization_alignments::UnicodeNormalization;

/// Words longer than this are not cached (HF uses the same bound, 256 bytes).
const MAX_CACHED_WORD: usize = 256;
/// Number of independent caches (one per concurrently encoding thread).
const N_CACHES: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Normalizer {
    None,
    Nfc,
}

pub fn nfc(s: &str) -> String {
    s.nfc().map(|(c, _)| c).collect()
}

pub enum Stage {
    /// A regex (with the chunk rule when the pattern is a known one).
    Regex(onig::Regex, Option<ChunkRule>),
    Literal(String),
}

pub enum TemplatePiece {
    Sequence,
    Special(Vec<u32>),
}

pub struct AddedMatcher {
    trie: Option<DoubleArrayAhoCorasick<u32>>,
}

impl AddedMatcher {
    pub fn new(patterns: Vec<(String, u32)>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self { trie: None });
        }
        let trie = DoubleArrayAhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build_with_values(patterns.iter().map(|(p, id)| (p.as_bytes(), *id)))
            .map_err(|e| format!("added tokens automaton: {e}"))?;
        Ok(Self { trie: Some(trie) })
    }

    /// Mirrors `AddedVocabulary::find_matches` (no lstrip/rstrip/single_word): calls
    /// `f(Err(piece))` for the text between matches and `f(Ok(id))` for each match, in order.
    #[inline]
    fn split<'a>(&self, s: &'a str, mut f: impl FnMut(Result<u32, &'a str>)) {
        let Some(trie) = &self.trie else {
            if !s.is_empty() {
                f(Err(s));
            }
            return;
        };
        let mut start = 0;
        for m in trie.leftmost_find_iter(s) {
            if start < m.start() {
                f(Err(&s[start..m.start()]));
            }
            f(Ok(m.value()));
            start = m.end();
        }
        if start < s.len() {
            f(Err(&s[start..]));
        }
    }
}

pub struct Cache {
    words: FxHashMap<Box<[u8]>, Box<[u32]>>,
    chunks: FxHashMap<Box<[u8]>, Box<[u32]>>,
    scratch: Scratch,
    tmp: Vec<u32>,
}

impl Cache {
    fn new() -> Self {
        Self {
            words: FxHashMap::default(),
            chunks: FxHashMap::default(),
            scratch: Scratch::default(),
            tmp: Vec::new(),
        }
    }
}

pub struct Engine {
    bpe: BpeModel,
    normalizer: Normalizer,
    plain: AddedMatcher,
    normed: AddedMatcher,
    stages: Vec<Stage>,
    /// Index in `stages` where the ByteLevel step happens (prefix space insertion point).
    byte_level_index: usize,
    add_prefix_space: bool,
    template: Option<Vec<TemplatePiece>>,
    pub add_special_tokens: bool,
    pub cache_size: usize,
    caches: Vec<Mutex<Cache>>,
    /// Stage whose regex is a known pattern: its input is cut into chunks cached whole.
    chunking: Option<(usize, ChunkRule, &'static Classes)>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bpe: BpeModel,
        normalizer: Normalizer,
        plain: AddedMatcher,
        normed: AddedMatcher,
        stages: Vec<Stage>,
        byte_level_index: usize,
        add_prefix_space: bool,
        template: Option<Vec<TemplatePiece>>,
        add_special_tokens: bool,
        cache_size: usize,
        enable_chunking: bool,
    ) -> Self {
        let chunking = if enable_chunking && cache_size > 0 {
            stages.iter().enumerate().find_map(|(i, st)| match st {
                Stage::Regex(_, Some(rule)) => Some((i, *rule, crate::chunk::classes())),
                _ => None,
            })
        } else {
            None
        };
        Self {
            chunking,
            bpe,
            normalizer,
            plain,
            normed,
            stages,
            byte_level_index,
            add_prefix_space,
            template,
            add_special_tokens,
            cache_size,
            caches: (0..N_CACHES).map(|_| Mutex::new(Cache::new())).collect(),
        }
    }

    pub fn clear_cache(&self) {
        for c in &self.caches {
            if let Ok(mut c) = c.lock() {
                c.words = FxHashMap::default();
                c.chunks = FxHashMap::default();
            }
        }
    }

    /// Run `f` with a cache that no other thread is using (a fresh one if all are busy).
    pub fn with_cache<T>(&self, f: impl FnOnce(&mut Cache) -> T) -> T {
        for c in &self.caches {
            if let Ok(mut guard) = c.try_lock() {
                return f(&mut guard);
            }
        }
        let mut tmp = Cache::new();
        f(&mut tmp)
    }

    /// Encode one document, appending its ids to `out`.
    pub fn encode_into(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        match (&self.template, self.add_special_tokens) {
            (Some(t), true) => {
                for piece in t {
                    match piece {
                        TemplatePiece::Special(ids) => out.extend_from_slice(ids),
                        TemplatePiece::Sequence => self.encode_sequence(text, cache, out),
                    }
                }
            }
            (Some(t), false) => {
                for piece in t {
                    if let TemplatePiece::Sequence = piece {
                        self.encode_sequence(text, cache, out);
                    }
                }
            }
            (None, _) => self.encode_sequence(text, cache, out),
        }
    }

    fn encode_sequence(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        // 1. non-normalized added tokens on the raw text
        self.plain.split(text, |piece| match piece {
            Ok(id) => out.push(id),
            Err(raw) => match self.normalizer {
                Normalizer::None => self.encode_normalized_piece(raw, cache, out),
                Normalizer::Nfc => self.encode_normalized_piece(&nfc(raw), cache, out),
            },
        });
    }

    fn encode_normalized_piece(&self, piece: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        // 2. normalized added tokens on the normalized pieces, 3. pre-tokenize + BPE the rest
        self.normed.split(piece, |p| match p {
            Ok(id) => out.push(id),
            Err(text) => self.pretokenize(text, 0, cache, out),
        });
    }

    fn pretokenize(&self, s: &str, stage: usize, cache: &mut Cache, out: &mut Vec<u32>) {
        debug_assert!(!s.is_empty());
        if stage == self.byte_level_index && self.add_prefix_space && !s.starts_with(' ') {
            let mut owned = String::with_capacity(s.len() + 1);
            owned.push(' ');
            owned.push_str(s);
            return self.pretokenize_from(&owned, stage, cache, out);
        }
        self.pretokenize_from(s, stage, cache, out)
    }

    /// Applies `stages[stage..]` (prefix space already handled for `stage`).
    fn pretokenize_from(&self, s: &str, stage: usize, cache: &mut Cache, out: &mut Vec<u32>) {
        if stage == self.stages.len() {
            self.bpe_word(s.as_bytes(), cache, out);
            return;
        }
        if let Some((cs, rule, classes)) = self.chunking {
            if cs == stage {
                classes.for_each_chunk(rule, s, |chunk| self.chunk(chunk, stage, cache, out));
                return;
            }
        }
        self.split_stage(s, stage, cache, out)
    }

    /// One chunk of a chunked stage: cached `chunk -> ids`, computed by the normal path.
    fn chunk(&self, c: &str, stage: usize, cache: &mut Cache, out: &mut Vec<u32>) {
        let key = c.as_bytes();
        if let Some(ids) = cache.chunks.get(key) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.split_stage(c, stage, cache, out);
        if key.len() <= MAX_CACHED_WORD {
            if cache.chunks.len() >= self.cache_size {
                cache.chunks = FxHashMap::default();
            }
            cache.chunks.insert(key.into(), out[start..].into());
        }
    }

    /// Applies the split of `stages[stage]` to `s` and recurses into the next stages.
    fn split_stage(&self, s: &str, stage: usize, cache: &mut Cache, out: &mut Vec<u32>) {
        let next = stage + 1;
        let mut prev = 0usize;
        match &self.stages[stage] {
            Stage::Regex(re, _) => {
                for (start, end) in re.find_iter(s) {
                    if prev != start {
                        self.pretokenize(&s[prev..start], next, cache, out);
                    }
                    if start != end {
                        self.pretokenize(&s[start..end], next, cache, out);
                    }
                    prev = end;
                }
            }
            Stage::Literal(lit) => {
                for (start, m) in s.match_indices(lit.as_str()) {
                    let end = start + m.len();
                    if prev != start {
                        self.pretokenize(&s[prev..start], next, cache, out);
                    }
                    self.pretokenize(&s[start..end], next, cache, out);
                    prev = end;
                }
            }
        }
        if prev != s.len() {
            self.pretokenize(&s[prev..], next, cache, out);
        }
    }

    #[inline]
    fn bpe_word(&self, w: &[u8], cache: &mut Cache, out: &mut Vec<u32>) {
        if w.len() == 1 {
            if let crate::bpe::ByteInit::Id(id) = self.bpe.byte_init[w[0] as usize] {
                // Single known byte: no merge possible; ignore_merges lookup gives the same id.
                out.push(id);
                return;
            }
        }
        if w.len() > MAX_CACHED_WORD || self.cache_size == 0 {
            self.bpe.tokenize(w, &mut cache.scratch, out);
            return;
        }
        if let Some(ids) = cache.words.get(w) {
            out.extend_from_slice(ids);
            return;
        }
        cache.tmp.clear();
        self.bpe.tokenize(w, &mut cache.scratch, &mut cache.tmp);
        out.extend_from_slice(&cache.tmp);
        if cache.words.len() >= self.cache_size {
            cache.words = FxHashMap::default();
        }
        cache
            .words
            .insert(w.to_vec().into_boxed_slice(), cache.tmp.as_slice().into());
    }
}
