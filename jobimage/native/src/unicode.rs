//! Character classes used by the pre-tokenizer patterns: `\s`, `\p{L}`, `\p{N}`, plus a few
//! single characters the patterns name (`\r`, `\n`, U+0020, `'`).
//!
//! Membership is decided by oniguruma itself (the regex engine HF `tokenizers` uses, same
//! version), one code point at a time on first sight, and kept in a process-wide table.  The
//! `regex` crate behind `tiktoken` (regex-syntax 0.8) has the same three sets for every code
//! point; `tests/test_native_bpe.py` checks every code point against both libraries.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// `\s`
pub const WS: u8 = 1;
/// `\p{L}`
pub const L: u8 = 2;
/// `\p{N}`
pub const N: u8 = 4;
/// `\r` or `\n`
pub const NL: u8 = 8;
/// U+0020, the optional prefix of ` ?...` alternatives
pub const SP: u8 = 16;
/// `'`, the start of the contractions
pub const APOS: u8 = 32;
/// Set in a table entry once the code point has been classified.
const KNOWN: u8 = 0x80;

const N_CHARS: usize = 0x110000;

pub struct Classes {
    ascii: [u8; 128],
    table: Box<[AtomicU8]>,
    space: onig::Regex,
    letter: onig::Regex,
    number: onig::Regex,
}

/// The process-wide class table.
pub fn classes() -> &'static Classes {
    static C: OnceLock<Classes> = OnceLock::new();
    C.get_or_init(Classes::new)
}

impl Classes {
    fn new() -> Self {
        let mut c = Classes {
            ascii: [0; 128],
            table: (0..N_CHARS).map(|_| AtomicU8::new(0)).collect(),
            space: onig::Regex::new(r"\s").expect("class regex"),
            letter: onig::Regex::new(r"\p{L}").expect("class regex"),
            number: onig::Regex::new(r"\p{N}").expect("class regex"),
        };
        for b in 0..128u8 {
            let mut k = c.onig_class(b as char);
            k |= match b {
                b'\r' | b'\n' => NL,
                b' ' => SP,
                b'\'' => APOS,
                _ => 0,
            };
            c.ascii[b as usize] = k;
        }
        c
    }

    /// `is_match` is anchored and must cover the whole (one-character) string.
    fn onig_class(&self, ch: char) -> u8 {
        let mut buf = [0u8; 4];
        let s: &str = ch.encode_utf8(&mut buf);
        (self.space.is_match(s) as u8) * WS
            | (self.letter.is_match(s) as u8) * L
            | (self.number.is_match(s) as u8) * N
    }

    #[cold]
    fn classify(&self, cp: u32) -> u8 {
        let ch = char::from_u32(cp).expect("valid UTF-8 decodes to a char");
        let k = self.onig_class(ch);
        self.table[cp as usize].store(KNOWN | k, Ordering::Relaxed);
        k
    }

    /// Class of a code point above U+007F.
    #[inline]
    fn wide(&self, cp: u32) -> u8 {
        let v = self.table[cp as usize].load(Ordering::Relaxed);
        if v & KNOWN != 0 {
            v & !KNOWN
        } else {
            self.classify(cp)
        }
    }

    /// Class and UTF-8 length of the character starting at byte `i` of valid UTF-8 `s`.
    #[inline(always)]
    pub fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
        let b0 = s[i];
        if b0 < 0x80 {
            return (self.ascii[b0 as usize], 1);
        }
        let (cp, len) = if b0 < 0xE0 {
            (((b0 as u32 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
        } else if b0 < 0xF0 {
            (
                ((b0 as u32 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F),
                3,
            )
        } else {
            (
                ((b0 as u32 & 0x07) << 18)
                    | ((s[i + 1] as u32 & 0x3F) << 12)
                    | ((s[i + 2] as u32 & 0x3F) << 6)
                    | (s[i + 3] as u32 & 0x3F),
                4,
            )
        };
        (self.wide(cp), len)
    }
}
