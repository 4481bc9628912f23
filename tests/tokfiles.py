"""Small tokenizer files made at test time (a tiktoken rank file derived from the golden HF BPE,
a synthetic 128000-rank file that gets Llama 3's special tokens, a Llama-3-shaped pair), and the
native engine's test helpers."""
from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

from paths import HF_DIR


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def ranks_from_hf_bpe(tokenizer_json: Path = HF_DIR / "tokenizer.json") -> dict[bytes, int]:
    d = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    u2b = {v: k for k, v in _bytes_to_unicode().items()}
    ranks = {bytes([i]): i for i in range(256)}
    for a, b in d["model"]["merges"]:
        t = bytes(u2b[c] for c in a) + bytes(u2b[c] for c in b)
        ranks.setdefault(t, len(ranks))
    return ranks


def write_ranks(ranks: dict[bytes, int], path: Path) -> Path:
    with open(path, "wb") as f:
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(tok) + b" " + str(r).encode() + b"\n")
    return path


def llama3_like_ranks(n: int = 128000, ranks: dict[bytes, int] | None = None) -> dict[bytes, int]:
    """n distinct tokens: ``ranks`` (default: the BPE-derived ranks) first, then synthetic letter
    strings."""
    ranks = dict(ranks) if ranks is not None else ranks_from_hf_bpe()
    letters = b"abcdefghijklmnopqrstuvwxyz"
    for k in (3, 4):
        for combo in itertools.product(letters, repeat=k):
            t = bytes(combo)
            if t not in ranks:
                ranks[t] = len(ranks)
                if len(ranks) == n:
                    return ranks
    raise AssertionError("not enough synthetic tokens")


LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_byte_level_ranks(texts, n_ranks: int, pattern: str = LLAMA3_PATTERN) -> dict[bytes, int]:
    """A byte-level BPE of ``n_ranks`` tokens trained with HF ``tokenizers`` on ``texts`` (pattern
    split, no special tokens), as tiktoken ranks: token bytes → id (ids are in creation order)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=n_ranks, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    u2b = {v: k for k, v in _bytes_to_unicode().items()}
    return {bytes(u2b[c] for c in t): i for t, i in tok.get_vocab().items()}


def llama3_specials(n_ranks: int = 128000) -> dict[str, int]:
    """Llama 3's 256 special tokens, numbered after the ranks (what datasetprep's TikTok assigns)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobimage"))
    from datasetprep.tokenization import LLAMA3_SPECIALS

    names = list(LLAMA3_SPECIALS) + [f"<|reserved_special_token_{i}|>" for i in range(2, 256 - len(LLAMA3_SPECIALS) + 2)]
    return {name: n_ranks + i for i, name in enumerate(names[:256])}


def tiktoken_to_tokenizer_json(ranks: dict[bytes, int], pattern: str = LLAMA3_PATTERN,
                               specials: dict[str, int] | None = None, bos: str | None = None) -> str:
    """The ``tokenizer.json`` that transformers' ``TikTokenConverter`` makes from a rank file (how
    Llama 3's was made): every split of a token into two tokens is a merge, ordered by the rank
    of the token and then of its parts; ``ignore_merges``; Split(pattern) + ByteLevel; the
    specials as added tokens; a BOS template like Llama 3's when ``bos`` is given."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    b2u = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[s(token)] = rank
        local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(local, key=lambda x: (ranks[x[0]], ranks[x[1]]))
    merges.sort(key=lambda m: m[2])
    tok = Tokenizer(models.BPE(vocab, [(s(a), s(b)) for a, b, _ in merges], fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = specials or {}
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos is not None:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, specials[bos])]))
    tok.post_processor = processors.Sequence(steps)
    return tok.to_str()


def write_llama3_pair(ranks: dict[bytes, int], folder: Path) -> Path:
    """``folder/tokenizer.model`` (rank file) and ``folder/tokenizer.json`` (+ tokenizer_config.json)
    from 128000 ranks, shaped like Llama 3's pair: its pattern, its 256 specials, BOS template."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = llama3_specials(len(ranks))
    write_ranks(ranks, folder / "tokenizer.model")
    (folder / "tokenizer.json").write_text(
        tiktoken_to_tokenizer_json(ranks, LLAMA3_PATTERN, specials, bos="<|begin_of_text|>"), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}), encoding="utf-8")
    return folder


def native_or_skip():
    """The ``datasetprep_native`` module, or skip the calling test module (a failure instead when
    DATASETPREP_REQUIRE_NATIVE is set)."""
    import os

    import pytest

    try:
        import datasetprep_native
    except ImportError:  # pragma: no cover - depends on the environment
        if os.environ.get("DATASETPREP_REQUIRE_NATIVE"):
            raise
        pytest.skip("datasetprep_native not built (pip install ./jobimage/native)", allow_module_level=True)
    return datasetprep_native


def native_docs(enc, texts: list[str]) -> list[list[int]]:
    """Each document's ids from a native engine's ``encode_packed`` (no EOD)."""
    import numpy as np

    toks, seq_lens, docs = enc.encode_packed(texts, None, "uint32")
    flat = np.frombuffer(toks, "<u4")
    lens = np.zeros(len(texts), np.int64)
    lens[np.frombuffer(docs, "<i4") > 0] = np.frombuffer(seq_lens, "<i4")
    ends = np.cumsum(lens)
    return [flat[e - n:e].tolist() for e, n in zip(ends, lens)]
