"""The native SentencePiece BPE engine is id-identical to the sentencepiece library (`encode_as_ids`).

Models: the golden BPE (nmt_nfkc, byte fallback) and BPE models trained here the way the Llama 2 /
Mistral / Gemma families are configured (identity normalizer, no extra-whitespace removal,
whitespace-only pieces, split digits, user-defined symbols, byte fallback or an unknown piece,
pieces that span spaces).  Texts: the golden corpus, adversarial strings, every Unicode code point
in several contexts, dense random and Hypothesis-generated text.
"""
from __future__ import annotations

import io
import random

import numpy as np
import pytest

spm = pytest.importorskip("sentencepiece")

from tokfiles import native_docs, native_or_skip  # noqa: E402

datasetprep_native = native_or_skip()

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from datasetprep import tokenization  # noqa: E402
from paths import CORPUS_A, SP_MODEL, read_texts  # noqa: E402
from test_pretok import ADVERSARIAL, ALPHABET, code_point_probes  # noqa: E402

SPACES = " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2003\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff\u2581"
EXTRA = [
    "  leading and trailing  ", "a  b   c    d", "\u3000\u3000x\u3000\u3000y\u3000", " \u00a0 \u00a0x",
    "ﬁ ﬂ Ⅻ ① ｱｲｳ ＡＢＣ １２３ ㍻ ℃ ™ ½ x²", "e\u0301 \u1e9b\u0323 \uac00\u11a8 Å", "\u2581\u2581 x\u2581y",
    "def f(x):\n    return x  # four spaces\n\tif x:\n\t\tpass\n", "1234567890 3.14159 1,000,000",
    "<tag>text</tag> <s> </s> <unk> <0x41> ⁇", "😀👍🏽🇩🇪 \U0010ffff \U000e0001", "\x00\x01\x1f\x7f",
    "".join(SPACES) * 3 + "end", "x" * 3000, " " * 500, "\u4e2d\u6587\u5b57\u7b26" * 200,
]


def texts_for_tests(n_random: int = 2000) -> list[str]:
    rng = random.Random(9)
    alphabet = ALPHABET + list(SPACES) + ["ﬁ", "①", "Ａ", "\u0301", "\u2581"]
    dense = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n_random)]
    return read_texts(CORPUS_A) + ADVERSARIAL + EXTRA + dense


native_ids = native_docs


def assert_same(model: bytes, texts: list[str], label: str) -> None:
    sp = spm.SentencePieceProcessor(model_proto=model)
    enc = datasetprep_native.SentencePieceBPE.from_sentencepiece(model)
    assert enc.model_vocab_size == sp.get_piece_size()
    got = native_ids(enc, texts)
    want = [sp.encode_as_ids(t) for t in texts]
    bad = [(i, t[:60], g[:12], w[:12]) for i, (t, g, w) in enumerate(zip(texts, got, want)) if g != w]
    assert not bad, f"{label}: {len(bad)}/{len(texts)} differ, first: {bad[:3]}"
    for t, g in zip(texts[:100], got[:100]):  # the one-document entry point agrees
        assert np.frombuffer(enc.encode(t), "<u4").tolist() == g


def train(**kw) -> bytes:
    texts = [t for t in read_texts(CORPUS_A) if len(t) < 100_000]
    out = io.BytesIO()
    args = dict(sentence_iterator=iter(texts), model_writer=out, model_type="bpe", vocab_size=3000,
                character_coverage=0.9995, max_sentence_length=1 << 20, num_threads=1, minloglevel=2)
    args.update(kw)
    spm.SentencePieceTrainer.train(**args)
    return out.getvalue()


MODELS = {
    "llama2-like": dict(normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
                        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
                        user_defined_symbols=["<tag>", "</tag>"]),
    "gemma-like": dict(normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
                       byte_fallback=True, split_by_whitespace=False, allow_whitespace_only_pieces=True,
                       user_defined_symbols=["\u2581\u2581\u2581\u2581", "<start>", "\n\n"]),
    "unknown-pieces": dict(byte_fallback=False, character_coverage=0.98),
    "nfkc-no-dummy": dict(add_dummy_prefix=False, byte_fallback=True, split_by_whitespace=False),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request):
    return request.param, train(**MODELS[request.param])


def test_golden_model():
    assert_same(SP_MODEL.read_bytes(), texts_for_tests(), "golden")


def test_trained_models(trained):
    name, model = trained
    assert_same(model, texts_for_tests(), name)


@pytest.mark.parametrize("which", ["golden", "llama2-like"])
def test_every_code_point(which):
    model = SP_MODEL.read_bytes() if which == "golden" else train(**MODELS["llama2-like"])
    assert_same(model, list(code_point_probes()), f"{which} every code point")


def test_unsupported_models_use_the_library(tmp_path):
    unigram = train(model_type="unigram", vocab_size=2000)
    with pytest.raises(ValueError, match="^unsupported"):
        datasetprep_native.SentencePieceBPE.from_sentencepiece(unigram)
    path = tmp_path / "u.model"
    path.write_bytes(unigram)
    tok = tokenization.load(tokenization.resolve_config("sentencepiece", path))
    assert tok.engine == "sentencepiece" and tok.native is None
    assert tok.encode("hello world") == spm.SentencePieceProcessor(model_file=str(path)).encode_as_ids("hello world")
    with pytest.raises(ValueError, match="^unsupported"):
        datasetprep_native.SentencePieceBPE.from_sentencepiece(b"\x0a\x05junk!")


def test_through_datasetprep():
    tok = tokenization.load(tokenization.resolve_config("sentencepiece", SP_MODEL))
    assert tok.engine == "native-sentencepiece-bpe"
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    texts = texts_for_tests(100)
    toks, seq_lens, docs = tok.encode_packed(texts, tok.eod, np.dtype(np.uint16))
    want = [x for t in texts for x in (sp.encode_as_ids(t) + [tok.eod] if sp.encode_as_ids(t) else [])]
    assert toks.tolist() == want
    with pytest.raises(UnicodeEncodeError):
        tok.encode("lone \ud800 surrogate")


_GOLDEN = {}


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
       | st.lists(st.sampled_from(ALPHABET + list(SPACES)), max_size=80).map("".join))
def test_hypothesis_golden(text):
    if not _GOLDEN:
        model = SP_MODEL.read_bytes()
        _GOLDEN["sp"] = spm.SentencePieceProcessor(model_proto=model)
        _GOLDEN["enc"] = datasetprep_native.SentencePieceBPE.from_sentencepiece(model)
    assert np.frombuffer(_GOLDEN["enc"].encode(text), "<u4").tolist() == _GOLDEN["sp"].encode_as_ids(text)
