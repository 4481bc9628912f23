//! Word cache: pre-token bytes → ids, for pre-tokens that recur (most of them do).
//!
//! Short words (≤ 24 bytes, ≤ 8 ids: 99.5 % of the pre-tokens of the bench corpus) live in a
//! direct-mapped table of 64-byte slots, one cache line each, with key and ids inline: a lookup
//! is a hash of at most three words, one slot load and a comparison of three words; an insert
//! overwrites whatever the slot held.  No allocation, no clearing, bounded memory (mapped on
//! first use).  Longer words go to a bounded hash map that is cleared when full, like HF's cache.

use crate::table::{prefetch, HugeBuf, ShortKey};
use rustc_hash::FxHashMap;

pub const IDS_MAX: usize = 8;
const SMALL_SLOTS: usize = 1 << 14;
/// Words longer than this are not cached (HF uses the same bound, 256 bytes).
pub const MAX_CACHED_WORD: usize = 256;

/// A slot as eight words: `[tag | len << 24 | n << 32, key0, key1, key2, ids (4 words)]`.
type Slot = [u64; 8];

pub struct WordCache {
    slots: HugeBuf<Slot>,
    mask: usize,
    /// A small table in front of `slots` for the most frequent words (fits the CPU's L2
    /// cache, so it is probed at once, without prefetching).
    small: Box<[Slot]>,
    small_mask: usize,
    long: FxHashMap<Box<[u8]>, Box<[u32]>>,
    long_max: usize,
}

impl WordCache {
    /// `capacity`: number of short-word slots (rounded up to a power of two) and bound of the
    /// long-word map.
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(1).next_power_of_two();
        let small = SMALL_SLOTS.min(n);
        Self {
            slots: HugeBuf::new(n),
            mask: n - 1,
            small: vec![[0u64; 8]; small].into_boxed_slice(),
            small_mask: small - 1,
            long: FxHashMap::default(),
            long_max: capacity,
        }
    }

    #[inline(always)]
    fn slot(&self, k: &ShortKey) -> usize {
        k.hash as usize & self.mask
    }


    /// Start loading the slot of `k` (lookups are queued so that these loads overlap).
    #[inline(always)]
    pub fn prefetch(&self, k: &ShortKey) {
        prefetch(&self.slots.as_ref()[self.slot(k)]);
    }

    /// Start loading the small table's slot of `k`.
    #[inline(always)]
    pub fn prefetch_small(&self, k: &ShortKey) {
        prefetch(&self.small[k.hash as usize & self.small_mask]);
    }

    /// The ids of `k` from the small table: their number, or None.
    #[inline(always)]
    pub fn get_small(&self, k: &ShortKey, ids: &mut [u32; IDS_MAX]) -> Option<usize> {
        read_slot(&self.small[k.hash as usize & self.small_mask], k, ids)
    }

    /// The cached ids of `k` (their number; the slot is kept in the small table too), or None.
    #[inline(always)]
    pub fn get_short(&mut self, k: &ShortKey, ids: &mut [u32; IDS_MAX]) -> Option<usize> {
        let s = self.slots.as_ref()[self.slot(k)];
        let n = read_slot(&s, k, ids)?;
        self.small[k.hash as usize & self.small_mask] = s;
        Some(n)
    }

    #[inline]
    pub fn put_short(&mut self, k: &ShortKey, ids: &[u32]) {
        if ids.len() > IDS_MAX {
            return;
        }
        let i = self.slot(k);
        let mut s: Slot = [0; 8];
        s[0] = head(k) | (ids.len() as u64) << 32;
        s[1..4].copy_from_slice(&k.words);
        for (j, &id) in ids.iter().enumerate() {
            s[4 + j / 2] |= (id as u64) << (32 * (j % 2));
        }
        self.slots.as_mut()[i] = s;
        self.small[k.hash as usize & self.small_mask] = s;
    }

    pub fn get_long(&self, w: &[u8]) -> Option<&[u32]> {
        self.long.get(w).map(|b| &**b)
    }

    pub fn put_long(&mut self, w: &[u8], ids: &[u32]) {
        if self.long.len() >= self.long_max {
            self.long = FxHashMap::default();
        }
        self.long.insert(w.into(), ids.into());
    }
}

#[inline(always)]
fn head(k: &ShortKey) -> u64 {
    k.tag() | (k.len as u64) << 24
}

/// The ids a slot holds for `k` (their number), or None when it holds another key.
#[inline(always)]
fn read_slot(s: &Slot, k: &ShortKey, ids: &mut [u32; IDS_MAX]) -> Option<usize> {
    if s[0] & 0xFFFF_FFFF != head(k) || !k.same(s) {
        return None;
    }
    for (j, w) in s[4..8].iter().enumerate() {
        ids[2 * j] = *w as u32;
        ids[2 * j + 1] = (*w >> 32) as u32;
    }
    Some((s[0] >> 32) as usize)
}

/// `out.extend_from_slice(&ids[..n])` as one fixed-size copy (no call to memmove for a few ids).
#[inline(always)]
pub fn push_ids(out: &mut Vec<u32>, ids: &[u32; IDS_MAX], n: usize) {
    debug_assert!(n <= IDS_MAX);
    out.reserve(IDS_MAX);
    let len = out.len();
    // SAFETY: `reserve` made room for IDS_MAX more ids; only the first n become part of `out`.
    unsafe {
        std::ptr::copy_nonoverlapping(ids.as_ptr(), out.as_mut_ptr().add(len), IDS_MAX);
        out.set_len(len + n);
    }
}
