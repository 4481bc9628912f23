//! Flat lookup tables for the hot path: short byte-string keys held inline ([`ShortKey`]), the
//! merge table ([`PairTable`]) and the whole-token table ([`TokenTable`]), all in zeroed memory
//! mapped in 2 MiB pages where the kernel allows ([`HugeBuf`]).
//!
//! Lookups land on random slots of tables of several MiB; with 4 KiB pages most of them would
//! miss the TLB as well as the CPU cache.  Keys are compared inline (no pointer to follow) and
//! callers prefetch slots ahead of use.

use rustc_hash::FxHashMap;

/// Longest key held inline.
pub const KEY_MAX: usize = 24;

/// Up to 8 bytes as a little-endian word, zero-padded, without a byte-wise copy (two
/// overlapping loads; the overlapping bytes are equal, so OR-ing them is harmless).
#[inline(always)]
fn load_word(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 8 {
        u64::from_le_bytes(b[..8].try_into().unwrap())
    } else if n >= 4 {
        let lo = u32::from_le_bytes(b[..4].try_into().unwrap()) as u64;
        let hi = u32::from_le_bytes(b[n - 4..n].try_into().unwrap()) as u64;
        lo | hi << ((n - 4) * 8)
    } else if n >= 2 {
        let lo = u16::from_le_bytes(b[..2].try_into().unwrap()) as u64;
        let hi = u16::from_le_bytes(b[n - 2..n].try_into().unwrap()) as u64;
        lo | hi << ((n - 2) * 8)
    } else if n == 1 {
        b[0] as u64
    } else {
        0
    }
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A key of at most [`KEY_MAX`] bytes, zero-padded to three words, with its hash.
#[derive(Clone, Copy)]
pub struct ShortKey {
    pub words: [u64; 3],
    pub len: usize,
    pub hash: u64,
}

impl ShortKey {
    #[inline(always)]
    pub fn new(w: &[u8]) -> Option<Self> {
        let n = w.len();
        if n > KEY_MAX {
            return None;
        }
        let words = [
            load_word(&w[..n.min(8)]),
            load_word(&w[n.min(8)..n.min(16)]),
            load_word(&w[n.min(16)..]),
        ];
        let mut h = (words[0] ^ (n as u64).wrapping_mul(K)).wrapping_mul(K);
        h = (h.rotate_left(29) ^ words[1]).wrapping_mul(K);
        h = (h.rotate_left(29) ^ words[2]).wrapping_mul(K);
        h ^= h >> 32;
        Some(Self { words, len: n, hash: h })
    }

    /// The key's bytes: `buf[..len]`.
    #[inline(always)]
    pub fn bytes(&self, buf: &mut [u8; KEY_MAX]) -> usize {
        for (i, w) in self.words.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.len
    }

    /// 24 bits of the hash other than those that pick the slot, never 0.
    #[inline(always)]
    pub fn tag(&self) -> u64 {
        ((self.hash >> 40) | 1) & 0xFF_FFFF
    }

    #[inline(always)]
    pub fn same(&self, slot: &[u64]) -> bool {
        slot[1] == self.words[0] && slot[2] == self.words[1] && slot[3] == self.words[2]
    }
}

#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch(p as *const i8, _MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `(left, right)` → `(rank, merged id)`: open addressing with linear probing over 16-byte
/// slots `[left | right << 21 | 1 << 63, rank | merged << 32]` (first word 0 = empty).  The
/// value sits in the slot beside its key, so a lookup is one cache line: the merge loops chain
/// one lookup on the next, and a second, dependent load of the value would double their wait on
/// memory.  A 128k-token vocab's merges take 4 MiB.  Ids must be below 2^21 (checked; larger
/// vocabularies are refused).
pub struct PairTable {
    slots: HugeBuf<[u64; 2]>,
    mask: usize,
}

pub const NO_MERGE: (u32, u32) = (u32::MAX, u32::MAX);
const ID_BITS: u32 = 21;
/// Marks a used slot (keys use the low 42 bits).
const USED: u64 = 1 << 63;
pub const MAX_ID: u32 = (1 << ID_BITS) - 1;

#[inline(always)]
fn pair_key(a: u32, b: u32) -> u64 {
    a as u64 | (b as u64) << ID_BITS
}

#[inline(always)]
fn pair_slot(key: u64, mask: usize) -> usize {
    (key.wrapping_mul(K) >> 24) as usize & mask
}

impl PairTable {
    /// From `(left, right, rank, merged id)` entries; a later entry for the same pair replaces
    /// an earlier one (as HF's `collect::<HashMap>()` does).
    pub fn new(entries: impl ExactSizeIterator<Item = (u32, u32, u32, u32)>) -> Result<Self, String> {
        let n = (entries.len() * 3 / 2).max(16).next_power_of_two();
        let mut t = Self {
            slots: HugeBuf::new(n),
            mask: n - 1,
        };
        for (a, b, rank, merged) in entries {
            if a > MAX_ID || b > MAX_ID {
                return Err(format!("more than {} tokens", MAX_ID + 1));
            }
            t.insert(a, b, rank, merged);
        }
        Ok(t)
    }

    fn insert(&mut self, a: u32, b: u32, rank: u32, merged: u32) {
        let key = pair_key(a, b) | USED;
        let slots = self.slots.as_mut();
        let mut i = pair_slot(key, self.mask);
        loop {
            let s = &mut slots[i];
            if s[0] == 0 || s[0] == key {
                *s = [key, rank as u64 | (merged as u64) << 32];
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline(always)]
    pub fn prefetch(&self, a: u32, b: u32) {
        prefetch(&self.slots.as_ref()[pair_slot(pair_key(a, b) | USED, self.mask)]);
    }

    /// `(rank, merged id)`, or [`NO_MERGE`].
    #[inline(always)]
    pub fn get(&self, a: u32, b: u32) -> (u32, u32) {
        if (a | b) > MAX_ID {
            return NO_MERGE; // such ids are in no merge (checked when built)
        }
        let key = pair_key(a, b) | USED;
        let slots = self.slots.as_ref();
        let mut i = pair_slot(key, self.mask);
        loop {
            let s = slots[i];
            if s[0] == key {
                return (s[1] as u32, (s[1] >> 32) as u32);
            }
            if s[0] == 0 {
                return NO_MERGE;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Whole tokens: byte string → id.  Keys up to [`KEY_MAX`] bytes inline (slot:
/// `[tag | len << 24 | id << 32, key0, key1, key2]`), longer ones in a hash map.
pub struct TokenTable {
    slots: HugeBuf<[u64; 4]>,
    mask: usize,
    long: FxHashMap<Box<[u8]>, u32>,
}

impl TokenTable {
    pub fn new(entries: impl ExactSizeIterator<Item = (Vec<u8>, u32)>) -> Self {
        let n = (entries.len() * 2).max(16).next_power_of_two();
        let mut t = Self {
            slots: HugeBuf::new(n),
            mask: n - 1,
            long: FxHashMap::default(),
        };
        for (w, id) in entries {
            match ShortKey::new(&w) {
                Some(k) => t.insert(&k, id),
                None => {
                    t.long.insert(w.into_boxed_slice(), id);
                }
            }
        }
        t
    }

    #[inline(always)]
    fn head(k: &ShortKey) -> u64 {
        k.tag() | (k.len as u64) << 24
    }

    fn insert(&mut self, k: &ShortKey, id: u32) {
        let head = Self::head(k);
        let slots = self.slots.as_mut();
        let mut i = k.hash as usize & self.mask;
        loop {
            let s = &mut slots[i];
            if s[0] == 0 || (s[0] & 0xFFFF_FFFF == head && k.same(s)) {
                *s = [head | (id as u64) << 32, k.words[0], k.words[1], k.words[2]];
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline(always)]
    pub fn prefetch(&self, k: &ShortKey) {
        prefetch(&self.slots.as_ref()[k.hash as usize & self.mask]);
    }

    #[inline(always)]
    pub fn get_short(&self, k: &ShortKey) -> Option<u32> {
        let head = Self::head(k);
        let slots = self.slots.as_ref();
        let mut i = k.hash as usize & self.mask;
        loop {
            let s = &slots[i];
            if s[0] & 0xFFFF_FFFF == head && k.same(s) {
                return Some((s[0] >> 32) as u32);
            }
            if s[0] == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn get(&self, w: &[u8]) -> Option<u32> {
        match ShortKey::new(w) {
            Some(k) => self.get_short(&k),
            None => self.long.get(w).copied(),
        }
    }
}

/// A zeroed array of `T` (all-zero bytes must be a valid `T`), mapped on first use, in 2 MiB
/// pages where the kernel allows (`MADV_HUGEPAGE`; untouched pages cost no memory).
pub struct HugeBuf<T: Copy> {
    #[cfg(target_os = "linux")]
    map: (*mut libc::c_void, usize),
    #[cfg(not(target_os = "linux"))]
    _vec: Vec<T>,
    ptr: *mut T,
    len: usize,
}

// The buffer is owned memory; `&self` only reads it.
unsafe impl<T: Copy + Send> Send for HugeBuf<T> {}
unsafe impl<T: Copy + Sync> Sync for HugeBuf<T> {}

const HUGE: usize = 2 << 20;

impl<T: Copy> HugeBuf<T> {
    #[cfg(target_os = "linux")]
    pub fn new(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        let size = bytes + HUGE;
        // SAFETY: an anonymous private mapping (zero-filled); checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(size, HUGE).unwrap());
        }
        let aligned = (base as usize).next_multiple_of(HUGE);
        if bytes >= HUGE {
            // SAFETY: [aligned, aligned + bytes) lies inside the mapping.
            unsafe { libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
        }
        Self {
            map: (base, size),
            ptr: aligned as *mut T,
            len,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(len: usize) -> Self {
        // SAFETY: all-zero bytes are a valid T (the type's contract above).
        let mut v: Vec<T> = (0..len).map(|_| unsafe { std::mem::zeroed() }).collect();
        let ptr = v.as_mut_ptr();
        Self { _vec: v, ptr, len }
    }

    #[inline(always)]
    pub fn as_ref(&self) -> &[T] {
        // SAFETY: ptr/len describe the zero-initialised buffer owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    #[inline(always)]
    pub fn as_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

#[cfg(target_os = "linux")]
impl<T: Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map.0, self.map.1) };
    }
}
