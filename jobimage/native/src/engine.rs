//! The encode pipeline, mirroring HF `TokenizerImpl::encode` for the supported configurations:
//!
//! 1. `AddedVocabulary::extract_and_normalize`: split the raw text on non-normalized added
//!    tokens (leftmost-longest), normalize the remaining pieces, split those on normalized added
//!    tokens.
//! 2. Pre-tokenize every remaining piece: `Split` patterns (Isolated), then `ByteLevel` (optional
//!    prefix space, optional GPT-2 pattern).  Empty pieces are dropped, each pattern runs on its
//!    piece as a standalone string (so anchors / look-arounds see the piece boundaries like HF).
//!    Known patterns run the hand-written splitter of `pretok`, others the onig regex.
//! 3. BPE on every pre-token (with a bounded word cache).
//! 4. Post-processing template (special tokens around the sequence) iff `add_special_tokens`.

use crate::bpe::{BpeModel, Scratch, ShortMerge, SCAN_MAX};
use crate::bpe::ByteInit;
use crate::cache::{push_ids, WordCache, IDS_MAX, MAX_CACHED_WORD};
use crate::table::{ShortKey, KEY_MAX};
use crate::pretok::Splitter;
use crate::unicode::Classes;
use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use std::sync::Mutex;
use unicode_normalization_alignments::UnicodeNormalization;

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
    /// A known pattern, split by hand (equal to the regex).
    Split(Splitter),
    /// Any other pattern, split by oniguruma.
    Regex(onig::Regex),
    Literal(String),
}

pub enum TemplatePiece {
    Sequence,
    Special(Vec<u32>),
}

/// The added tokens of one kind (non-normalized or normalized), found leftmost-longest like HF's
/// `AddedVocabulary::find_matches`.
///
/// Running the automaton over every byte of every document costs as much as a quarter of the
/// whole encode (Llama 3's 256 specials), although most documents hold none of them.  Every match
/// starts with the first byte of some pattern, so the text is searched for those bytes only
/// (`memchr` for up to three distinct bytes, as all of Llama 3's `<|...|>` specials need), and the
/// automaton runs on a window of the longest pattern's length at each such byte: a match that
/// starts there is the one the full scan finds (leftmost: no pattern starts earlier; longest:
/// every pattern starting there fits the window), else the search moves on.
pub struct AddedMatcher {
    trie: Option<DoubleArrayAhoCorasick<u32>>,
    /// The distinct first bytes of the patterns.
    first: Vec<u8>,
    /// `is_first[b]`: some pattern starts with byte `b`.
    is_first: [bool; 256],
    /// Length of the longest pattern, in bytes.
    max_len: usize,
}

impl AddedMatcher {
    pub fn new(patterns: Vec<(String, u32)>) -> Result<Self, String> {
        let mut is_first = [false; 256];
        let mut max_len = 0;
        for (p, _) in &patterns {
            let Some(&b) = p.as_bytes().first() else {
                return Err("an empty added token pattern".into());
            };
            is_first[b as usize] = true;
            max_len = max_len.max(p.len());
        }
        let first = (0..=255u8).filter(|&b| is_first[b as usize]).collect();
        let trie = if patterns.is_empty() {
            None
        } else {
            Some(
                DoubleArrayAhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build_with_values(patterns.iter().map(|(p, id)| (p.as_bytes(), *id)))
                    .map_err(|e| format!("added tokens automaton: {e}"))?,
            )
        };
        Ok(Self {
            trie,
            first,
            is_first,
            max_len,
        })
    }

    /// Offset in `s` of the first byte that starts some pattern.
    #[inline]
    fn find_first(&self, s: &[u8]) -> Option<usize> {
        match *self.first.as_slice() {
            [a] => memchr::memchr(a, s),
            [a, b] => memchr::memchr2(a, b, s),
            [a, b, c] => memchr::memchr3(a, b, c, s),
            _ => s.iter().position(|&x| self.is_first[x as usize]),
        }
    }

    /// The leftmost-longest match in `s` starting at or after `from`: `(start, end, id)`.
    fn next_match(&self, trie: &DoubleArrayAhoCorasick<u32>, s: &[u8], from: usize) -> Option<(usize, usize, u32)> {
        let mut at = from;
        loop {
            let start = at + self.find_first(&s[at..])?;
            let window = &s[start..s.len().min(start + self.max_len)];
            if let Some(m) = trie.leftmost_find_iter(window).next() {
                if m.start() == 0 {
                    return Some((start, start + m.end(), m.value()));
                }
            }
            at = start + 1;
        }
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
        while let Some((m_start, m_end, id)) = self.next_match(trie, s.as_bytes(), start) {
            if start < m_start {
                f(Err(&s[start..m_start]));
            }
            f(Ok(id));
            start = m_end;
        }
        if start < s.len() {
            f(Err(&s[start..]));
        }
    }
}

/// A pre-token waiting for its ids (see [`Cache`]).
enum Pending {
    Id(u32),
    /// A word found in the small cache at once.
    Ids([u32; IDS_MAX], u8),
    Short(ShortKey),
    /// A word being merged: `Cache::jobs[j]`.
    Merge(ShortKey, u8),
    /// `long_bytes[start..start + len]`
    Long(usize, usize),
    /// A long word being merged: `long_bytes[start..start + len]`, `Cache::jobs[j]`.
    LongMerge(usize, usize, u8),
}

/// Pre-tokens queued before their word-cache lookups.
const PENDING_MAX: usize = 64;
const _: () = assert!(PENDING_MAX <= 256, "job numbers are u8");

/// Per-thread state: the word cache, and pre-tokens queued for lookup.  Pre-tokens are queued
/// (their cache slot prefetched) and resolved `PENDING_MAX` at a time, so that the loads of
/// their slots overlap; so do those of the words the cache lacks (whole-token slots, then the
/// merges of all of them in turn, see [`Engine::flush`]).  Every other id written to the output
/// flushes the queue first.
pub struct Cache {
    words: WordCache,
    scratch: Scratch,
    tmp: Vec<u32>,
    pending: Vec<Pending>,
    long_bytes: Vec<u8>,
    /// The merges of the queued words the cache lacks, and those of them not done.
    jobs: Vec<ShortMerge>,
    active: Vec<u8>,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            words: WordCache::new(capacity),
            scratch: Scratch::default(),
            tmp: Vec::new(),
            pending: Vec::with_capacity(PENDING_MAX),
            long_bytes: Vec::new(),
            jobs: Vec::with_capacity(PENDING_MAX),
            active: Vec::with_capacity(PENDING_MAX),
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
    classes: &'static Classes,
    /// The splitter when the pre-tokenizer is that one hand-written split (no prefix space).
    only_split: Option<Splitter>,
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
    ) -> Self {
        let only_split = match stages.as_slice() {
            [Stage::Split(sp)] if !add_prefix_space => Some(*sp),
            _ => None,
        };
        Self {
            only_split,
            classes: crate::unicode::classes(),
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
            caches: (0..N_CACHES).map(|_| Mutex::new(Cache::new(cache_size))).collect(),
        }
    }

    pub fn clear_cache(&self) {
        for c in &self.caches {
            if let Ok(mut c) = c.lock() {
                c.words = WordCache::new(self.cache_size);
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
        let mut tmp = Cache::new(self.cache_size.min(1 << 12));
        f(&mut tmp)
    }

    /// Encode one document, appending its ids to `out`.
    pub fn encode_into(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        self.encode_pieces(text, cache, out);
        self.flush(cache, out);
    }

    fn encode_pieces(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        match (&self.template, self.add_special_tokens) {
            (Some(t), true) => {
                for piece in t {
                    match piece {
                        TemplatePiece::Special(ids) => {
                            self.flush(cache, out);
                            out.extend_from_slice(ids)
                        }
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
            Ok(id) => self.emit(id, cache, out),
            Err(raw) => match self.normalizer {
                Normalizer::None => self.encode_normalized_piece(raw, cache, out),
                Normalizer::Nfc => self.encode_normalized_piece(&nfc(raw), cache, out),
            },
        });
    }

    fn encode_normalized_piece(&self, piece: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        // 2. normalized added tokens on the normalized pieces, 3. pre-tokenize + BPE the rest
        self.normed.split(piece, |p| match p {
            Ok(id) => self.emit(id, cache, out),
            Err(text) => match self.only_split {
                // the common case, one hand-written split and nothing else: no stage recursion
                Some(sp) => sp.split(self.classes, text, |w| self.bpe_word(w.as_bytes(), cache, out)),
                None => self.pretokenize(text, 0, cache, out),
            },
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
        self.split_stage(s, stage, cache, out)
    }

    /// Applies the split of `stages[stage]` to `s` and recurses into the next stages.
    fn split_stage(&self, s: &str, stage: usize, cache: &mut Cache, out: &mut Vec<u32>) {
        let next = stage + 1;
        let mut prev = 0usize;
        match &self.stages[stage] {
            Stage::Split(sp) => {
                sp.split(self.classes, s, |piece| self.pretokenize(piece, next, cache, out));
                return;
            }
            Stage::Regex(re) => {
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

    /// Append an id that is not a pre-token's (an added or special token).
    fn emit(&self, id: u32, cache: &mut Cache, out: &mut Vec<u32>) {
        self.flush(cache, out);
        out.push(id);
    }

    /// Queue one pre-token.
    #[inline]
    fn bpe_word(&self, w: &[u8], cache: &mut Cache, out: &mut Vec<u32>) {
        let p = if w.len() == 1 && matches!(self.bpe.byte_init[w[0] as usize], ByteInit::Id(_)) {
            // Single known byte: no merge possible; ignore_merges lookup gives the same id.
            let ByteInit::Id(id) = self.bpe.byte_init[w[0] as usize] else { unreachable!() };
            Pending::Id(id)
        } else if let (true, Some(k)) = (self.cache_size > 0, ShortKey::new(w)) {
            cache.words.prefetch_small(&k);
            Pending::Short(k)
        } else {
            let start = cache.long_bytes.len();
            cache.long_bytes.extend_from_slice(w);
            Pending::Long(start, w.len())
        };
        cache.pending.push(p);
        if cache.pending.len() == PENDING_MAX {
            self.flush(cache, out);
        }
    }

    /// Resolve the queued pre-tokens and write their ids, in order.  Most pre-tokens are in the
    /// word cache (its slots were prefetched when they were queued).  For the others the loads
    /// that follow are random reads of tables of several MiB, each waiting on the one before: the
    /// whole-token lookup, then every merge step's pair lookups.  So they are done for all of
    /// them at once: the whole-token slots are prefetched together, then the short words' merges
    /// are taken a step each in turn, each step starting the loads the word's next step reads.
    fn flush(&self, cache: &mut Cache, out: &mut Vec<u32>) {
        let Cache {
            words,
            scratch,
            tmp,
            pending,
            long_bytes,
            jobs,
            active,
        } = cache;
        // 1. the word cache: its small table (whose slots were prefetched when the words were
        //    queued), then the main one; start loading the whole-token slots of the words it lacks
        let mut small_missed = false;
        for p in pending.iter_mut() {
            if let Pending::Short(k) = p {
                let mut ids = [0u32; IDS_MAX];
                match words.get_small(k, &mut ids) {
                    Some(n) => *p = Pending::Ids(ids, n as u8),
                    None => {
                        words.prefetch(k);
                        small_missed = true;
                    }
                }
            }
        }
        let mut missed = false;
        for p in pending.iter_mut() {
            match p {
                Pending::Short(k) if small_missed => {
                    let mut ids = [0u32; IDS_MAX];
                    match words.get_short(k, &mut ids) {
                        Some(n) => *p = Pending::Ids(ids, n as u8),
                        None => {
                            self.bpe.prefetch(k);
                            missed = true;
                        }
                    }
                }
                Pending::Long(..) => missed = true,
                _ => {}
            }
        }
        // 2. whole tokens; the merges of words of at most SCAN_MAX symbols started (longer ones
        //    are merged alone below)
        if missed {
            jobs.clear();
            active.clear();
            for p in pending.iter_mut() {
                let mut job = |ids: &[u32]| {
                    if ids.len() > SCAN_MAX {
                        return None;
                    }
                    let j = jobs.len();
                    jobs.push(ShortMerge::default());
                    if self.bpe.merge_start(&mut jobs[j], ids) {
                        active.push(j as u8);
                    }
                    Some(j as u8)
                };
                match *p {
                    Pending::Short(k) => {
                        if let Some(id) = self.bpe.whole_short(&k) {
                            words.put_short(&k, &[id]);
                            *p = Pending::Id(id);
                            continue;
                        }
                        let mut buf = [0u8; KEY_MAX];
                        let n = k.bytes(&mut buf);
                        self.bpe.initial_symbols(&buf[..n], &mut scratch.ids);
                        if let Some(j) = job(&scratch.ids) {
                            *p = Pending::Merge(k, j);
                        }
                    }
                    Pending::Long(start, len) => {
                        let w = &long_bytes[start..start + len];
                        if self.cache_size > 0 && len <= MAX_CACHED_WORD && words.get_long(w).is_some() {
                            continue;
                        }
                        if let Some(id) = self.bpe.whole(w) {
                            *p = Pending::Id(id);
                            continue;
                        }
                        self.bpe.initial_symbols(w, &mut scratch.ids);
                        if let Some(j) = job(&scratch.ids) {
                            *p = Pending::LongMerge(start, len, j);
                        }
                    }
                    _ => {}
                }
            }
            // 3. a merge step of each word in turn, until all are done
            while !active.is_empty() {
                let mut i = 0;
                while i < active.len() {
                    if self.bpe.merge_step(&mut jobs[active[i] as usize]) {
                        i += 1;
                    } else {
                        active.swap_remove(i);
                    }
                }
            }
        }
        // 4. the ids, in order
        for p in pending.drain(..) {
            match p {
                Pending::Id(id) => out.push(id),
                Pending::Ids(ids, n) => push_ids(out, &ids, n as usize),
                Pending::Merge(k, j) => {
                    let ids = jobs[j as usize].ids();
                    out.extend_from_slice(ids);
                    words.put_short(&k, ids);
                }
                Pending::Short(k) => {
                    // not a whole token, too many symbols to merge by scanning
                    let mut buf = [0u8; KEY_MAX];
                    let n = k.bytes(&mut buf);
                    let start = out.len();
                    self.bpe.merge_word(&buf[..n], scratch, out);
                    words.put_short(&k, &out[start..]);
                }
                Pending::LongMerge(start, len, j) => {
                    let ids = jobs[j as usize].ids();
                    out.extend_from_slice(ids);
                    if self.cache_size > 0 && len <= MAX_CACHED_WORD {
                        words.put_long(&long_bytes[start..start + len], ids);
                    }
                }
                Pending::Long(start, len) => {
                    let w = &long_bytes[start..start + len];
                    if self.cache_size == 0 || w.len() > MAX_CACHED_WORD {
                        self.bpe.tokenize(w, scratch, out);
                    } else if let Some(ids) = words.get_long(w) {
                        out.extend_from_slice(ids);
                    } else {
                        tmp.clear();
                        self.bpe.tokenize(w, scratch, tmp);
                        out.extend_from_slice(tmp);
                        words.put_long(w, tmp);
                    }
                }
            }
        }
        long_bytes.clear();
    }
}

