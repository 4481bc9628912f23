//! Hand-written pre-tokenizers for the common split patterns, equal to the regex.
//!
//! The patterns are recognised by their exact text; any other pattern runs the regex.  Each
//! pattern is an alternation tried left to right at the current position (leftmost-first, with
//! backtracking), every character is matched by some alternative, and no alternative looks
//! behind, so the matches tile the text and each one depends only on the text from its start.
//! [`Splitter::piece_end`] computes, for a start position, where the regex's match ends:
//!
//! * GPT-2 `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!   (tiktoken's r50k spelling `'(?:[sdmt]|ll|ve|re)|...` is the same language: the
//!   contractions start with different letters);
//! * Llama 3 `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//!   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, and Qwen 2 (`\p{N}` instead of
//!   `\p{N}{1,3}`).
//!
//! The whitespace alternatives, derived once here:
//! * `\s+(?!\S)` at a whitespace run `[i, j)`: the greedy run, then backtracking one character
//!   at a time until the next character is not a non-space.  At the end of the text that is the
//!   whole run; otherwise the run minus its last character, which needs at least two characters;
//!   a single whitespace character before a non-space is left to `\s+` (the whole run).
//! * `\s*[\r\n]+`: `\s*` gives back characters from the end of the run until a `\r`/`\n`
//!   follows it: the match ends right after the last `\r`/`\n` of the run (the character after it
//!   is no `\r`/`\n`, so `[\r\n]+` stops there); no match when the run has none.
//!
//! `tests/test_native_bpe.py` compares the pieces with oniguruma's on adversarial, random and
//! every-code-point text, and the ids with `tokenizers` and `tiktoken`.

use crate::unicode::{Classes, APOS, L, N, NL, SP, WS};

pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// tiktoken's `r50k_base` / `gpt2` spelling of the same pattern.
pub const GPT2_PATTERN_TIKTOKEN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splitter {
    Gpt2,
    /// Llama 3 (`max_digits` 3) and Qwen 2 (`max_digits` 1).
    Llama3 { max_digits: u32 },
}

/// Neither whitespace, letter nor number: `[^\s\p{L}\p{N}]`.
const OTHER_MASK: u8 = WS | L | N;

impl Splitter {
    pub fn recognise(pattern: &str) -> Option<Self> {
        match pattern {
            GPT2_PATTERN | GPT2_PATTERN_TIKTOKEN => Some(Self::Gpt2),
            LLAMA3_PATTERN => Some(Self::Llama3 { max_digits: 3 }),
            QWEN2_PATTERN => Some(Self::Llama3 { max_digits: 1 }),
            _ => None,
        }
    }

    /// Calls `f` with each piece of `s`, in order (their concatenation is `s`).
    #[inline]
    pub fn split<'a>(&self, cls: &Classes, s: &'a str, mut f: impl FnMut(&'a str)) {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let e = self.piece_end(cls, b, i);
            debug_assert!(e > i && s.is_char_boundary(e));
            f(&s[i..e]);
            i = e;
        }
    }

    /// End of the regex match that starts at `i` (`i < b.len()`).
    #[inline]
    pub fn piece_end(&self, cls: &Classes, b: &[u8], i: usize) -> usize {
        match *self {
            Self::Gpt2 => gpt2(cls, b, i),
            Self::Llama3 { max_digits } => llama3(cls, b, i, max_digits),
        }
    }
}

/// End of the run of characters whose class satisfies `keep`, from `i`.
#[inline(always)]
fn run(cls: &Classes, b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < b.len() {
        let (k, l) = cls.at(b, i);
        if !keep(k) {
            break;
        }
        i += l;
    }
    i
}

/// The whitespace alternatives at a whitespace character `i`; `newlines`: the pattern has
/// `\s*[\r\n]+` before `\s+(?!\S)`.
#[inline]
fn whitespace(cls: &Classes, b: &[u8], i: usize, newlines: bool) -> usize {
    let mut e = i;
    let mut last = i; // start of the run's last character
    let mut chars = 0usize;
    let mut last_nl = usize::MAX;
    while e < b.len() {
        let (k, l) = cls.at(b, e);
        if k & WS == 0 {
            break;
        }
        if k & NL != 0 {
            last_nl = e;
        }
        last = e;
        e += l;
        chars += 1;
    }
    if newlines && last_nl != usize::MAX {
        return last_nl + 1; // `\s*[\r\n]+`
    }
    if e == b.len() || chars < 2 {
        e // `\s+(?!\S)` at the end, or `\s+` for a single character
    } else {
        last // `\s+(?!\S)`
    }
}

/// Length of a contraction at `i` (`b[i]` is `'`), 0 if none.  `fold`: case-insensitive
/// (`(?i:...)`), where `s` also matches U+017F LATIN SMALL LETTER LONG S (simple case folding,
/// as both oniguruma and the `regex` crate apply it).
#[inline]
fn contraction(b: &[u8], i: usize, fold: bool) -> usize {
    let c1 = b.get(i + 1).copied().unwrap_or(0);
    let c2 = b.get(i + 2).copied().unwrap_or(0);
    let low = |c: u8| if fold { c.to_ascii_lowercase() } else { c };
    match low(c1) {
        b's' | b't' | b'm' | b'd' => 2,
        b'r' | b'v' if low(c2) == b'e' => 3,
        b'l' if low(c2) == b'l' => 3,
        0xC5 if fold && c2 == 0xBF => 3, // U+017F in UTF-8
        _ => 0,
    }
}

#[inline]
fn gpt2(cls: &Classes, b: &[u8], i: usize) -> usize {
    let (k0, l0) = cls.at(b, i);
    if k0 & APOS != 0 {
        let c = contraction(b, i, false);
        if c != 0 {
            return i + c;
        }
    }
    // ` ?X+`: an optional U+0020 before a letter, number or other character
    let (mut k, mut j) = (k0, i + l0);
    if k0 & SP != 0 && j < b.len() {
        let (k1, l1) = cls.at(b, j);
        if k1 & WS == 0 {
            k = k1;
            j += l1;
        }
    }
    if k & L != 0 {
        run(cls, b, j, |k| k & L != 0)
    } else if k & N != 0 {
        run(cls, b, j, |k| k & N != 0)
    } else if k & WS == 0 {
        run(cls, b, j, |k| k & OTHER_MASK == 0)
    } else {
        whitespace(cls, b, i, false)
    }
}

#[inline]
fn llama3(cls: &Classes, b: &[u8], i: usize, max_digits: u32) -> usize {
    let (k0, l0) = cls.at(b, i);
    let j = i + l0;
    if k0 & APOS != 0 {
        let c = contraction(b, i, true);
        if c != 0 {
            return i + c;
        }
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if k0 & L != 0 {
        return run(cls, b, j, |k| k & L != 0);
    }
    let next = if j < b.len() { Some(cls.at(b, j)) } else { None };
    if k0 & (NL | N) == 0 {
        if let Some((k1, l1)) = next {
            if k1 & L != 0 {
                return run(cls, b, j + l1, |k| k & L != 0);
            }
        }
    }
    // `\p{N}{1,3}`
    if k0 & N != 0 {
        let mut e = j;
        let mut n = 1;
        while n < max_digits && e < b.len() {
            let (k, l) = cls.at(b, e);
            if k & N == 0 {
                break;
            }
            e += l;
            n += 1;
        }
        return e;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let mut start = None;
    if k0 & OTHER_MASK == 0 {
        start = Some(j);
    } else if k0 & SP != 0 {
        if let Some((k1, l1)) = next {
            if k1 & OTHER_MASK == 0 {
                start = Some(j + l1);
            }
        }
    }
    if let Some(s) = start {
        let mut e = run(cls, b, s, |k| k & OTHER_MASK == 0);
        while e < b.len() && (b[e] == b'\r' || b[e] == b'\n') {
            e += 1;
        }
        return e;
    }
    whitespace(cls, b, i, true)
}
