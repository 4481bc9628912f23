"""Exactness tests for the native byte-level BPE encoder (jobimage/native, module datasetprep_native).

Every id sequence is compared with HF `tokenizers` (`Tokenizer.encode(text).ids`), the reference
Megatron's HuggingFaceTokenizer uses.  Skipped only when the extension is not importable and
DATASETPREP_REQUIRE_NATIVE is unset; with it set, a failing import fails the tests.
"""
from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from tokfiles import native_or_skip  # noqa: E402

datasetprep_native = native_or_skip()

ByteLevelBPE = datasetprep_native.ByteLevelBPE

_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED = Path(os.environ.get("DATASETPREP_SHARED") or _DEFAULT_SHARED)
GOLDEN = SHARED / "golden"
GOLDEN_TOK = GOLDEN / "tokenizers" / "b_hf_bpe8k" / "tokenizer.json"
CORPUS_A = GOLDEN / "corpus_a.jsonl"

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

needs_golden = pytest.mark.skipif(not CORPUS_A.exists() or not GOLDEN_TOK.exists(), reason=f"no golden data under {SHARED}")


# ----------------------------------------------------------------------------- helpers
def ids(enc, text: str) -> list[int]:
    return np.frombuffer(enc.encode(text), "<u4").tolist()


def many(enc, texts: list[str]) -> list[list[int]]:
    buf, lens = enc.encode_many(texts)
    flat = np.frombuffer(buf, "<u4")
    lens = np.frombuffer(lens, "<u8")
    assert len(lens) == len(texts) and int(lens.sum()) == len(flat)
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return [flat[offs[i]:offs[i + 1]].tolist() for i in range(len(texts))]


def reference(hf: Tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """HF ids; encode_batch yields exactly `encode(text).ids` per text (it only parallelises)."""
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=add_special_tokens)]


def assert_same(hf, enc, texts: list[str], *, add_special_tokens: bool = True, label: str = "") -> None:
    """`hf` is a Tokenizer or the precomputed reference ids for `texts`."""
    want_all = reference(hf, texts, add_special_tokens) if isinstance(hf, Tokenizer) else hf
    got = many(enc, texts)
    bad = [(i, t[:80], g[:20], w[:20]) for i, (t, g, w) in enumerate(zip(texts, got, want_all)) if g != w]
    assert not bad, f"{label}: {len(bad)}/{len(texts)} mismatches, first: {bad[:3]}"
    # The per-document entry point gives the same ids.
    for t, g in zip(texts[:50], got[:50]):
        assert ids(enc, t) == g


def native_pair(tok: Tokenizer, **kw):
    js = tok.to_str()
    return ByteLevelBPE.from_json(js, **kw), ByteLevelBPE.from_json(js, fast_split=False, **kw)


def corpus_texts() -> list[str]:
    with open(CORPUS_A, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


ADVERSARIAL = [
    "",
    " ",
    "  ",
    "\n",
    "a",
    "Hello world",
    " Hello  world ",
    "it's isn't we're they've I'm you'll he'd 'S 'T 'Re IT'S",
    "''s ' s 's's",
    " " * 1000,
    "\t" * 300 + "x",
    "x" + " " * 257 + "y",
    "a \n\n\n b  \r\n  c\r\n\r\nd\t\t e \u3000\u3000 f\u00a0g\u2028h\u2029i\u0085j\x0bk\x0cl",
    "trailing spaces   ",
    "   leading spaces",
    "Ελληνικά Русский 中文字符 日本語のテキスト 한국어 عربي עברית हिन्दी ไทย",
    "e\u0301 a\u0300\u0301\u0302 n\u0303 Z\u0335\u0321\u0358a\u0336l\u0338g\u0334o",
    "0 12 123 1234 12345 1,234.56 3.14159 ١٢٣٤ ½ Ⅻ ²³ 10ᵗʰ",
    "😀",
    "👍🏽👨‍👩‍👧‍👦🇩🇪🏳️‍🌈",
    "emoji😀inside😀words 😀 😀😀 ",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "text<|endoftext|><|endoftext|> more <|endoftext|>",
    "<|endoftext|<|endoftext|>|>",
    "<|pad|><|endoftext|><|pad|>x",
    "<|endoftext",
    "\x00\x01\x02 nul\x00byte",
    "\r\n",
    "line1\r\nline2\rline3\n",
    "=" * 5000,
    "a" * 3000,
    "The quick brown fox jumps over the lazy dog. " * 40,
    "ſ 'ſ ſt K \u212a 'K", # long s / Kelvin sign: case-folding corner cases for (?i)
    "x\u200by\u200dz\ufeffw",
    "tab\tsep\tvalues\n1\t2\t3\n",
    "C:\\path\\to\\file.txt https://example.com/a?b=c&d=e#f",
    "$$$ %%% ^^^ &&& *** ((( ))) ___ +++ ~~~ ``` ''' \"\"\"",
    "\U0010FFFF\U000E0001 \ud7ff\ue000",
]


def random_texts(n: int, seed: int) -> list[str]:
    alphabet = (
        list(" \n\r\t\x0b\x0c\x85\xa0\u3000\u2028\u2029\u200b")
        + list("aZsStTdDlLmMrReEvV'") * 2
        + list("0123456789٣½Ⅻ")
        + list(".,!?-:;\"()[]<>|/\\_")
        + ["é", "ß", "ſ", "\u212a", "中", "ん", "ж", "😀", "👍🏽", "\u0301", "\x00", "<|endoftext|>", "<|pad|>"]
    )
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 30, 80])
        out.append("".join(rng.choice(alphabet) for _ in range(k)))
    return out


# ----------------------------------------------------------------------------- golden tokenizer
@needs_golden
def test_golden_corpus_exact():
    hf = Tokenizer.from_file(str(GOLDEN_TOK))
    texts = corpus_texts()
    assert len(texts) == 526
    want = reference(hf, texts)
    # The per-document HF call (what Megatron does) on a sample, to pin encode == encode_batch.
    for t, w in zip(texts[::25], want[::25]):
        assert hf.encode(t).ids == w
    enc = ByteLevelBPE.from_file(str(GOLDEN_TOK))
    assert_same(want, enc, texts, label="golden")
    # Cached second pass and the uncached onig path agree too.
    assert_same(want, enc, texts, label="golden warm")
    plain = ByteLevelBPE.from_file(str(GOLDEN_TOK), fast_split=False, cache_size=0)
    assert_same(want, plain, texts, label="golden no cache, onig")


@needs_golden
def test_golden_adversarial_and_random():
    hf = Tokenizer.from_file(str(GOLDEN_TOK))
    enc = ByteLevelBPE.from_file(str(GOLDEN_TOK))
    assert_same(hf, enc, ADVERSARIAL, label="adversarial")
    assert_same(hf, enc, random_texts(3000, 1), label="random")
    # concatenations of corpus pieces around the added token
    texts = corpus_texts()
    mixed = [a[:200] + "<|endoftext|>" + b[-200:] for a, b in zip(texts[::7], texts[3::7])]
    assert_same(hf, enc, mixed, label="mixed")


@needs_golden
def test_golden_matches_megatron_bin():
    """Concatenated ids == the .bin Megatron's preprocess_data.py wrote (HuggingFaceTokenizer, no EOD)."""
    meta = json.loads((GOLDEN / "a_hfbpe_noeod_text_document.json").read_text())
    enc = ByteLevelBPE.from_file(str(GOLDEN_TOK))
    buf, lens = enc.encode_many(corpus_texts())
    got = np.frombuffer(buf, "<u4")
    assert len(got) == meta["token_count"] == int(np.frombuffer(lens, "<u8").sum())
    want = np.fromfile(GOLDEN / "a_hfbpe_noeod_text_document.bin", dtype="<u2")
    assert np.array_equal(got, want.astype(np.uint32))


@needs_golden
def test_threads_share_one_encoder():
    hf = Tokenizer.from_file(str(GOLDEN_TOK))
    enc = ByteLevelBPE.from_file(str(GOLDEN_TOK), cache_size=64)  # tiny cache: exercises clearing
    texts = [t for t in corpus_texts() if len(t) < 100_000]
    want = reference(hf, texts)
    with ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(lambda k: many(enc, texts[k::3]), [0, 1, 2, 0, 1, 2]))
    for k, got in zip([0, 1, 2, 0, 1, 2], outs):
        assert got == want[k::3]
    enc.clear_cache()
    assert many(enc, texts[:20]) == want[:20]


def test_encode_many_accepts_iterables_and_rejects_non_str():
    tok = gpt2_style(train_texts()[:50], 400)
    enc = ByteLevelBPE.from_json(tok.to_str())
    assert many(enc, ["a b", "c"]) == [ids(enc, "a b"), ids(enc, "c")]
    buf, lens = enc.encode_many(x for x in ["a b", "c"])
    assert np.frombuffer(lens, "<u8").tolist() == [len(ids(enc, "a b")), len(ids(enc, "c"))]
    buf, lens = enc.encode_many([])
    assert buf == b"" and lens == b""
    with pytest.raises(TypeError):
        enc.encode_many(["a", 3])


# ----------------------------------------------------------------------------- trained tokenizers
_TRAIN: list[str] | None = None


def train_texts() -> list[str]:
    global _TRAIN
    if _TRAIN is None:
        if CORPUS_A.exists():
            texts = corpus_texts()
            # ~600 KB of varied text (skip the 1 MB document to keep training fast)
            _TRAIN = [t for t in texts if len(t) < 100_000][:400]
        else:
            rng = random.Random(0)
            words = ["the", "of", "and", "to", "in", "is", "it's", "Hello", "world", "über", "中文", "123", "naïve"]
            _TRAIN = [" ".join(rng.choice(words) for _ in range(200)) + "\n" for _ in range(300)]
    return _TRAIN


def eval_texts() -> list[str]:
    base = corpus_texts() if CORPUS_A.exists() else train_texts()
    return base + ADVERSARIAL + random_texts(1500, 7)


def gpt2_style(texts, vocab_size=2000, *, add_prefix_space=False, specials=("<|endoftext|>",), **bpe_kw) -> Tokenizer:
    tok = Tokenizer(models.BPE(**bpe_kw))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def llama3_style(texts, vocab_size=3000, pattern=LLAMA3_PATTERN) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)],
        ),
    ])
    return tok


def test_trained_gpt2_style():
    tok = gpt2_style(train_texts())
    hf = Tokenizer.from_str(tok.to_str())
    texts = eval_texts()
    want = reference(hf, texts)
    for enc in native_pair(hf):
        assert_same(want, enc, texts, label="gpt2-style")


def test_trained_gpt2_style_add_prefix_space_and_added_tokens():
    tok = gpt2_style(train_texts(), 1500, add_prefix_space=True)
    # non-special added tokens: normalized=True (matched in the second pass) and =False
    tok.add_tokens([tokenizers.AddedToken("hello world", normalized=True), tokenizers.AddedToken("<tag>", normalized=False)])
    tok.add_special_tokens(["<|endoftext|>", "[SEP]"])
    hf = Tokenizer.from_str(tok.to_str())
    extra = ["say hello world<tag>[SEP]x", "hello world", "<tag>hello worldhello world<|endoftext|>", "[SEP] [SEP]hello  world"]
    texts = eval_texts() + extra
    want = reference(hf, texts)
    for enc in native_pair(hf):
        assert_same(want, enc, texts, label="gpt2 prefix-space")


#: Added-token sets for the leftmost-longest search: the engine looks for the patterns' first
#: bytes (memchr for 1-3 distinct bytes, a byte table beyond) and runs the automaton only there.
ADDED_SETS = {
    "one first byte (Llama 3's specials)": ["<|a|>", "<|ab|>", "<|a", "<|abc", "<", "<<|a|>>"],
    "two first bytes": ["<|x|>", "[SEP]", "[S", "<|x"],
    "three first bytes, multi-byte": ["中文", "ж!", "<|eot|>", "中", "ж", "<"],
    "many first bytes, overlapping": ["xyz", "yzw", "abc", "abcd", "bcd", "c", "qq", "q q", "é", "😀x"],
}


def added_texts(patterns: list[str], n: int, seed: int) -> list[str]:
    """Texts made of the patterns, their prefixes and suffixes, and filler: every way a match can
    start, overlap another, be cut short or follow another at once."""
    parts = [p for s in patterns for p in (s, s[:-1], s[1:], s[: len(s) // 2])] + [" ", "a", "z", "\n", "|", "é", "ab"]
    rng = random.Random(seed)
    return ["".join(rng.choice(parts) for _ in range(rng.choice([1, 2, 5, 20, 200]))) for _ in range(n)]


@pytest.mark.parametrize("label", list(ADDED_SETS))
def test_added_tokens_found_leftmost_longest(label):
    patterns = ADDED_SETS[label]
    tok = gpt2_style(train_texts()[:80], 600, specials=())
    half = len(patterns) // 2  # some matched on the raw text, some after normalization
    tok.add_special_tokens(patterns[:half])
    tok.add_tokens([tokenizers.AddedToken(p, normalized=True) for p in patterns[half:]])
    hf = Tokenizer.from_str(tok.to_str())
    texts = added_texts(patterns, 3000, 11) + [" ".join(patterns), "".join(patterns), "".join(reversed(patterns))]
    want = reference(hf, texts)
    assert sum(len(w) for w in want) > len(texts)  # the texts do hold matches
    for enc in native_pair(hf):
        assert_same(want, enc, texts, label=label)


def test_trained_llama3_style_with_bos():
    tok = llama3_style(train_texts())
    hf = Tokenizer.from_str(tok.to_str())
    bos = hf.token_to_id("<|begin_of_text|>")
    texts = eval_texts()
    want = reference(hf, texts)
    for enc in native_pair(hf):
        assert_same(want, enc, texts, label="llama3-style")
        assert ids(enc, "hi")[0] == bos
    no_bos = ByteLevelBPE.from_json(hf.to_str(), add_special_tokens=False)
    assert no_bos.add_special_tokens is False
    assert_same(hf, no_bos, texts[:200] + ADVERSARIAL, add_special_tokens=False, label="llama3 no specials")
    assert ids(no_bos, "") == [] and ids(ByteLevelBPE.from_json(hf.to_str()), "") == [bos]


def test_trained_qwen2_pattern_and_ignore_merges_false():
    tok = llama3_style(train_texts(), 2500, pattern=QWEN2_PATTERN)
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = False
    hf = Tokenizer.from_str(json.dumps(d))
    texts = eval_texts()
    want = reference(hf, texts)
    for enc in native_pair(hf):
        assert_same(want, enc, texts, label="qwen2-style")


def test_ignore_merges_changes_ids_and_is_reproduced():
    """ignore_merges=True takes a whole in-vocab word even when merges would split it differently."""
    alpha = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alpha))}
    for tok_ in ["ab", "bc", "abc"]:
        vocab[tok_] = len(vocab)
    merges = [("b", "c"), ("a", "b")]  # "abc" is in vocab but unreachable through merges
    for im in (False, True):
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=im)
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf = Tokenizer.from_str(tok.to_str())
        enc = ByteLevelBPE.from_json(hf.to_str())
        assert_same(hf, enc, ["abc", "abc abc", "ab bc abc", "xabc"], label=f"ignore_merges={im}")
        assert (ids(enc, "abc") == [vocab["abc"]]) is im


def unseen_word_texts(n: int, seed: int) -> list[str]:
    """Texts of words mostly absent from a small vocab, 1 to 70 bytes long (either side of the
    engine's bounds: 8 ids in a cache slot, 24-byte inline keys, 32 symbols merged by scanning),
    many different ones per text, some repeated at once, with specials and numbers between: the
    engine merges the words its cache lacks together, a step of each in turn."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéßжö中"
    out = []
    for _ in range(n):
        words = []
        for _ in range(rng.choice([1, 3, 40, 300])):
            w = "".join(rng.choice(letters) for _ in range(rng.choice([1, 2, 5, 9, 17, 25, 33, 70])))
            words.append(w)
            if rng.random() < 0.1:
                words.append(w)  # the same unseen word twice in one batch
            if rng.random() < 0.05:
                words.append(rng.choice(["<|begin_of_text|>", "<|endoftext|>", "12345", "\n"]))
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize("style", ["llama3", "gpt2"])
def test_unseen_words_merged_together_exact(style):
    tok = llama3_style(train_texts(), 1200) if style == "llama3" else gpt2_style(train_texts(), 1200)
    hf = Tokenizer.from_str(tok.to_str())
    texts = unseen_word_texts(400, 23)
    want = reference(hf, texts)
    for cache_size in (1 << 16, 64, 0):  # the default, one that keeps evicting, none
        enc = ByteLevelBPE.from_json(hf.to_str(), cache_size=cache_size)
        assert_same(want, enc, texts, label=f"{style} cache_size={cache_size}")
        assert_same(want, enc, texts, label=f"{style} cache_size={cache_size}, cache filled")


def test_pair_vs_token_rank_semantics():
    """HF merges by pair rank (not by rank of the merged token as tiktoken does)."""
    alpha = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alpha))}
    for t in ["bc", "ab", "abc", "cd", "bcd"]:
        vocab[t] = len(vocab)
    merges = [("c", "d"), ("a", "b"), ("b", "c"), ("ab", "c"), ("b", "cd")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf = Tokenizer.from_str(tok.to_str())
    enc = ByteLevelBPE.from_json(hf.to_str())
    words = ["abcd", "abc", "bcd", "abcdabcd", "dcba", "aabbccdd"]
    assert_same(hf, enc, words, label="pair ranks")


def test_missing_bytes_dropped_unk_and_byte_fallback():
    """Vocab without the full byte alphabet: HF drops unknown bytes, or emits unk / <0xXX> tokens."""
    texts = train_texts()[:120]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"], show_progress=False)  # no initial alphabet
    tok.train_from_iterator([t.encode("ascii", "ignore").decode() for t in texts], trainer)
    base = json.loads(tok.to_str())
    probe = ADVERSARIAL + random_texts(500, 3) + ["日本語 テキスト ok", "ok 😀😀 ok", "zzz\x00\x01\x02"]
    variants = {"drop": base}
    for fuse in (False, True):
        d = json.loads(json.dumps(base))
        d["model"]["unk_token"] = "<unk>"
        d["model"]["fuse_unk"] = fuse
        variants[f"unk fuse={fuse}"] = d
    d = json.loads(json.dumps(base))
    d["model"]["byte_fallback"] = True
    d["model"]["unk_token"] = "<unk>"
    for b in range(256):
        if b % 5:  # leave some <0xXX> missing so that fallback sometimes fails into unk
            d["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(d["model"]["vocab"]))
    variants["byte_fallback"] = d
    outputs = {}
    for name, d in variants.items():
        hf = Tokenizer.from_str(json.dumps(d))
        want = reference(hf, probe)
        for enc in (ByteLevelBPE.from_json(json.dumps(d)), ByteLevelBPE.from_json(json.dumps(d), fast_split=False)):
            assert_same(want, enc, probe, label=name)
        outputs[name] = want
    # the variants really differ (bytes dropped vs unk vs fallback)
    assert outputs["drop"] != outputs["unk fuse=False"] != outputs["unk fuse=True"] != outputs["byte_fallback"]


def test_nfc_normalizer_and_split_string_pattern():
    tok = gpt2_style(train_texts(), 800)
    tok.normalizer = normalizers.NFC()
    tok.add_tokens([tokenizers.AddedToken("caf\u0065\u0301", normalized=True)])
    hf = Tokenizer.from_str(tok.to_str())
    probe = ADVERSARIAL + ["caf\u00e9 cafe\u0301 e\u0301\u0301 \u1e9b\u0323 \uac00\u11a8", "Å Å Å ﬁ"] + random_texts(300, 5)
    for enc in native_pair(hf):
        assert_same(hf, enc, probe, label="nfc")
    # Split on a literal string (pattern {"String": ...}) before ByteLevel without regex
    tok2 = gpt2_style(train_texts(), 800)
    tok2.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf2 = Tokenizer.from_str(tok2.to_str())
    assert '"String"' in hf2.to_str()
    for enc in native_pair(hf2):
        assert_same(hf2, enc, probe, label="split string")
    # Split(regex) followed by ByteLevel *with* its own regex and a prefix space per piece
    tok3 = gpt2_style(train_texts(), 800)
    tok3.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    hf3 = Tokenizer.from_str(tok3.to_str())
    for enc in native_pair(hf3):
        assert_same(hf3, enc, probe, label="split + bytelevel regex")


def test_fast_split_fuzz_against_plain_onig():
    """Hand-written pre-tokenization == onig's, through the ids, on strings dense in corner cases."""
    rng = random.Random(11)
    spaces = " \n\r\t\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
    alpha = list(" \n\r\t") * 4 + list(spaces) + list("ab'sS1٣.:!😀\u0301中") + ["ſ", "\u212a", "\r\n", "'ll"]
    probe = ["".join(rng.choice(alpha) for _ in range(rng.randint(1, 24))) for _ in range(4000)]
    # random code points from the whole Unicode range (classes come from onig lazily per char)
    def cp() -> str:
        while True:
            c = rng.choice([rng.randint(0, 0x2FFF), rng.randint(0, 0xFFFF), rng.randint(0, 0x10FFFF)])
            if not 0xD800 <= c <= 0xDFFF:
                return chr(c)
    probe += ["".join(rng.choice([cp(), " ", "a", "\n"]) for _ in range(rng.randint(1, 16))) for _ in range(3000)]
    for tok in (gpt2_style(train_texts()[:100], 600), llama3_style(train_texts()[:100], 600),
                llama3_style(train_texts()[:100], 600, pattern=QWEN2_PATTERN)):
        hf = Tokenizer.from_str(tok.to_str())
        fast, plain = native_pair(hf)
        assert many(fast, probe) == many(plain, probe)
        assert_same(hf, fast, probe, label="fast split fuzz")


# ----------------------------------------------------------------------------- unsupported configs
def _base_json() -> dict:
    return json.loads(gpt2_style(train_texts()[:50], 400).to_str())


def _mutations():
    def m(path, value):
        def f(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
            return d
        return f

    def add_tok(**kw):
        def f(d):
            t = {"id": 9999, "content": "<x>", "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
            t.update(kw)
            d["added_tokens"].append(t)
            return d
        return f

    return {
        "wordpiece": m(["model", "type"], "WordPiece"),
        "dropout": m(["model", "dropout"], 0.1),
        "subword prefix": m(["model", "continuing_subword_prefix"], "##"),
        "eow suffix": m(["model", "end_of_word_suffix"], "</w>"),
        "nfkc": m(["normalizer"], {"type": "NFKC"}),
        "lowercase": m(["normalizer"], {"type": "Lowercase"}),
        "no pretok": m(["pre_tokenizer"], None),
        "whitespace pretok": m(["pre_tokenizer"], {"type": "Whitespace"}),
        "metaspace": m(["pre_tokenizer"], {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}),
        "split removed": m(["pre_tokenizer"], {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}),
        "split invert": m(["pre_tokenizer"], {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}),
        "digits after bytelevel": m(["pre_tokenizer"], {"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            {"type": "Digits", "individual_digits": True}]}),
        "bert processor": m(["post_processor"], {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 2]}),
        "roberta processor": m(["post_processor"], {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                                                    "trim_offsets": True, "add_prefix_space": False}),
        "truncation": m(["truncation"], {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}),
        "padding": m(["padding"], {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                                   "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}),
        "lstrip": add_tok(lstrip=True),
        "rstrip": add_tok(rstrip=True),
        "single_word": add_tok(single_word=True),
        "bad merge": lambda d: (d["model"]["merges"].append(["Ġ", "<not-in-vocab>"]), d)[1],
        "version": m(["version"], "2.0"),
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_unsupported_configs_raise(name):
    d = _mutations()[name](_base_json())
    with pytest.raises(ValueError, match="^unsupported: "):
        ByteLevelBPE.from_json(json.dumps(d))


def test_not_json_raises():
    with pytest.raises(ValueError, match="^unsupported: "):
        ByteLevelBPE.from_json("{not json")


def test_merges_forms_and_file_bytes():
    """The merges as pairs or as legacy "a b" lines (HF reads both) give the same ids; a list
    mixing them, or a pair of three, is refused; the file's bytes load like its text."""
    d = _base_json()
    hf = Tokenizer.from_str(json.dumps(d))
    texts = ADVERSARIAL + random_texts(300, 5)
    want = reference(hf, texts)
    pairs = d["model"]["merges"]
    assert pairs and all(isinstance(p, list) and len(p) == 2 for p in pairs)
    lines = dict(d, model=dict(d["model"], merges=[f"{a} {b}" for a, b in pairs]))
    assert reference(Tokenizer.from_str(json.dumps(lines)), texts) == want
    escaped = json.dumps(d, ensure_ascii=True)  # every non-ASCII character as \u escapes
    for js in (json.dumps(d), json.dumps(lines), escaped, escaped.encode(), json.dumps(d).encode()):
        assert_same(want, ByteLevelBPE.from_json(js), texts, label="merges form")
    mixed = dict(d, model=dict(d["model"], merges=[pairs[0], " ".join(pairs[1])] + pairs[2:]))
    three = dict(d, model=dict(d["model"], merges=[pairs[0] + ["x"]] + pairs[1:]))
    for bad in (mixed, three):
        with pytest.raises(ValueError, match="^unsupported: "):
            ByteLevelBPE.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="^unsupported: tokenizer.json is not UTF-8"):
        ByteLevelBPE.from_json(json.dumps(d).encode() + b"\xff")
    with pytest.raises(TypeError):
        ByteLevelBPE.from_json(3)
