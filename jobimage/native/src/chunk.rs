//! Safe cut points for known pre-tokenization patterns ("chunking").
//!
//! Running oniguruma once per pre-token dominates the encode time, so for the two pattern
//! families we know (GPT-2 and Llama-3/Qwen2, matched by exact pattern string) we cut each piece
//! into chunks at positions where the regex match sequence provably restarts, and cache
//! `chunk -> ids`.  A cache miss runs the *same* onig regex on the chunk as a standalone string,
//! so onig still decides every pre-token boundary.  This is exact because:
//!
//! * neither pattern has look-behind or anchors, so matches found from a match boundary `p`
//!   depend only on `text[p..]` (the suffix can be matched standalone);
//! * every character is matchable by some alternative, so matches tile the text without gaps
//!   and none is empty;
//! * at a cut point `p` a match ends at `p`, and no match attempt starting before `p` behaves
//!   differently when `text[p..]` is replaced by end-of-string (so the prefix can be matched
//!   standalone).
//!
//! Cut points (`T` = the piece, classes `\s`, `\p{L}`, `\p{N}` as onig defines them):
//!
//! * GPT-2 `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`:
//!   - `T[p]` is `\s` and `T[p-1]` is not: whitespace only starts a match (` ?`) or forms
//!     whitespace-only matches, and whitespace runs before `p` cannot reach it;
//!   - `T[p]` is not `\s`, `T[p-1]` is a lone `\s` character other than U+0020 (`T[p-2]` not
//!     `\s` or absent): it is a one-character match either way (`\s+` when followed by `\S`,
//!     `\s+(?!\S)` at end-of-string), and only U+0020 can prefix the next word.
//! * Llama-3 / Qwen2 `(?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//!   \s*[\r\n]+|\s+(?!\S)|\s+` (Qwen2: `\p{N}` instead of `\p{N}{1,3}`):
//!   - `T[p]` is `\s` and `T[p-1]` is `\p{L}`/`\p{N}` (punctuation is excluded because
//!     ` ?[^\s\p{L}\p{N}]+[\r\n]*` swallows following newlines);
//!   - `T[p]` is `\p{L}`/`\p{N}`, `T[p-1]` is `\r` or `\n` and `T[p-2]` is `\p{L}`/`\p{N}`.
//!
//! `tests/test_native_bpe.py` fuzzes chunked vs. unchunked (plain onig) pre-tokenization and both
//! against HF.  Character classes are looked up lazily per code point with onig itself.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRule {
    /// GPT-2 pattern (see the module docs for the cut points).
    Gpt2,
    /// Llama-3 / Qwen2 patterns.
    Llama3,
}

impl ChunkRule {
    pub fn for_pattern(p: &str) -> Option<Self> {
        if p == crate::config::GPT2_PATTERN {
            Some(Self::Gpt2)
        } else if p == LLAMA3_PATTERN || p == QWEN2_PATTERN {
            Some(Self::Llama3)
        } else {
            None
        }
    }
}

const N_CHARS: usize = 0x110000;

/// Lazily filled character-class table: for each code point, `0` = not yet classified, else
/// `0x80 | WS? | AN?`, where membership is decided by oniguruma itself (same Unicode tables).
pub struct Classes {
    table: Vec<AtomicU8>,
    space: onig::Regex,
    alnum: onig::Regex,
}

pub fn classes() -> &'static Classes {
    static C: OnceLock<Classes> = OnceLock::new();
    C.get_or_init(|| Classes {
        table: (0..N_CHARS).map(|_| AtomicU8::new(0)).collect(),
        space: onig::Regex::new(r"\s").expect("class regex"),
        alnum: onig::Regex::new(r"[\p{L}\p{N}]").expect("class regex"),
    })
}

const WS: u8 = 1;
const AN: u8 = 2;

impl Classes {
    #[inline]
    fn class(&self, c: char) -> u8 {
        let slot = &self.table[c as usize];
        let v = slot.load(Ordering::Relaxed);
        if v != 0 {
            return v & 3;
        }
        self.classify(c, slot)
    }

    #[cold]
    fn classify(&self, c: char, slot: &AtomicU8) -> u8 {
        let mut buf = [0u8; 4];
        let s: &str = c.encode_utf8(&mut buf);
        // `is_match` is an anchored match that must cover the whole (one-character) string.
        let k = ((self.space.is_match(s) as u8) * WS) | ((self.alnum.is_match(s) as u8) * AN);
        slot.store(0x80 | k, Ordering::Relaxed);
        k
    }

    /// Calls `f(chunk)` for consecutive chunks of `s` (their concatenation is `s`).
    ///
    /// With `T = s`, cut before index `p` when:
    /// * GPT-2: `T[p]` is `\s` and `T[p-1]` is not; or `T[p]` is not `\s`, `T[p-1]` is a `\s`
    ///   character other than U+0020 and `T[p-2]` (if any) is not `\s` (a lone whitespace
    ///   character is a token by itself on both sides of the cut).
    /// * Llama-3: `T[p]` is `\s` and `T[p-1]` is `\p{L}`/`\p{N}`; or `T[p]` is
    ///   `\p{L}`/`\p{N}`, `T[p-1]` is `\r` or `\n` and `T[p-2]` is `\p{L}`/`\p{N}`.
    #[inline]
    pub fn for_each_chunk<'a>(&self, rule: ChunkRule, s: &'a str, mut f: impl FnMut(&'a str)) {
        let mut start = 0usize;
        // Classes of T[p-1] and T[p-2]; 0xFF = no such character.
        let mut k1: u8 = 0xFF;
        let mut k2: u8 = 0xFF;
        let mut ch1: char = '\0';
        for (p, ch) in s.char_indices() {
            let k0 = self.class(ch);
            let cut = k1 != 0xFF
                && match rule {
                    ChunkRule::Gpt2 => {
                        (k0 & WS != 0 && k1 & WS == 0)
                            || (k0 & WS == 0
                                && k1 & WS != 0
                                && ch1 != ' '
                                && (k2 == 0xFF || k2 & WS == 0))
                    }
                    ChunkRule::Llama3 => {
                        (k0 & WS != 0 && k1 == AN)
                            || (k0 == AN && (ch1 == '\n' || ch1 == '\r') && k2 == AN)
                    }
                };
            if cut && p > start {
                f(&s[start..p]);
                start = p;
            }
            k2 = k1;
            k1 = k0;
            ch1 = ch;
        }
        if start < s.len() {
            f(&s[start..]);
        }
    }
}
