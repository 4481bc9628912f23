"""The native engine's hand-written pre-tokenizers cut text exactly where the regex does.

The reference is oniguruma itself (HF ``tokenizers``' ``Split(Regex(pattern), "isolated")``, the
same engine and version the native crate was checked against): every pattern the engine knows
(GPT-2, Llama 3, Qwen 2), on adversarial strings, dense random strings, text holding every
Unicode code point in letter, digit, space and punctuation contexts, and Hypothesis-generated
text.  tests/test_native_tiktoken.py checks the same pieces against ``tiktoken`` (its ``regex``
crate) through the ids.
"""
from __future__ import annotations

import functools
import random

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, pre_tokenizers  # noqa: E402

from tokfiles import native_or_skip  # noqa: E402

datasetprep_native = native_or_skip()

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
GPT2_TIKTOKEN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
PATTERNS = {"gpt2": GPT2, "gpt2-tiktoken": GPT2_TIKTOKEN, "llama3": LLAMA3, "qwen2": QWEN2}

# Every \s character onig knows, and characters near the patterns' edges.
SPACES = "\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
         "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\u180e\u200b\ufeff"
ALPHABET = (list(SPACES) + list(" \n\r\t") * 6 + list("aZsStTdDlLmMrReEvVkK'") * 3 + list("0123456789٣½Ⅻ²")
            + list(".,!?-:;\"()[]<>|/\\_$") + ["é", "ß", "ſ", "\u212a", "ﬆ", "İ", "ǅ", "中", "ん", "ж", "😀", "👍🏽",
                                                  "\u0301", "\u200d", "\x00", "\ufffd", "\U0010ffff"])

ADVERSARIAL = [
    "", " ", "  ", "\n", "\r\n", "a", "'", "''", "'s", " 's", "x's", "'S", "'ſ", "'ﬆ", "'K", "'\u212a",
    "it's isn't we're they've I'm you'll he'd 'S 'T 'Re IT'S 'LL 'lL 'Ll 'VE 'vE 'M 'D 'ss 'sss",
    " " * 1000, "\t" * 300 + "x", "x" + " " * 257 + "y", "a" * 5000, "1" * 1001, "." * 999 + "a",
    "a \n\n\n b  \r\n  c\r\n\r\nd\t\t e \u3000\u3000 f\u00a0g\u2028h\u2029i\u0085j\x0bk\x0cl",
    "trailing spaces   ", "   leading spaces", " \n", "\n ", " \n ", "x \n", "x\n ", "x  \n\n  y",
    "Ελληνικά Русский 中文字符 日本語のテキスト 한국어 عربي עברית हिन्दी ไทย",
    "e\u0301 a\u0300\u0301\u0302 n\u0303 Z\u0335\u0321\u0358a\u0336l\u0338g\u0334o",
    "0 12 123 1234 12345 1,234.56 3.14159 ١٢٣٤ ½ Ⅻ ²³ 10ᵗʰ 1a2b3c a1b2c3",
    "👍🏽👨‍👩‍👧‍👦🇩🇪🏳️‍🌈 emoji😀inside😀words 😀 😀😀 ",
    "line1\r\nline2\rline3\n\n\r\r\n", "foo.\n\nbar", "(a) [b] {c} \"d\" 'e'", "  (x", " ((x", "!!!\n\n!!!",
    "C:\\path\\to\\file.txt https://example.com/a?b=c&d=e#f",
    "$$$ %%% ^^^ &&& *** ((( ))) ___ +++ ~~~ ``` ''' \"\"\"",
    "\U0010FFFF\U000E0001 \ud7ff\ue000", "tab\tsep\tvalues\n1\t2\t3\n",
]


def onig_pieces(pattern: str, text: str) -> list[str]:
    return [p for p, _ in pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(text)]


def check(pattern: str, texts) -> None:
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    for t in texts:
        want = [p for p, _ in split.pre_tokenize_str(t)]
        got = datasetprep_native.split_pieces(pattern, t)
        assert got == want, (t[:200], next((i, g, w) for i, (g, w) in enumerate(zip(got + [None], want + [None]))
                                            if g != w))


def all_code_points() -> list[str]:
    return [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


@functools.lru_cache(maxsize=None)
def code_point_probes(contexts=("x{}x", "1{}1", " {} ", "'{}{}")) -> list[str]:
    """Strings holding every code point in contexts that tell its class (letter, number, space,
    other, contraction letter), 2048 code points a string."""
    cps = all_code_points()
    out = []
    for ctx in contexts:
        for i in range(0, len(cps), 2048):
            out.append("\t".join(ctx.format(c, c) for c in cps[i:i + 2048]))
    return tuple(out)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_adversarial(name):
    check(PATTERNS[name], ADVERSARIAL)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_dense_random(name):
    rng = random.Random(hash(name) & 0xFFFF)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(20000)]
    check(PATTERNS[name], texts)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2"])
def test_every_code_point(name):
    """Against oniguruma compiled inside the crate the way HF compiles it (same onig version as
    tokenizers 0.23), compared there: 4.4 M pieces per pattern are too many Python objects."""
    for text in code_point_probes():
        assert datasetprep_native.split_difference(PATTERNS[name], text) is None


def test_every_code_point_through_tokenizers_sample():
    """Every 7th code point through HF tokenizers itself, for the crate-side comparison above."""
    check(LLAMA3, code_point_probes()[::7])
    check(GPT2, code_point_probes()[3::7])


@pytest.mark.parametrize("name", sorted(PATTERNS))
@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_hypothesis_any_text(name, text):
    check(PATTERNS[name], [text])


@pytest.mark.parametrize("name", sorted(PATTERNS))
@settings(max_examples=400, deadline=None)
@given(text=st.lists(st.sampled_from(ALPHABET), max_size=80).map("".join))
def test_hypothesis_dense_text(name, text):
    check(PATTERNS[name], [text])


def test_split_difference_finds_a_difference():
    """The crate-side comparison is not vacuous: a known difference (Qwen 2 vs Llama 3 digits)."""
    assert datasetprep_native.split_difference(LLAMA3, "1234") is None
    assert datasetprep_native.split_pieces(QWEN2, "1234") == ["1", "2", "3", "4"]


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="^unsupported"):
        datasetprep_native.split_pieces(r"\w+|\s+", "a b")
    with pytest.raises(ValueError, match="^unsupported"):
        datasetprep_native.split_difference(r"\w+|\s+", "a b")
