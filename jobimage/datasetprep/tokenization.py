"""Tokenizers behind one small interface, each reproducing what Megatron-LM's wrapper does.

* ``sentencepiece``: ``encode_as_ids(text)`` unchanged, no BOS; vocab = ``get_piece_size()``;
  EOD = ``eos_id()``.  BPE models go through the exact native engine when it is installed and
  reproduces the model (``datasetprep_native.SentencePieceBPE``), else through ``sentencepiece``.
* ``huggingface``: ``tokenizer(text).input_ids`` of the fast tokenizer, so post-processor special
  tokens (e.g. Llama's BOS) are added unless ``add_special_tokens`` is false; vocab =
  ``len(tokenizer)`` (added tokens included); EOD = the id of ``eos_token`` from the tokenizer
  config.  Byte-level BPE tokenizers go through the exact native engine when it is installed and
  supports the file (``datasetprep_native``), else through ``tokenizers``.
* ``tiktoken``: a BPE rank file (``<base64 token> <rank>`` lines) such as Llama 3's
  ``tokenizer.model``; with 128000 ranks it gets Llama 3's 256 special tokens and pattern.
  Encoded by the native engine (token-identical to ``tiktoken``'s ``encode_ordinary``) when it is
  installed and has a hand-written pre-tokenizer for the pattern, else by ``tiktoken``.

Every engine offers ``encode_packed(texts, eod, dtype)``: the arrays a ``.bin``/``.idx`` part is
written from, built without Python lists where the engine can (native), else ``None``.
* ``null``: Megatron's NullTokenizer: the text is space-separated integer ids; EOD = vocab - 1.

``detect_kind`` sniffs a file's content, so a file given as the wrong type fails with a message
that names the right one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
        inner = _model_in_folder(p)
        if inner is not None:
            return detect_kind(inner)
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
    if p.is_dir() and (k in ("sentencepiece", "tiktoken") or detect_kind(p) != "huggingface"):
        p = _model_in_folder(p) or p  # the folder of a .model file: name the file itself
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


def _model_in_folder(p: Path) -> Path | None:
    """The ``.model`` file of a tokenizer folder (SentencePiece or tiktoken ranks), if it has one."""
    return next((p / n for n in ("tokenizer.model", "spm.model") if (p / n).is_file()), None)


class Tokenizer:
    """The interface every engine implements."""

    kind: str
    vocab_size: int
    eod: int | None
    engine: str
    native = None  # the datasetprep_native engine that encodes this tokenizer's file, if any

    def encode(self, text: str) -> list[int] | np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_many(self, texts: list[str]) -> list:
        return [self.encode(t) for t in texts]

    def encode_packed(self, texts: list[str], eod: int | None, dtype: np.dtype) -> Packed | None:
        """Documents → ``(tokens, seq_lens, docs)``: the tokens back to back in ``dtype`` with
        ``eod`` (unless None) after each non-empty document, each sequence's length and each
        document's number of sequences (0 for an empty document, which gets no EOD), as
        Megatron-LM writes them.  ``None`` when there is no fast packed path (the native module
        is missing); an exception (e.g. an id that does not fit ``dtype``) means: encode
        document by document to find and name the culprit.  Engines that return lists of ints
        are packed by the native module; native engines override this."""
        if self.native is not None:
            return _native_packed(self.native, texts, eod, dtype)
        native = _native_module()
        if native is None:
            return None
        return _packed_arrays(native.pack_ids(self.encode_many(texts), eod, np.dtype(dtype).name), dtype)

    def encode_jsonl_packed(self, data: bytes, key: str, eod: int | None, dtype: np.dtype) -> Packed | None:
        """``encode_packed`` of the string field ``key`` of each line of ``data`` (whole JSONL
        lines), for an engine that parses JSONL itself; None when it does not, or when a line
        must be read by the Python reader (anything ``json.loads`` would read differently or
        reject, a field that is not a string)."""
        return _native_jsonl_packed(self.native, data, key, eod, dtype)

    def decode(self, ids) -> str:  # pragma: no cover - interface
        raise NotImplementedError


Packed = tuple[np.ndarray, np.ndarray, np.ndarray]


def _native_module():
    """``datasetprep_native`` when installed (and not switched off with DATASETPREP_NATIVE=0)."""
    if os.environ.get("DATASETPREP_NATIVE", "1") == "0":
        return None
    try:
        import datasetprep_native  # type: ignore
    except ImportError:
        return None
    return datasetprep_native


def _native_engine(cfg: TokenizerConfig, build: Callable[[Any], Any]):
    """``build(datasetprep_native)``: the native engine for this tokenizer, or None when the
    module is missing, switched off (``use_native`` false, DATASETPREP_NATIVE=0) or does not
    reproduce this file exactly (then the library encodes it)."""
    native = _native_module() if cfg.use_native else None
    if native is None:
        return None
    try:
        return build(native.Encoder)
    except ValueError:
        return None


def _packed_arrays(buffers, dtype: np.dtype) -> Packed:
    toks, seq_lens, docs = buffers
    dt = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(toks, dt), np.frombuffer(seq_lens, "<i4"), np.frombuffer(docs, "<i4")


def _native_packed(engine, texts: list[str], eod: int | None, dtype: np.dtype) -> Packed:
    return _packed_arrays(engine.encode_packed(texts, eod, np.dtype(dtype).name), dtype)


def _native_jsonl_packed(engine, data: bytes, key: str, eod: int | None, dtype: np.dtype) -> Packed | None:
    if engine is None:
        return None
    buffers = engine.encode_jsonl_packed(data, key, eod, np.dtype(dtype).name)
    return None if buffers is None else _packed_arrays(buffers, dtype)


class SentencePieceTok(Tokenizer):
    kind = "sentencepiece"

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
        self.native = _native_engine(cfg, lambda enc: enc.from_sentencepiece(proto))
        self.engine = "sentencepiece" if self.native is None else "native-sentencepiece-bpe"

    def encode(self, text: str):
        if self.native is not None:
            return np.frombuffer(self.native.encode(text), dtype="<u4")
        return self._encode(text)

    threads = -1  # batch encoding threads; worker processes of a pool set 1 (one process per core)

    def encode_many(self, texts: list[str]) -> list:
        if self.native is not None:
            return [self.encode(t) for t in texts]
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
        jp = Path(_hf_json_path(Path(cfg.path)))
        self.json_path = jp
        try:
            self._json = jp.read_bytes()  # the native engine reads the bytes (no str of a 128k vocab)
        except OSError as e:
            raise TokenizerError(f"cannot read HuggingFace tokenizer {jp}: {e.strerror}") from None
        self.add_special = cfg.add_special_tokens
        self.native = _native_engine(cfg, lambda enc: enc.from_json(self._json, self.add_special))
        self._tok = None
        if self.native is not None:
            self.engine = "native-bytelevel-bpe"
            self.vocab_size = self.native.vocab_size
            token_to_id = self.native.token_to_id
        else:
            self.engine = "tokenizers"
            self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
            token_to_id = self.tok.token_to_id
            fast = getattr(self.tok, "encode_batch_fast", None)
            self._batch = fast if fast is not None else self.tok.encode_batch
        special = _hf_special_config(jp)
        eos = _token_content(special.get("eos_token"))
        self.eos_token = eos
        if cfg.eod_id is not None:
            self.eod = cfg.eod_id
        elif eos is not None:
            self.eod = token_to_id(eos)
            if self.eod is None:
                raise TokenizerError(f"eos_token {eos!r} of {jp.parent} is not in the vocabulary")
        else:
            self.eod = None

    @property
    def tok(self):
        """The ``tokenizers`` library's tokenizer (loaded on first use when the native engine
        encodes: it is only needed to decode)."""
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._tok = HFTokenizer.from_str(self._json.decode("utf-8"))
            except Exception as e:
                raise TokenizerError(f"{self.json_path} is not a valid HuggingFace tokenizer.json ({e})") from None
        return self._tok

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


def _tiktoken_text(text: str) -> str:
    """What ``tiktoken`` encodes for a str with lone surrogates: pairs joined, the rest U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TikTok(Tokenizer):
    kind = "tiktoken"

    def __init__(self, cfg: TokenizerConfig):
        self.path = cfg.path
        self.pattern = cfg.extra.get("pattern", LLAMA3_PATTERN)
        self.native = self._load_native(cfg)
        if self.native is not None:
            n = self.native.model_vocab_size
            self.engine = "native-tiktoken-bpe"
        else:
            self.ranks = _checked_ranks(cfg.path)
            n = len(self.ranks)
            self.engine = "tiktoken"
        specials: dict[str, int] = {}
        if n == LLAMA3_NUM_RANKS:
            reserved = 256
            names = list(LLAMA3_SPECIALS)
            names += [f"<|reserved_special_token_{i}|>" for i in range(2, reserved - len(LLAMA3_SPECIALS) + 2)]
            specials = {name: n + i for i, name in enumerate(names[:reserved])}
        self.special = specials
        self._enc = None if self.native is not None else self._library()
        self.vocab_size = n + len(specials)
        if cfg.eod_id is not None:
            self.eod = cfg.eod_id
        else:
            self.eod = specials.get("<|end_of_text|>", specials.get("<|endoftext|>"))

    def _load_native(self, cfg: TokenizerConfig):
        """The native engine, or None (an unknown pattern or a malformed file: tiktoken's path,
        and its messages)."""
        def build(enc):
            try:
                data = Path(cfg.path).read_bytes()
            except OSError as e:
                raise TokenizerError(f"cannot read tiktoken rank file {cfg.path}: {e.strerror}") from None
            return enc.from_tiktoken(data, self.pattern)

        return _native_engine(cfg, build)

    def _library(self):
        import tiktoken

        if not hasattr(self, "ranks"):
            self.ranks = _checked_ranks(self.path)
        return tiktoken.Encoding(
            name=f"datasetprep-{Path(self.path).name}",
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special,
        )

    @property
    def enc(self):
        """The ``tiktoken`` encoding (built on first use when the native engine encodes)."""
        if self._enc is None:
            self._enc = self._library()
        return self._enc

    def encode(self, text: str):
        # Special-token strings in the text are ordinary text, as in SentencePiece: a document
        # that quotes "<|end_of_text|>" must not end early.
        if self.native is not None:
            try:
                return np.frombuffer(self.native.encode(text), dtype="<u4")
            except UnicodeEncodeError:
                return np.frombuffer(self.native.encode(_tiktoken_text(text)), dtype="<u4")
        return self.enc.encode_ordinary(text)

    def encode_many(self, texts: list[str]) -> list:
        # a plain loop: tiktoken's *_batch goes through a thread pool, 1.5x slower per process here
        return [self.encode(t) for t in texts]

    def encode_packed(self, texts: list[str], eod: int | None, dtype: np.dtype) -> Packed | None:
        try:
            return super().encode_packed(texts, eod, dtype)
        except UnicodeEncodeError:  # the native engine takes UTF-8: encode what tiktoken encodes
            return super().encode_packed([_tiktoken_text(t) for t in texts], eod, dtype)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def _checked_ranks(path) -> dict[bytes, int]:
    ranks = read_tiktoken_ranks(path)
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise TokenizerError(f"{path}: ranks must be 0..{n - 1} without gaps")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{path}: the rank file lacks single-byte tokens (e.g. byte {missing[0]})")
    return ranks


class NullTok(Tokenizer):
    kind = "null"
    engine = "null"

    def __init__(self, cfg: TokenizerConfig):
        self.vocab_size = int(cfg.vocab_size)
        self.eod = cfg.eod_id if cfg.eod_id is not None else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError:
            bad = next(x for x in text.split() if not x.lstrip("-").isdigit())
            raise TokenizerError(f"the null tokenizer reads space-separated integer ids; got {bad[:40]!r}") from None
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            bad = min(ids) if min(ids) < 0 else max(ids)
            raise TokenizerError(f"token id {bad} is outside the null tokenizer's vocabulary (ids 0.."
                                 f"{self.vocab_size - 1}): raise --vocab-size (spec: tokenizer.vocabSize) or fix "
                                 "the id")
        return ids

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


_CLASSES = {"sentencepiece": SentencePieceTok, "huggingface": HuggingFaceTok, "tiktoken": TikTok, "null": NullTok}


def _files_state(path: str | None) -> tuple:
    """(name, size, mtime, inode) of the files a tokenizer is read from."""
    if path is None:
        return ()
    p = Path(path)
    files = [p / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")] \
        if p.is_dir() else [p, p.parent / "tokenizer_config.json", p.parent / "special_tokens_map.json"]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


_LOADED: dict[tuple, Tokenizer] = {}
_PRELOADING: dict[tuple, tuple[threading.Thread, dict]] = {}


def _key(cfg: TokenizerConfig) -> tuple:
    return (cfg.kind, cfg.path, cfg.vocab_size, cfg.eod_id, cfg.add_special_tokens, cfg.use_native,
            repr(sorted(cfg.extra.items())), os.environ.get("DATASETPREP_NATIVE"), _files_state(cfg.path))


def _build(cfg: TokenizerConfig) -> Tokenizer:
    tok = _CLASSES[cfg.kind](cfg)
    check_eod(tok, cfg)
    return tok


def preload(cfg: TokenizerConfig) -> None:
    """Start loading the tokenizer of ``cfg`` on a thread; :func:`load` waits for it.  The native
    engines build without holding the GIL, so a large vocabulary's build (a 128k tokenizer.json
    takes a fifth of a second) overlaps the imports and checks that come before its first use.
    Any error is raised by :func:`load`, where it would have been raised without this."""
    key = _key(cfg)
    if key in _LOADED or key in _PRELOADING:
        return
    box: dict = {}

    def build() -> None:
        try:
            box["tok"] = _build(cfg)
        except BaseException as e:  # raised again by load(), in the caller's thread
            box["error"] = e

    t = threading.Thread(target=build, name="tokenizer-preload", daemon=True)
    _PRELOADING.clear()
    _PRELOADING[key] = (t, box)
    t.start()


def load(cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer of ``cfg``.  The last one loaded in this process is kept and returned again
    while its files are unchanged: worker processes forked after the driver loaded it start
    without loading it again (a 128k-token tokenizer takes a second)."""
    key = _key(cfg)
    tok = _LOADED.get(key)
    if tok is None:
        pre = _PRELOADING.pop(key, None)
        if pre is not None:
            thread, box = pre
            thread.join()
            if "error" in box:
                raise box["error"]
            tok = box["tok"]
        else:
            tok = _build(cfg)
        _LOADED.clear()
        _LOADED[key] = tok
    return tok


def check_eod(tok: Tokenizer, cfg: TokenizerConfig) -> None:
    """The end-of-document id must be a token of the vocabulary (ids 0 .. vocab_size-1)."""
    if tok.eod is not None and not 0 <= tok.eod < tok.vocab_size:
        given = cfg.eod_id is not None
        raise TokenizerError(
            f"{'--eod-id' if given else 'the end-of-document id'} {tok.eod} is outside the vocabulary of this "
            f"{tok.kind} tokenizer (ids 0..{tok.vocab_size - 1})"
            + ("; give an id of the vocabulary with --eod-id (spec: tokenizer.eodId), or leave it unset to use "
               "the tokenizer's own" if given else "; check the tokenizer files")
        )


def load_tokenizer(kind: str | None, path=None, **kw) -> Tokenizer:
    """Convenience: resolve and load in one call."""
    return load(resolve_config(kind, path, **kw))
