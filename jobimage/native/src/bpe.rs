//! Byte-level BPE model with the exact merge semantics of HF `tokenizers` (`Word::merge_all`).
//!
//! HF builds a `Word` from the byte-level characters of a pre-token (one character per input
//! byte), then repeatedly pops the pending merge with the lowest `(rank, position)` from a priority
//! queue, skipping stale entries (the symbol was absorbed, is now last, or the pair at that
//! position no longer produces the queued token).  This module runs the same algorithm on token
//! ids, so the produced ids are identical by construction.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
    /// 0 once merged into its left neighbour (HF uses the byte length for this test).
    alive: bool,
}

pub struct BpeModel {
    pub byte_init: Vec<ByteInit>, // 256 entries
    /// `(unk_id, fuse_unk)` when an unk token is configured (and resolvable).
    pub unk: Option<(u32, bool)>,
    /// `(left_id << 32 | right_id)` -> `(rank, merged_id)`; later duplicates overwrite earlier ones
    /// exactly like HF's `collect::<HashMap>()`.
    pub merges: FxHashMap<u64, (u32, u32)>,
    /// Whole pre-token lookup for `ignore_merges = true` (byte string -> id of a vocab entry made
    /// only of byte-level characters).
    pub whole_word: Option<FxHashMap<Box<[u8]>, u32>>,
}

/// Reusable buffers for `merge_word` (avoid allocations per word).
#[derive(Default)]
pub struct Scratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>, // (rank, pos, new_id): min-heap on (rank, pos)
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl BpeModel {
    #[inline]
    fn add(symbols: &mut Vec<Symbol>, c: u32) {
        let len = symbols.len() as i32;
        let prev = if let Some(last) = symbols.last_mut() {
            last.next = len;
            len - 1
        } else {
            -1
        };
        symbols.push(Symbol {
            c,
            prev,
            next: -1,
            alive: true,
        });
    }

    /// Tokenize one pre-token (its raw bytes; the byte-level mapping is implicit), appending the
    /// ids to `out`.  Mirrors `BPE::tokenize` for dropout None/0.
    pub fn tokenize(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Some(ww) = &self.whole_word {
            if let Some(&id) = ww.get(word) {
                out.push(id);
                return;
            }
        }
        self.merge_word(word, scratch);
        out.extend(scratch.symbols.iter().filter(|s| s.alive).map(|s| s.c));
    }

    fn merge_word(&self, word: &[u8], scratch: &mut Scratch) {
        let symbols = &mut scratch.symbols;
        symbols.clear();
        // --- BPE::merge_word: build the initial symbols -----------------------------------
        let mut unk: Option<u32> = None; // pending unk id (lengths are irrelevant for ids)
        for &b in word {
            match &self.byte_init[b as usize] {
                ByteInit::Id(id) => {
                    if let Some(u) = unk.take() {
                        Self::add(symbols, u);
                    }
                    Self::add(symbols, *id);
                }
                ByteInit::Fallback(ids) => {
                    for &t in ids.iter() {
                        Self::add(symbols, t);
                    }
                }
                ByteInit::Missing => {
                    if let Some((unk_id, fuse)) = self.unk {
                        unk = match (unk, fuse) {
                            (Some(u), true) => Some(u),
                            (Some(u), false) => {
                                Self::add(symbols, u);
                                Some(unk_id)
                            }
                            (None, _) => Some(unk_id),
                        };
                    }
                }
            }
        }
        if let Some(u) = unk {
            Self::add(symbols, u);
        }
        if symbols.len() < 2 {
            return;
        }
        // --- Word::merge_all (dropout None) -------------------------------------------------
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 0..symbols.len() - 1 {
            if let Some(&(rank, new_id)) = self.merges.get(&key(symbols[i].c, symbols[i + 1].c)) {
                heap.push(Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(Reverse((_rank, pos, new_id))) = heap.pop() {
            let pos = pos as usize;
            if !symbols[pos].alive {
                continue;
            }
            if symbols[pos].next == -1 {
                continue;
            }
            let next_pos = symbols[pos].next as usize;
            let right = symbols[next_pos];
            // Stale entry check (HF compares the produced id, not the rank).
            match self.merges.get(&key(symbols[pos].c, right.c)) {
                Some(&(_, nid)) if nid == new_id => {}
                _ => continue,
            }
            // Merge.
            symbols[pos].c = new_id;
            symbols[pos].next = right.next;
            symbols[next_pos].alive = false;
            if right.next > -1 && (right.next as usize) < symbols.len() {
                symbols[right.next as usize].prev = pos as i32;
            }
            let current = symbols[pos];
            if current.prev >= 0 {
                let prev = current.prev as usize;
                if let Some(&(rank, nid)) = self.merges.get(&key(symbols[prev].c, current.c)) {
                    heap.push(Reverse((rank, prev as u32, nid)));
                }
            }
            let next = current.next;
            if next >= 0 && (next as usize) < symbols.len() {
                if let Some(&(rank, nid)) =
                    self.merges.get(&key(current.c, symbols[next as usize].c))
                {
                    heap.push(Reverse((rank, pos as u32, nid)));
                }
            }
        }
    }
}
