//! Byte-level BPE model with the exact merge semantics of HF `tokenizers` (`Word::merge_all`),
//! which are also tiktoken's (see `tiktoken.rs`).
//!
//! HF builds a `Word` from the byte-level characters of a pre-token (one character per input
//! byte), then repeatedly pops the pending merge with the lowest `(rank, position)` from a priority
//! queue, skipping stale entries (the symbol was absorbed, is now last, or the pair at that
//! position no longer produces the queued token).  A queued pair at a position can only change by
//! growing (a neighbour merged into it), so a stale entry never produces the queued token: the
//! queue always yields the current pair with the lowest `(rank, position)`.  Short words are
//! therefore merged by scanning the current pairs for that minimum (no queue, no allocation);
//! long words use the queue.  Both give HF's ids by construction.

use crate::table::{PairTable, ShortKey, TokenTable};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Words with at most this many initial symbols are merged by scanning.
pub const SCAN_MAX: usize = 32;

/// What HF's `BPE::merge_word` does with one byte-level character (= one input byte).
#[derive(Clone, Debug)]
pub enum ByteInit {
    /// The character is in the vocabulary: one symbol with this id.
    Id(u32),
    /// Not in vocab; `byte_fallback` is on and every `<0xXX>` token for the UTF-8 bytes of the
    /// byte-level character exists: these symbols (note: HF does *not* flush a pending unk here).
    Fallback(Box<[u32]>),
    /// Not in vocab and no usable fallback: unk handling (or silently dropped when no unk token).
    Missing,
}

#[derive(Clone, Copy)]
struct Symbol {
    c: u32,
    prev: i32,
    next: i32,
    /// false once merged into its left neighbour.
    alive: bool,
}

pub struct BpeModel {
    pub byte_init: Vec<ByteInit>, // 256 entries
    /// `(unk_id, fuse_unk)` when an unk token is configured (and resolvable).
    pub unk: Option<(u32, bool)>,
    /// `(left_id, right_id)` -> `(rank, merged_id)`; later duplicates overwrite earlier ones
    /// exactly like HF's `collect::<HashMap>()`.
    pub merges: PairTable,
    /// Whole pre-token lookup for `ignore_merges = true` (byte string -> id of a vocab entry made
    /// only of byte-level characters).
    pub whole_word: Option<TokenTable>,
}

/// Reusable buffers (no allocation per word).
#[derive(Default)]
pub struct Scratch {
    pub ids: Vec<u32>,
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>, // (rank, pos, new_id): min-heap on (rank, pos)
}

/// `ShortMerge::reload`: every pair / no pair.
const ALL: usize = usize::MAX - 1;
const NONE: usize = usize::MAX;

/// The merge of one word of at most `SCAN_MAX` initial symbols, one step at a time
/// ([`BpeModel::merge_step`]).
#[derive(Clone, Copy)]
pub struct ShortMerge {
    sym: [u32; 2 * SCAN_MAX],
    /// rank and merged id of the pair `(sym[i], sym[i + 1])`
    rank: [u32; 2 * SCAN_MAX],
    merged: [u32; 2 * SCAN_MAX],
    /// live symbols
    m: usize,
    /// the pairs to read at the next step (their loads started): positions, [`ALL`] or [`NONE`]
    reload: [usize; 2],
}

impl Default for ShortMerge {
    fn default() -> Self {
        Self {
            sym: [0; 2 * SCAN_MAX],
            rank: [u32::MAX; 2 * SCAN_MAX],
            merged: [0; 2 * SCAN_MAX],
            m: 0,
            reload: [NONE, NONE],
        }
    }
}

impl ShortMerge {
    /// The word's ids (once no step is left).
    #[inline]
    pub fn ids(&self) -> &[u32] {
        &self.sym[..self.m]
    }
}

impl BpeModel {
    #[inline(always)]
    fn merge_of(&self, a: u32, b: u32) -> (u32, u32) {
        self.merges.get(a, b)
    }

    /// Start loading what `tokenize_short(k, ..)` will look up first.
    #[inline(always)]
    pub fn prefetch(&self, k: &ShortKey) {
        if let Some(ww) = &self.whole_word {
            ww.prefetch(k);
        }
    }

    /// Tokenize one pre-token (its raw bytes; the byte-level mapping is implicit), appending the
    /// ids to `out`.  Mirrors `BPE::tokenize` for dropout None/0.
    pub fn tokenize(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if let Some(ww) = &self.whole_word {
            if let Some(id) = ww.get(word) {
                out.push(id);
                return;
            }
        }
        self.merge_word(word, scratch, out);
    }

    /// The id of a word that is a whole token, when whole words are looked up (`ignore_merges`).
    #[inline(always)]
    pub fn whole_short(&self, k: &ShortKey) -> Option<u32> {
        self.whole_word.as_ref().and_then(|ww| ww.get_short(k))
    }

    /// [`whole_short`](Self::whole_short) for any word.
    #[inline]
    pub fn whole(&self, w: &[u8]) -> Option<u32> {
        self.whole_word.as_ref().and_then(|ww| ww.get(w))
    }

    /// [`tokenize`](Self::tokenize) for a word whose key is at hand.
    #[inline]
    pub fn tokenize_short(&self, k: &ShortKey, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if let Some(ww) = &self.whole_word {
            if let Some(id) = ww.get_short(k) {
                out.push(id);
                return;
            }
        }
        self.merge_word(word, scratch, out);
    }

    /// BPE merges of a word (no whole-word lookup).
    pub fn merge_word(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        self.initial_symbols(word, &mut scratch.ids);
        if scratch.ids.len() <= SCAN_MAX {
            self.merge_scan(scratch);
            out.extend_from_slice(&scratch.ids);
        } else {
            self.merge_heap(scratch);
            out.extend(scratch.symbols.iter().filter(|s| s.alive).map(|s| s.c));
        }
    }

    /// `BPE::merge_word`: the initial symbols of a word.
    pub fn initial_symbols(&self, word: &[u8], ids: &mut Vec<u32>) {
        ids.clear();
        let mut unk: Option<u32> = None; // pending unk id (lengths are irrelevant for ids)
        for &b in word {
            match &self.byte_init[b as usize] {
                ByteInit::Id(id) => {
                    if let Some(u) = unk.take() {
                        ids.push(u);
                    }
                    ids.push(*id);
                }
                ByteInit::Fallback(fb) => ids.extend_from_slice(fb),
                ByteInit::Missing => {
                    if let Some((unk_id, fuse)) = self.unk {
                        unk = match (unk, fuse) {
                            (Some(u), true) => Some(u),
                            (Some(u), false) => {
                                ids.push(u);
                                Some(unk_id)
                            }
                            (None, _) => Some(unk_id),
                        };
                    }
                }
            }
        }
        if let Some(u) = unk {
            ids.push(u);
        }
    }

    /// Merge the current pair with the lowest `(rank, position)` until none is left.
    fn merge_scan(&self, scratch: &mut Scratch) {
        let mut st = ShortMerge::default();
        if !self.merge_start(&mut st, &scratch.ids) {
            return;
        }
        while self.merge_step(&mut st) {}
        scratch.ids.clear();
        scratch.ids.extend_from_slice(st.ids());
    }

    /// The symbols of a word, ready for [`merge_step`](Self::merge_step) (the loads of its pairs
    /// started); false when there is nothing to merge (fewer than two symbols).
    #[inline]
    pub fn merge_start(&self, st: &mut ShortMerge, ids: &[u32]) -> bool {
        let n = ids.len();
        debug_assert!(n <= SCAN_MAX);
        st.sym[..n].copy_from_slice(ids);
        st.m = n;
        st.reload = [ALL, NONE];
        if n < 2 {
            return false;
        }
        for i in 0..n - 1 {
            self.merges.prefetch(st.sym[i], st.sym[i + 1]);
        }
        true
    }

    /// One merge of a short word: read the pairs the last step changed (their loads were started
    /// then), merge the pair with the lowest `(rank, position)` and start the loads of the one or
    /// two pairs it changes.  The symbols and their pairs' ranks are small contiguous arrays;
    /// removing a symbol moves a fixed block of `SCAN_MAX` entries (a few vector moves, no call).
    /// False when no merge is left (the word is done).  Steps of several words can be taken in
    /// turn, so that one word's loads overlap the others' work (see `Engine::flush`).
    #[inline]
    pub fn merge_step(&self, st: &mut ShortMerge) -> bool {
        let m = st.m;
        if st.reload[0] == ALL {
            for i in 0..m - 1 {
                (st.rank[i], st.merged[i]) = self.merge_of(st.sym[i], st.sym[i + 1]);
            }
        } else {
            for p in st.reload {
                if p != NONE {
                    (st.rank[p], st.merged[p]) = self.merge_of(st.sym[p], st.sym[p + 1]);
                }
            }
        }
        if m < 2 {
            return false;
        }
        let mut best = 0;
        let mut best_rank = u32::MAX;
        for (i, &r) in st.rank[..m - 1].iter().enumerate() {
            if r < best_rank {
                best_rank = r;
                best = i;
            }
        }
        if best_rank == u32::MAX {
            return false;
        }
        st.sym[best] = st.merged[best];
        shift_left(&mut st.sym, best + 1);
        shift_left(&mut st.rank, best + 1);
        shift_left(&mut st.merged, best + 1);
        let m = m - 1;
        st.m = m;
        st.reload = [NONE, NONE];
        if best + 1 < m {
            st.reload[0] = best;
            self.merges.prefetch(st.sym[best], st.sym[best + 1]);
        } else {
            st.rank[best] = u32::MAX;
        }
        if best > 0 {
            st.reload[1] = best - 1;
            self.merges.prefetch(st.sym[best - 1], st.sym[best]);
        }
        m > 1
    }

    /// `Word::merge_all` with its priority queue, for long words.
    fn merge_heap(&self, scratch: &mut Scratch) {
        let symbols = &mut scratch.symbols;
        symbols.clear();
        let n = scratch.ids.len();
        symbols.extend(scratch.ids.iter().enumerate().map(|(i, &c)| Symbol {
            c,
            prev: i as i32 - 1,
            next: if i + 1 < n { i as i32 + 1 } else { -1 },
            alive: true,
        }));
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 0..n.saturating_sub(1) {
            let (rank, new_id) = self.merge_of(symbols[i].c, symbols[i + 1].c);
            if rank != u32::MAX {
                heap.push(Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(Reverse((_rank, pos, new_id))) = heap.pop() {
            let pos = pos as usize;
            if !symbols[pos].alive || symbols[pos].next == -1 {
                continue;
            }
            let next_pos = symbols[pos].next as usize;
            let right = symbols[next_pos];
            // Stale entry check (HF compares the produced id, not the rank).
            let (rank, nid) = self.merge_of(symbols[pos].c, right.c);
            if rank == u32::MAX || nid != new_id {
                continue;
            }
            symbols[pos].c = new_id;
            symbols[pos].next = right.next;
            symbols[next_pos].alive = false;
            if right.next > -1 && (right.next as usize) < symbols.len() {
                symbols[right.next as usize].prev = pos as i32;
            }
            let current = symbols[pos];
            if current.prev >= 0 {
                let prev = current.prev as usize;
                let (rank, nid) = self.merge_of(symbols[prev].c, current.c);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, prev as u32, nid)));
                }
            }
            let next = current.next;
            if next >= 0 && (next as usize) < symbols.len() {
                let (rank, nid) = self.merge_of(current.c, symbols[next as usize].c);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, pos as u32, nid)));
                }
            }
        }
    }
}

/// Remove entry `at` of a symbol array, moving the next `SCAN_MAX` entries down (the arrays are
/// twice that long, so the fixed-size copy always stays inside).
#[inline(always)]
fn shift_left(a: &mut [u32; 2 * SCAN_MAX], at: usize) {
    let mut block = [0u32; SCAN_MAX];
    block.copy_from_slice(&a[at + 1..at + 1 + SCAN_MAX]);
    a[at..at + SCAN_MAX].copy_from_slice(&block);
}
