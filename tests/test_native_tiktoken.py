"""The native engine on tiktoken rank files is token-identical to ``tiktoken``'s ``encode_ordinary``,
and a Llama-3-shaped ``tokenizer.model`` / ``tokenizer.json`` pair gives the same ids either way.

References: ``tiktoken`` (its own regex crate and BPE) for rank files, ``tokenizers`` for the
tokenizer.json.  Texts: the golden corpus, adversarial strings (every Unicode general category
through every code point, long runs, CRLF, contractions in every case, lone surrogates), random
dense text and Hypothesis-generated text, for the Llama 3 and GPT-2 patterns.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

tiktoken = pytest.importorskip("tiktoken")

from tokfiles import native_docs, native_or_skip  # noqa: E402

datasetprep_native = native_or_skip()

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from datasetprep import tokenization  # noqa: E402
from paths import CORPUS_A, read_texts  # noqa: E402
from test_pretok import ADVERSARIAL, ALPHABET, GPT2_TIKTOKEN, LLAMA3, code_point_probes  # noqa: E402
from tokfiles import (llama3_like_ranks, ranks_from_hf_bpe, tiktoken_to_tokenizer_json,  # noqa: E402
                      train_byte_level_ranks, write_llama3_pair, write_ranks)

EXTRA = [
    "'S 'T 'RE 'VE 'M 'LL 'D 's 't 're 've 'm 'll 'd 'Re 'rE 'Ve 'Ll 'lL 'ſ 'ß 'K",
    " " * 50 + "x" + "\t" * 50 + "\n" * 20 + "1" * 50 + "." * 50 + "a" * 300,
    "mixed Ελλάδα中文123abc\u0301 😀 '\u2028'\r\n\r\n\r",
]


def texts_for_tests() -> list[str]:
    rng = random.Random(5)
    dense = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(3000)]
    return read_texts(CORPUS_A) + ADVERSARIAL + EXTRA + dense


ours = native_docs


def reference(ranks: dict[bytes, int], pattern: str):
    return tiktoken.Encoding(name="ref", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def assert_same(enc, ref, texts: list[str], label: str) -> None:
    got = ours(enc, texts)
    want = [ref.encode_ordinary(t) for t in texts]
    bad = [(i, t[:60], g[:12], w[:12]) for i, (t, g, w) in enumerate(zip(texts, got, want)) if g != w]
    assert not bad, f"{label}: {len(bad)}/{len(texts)} differ, first: {bad[:3]}"


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    ranks = ranks_from_hf_bpe()
    return ranks, write_ranks(ranks, tmp_path_factory.mktemp("tt") / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("pattern", [LLAMA3, GPT2_TIKTOKEN], ids=["llama3", "gpt2"])
def test_derived_8k_rank_file(derived, pattern):
    ranks, data = derived
    enc = datasetprep_native.ByteLevelBPE.from_tiktoken(data, pattern)
    assert enc.model_vocab_size == len(ranks)
    assert_same(enc, reference(ranks, pattern), texts_for_tests(), "derived 8k")
    nocache = datasetprep_native.ByteLevelBPE.from_tiktoken(data, pattern, cache_size=0)
    assert ours(nocache, texts_for_tests()[:600]) == ours(enc, texts_for_tests()[:600])


@pytest.mark.parametrize("pattern", [LLAMA3, GPT2_TIKTOKEN], ids=["llama3", "gpt2"])
def test_every_code_point_with_all_byte_pairs(pattern):
    """A vocabulary of every byte and every byte pair (random ranks): a piece boundary that
    differs from tiktoken's (a character class that differs, e.g. a newer Unicode version in its
    regex crate) changes which pairs merge, so the ids show it."""
    rng = random.Random(3)
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    rng.shuffle(pairs)
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({p: 256 + i for i, p in enumerate(pairs)})
    data = b"".join(__import__("base64").b64encode(t) + b" %d\n" % r for t, r in ranks.items())
    enc = datasetprep_native.ByteLevelBPE.from_tiktoken(data, pattern)
    assert_same(enc, reference(ranks, pattern), list(code_point_probes()), "every code point")


def test_lone_surrogates_like_tiktoken(derived, tmp_path):
    """tiktoken encodes a str with lone surrogates as if they were U+FFFD (pairs joined)."""
    ranks, data = derived
    path = tmp_path / "r.model"
    path.write_bytes(data)
    tok = tokenization.load(tokenization.resolve_config("tiktoken", path))
    assert tok.engine == "native-tiktoken-bpe"
    ref = reference(ranks, LLAMA3)
    texts = ["a\ud800b", "\udfff", "x\ud83d\ude00y", "ok", "\ud83d" * 3 + " end"]
    for t in texts:
        assert list(tok.encode(t)) == ref.encode_ordinary(t)
    toks, seq_lens, docs = tok.encode_packed(texts, 0, np.dtype(np.uint16))
    want = [x for t in texts for x in ref.encode_ordinary(t) + [0]]
    assert toks.tolist() == want


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80))
def test_hypothesis_any_text(derived, text):
    ranks, data = derived
    enc = _cached_engine(data)
    assert ours(enc, [text]) == [reference_cached(ranks).encode_ordinary(text)]


_ENGINES: dict = {}


def _cached_engine(data: bytes):
    if data not in _ENGINES:
        _ENGINES[data] = datasetprep_native.ByteLevelBPE.from_tiktoken(data, LLAMA3)
    return _ENGINES[data]


_REFS: dict = {}


def reference_cached(ranks):
    if "r" not in _REFS:
        _REFS["r"] = reference(ranks, LLAMA3)
    return _REFS["r"]


# ----------------------------------------------------------------------------- Llama-3-shaped pair
@pytest.fixture(scope="module")
def llama3_pair(tmp_path_factory):
    """128000 ranks (a BPE trained on the golden corpus, padded with letter strings), written as
    Llama 3 ships them: rank file + the tokenizer.json transformers converts it to."""
    texts = [t for t in read_texts(CORPUS_A) if len(t) < 100_000]
    ranks = llama3_like_ranks(128000, train_byte_level_ranks(texts, 4000))
    return write_llama3_pair(ranks, tmp_path_factory.mktemp("llama3")), ranks


def test_llama3_pair_model_equals_tiktoken_and_json_equals_tokenizers(llama3_pair):
    folder, ranks = llama3_pair
    texts = texts_for_tests()
    model = datasetprep_native.ByteLevelBPE.from_tiktoken((folder / "tokenizer.model").read_bytes(), LLAMA3)
    assert_same(model, reference(ranks, LLAMA3), texts, "llama3 model")
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    js = datasetprep_native.ByteLevelBPE.from_file(str(folder / "tokenizer.json"))
    want = [e.ids for e in hf.encode_batch(texts)]
    assert ours(js, texts) == want
    assert all(ids[0] == 128000 for ids in want)  # BOS from the template
    # the pair gives identical ids (the json adds Llama 3's BOS; without it, nothing differs)
    js_plain = datasetprep_native.ByteLevelBPE.from_file(str(folder / "tokenizer.json"), add_special_tokens=False)
    assert ours(js_plain, texts) == ours(model, texts)
    assert [w[1:] for w in want] == ours(model, texts)


def test_llama3_pair_through_datasetprep(llama3_pair, tmp_path):
    folder, _ = llama3_pair
    tm = tokenization.load(tokenization.resolve_config("auto", folder / "tokenizer.model"))
    tj = tokenization.load(tokenization.resolve_config("auto", folder))
    assert (tm.engine, tj.engine) == ("native-tiktoken-bpe", "native-bytelevel-bpe")
    assert tm.vocab_size == tj.vocab_size == 128256
    assert tm.eod == tj.eod == 128001
    texts = [t for t in texts_for_tests()[:700] if t]
    a = tm.encode_packed(texts, tm.eod, np.dtype(np.int32))
    b = tj.encode_packed(texts, tj.eod, np.dtype(np.int32))
    # the json's documents start with BOS (128000); otherwise the arrays are equal (an empty
    # text is the exception: [BOS, EOD] from the json, nothing from the rank file, as Megatron's
    # HuggingFaceTokenizer and TikTokenizer write them)
    assert b[0][b[0] != 128000].tolist() == a[0].tolist()
    assert (b[1] - 1).tolist() == a[1].tolist() and b[2].tolist() == a[2].tolist()
    assert tm.decode(a[0][:49]) == tj.decode(b[0][b[0] != 128000][:49])
    assert tj.encode_packed([""], tj.eod, np.dtype(np.int32))[0].tolist() == [128000, 128001]
    assert tm.encode_packed([""], tm.eod, np.dtype(np.int32))[0].tolist() == []


def test_converter_merges_cover_every_split():
    ranks = {bytes([b]): b for b in range(256)}
    for t in (b"ab", b"bc", b"abc"):
        ranks[t] = len(ranks)
    import json

    d = json.loads(tiktoken_to_tokenizer_json(ranks))
    assert d["model"]["ignore_merges"] is True
    assert d["model"]["merges"][-2:] == [["a", "bc"], ["ab", "c"]] or d["model"]["merges"][-2:] == [["ab", "c"], ["a", "bc"]]


def test_unknown_pattern_or_bad_file_takes_tiktoken(derived, tmp_path):
    ranks, data = derived
    with pytest.raises(ValueError, match="^unsupported"):
        datasetprep_native.ByteLevelBPE.from_tiktoken(data, r"\w+|\s+")
    for bad in (b"not base64 !!! 0\n", b"YQ== 0\nYQ== 1\n", b"YQ== 1\n"):
        with pytest.raises(ValueError, match="^unsupported"):
            datasetprep_native.ByteLevelBPE.from_tiktoken(bad, LLAMA3)
    cfg = tokenization.TokenizerConfig("tiktoken", str(write_ranks(ranks, tmp_path / "t.model")),
                                       extra={"pattern": r"\w+|\s+"})
    tok = tokenization.load(cfg)
    assert tok.engine == "tiktoken" and tok.native is None
    assert tok.encode("hello world") == tiktoken.Encoding(name="x", pat_str=r"\w+|\s+", mergeable_ranks=ranks,
                                                          special_tokens={}).encode_ordinary("hello world")
