"""Tokenizers behind one small interface, each reproducing what Megatron-LM's wrapper does.

* ``sentencepiece``: ``encode_as_ids(text)`` unchanged, no BOS; vocab = ``get_piece_size()``;
  EOD = ``eos_id()``.
* ``huggingface``: ``tokenizer(text).input_ids`` of the fast tokenizer, so post-processor special
  tokens (e.g. Llama's BOS) are added unless ``add_special_tokens`` is false; vocab =
  ``len(tokenizer)`` (added tokens included); EOD = the id of ``eos_token`` from the tokenizer
  config.  Byte-level BPE tokenizers go through the exact native engine when it is installed and
  supports the file (``datasetprep_native``), else through ``tokenizers``.
* ``tiktoken``: a BPE rank file (``<base64 token> <rank>`` lines) such as Llama 3's
  ``tokenizer.model``; with 128000 ranks it gets Llama 3's 256 special tokens and pattern.
* ``null``: Megatron's NullTokenizer: the text is space-separated integer ids; EOD = vocab - 1.

``detect_kind`` sniffs a file's content, so a file given as the wrong type fails with a message
that names the right one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("sentencepiece", "huggingface", "tiktoken", "null")

# Megatron-LM / NeMo tokenizer type names → ours.
ALIASES = {
    "sentencepiecetokenizer": "sentencepiece",
    "gptsentencepiecetokenizer": "sentencepiece",
    "llama2tokenizer": "sentencepiece",
    "sentencepiece": "sentencepiece",
    "huggingfacetokenizer": "huggingface",
    "huggingface": "huggingface",
    "hf": "huggingface",
    "tiktokenizer": "tiktoken",
    "tiktoken": "tiktoken",
    "nulltokenizer": "null",
    "null": "null",
    "auto": "auto",
}

MEGATRON_NAMES = {
    "sentencepiece": "SentencePieceTokenizer",
    "huggingface": "HuggingFaceTokenizer",
    "tiktoken": "TikTokenizer",
    "null": "NullTokenizer",
}

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_RANKS = 128000
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or used; the message says why and what to do."""


def normalize_kind(kind: str | None) -> str:
    k = (kind or "auto").strip().lower()
    if k not in ALIASES:
        raise TokenizerError(
            f"unknown tokenizer type {kind!r}: use one of sentencepiece, huggingface, tiktoken, null, auto "
            "(or Megatron's SentencePieceTokenizer, HuggingFaceTokenizer, TikTokenizer, NullTokenizer)"
        )
    return ALIASES[k]


def _hf_json_path(path: Path) -> Path | None:
    if path.is_dir():
        p = path / "tokenizer.json"
        return p if p.is_file() else None
    return path


def detect_kind(path: str | os.PathLike) -> str:
    """What a tokenizer file is, from its content (not its name)."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer file {p} does not exist")
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return "huggingface"
        for name in ("tokenizer.model", "spm.model"):
            if (p / name).is_file():
                return detect_kind(p / name)
        raise TokenizerError(f"tokenizer folder {p} holds neither tokenizer.json nor tokenizer.model")
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {p}: {e.strerror}") from None
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "huggingface"
    if _looks_like_tiktoken(head):
        return "tiktoken"
    if head[:1] == b"\x0a":  # protobuf field 1 (pieces), wire type 2: a SentencePiece ModelProto
        return "sentencepiece"
    raise TokenizerError(
        f"cannot tell what tokenizer {p} is: it is neither a SentencePiece model, a HuggingFace "
        "tokenizer.json, nor a tiktoken BPE rank file"
    )


def _looks_like_tiktoken(head: bytes) -> bool:
    lines = head.split(b"\n")[:-1] or head.split(b"\n")
    lines = [ln for ln in lines[:20] if ln.strip()]
    if not lines:
        return False
    for ln in lines:
        parts = ln.split(b" ")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            return False
        try:
            base64.b64decode(parts[0], validate=True)
        except Exception:
            return False
    return True


_WRONG_TYPE_HINT = {
    "sentencepiece": "--tokenizer-type SentencePieceTokenizer (spec: tokenizer.type: sentencepiece)",
    "huggingface": "--tokenizer-type HuggingFaceTokenizer (spec: tokenizer.type: huggingface)",
    "tiktoken": "--tokenizer-type TikTokenizer (spec: tokenizer.type: tiktoken)",
}
_WHAT = {
    "sentencepiece": "a SentencePiece model",
    "huggingface": "a HuggingFace tokenizer.json",
    "tiktoken": "a tiktoken BPE rank file (the format of Llama 3's tokenizer.model)",
}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything needed to build a tokenizer in any process (picklable)."""

    kind: str
    path: str | None = None
    vocab_size: int | None = None  # null tokenizer only
    eod_id: int | None = None  # override
    add_special_tokens: bool = True
    use_native: bool = True
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(
            {"kind": self.kind, "vocab_size": self.vocab_size, "eod_id": self.eod_id,
             "add_special_tokens": self.add_special_tokens}, sort_keys=True).encode())
        if self.path:
            p = Path(self.path)
            files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
            for f in files:
                if p.is_dir() and f.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    continue
                h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
        return h.hexdigest()


def resolve_config(kind: str | None, path: str | os.PathLike | None, *, vocab_size: int | None = None,
                   eod_id: int | None = None, add_special_tokens: bool = True,
                   use_native: bool = True) -> TokenizerConfig:
    """Check the type against the file's content and return a config that loads everywhere."""
    k = normalize_kind(kind)
    if k == "null":
        if not vocab_size:
            raise TokenizerError("the null tokenizer needs a vocabulary size (--vocab-size / tokenizer.vocabSize)")
        return TokenizerConfig("null", None, vocab_size, eod_id, add_special_tokens, use_native)
    if path is None:
        raise TokenizerError(f"tokenizer type {k} needs a tokenizer file (--tokenizer-model / tokenizer.path)")
    p = Path(path)
    actual = detect_kind(p)
    if k == "auto":
        k = actual
    elif k != actual:
        raise TokenizerError(
            f"tokenizer file {p} is {_WHAT[actual]}, not {_WHAT[k]}: use {_WRONG_TYPE_HINT[actual]} or auto"
        )
    if vocab_size is not None:
        raise TokenizerError(f"--vocab-size is only for the null tokenizer; a {k} tokenizer reports its own")
    if k == "huggingface":
        jp = _hf_json_path(p)
        if jp is None:
            raise TokenizerError(f"{p} has no tokenizer.json")
    return TokenizerConfig(k, os.fspath(p), None, eod_id, add_special_tokens, use_native)


class Tokenizer:
    """The interface every engine implements."""

    kind: str
    vocab_size: int
    eod: int | None
    engine: str

    def encode(self, text: str) -> list[int] | np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_many(self, texts: list[str]) -> list:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class SentencePieceTok(Tokenizer):
    kind = "sentencepiece"
    engine = "sentencepiece"

    def __init__(self, cfg: TokenizerConfig):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            with open(cfg.path, "rb") as f:
                proto = f.read()
            self.sp.LoadFromSerializedProto(proto)
        except OSError as e:
            raise TokenizerError(f"cannot read SentencePiece model {cfg.path}: {e.strerror}") from None
        except Exception as e:
            raise TokenizerError(f"{cfg.path} is not a valid SentencePiece model ({e})") from None
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.eos_id()
        self.eod = cfg.eod_id if cfg.eod_id is not None else (eos if eos >= 0 else None)
        self._encode = self.sp.encode_as_ids

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    threads = -1  # batch encoding threads; worker processes of a pool set 1 (one process per core)

    def encode_many(self, texts: list[str]) -> list:
        return self.sp.encode(texts, out_type=int, num_threads=self.threads)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def _hf_special_config(json_path: Path) -> dict:
    """tokenizer_config.json (+ special_tokens_map.json) next to the tokenizer.json, if any."""
    cfg: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = json_path.parent / name
        if p.is_file():
            try:
                cfg.update(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                raise TokenizerError(f"cannot read {p}: {e}") from None
    return cfg


def _token_content(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


class HuggingFaceTok(Tokenizer):
    kind = "huggingface"

    def __init__(self, cfg: TokenizerConfig):
        from tokenizers import Tokenizer as HFTokenizer

        jp = _hf_json_path(Path(cfg.path))
        try:
            text = Path(jp).read_text(encoding="utf-8")
            self.tok = HFTokenizer.from_str(text)
        except OSError as e:
            raise TokenizerError(f"cannot read HuggingFace tokenizer {jp}: {e.strerror}") from None
        except Exception as e:
            raise TokenizerError(f"{jp} is not a valid HuggingFace tokenizer.json ({e})") from None
        self.add_special = cfg.add_special_tokens
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        special = _hf_special_config(Path(jp))
        eos = _token_content(special.get("eos_token"))
        self.eos_token = eos
        if cfg.eod_id is not None:
            self.eod = cfg.eod_id
        elif eos is not None:
            self.eod = self.tok.token_to_id(eos)
            if self.eod is None:
                raise TokenizerError(f"eos_token {eos!r} of {jp.parent} is not in the vocabulary")
        else:
            self.eod = None
        self.native = None
        self.engine = "tokenizers"
        if cfg.use_native and os.environ.get("DATASETPREP_NATIVE", "1") != "0":
            try:
                from datasetprep_native import ByteLevelBPE  # type: ignore

                self.native = ByteLevelBPE.from_json(text, self.add_special)
                self.engine = "native-bytelevel-bpe"
            except ImportError:
                pass
            except ValueError:
                pass  # unsupported configuration: the exact path is the library
        fast = getattr(self.tok, "encode_batch_fast", None)
        self._batch = fast if fast is not None else self.tok.encode_batch

    def encode(self, text: str):
        if self.native is not None:
            return np.frombuffer(self.native.encode(text), dtype="<u4")
        return self.tok.encode(text, add_special_tokens=self.add_special).ids

    def encode_many(self, texts: list[str]) -> list:
        if self.native is not None:
            buf, lens = self.native.encode_many(texts)
            ids = np.frombuffer(buf, dtype="<u4")
            ends = np.cumsum(np.frombuffer(lens, dtype="<u8").astype(np.int64))
            return np.split(ids, ends[:-1]) if len(texts) else []
        return [e.ids for e in self._batch(texts, add_special_tokens=self.add_special)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                tok, rank = line.split(b" ")
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except Exception:
                raise TokenizerError(
                    f"{path}:{lineno}: not a tiktoken BPE rank line ('<base64 token> <rank>')"
                ) from None
    if not ranks:
        raise TokenizerError(f"{path} holds no BPE ranks")
    return ranks


class TikTok(Tokenizer):
    kind = "tiktoken"
    engine = "tiktoken"

    def __init__(self, cfg: TokenizerConfig):
        import tiktoken

        ranks = read_tiktoken_ranks(cfg.path)
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(f"{cfg.path}: ranks must be 0..{n - 1} without gaps")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise TokenizerError(f"{cfg.path}: the rank file lacks single-byte tokens (e.g. byte {missing[0]})")
        specials: dict[str, int] = {}
        if n == LLAMA3_NUM_RANKS:
            reserved = 256
            names = list(LLAMA3_SPECIALS)
            names += [f"<|reserved_special_token_{i}|>" for i in range(2, reserved - len(LLAMA3_SPECIALS) + 2)]
            specials = {name: n + i for i, name in enumerate(names[:reserved])}
        self.special = specials
        self.enc = tiktoken.Encoding(
            name=f"datasetprep-{Path(cfg.path).name}",
            pat_str=cfg.extra.get("pattern", LLAMA3_PATTERN),
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        self.vocab_size = n + len(specials)
        if cfg.eod_id is not None:
            self.eod = cfg.eod_id
        else:
            self.eod = specials.get("<|end_of_text|>", specials.get("<|endoftext|>"))

    def encode(self, text: str) -> list[int]:
        # Special-token strings in the text are ordinary text, as in SentencePiece: a document
        # that quotes "<|end_of_text|>" must not end early.
        return self.enc.encode_ordinary(text)

    def encode_many(self, texts: list[str]) -> list:
        # a plain loop: tiktoken's *_batch goes through a thread pool, 1.5x slower per process here
        enc = self.enc.encode_ordinary
        return [enc(t) for t in texts]

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


class NullTok(Tokenizer):
    kind = "null"
    engine = "null"

    def __init__(self, cfg: TokenizerConfig):
        self.vocab_size = int(cfg.vocab_size)
        self.eod = cfg.eod_id if cfg.eod_id is not None else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        try:
            return [int(x) for x in text.split()]
        except ValueError:
            bad = next(x for x in text.split() if not x.lstrip("-").isdigit())
            raise TokenizerError(f"the null tokenizer reads space-separated integer ids; got {bad[:40]!r}") from None

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


_CLASSES = {"sentencepiece": SentencePieceTok, "huggingface": HuggingFaceTok, "tiktoken": TikTok, "null": NullTok}


def load(cfg: TokenizerConfig) -> Tokenizer:
    return _CLASSES[cfg.kind](cfg)


def load_tokenizer(kind: str | None, path=None, **kw) -> Tokenizer:
    """Convenience: resolve and load in one call."""
    return load(resolve_config(kind, path, **kw))
