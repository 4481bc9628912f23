"""A local fake of the HuggingFace Hub, for tests.

It speaks the HTTP API that the real clients call (``huggingface_hub`` 2.x, ``datasets`` 5.x and
``datasetprep.hub``) when ``HF_ENDPOINT`` points at it:

=====================================================  ===========================================
``GET  /api/{datasets|models}/{repo}``                 repo info at ``main`` (``sha``, ``siblings``,
``GET  /api/{datasets|models}/{repo}/revision/{rev}``  ``cardData``, ``gated``, ...; ``?blobs=true``
                                                       adds size / blobId / lfs to the siblings)
``GET  /api/{...}/{repo}/tree/{rev}[/{path}]``         tree listing, ``?recursive=``, paginated with a
                                                       ``Link: <...?cursor=N>; rel="next"`` header
``POST /api/{...}/{repo}/paths-info/{rev}``            form ``paths=..&expand=..``
``GET  /api/{...}/{repo}/refs``                        branches / converts
``GET  /api/{...}/{repo}/auth-check``                  200, or the gated/private error
``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}``     file content (Range supported), with
``HEAD|GET /{repo}/resolve/{rev}/{path}``              ``X-Repo-Commit``, ``ETag``, ``Content-Length``;
                                                       LFS files answer ``302`` to a "CDN" origin
                                                       (``http://localhost:PORT/cdn/<sha256>?sig=..``)
                                                       with ``X-Linked-Etag`` / ``X-Linked-Size``
``HEAD|GET /cdn/{sha256}``                             LFS content (must be reached WITHOUT a token)
=====================================================  ===========================================

Errors carry the ``X-Error-Code`` / ``X-Error-Message`` headers that ``hf_raise_for_status`` maps to
typed exceptions: ``RepoNotFound`` (404, or 401 for a private repo without a token),
``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit``), ``GatedRepo`` (401
without a token, 403 with a token that was not granted access).

Repos (all at fixed 40-hex commit shas; the data is generated deterministically at start):

* ``acme/tiny-corpus``  (dataset) README ``configs:``: subset ``en`` (default; Parquet, train in two
  shards + validation) and subset ``fr`` (JSON Lines: ``train`` plain ``.jsonl``, ``validation``
  ``.jsonl.gz``). Branch ``main`` and tag ``v1.0`` at :data:`TINY_SHA`.
* ``acme/layout-corpus`` (dataset) no ``configs:``: ``data/train-0000x-of-00002.parquet``,
  ``data/test-00000-of-00001.parquet``, and a ``extra/train-00000-of-00001.jsonl`` subfolder subset.
* ``acme/csv-corpus`` (dataset) only CSV on ``main``; ``refs/convert/parquet`` holds the Parquet export
  ``default/train/0000.parquet`` at :data:`CSV_EXPORT_SHA`.
* ``acme/gated-corpus`` (dataset, gated), ``acme/private-corpus`` (dataset, private).
* ``acme/flaky-corpus`` (dataset) whose data file answers 503 to its first two GETs (per reset).
* :data:`LAYOUTS` (datasets): split folders, split names in file names, one file at the root, README
  ``configs:`` with ``data_dir``, and with ``data_files`` as split/path lists -- for comparing the resolution
  of (subset, split) with the ``datasets`` library's.
* ``acme/gated-llama`` (model, gated) ``tokenizer.json`` (a tiny byte-level BPE trained with
  ``tokenizers``), ``tokenizer_config.json``, ``special_tokens_map.json``.
* ``acme/spm-model`` (model) ``tokenizer.model`` (a tiny SentencePiece model) and ``tokenizer_config.json``.
* ``wikitext`` (dataset, a legacy one-part id) subset ``wikitext-103-v1``, Parquet ``train`` and
  ``validation``, and ``meta-llama/Llama-3.1-8B`` (model, gated) laid out as the real one:
  ``tokenizer.json`` (the tiny BPE) at the root, tiktoken ranks (128000, Llama 3's specials follow)
  at ``original/tokenizer.model`` -- the NeMo guide's case, as the docs and examples use it.
* ``codeparrot/codeparrot-clean-valid`` (dataset) one gzipped JSON Lines file at the root, records with
  a ``content`` column (Python code) -- the second component of ``examples/blend.yaml``.
* anything else: 404 ``RepoNotFound`` everywhere (e.g. ``acme/missing``).

The server records every request (method, host, path, query, headers, status) and counts them per
(method, path); faults (status codes or connection resets) can be injected per path.

Use the ``fake_hub`` fixture: it starts the server once per session, resets records and faults for
each test, points ``HF_ENDPOINT`` at it, and moves ``HF_HOME`` and the caches into a temp dir.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

GOOD_TOKEN = "hf_FakeGoodToken0123456789abcdefGHIJ"  # granted access to the gated / private repos
WRONG_TOKEN = "hf_FakeWrongToken9876543210zyxwvuTSRQ"  # a valid account that was not granted access

TINY_REPO = "acme/tiny-corpus"
TINY_SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
TINY_OLD_SHA = "0f0e0d0c0b0a09080706050403020100f0e0d0c0"  # an older commit (branch ``old``)
LAYOUT_REPO = "acme/layout-corpus"
LAYOUT_SHA = "2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
CSV_REPO = "acme/csv-corpus"
CSV_SHA = "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
CSV_EXPORT_SHA = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70"
GATED_DATASET_REPO = "acme/gated-corpus"
GATED_DATASET_SHA = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
PRIVATE_REPO = "acme/private-corpus"
PRIVATE_SHA = "6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192"
FLAKY_REPO = "acme/flaky-corpus"
FLAKY_SHA = "708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3"
FLAKY_FILE = "data/train-00000-of-00001.jsonl"
GATED_MODEL_REPO = "acme/gated-llama"
GATED_MODEL_SHA = "8192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4"
SPM_MODEL_REPO = "acme/spm-model"
#: The NeMo guide's case (README, docs/quickstart.md, examples/wikitext-llama31.yaml): wikitext-103
#: (a legacy one-part repo id) and a gated repo laid out as meta-llama/Llama-3.1-8B is --
#: tokenizer.json at the root, the tiktoken ranks at original/tokenizer.model.
WIKITEXT_REPO = "wikitext"
WIKITEXT_SHA = "7" * 40
LLAMA31_REPO = "meta-llama/Llama-3.1-8B"
LLAMA31_SHA = "8" * 40
SPM_MODEL_SHA = "92a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5"
CODEPARROT_REPO = "codeparrot/codeparrot-clean-valid"
CODEPARROT_SHA = "9" * 40
MISSING_REPO = "acme/missing"
#: The DatasetPrep spec of the e2e tests whose job pods read from this Hub on the test bed
#: (tests/test_operator_hub_e2e.py, tests/test_netpol_e2e.py): a dataset and a gated tokenizer, the
#: token from the Secret ``hf-token``.
POD_RUN_SPEC: dict[str, Any] = {
    "source": {"hub": {"repo": TINY_REPO, "subset": "en", "split": "train"}, "textKeys": ["text"]},
    "tokenizer": {"type": "auto", "hub": {"repo": GATED_MODEL_REPO}},
    "output": {"claimName": "data", "prefix": "hub/tiny"},
    "appendEod": True,
    "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
}
#: More layouts, for comparing our (subset, split) -> files resolution with the datasets library's:
#: repo -> (commit, files, README front matter or None).
LAYOUTS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "acme/split-folders": ("a0b1c2d3e4f5061728394a5b6c7d8e9f00112233",
                           ("train/a.jsonl", "train/b.jsonl", "validation/0.jsonl", "test/0.jsonl"), None),
    "acme/split-names": ("b1c2d3e4f5061728394a5b6c7d8e9f0011223344",
                         ("my_train_0.jsonl", "my_train_1.jsonl", "dev.jsonl", "eval-set.jsonl", "NOTES.md"), None),
    "acme/single-file": ("c2d3e4f5061728394a5b6c7d8e9f001122334455", ("corpus.jsonl", "LICENSE"), None),
    "acme/config-data-dir": ("d3e4f5061728394a5b6c7d8e9f00112233445566",
                             ("a/train.jsonl", "a/test.jsonl", "b/part-0.jsonl", "b/part-1.jsonl"),
                             "configs:\n- config_name: a\n  data_dir: a\n  default: true\n"
                             "- config_name: b\n  data_files: b/*.jsonl\n"),
    "acme/config-mapping": ("e4f5061728394a5b6c7d8e9f0011223344556677",
                            ("d/train-0.parquet", "d/train-1.parquet", "d/extra.parquet", "d/test.parquet"),
                            "configs:\n- config_name: default\n  data_files:\n"
                            "  - split: train\n    path: [d/train-*.parquet, d/extra.parquet]\n"
                            "  - split: test\n    path: d/test.parquet\n"),
}

_TINY_README = """---
license: cc-by-4.0
language:
- en
- fr
configs:
- config_name: en
  default: true
  data_files:
  - split: train
    path: en/train-*.parquet
  - split: validation
    path: en/validation-*.parquet
- config_name: fr
  data_files:
  - split: train
    path: fr/train-*.jsonl
  - split: validation
    path: fr/validation-*.jsonl.gz
---
# tiny-corpus

A tiny bilingual corpus for tests.
"""

_LFS_EXTENSIONS = (".parquet", ".gz", ".zst", ".model", ".arrow")


# --------------------------------------------------------------------------------------------- data


def _texts(lang: str, split: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    words = {
        "en": ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "data", "model"],
        "fr": ["le", "renard", "brun", "rapide", "saute", "par-dessus", "chien", "paresseux", "é", "ça"],
    }[lang]
    out = []
    for i in range(start, start + n):
        k = 3 + (i * 7) % 11
        text = " ".join(words[(i * 3 + j * 5) % len(words)] for j in range(k))
        out.append({"id": f"{lang}-{split}-{i}", "text": f"{text} #{i}", "n": i})
    return out


_WIKITEXT_README = """---
configs:
- config_name: wikitext-103-v1
  data_files:
  - split: train
    path: wikitext-103-v1/train-*
  - split: validation
    path: wikitext-103-v1/validation-*
---
# wikitext (a few records in its layout)
"""


def _wikitext(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Records shaped like wikitext's: a ``text`` column, headings, paragraphs and empty lines."""
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        out.append({"text": f" = Section {i} = \n" if i % 5 == 0 else "" if i % 7 == 3 else
                    f" Paragraph {i} of the corpus , with words and numbers like {i * 37} . \n"})
    return out


def _code(n: int) -> list[dict[str, Any]]:
    """Records shaped like codeparrot's: the file's source in ``content``, with its metadata."""
    return [{"repo_name": f"acme/tool{i}", "path": f"tool{i}/main.py", "license": "mit",
             "content": f"def f{i}(x):\n    return x * {i} + {i * 3}\n\n\nprint(f{i}({i}))\n"} for i in range(n)]


def _parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    # Small row groups so streaming readers do several range reads.
    pq.write_table(pa.Table.from_pylist(records), buf, row_group_size=4)
    return buf.getvalue()


def _jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _train_bpe_tokenizer() -> bytes:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [r["text"] for lang in ("en", "fr") for r in _texts(lang, "train", 200)]
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str().encode()


def _train_sentencepiece(tmp: Path) -> bytes:
    try:
        import sentencepiece as spm

        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(r["text"] for lang in ("en", "fr") for r in _texts(lang, "train", 300)))
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(tmp / "spm"), vocab_size=60, model_type="bpe",
            character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
            minloglevel=2,
        )
        return (tmp / "spm.model").read_bytes()
    except Exception:  # pragma: no cover - sentencepiece is a project dependency, this is a fallback
        return b"\x0a\x0bnot-a-real-sentencepiece-model"


# --------------------------------------------------------------------------------------------- repos


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class FakeFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """Git blob oid: of the LFS pointer for LFS files (as on the Hub), of the content otherwise."""
        if self.lfs:
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            ).encode()
            return git_blob_oid(pointer)
        return git_blob_oid(self.data)

    def entry(self) -> dict[str, Any]:
        e: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs:
            e["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return e


@dataclasses.dataclass
class FakeRepo:
    repo_id: str
    repo_type: str  # "dataset" | "model"
    refs: dict[str, str]  # branch / tag / convert ref -> commit sha
    commits: dict[str, dict[str, FakeFile]]  # sha -> path -> file
    gated: bool = False
    private: bool = False

    def files_at(self, sha: str) -> dict[str, FakeFile]:
        return self.commits[sha]

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return revision
        return None


def _make_files(spec: dict[str, bytes]) -> dict[str, FakeFile]:
    files = {".gitattributes": FakeFile(".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", False)}
    for path, data in spec.items():
        files[path] = FakeFile(path, data, path.endswith(_LFS_EXTENSIONS))
    return files


def _card_data(files: dict[str, FakeFile]) -> dict[str, Any] | None:
    readme = files.get("README.md")
    if readme is None:
        return None
    import yaml

    text = readme.data.decode()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    return yaml.safe_load(m.group(1)) if m else None


class HubData:
    """The content of the fake Hub: repos, plus the records each split holds (for assertions)."""

    def __init__(self, tmp: Path) -> None:
        self.records: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
        self.repos: dict[tuple[str, str], FakeRepo] = {}

        # acme/tiny-corpus ------------------------------------------------------------------------
        en_train_a, en_train_b = _texts("en", "train", 10), _texts("en", "train", 7, start=10)
        en_val = _texts("en", "validation", 5)
        fr_train, fr_val = _texts("fr", "train", 9), _texts("fr", "validation", 6)
        self.records[(TINY_REPO, "en", "train")] = en_train_a + en_train_b
        self.records[(TINY_REPO, "en", "validation")] = en_val
        self.records[(TINY_REPO, "fr", "train")] = fr_train
        self.records[(TINY_REPO, "fr", "validation")] = fr_val
        tiny = _make_files({
            "README.md": _TINY_README.encode(),
            "en/train-00000-of-00002.parquet": _parquet_bytes(en_train_a),
            "en/train-00001-of-00002.parquet": _parquet_bytes(en_train_b),
            "en/validation-00000-of-00001.parquet": _parquet_bytes(en_val),
            "fr/train-00000-of-00001.jsonl": _jsonl_bytes(fr_train),
            "fr/validation-00000-of-00001.jsonl.gz": _gzip_bytes(_jsonl_bytes(fr_val)),
        })
        old = dict(tiny)
        old["en/train-00000-of-00002.parquet"] = FakeFile(
            "en/train-00000-of-00002.parquet", _parquet_bytes(en_train_a[:3]), True)
        old.pop("en/train-00001-of-00002.parquet")
        self.records[(TINY_REPO + "@old", "en", "train")] = en_train_a[:3]
        self._add(FakeRepo(TINY_REPO, "dataset", {"main": TINY_SHA, "v1.0": TINY_SHA, "old": TINY_OLD_SHA},
                           {TINY_SHA: tiny, TINY_OLD_SHA: old}))

        # acme/layout-corpus (no configs: conventional layout) -----------------------------------
        lt_a, lt_b, lt_test = _texts("en", "train", 4), _texts("en", "train", 3, start=4), _texts("en", "test", 2)
        extra = _texts("fr", "train", 3)
        self.records[(LAYOUT_REPO, None, "train")] = lt_a + lt_b
        self.records[(LAYOUT_REPO, None, "test")] = lt_test
        self.records[(LAYOUT_REPO, "extra", "train")] = extra
        self._add(FakeRepo(LAYOUT_REPO, "dataset", {"main": LAYOUT_SHA}, {LAYOUT_SHA: _make_files({
            "README.md": b"# layout corpus\nNo YAML here.\n",
            "data/train-00000-of-00002.parquet": _parquet_bytes(lt_a),
            "data/train-00001-of-00002.parquet": _parquet_bytes(lt_b),
            "data/test-00000-of-00001.parquet": _parquet_bytes(lt_test),
            "extra/train-00000-of-00001.jsonl": _jsonl_bytes(extra),
        })}))

        # acme/csv-corpus (CSV on main, Parquet export on refs/convert/parquet) ------------------
        csv_recs = _texts("en", "train", 5)
        self.records[(CSV_REPO, None, "train")] = csv_recs
        csv_text = "id,text,n\n" + "".join(f'{r["id"]},"{r["text"]}",{r["n"]}\n' for r in csv_recs)
        self._add(FakeRepo(CSV_REPO, "dataset", {"main": CSV_SHA, "refs/convert/parquet": CSV_EXPORT_SHA}, {
            CSV_SHA: _make_files({"README.md": b"# csv\n", "train.csv": csv_text.encode()}),
            CSV_EXPORT_SHA: _make_files({"default/train/0000.parquet": _parquet_bytes(csv_recs)}),
        }))

        # gated / private / flaky datasets --------------------------------------------------------
        small = _texts("en", "train", 3)
        for repo, sha, kw in ((GATED_DATASET_REPO, GATED_DATASET_SHA, {"gated": True}),
                              (PRIVATE_REPO, PRIVATE_SHA, {"private": True})):
            self.records[(repo, None, "train")] = small
            self._add(FakeRepo(repo, "dataset", {"main": sha}, {sha: _make_files({
                "data/train-00000-of-00001.parquet": _parquet_bytes(small)})}, **kw))
        self.records[(FLAKY_REPO, None, "train")] = small
        self._add(FakeRepo(FLAKY_REPO, "dataset", {"main": FLAKY_SHA}, {FLAKY_SHA: _make_files({
            FLAKY_FILE: _jsonl_bytes(small)})}))

        # more layouts (file lists only matter: every file holds the same few records) ------------
        few = _texts("en", "train", 2)
        for repo, (sha, paths, front) in LAYOUTS.items():
            content = {path: _parquet_bytes(few) if path.endswith(".parquet") else
                       _jsonl_bytes(few) if path.endswith(".jsonl") else b"not data\n" for path in paths}
            content["README.md"] = (f"---\n{front}---\n# {repo}\n" if front else f"# {repo}\n").encode()
            self._add(FakeRepo(repo, "dataset", {"main": sha}, {sha: _make_files(content)}))

        # models ----------------------------------------------------------------------------------
        self.tokenizer_json = _train_bpe_tokenizer()
        tok_config = json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                                 "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast"}).encode()
        special = json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}).encode()
        self._add(FakeRepo(GATED_MODEL_REPO, "model", {"main": GATED_MODEL_SHA}, {GATED_MODEL_SHA: _make_files({
            "README.md": b"---\nlicense: other\n---\n# gated llama\n",
            "config.json": b'{"model_type": "llama"}',
            "tokenizer.json": self.tokenizer_json,
            "tokenizer_config.json": tok_config,
            "special_tokens_map.json": special,
        })}, gated=True))
        from tokfiles import llama3_like_ranks, write_ranks

        self.llama_ranks = write_ranks(llama3_like_ranks(), tmp / "llama3-tokenizer.model").read_bytes()
        self._add(FakeRepo(LLAMA31_REPO, "model", {"main": LLAMA31_SHA}, {LLAMA31_SHA: _make_files({
            "README.md": b"---\nlicense: llama3.1\n---\n# Llama 3.1 8B (layout only)\n",
            "config.json": b'{"model_type": "llama", "vocab_size": 128256}',
            "generation_config.json": b'{"bos_token_id": 128000, "eos_token_id": 128001}',
            "model.safetensors.index.json": b'{"weight_map": {}}',
            "original/params.json": b'{"dim": 4096, "vocab_size": 128256}',
            "original/tokenizer.model": self.llama_ranks,
            "tokenizer.json": self.tokenizer_json,
            "tokenizer_config.json": tok_config,
            "special_tokens_map.json": special,
        })}, gated=True))
        wiki_train, wiki_val = _wikitext(40), _wikitext(6, start=40)
        self.records[(WIKITEXT_REPO, "wikitext-103-v1", "train")] = wiki_train
        self.records[(WIKITEXT_REPO, "wikitext-103-v1", "validation")] = wiki_val
        self._add(FakeRepo(WIKITEXT_REPO, "dataset", {"main": WIKITEXT_SHA}, {WIKITEXT_SHA: _make_files({
            "README.md": _WIKITEXT_README.encode(),
            "wikitext-103-v1/train-00000-of-00001.parquet": _parquet_bytes(wiki_train),
            "wikitext-103-v1/validation-00000-of-00001.parquet": _parquet_bytes(wiki_val),
        })}))
        code = _code(24)
        self.records[(CODEPARROT_REPO, None, "train")] = code
        self._add(FakeRepo(CODEPARROT_REPO, "dataset", {"main": CODEPARROT_SHA}, {CODEPARROT_SHA: _make_files({
            "README.md": b"# codeparrot-clean-valid\n",
            "file-000000000040.json.gz": _gzip_bytes(_jsonl_bytes(code)),
        })}))
        self.spm_model = _train_sentencepiece(tmp)
        self._add(FakeRepo(SPM_MODEL_REPO, "model", {"main": SPM_MODEL_SHA}, {SPM_MODEL_SHA: _make_files({
            "tokenizer.model": self.spm_model,
            "tokenizer_config.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
        })}))

    def _add(self, repo: FakeRepo) -> None:
        self.repos[(repo.repo_type, repo.repo_id)] = repo

    def repo(self, repo_type: str, repo_id: str) -> FakeRepo | None:
        return self.repos.get((repo_type, repo_id))

    def file(self, repo_id: str, path: str, sha: str | None = None, repo_type: str = "dataset") -> FakeFile:
        repo = self.repos[(repo_type, repo_id)]
        return repo.files_at(sha or repo.refs["main"])[path]


# --------------------------------------------------------------------------------------------- server


@dataclasses.dataclass
class RequestRecord:
    method: str
    host: str
    path: str  # decoded path, no query
    query: str
    headers: dict[str, str]  # lower-case names
    status: int = 0


@dataclasses.dataclass
class Fault:
    method: str | None  # None: any method
    path_re: re.Pattern[str]
    status: int  # HTTP status, or 0 for a connection reset (socket closed without an answer)
    times: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class _HttpError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections (or the injected resets) are not errors worth printing.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FakeHub:
    """The running server. ``endpoint`` is what HF_ENDPOINT must be set to."""

    tree_page_size = 3  # small, so that pagination is exercised

    def __init__(self, data: HubData, host: str = "127.0.0.1") -> None:
        """``host``: the address to listen on (pods of a real node reach the machine at the test bed's
        ``host_ip``); away from loopback the "CDN" is a second port of it (another origin)."""
        self.data = data
        self.good_token = GOOD_TOKEN
        self.wrong_token = WRONG_TOKEN
        self.lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.faults: list[Fault] = []
        self.holds: list[tuple[re.Pattern[str], threading.Event]] = []
        self.held = 0
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = _Server((host, 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://{host}:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another origin: the token must not be sent there
        self._servers = [self.httpd]
        if host != "127.0.0.1":
            cdn = _Server((host, 0), handler)
            cdn.daemon_threads = True
            self._servers.append(cdn)
            self.cdn = f"http://{host}:{cdn.server_address[1]}"
        self._threads = [threading.Thread(target=srv.serve_forever, name="fake-hub", daemon=True)
                         for srv in self._servers]

    # lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    def reset(self) -> None:
        """Forget recorded requests and faults, and re-arm the flaky repo (503 on its first 2 GETs)."""
        with self.lock:
            self.requests.clear()
            self.counts.clear()
            for _, gate in self.holds:
                gate.set()
            self.holds.clear()
            self.held = 0
            self.faults = [Fault("GET", re.compile(re.escape(f"/datasets/{FLAKY_REPO}/resolve/") + ".*"),
                                 503, 2)]

    # fault injection -------------------------------------------------------------------------------
    def inject(self, path_regex: str, status: int = 503, times: int = 1, method: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` (0 = drop the connection)."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path_regex), status, times, headers or {}))

    def hold(self, path_regex: str) -> threading.Event:
        """Hold every matching request (any method) until the returned event is set (at most 300 s),
        then answer it normally; ``held`` counts the requests that waited."""
        gate = threading.Event()
        with self.lock:
            self.holds.append((re.compile(path_regex), gate))
        return gate

    def _wait_if_held(self, path: str) -> None:
        with self.lock:
            gates = [g for rx, g in self.holds if rx.search(path) and not g.is_set()]
            self.held += len(gates)
        for gate in gates:
            gate.wait(300)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and (f.method is None or f.method == method) and f.path_re.search(path):
                    f.times -= 1
                    return f
        return None

    # assertions helpers ----------------------------------------------------------------------------
    def count(self, method: str | None = None, contains: str = "", status: int | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and contains in r.path
                       and (status is None or r.status == status))

    def file_downloads(self, repo: str | None = None) -> int:
        """GETs of file content (``/resolve/`` and ``/cdn/``), optionally for one repo only."""
        with self.lock:
            n = 0
            for r in self.requests:
                if r.method != "GET":
                    continue
                if "/resolve/" in r.path and (repo is None or f"/{repo}/resolve/" in r.path):
                    n += 1
                elif r.path.startswith("/cdn/") and repo is None:
                    n += 1
            return n

    def all_text(self) -> str:
        with self.lock:
            return "\n".join(f"{r.method} {r.host} {r.path}?{r.query} {r.headers}" for r in self.requests)

    def record(self, rec: RequestRecord) -> None:
        with self.lock:
            self.requests.append(rec)
            self.counts[(rec.method, rec.path)] += 1

    # auth ------------------------------------------------------------------------------------------
    def token_of(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def check_read(self, repo: FakeRepo, token: str | None, for_files: bool) -> None:
        kind = "model" if repo.repo_type == "model" else "dataset"
        if repo.private and token != self.good_token:
            if token is None:
                raise _HttpError(401, "RepoNotFound", "Invalid username or password.")
            raise _HttpError(404, "RepoNotFound", "Repository not found")
        if repo.gated and for_files and token != self.good_token:
            if token is None:
                raise _HttpError(401, "GatedRepo", f"Access to {kind} {repo.repo_id} is restricted. You must have "
                                 "access to it and be authenticated to access it. Please log in.")
            raise _HttpError(403, "GatedRepo", f"Access to {kind} {repo.repo_id} is restricted and you are not "
                             "in the authorized list.")


def _split_repo(hub: FakeHub, repo_type: str, segs: list[str]) -> tuple[FakeRepo | None, str, list[str]]:
    """Find the repo id at the start of ``segs`` (``owner/name`` or a legacy one-part id)."""
    for n in (2, 1):
        if len(segs) >= n:
            rid = "/".join(segs[:n])
            repo = hub.data.repo(repo_type, rid)
            if repo is not None:
                return repo, rid, segs[n:]
    n = 2 if len(segs) >= 2 else len(segs)
    return None, "/".join(segs[:n]), segs[n:]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # dispatch --------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        raw_path, query = parts.path, parts.query
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = b""
        if "content-length" in headers:
            body = self.rfile.read(int(headers["content-length"]))
        rec = RequestRecord(method, headers.get("host", ""), unquote(raw_path), query, headers)
        self.hub.record(rec)
        self.hub._wait_if_held(unquote(raw_path))
        fault = self.hub._take_fault(method, unquote(raw_path))
        if fault is not None:
            if fault.status == 0:
                rec.status = 0
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            rec.status = fault.status
            self._send(fault.status, {"error": "injected fault"}, dict(fault.headers), method=method)
            return
        try:
            status, payload, extra = self._route(method, raw_path, parse_qs(query), body, headers)
        except _HttpError as e:
            h = dict(e.headers)
            if e.code:
                h["X-Error-Code"] = e.code
            h["X-Error-Message"] = e.message
            rec.status = e.status
            self._send(e.status, {"error": e.message}, h, method=method)
            return
        rec.status = status
        self._send(status, payload, extra, method=method)

    def _send(self, status: int, payload: Any, headers: dict[str, str], method: str) -> None:
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
            headers.setdefault("Content-Type", "application/octet-stream")
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)

    # routes ----------------------------------------------------------------------------------------
    def _route(self, method: str, raw_path: str, q: dict[str, list[str]], body: bytes,
               headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        segs = [unquote(s) for s in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        token = hub.token_of(headers)
        if segs[:1] == ["cdn"] and len(segs) == 2:
            return self._cdn(method, segs[1], headers)
        if segs[:1] == ["api"] and len(segs) >= 3 and segs[1] in ("datasets", "models"):
            repo_type = segs[1][:-1]
            repo, rid, rest = _split_repo(hub, repo_type, segs[2:])
            if repo is None:
                raise _HttpError(404, "RepoNotFound", "Repository not found")
            hub.check_read(repo, token, for_files=False)
            return self._api(method, repo, rest, q, body, token)
        # file resolution: /datasets/{repo}/resolve/{rev}/{path} or /{repo}/resolve/{rev}/{path}
        repo_type = "model"
        rsegs = segs
        if segs[:1] == ["datasets"]:
            repo_type, rsegs = "dataset", segs[1:]
        if "resolve" in rsegs:
            i = rsegs.index("resolve")
            if method not in ("GET", "HEAD"):
                raise _HttpError(405, None, "method not allowed")
            repo = hub.data.repo(repo_type, "/".join(rsegs[:i]))
            if repo is None or i + 2 > len(rsegs):
                raise _HttpError(404, "RepoNotFound", "Repository not found")
            hub.check_read(repo, token, for_files=True)
            return self._resolve(method, repo, rsegs[i + 1], "/".join(rsegs[i + 2:]), headers)
        raise _HttpError(404, None, f"no route for {raw_path}")

    def _commit(self, repo: FakeRepo, rev: str) -> str:
        sha = repo.resolve(rev)
        if sha is None:
            raise _HttpError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def _api(self, method: str, repo: FakeRepo, rest: list[str], q: dict[str, list[str]], body: bytes,
             token: str | None) -> tuple[int, Any, dict[str, str]]:
        if not rest or rest[0] == "revision":
            if method != "GET":
                raise _HttpError(405, None, "method not allowed")
            rev = rest[1] if len(rest) >= 2 else "main"
            sha = self._commit(repo, rev)
            return 200, self._info(repo, sha, blobs=q.get("blobs", ["false"])[0].lower() == "true"), {}
        if rest[0] == "tree" and len(rest) >= 2 and method == "GET":
            sha = self._commit(repo, rest[1])
            return self._tree(repo, sha, rest[1], "/".join(rest[2:]), q)
        if rest[0] == "paths-info" and len(rest) == 2 and method == "POST":
            sha = self._commit(repo, rest[1])
            form = parse_qs(body.decode())
            files = repo.files_at(sha)
            out = []
            for p in form.get("paths", []):
                p = p.strip("/")
                if p in files:
                    out.append(files[p].entry())
                elif any(f.startswith(p + "/") for f in files):
                    out.append({"type": "directory", "oid": git_blob_oid(p.encode()), "size": 0, "path": p})
            return 200, out, {}
        if rest == ["refs"] and method == "GET":
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                        for n, s in repo.refs.items() if not n.startswith("refs/") and n != "v1.0"]
            converts = [{"name": n.split("/")[-1], "ref": n, "targetCommit": s}
                        for n, s in repo.refs.items() if n.startswith("refs/convert/")]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.refs.items() if n == "v1.0"]
            return 200, {"branches": branches, "converts": converts, "tags": tags}, {}
        if rest == ["auth-check"] and method == "GET":
            self.hub.check_read(repo, token, for_files=True)
            return 200, {}, {}
        raise _HttpError(404, None, "no such API route")

    def _info(self, repo: FakeRepo, sha: str, blobs: bool) -> dict[str, Any]:
        files = repo.files_at(sha)
        siblings = []
        for f in sorted(files.values(), key=lambda f: f.path):
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s["size"] = f.size
                s["blobId"] = f.oid
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(s)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": "2024-01-02T03:04:05.000Z",
            "createdAt": "2023-01-02T03:04:05.000Z",
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in files.values()),
        }
        card = _card_data(files)
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = "transformers"
        return info

    def _tree(self, repo: FakeRepo, sha: str, rev: str, path: str, q: dict[str, list[str]]
              ) -> tuple[int, Any, dict[str, str]]:
        files = repo.files_at(sha)
        recursive = q.get("recursive", ["false"])[0].lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise _HttpError(404, "EntryNotFound", f"{path} does not exist on {rev}",
                             {"X-Repo-Commit": sha})
        entries: dict[str, dict[str, Any]] = {}
        for p, f in files.items():
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            # directories on the way
            for k in range(1, len(parts)):
                if not recursive and k > 1:
                    break
                d = prefix + "/".join(parts[:k])
                entries.setdefault(d, {"type": "directory", "oid": git_blob_oid(d.encode()), "size": 0, "path": d})
            if recursive or len(parts) == 1:
                entries[p] = f.entry()
        ordered = [entries[k] for k in sorted(entries)]
        cursor = int(q.get("cursor", ["0"])[0])
        page = ordered[cursor:cursor + self.hub.tree_page_size]
        headers: dict[str, str] = {}
        if cursor + self.hub.tree_page_size < len(ordered):
            kind = "datasets" if repo.repo_type == "dataset" else "models"
            nxt = (f"{self.hub.endpoint}/api/{kind}/{repo.repo_id}/tree/{quote(rev, safe='')}"
                   + (f"/{quote(path.strip('/'), safe='')}" if prefix else "")
                   + f"?recursive={str(recursive).lower()}&expand=false&cursor={cursor + self.hub.tree_page_size}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        return 200, page, headers

    def _resolve(self, method: str, repo: FakeRepo, rev: str, path: str, headers: dict[str, str]
                 ) -> tuple[int, Any, dict[str, str]]:
        sha = self._commit(repo, rev)
        f = repo.files_at(sha).get(path)
        if f is None:
            raise _HttpError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        h = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            # As the Hub: a redirect to a signed URL on another origin, metadata on the redirect itself.
            h.update({
                "Location": f"{self.hub.cdn}/cdn/{f.sha256}?sig=fake-signature",
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "ETag": f'"{f.sha256}"',
            })
            return 302, None, h
        h["ETag"] = f'"{f.oid}"'
        return self._content(method, f.data, headers, h)

    def _cdn(self, method: str, sha256: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        for repo in self.hub.data.repos.values():
            for files in repo.commits.values():
                for f in files.values():
                    if f.lfs and f.sha256 == sha256:
                        return self._content(method, f.data, headers, {"ETag": f'"{f.sha256}"',
                                                                        "Accept-Ranges": "bytes"})
        raise _HttpError(404, None, "no such object")

    def _content(self, method: str, data: bytes, req_headers: dict[str, str], h: dict[str, str]
                 ) -> tuple[int, Any, dict[str, str]]:
        rng = req_headers.get("range")
        total = len(data)
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise _HttpError(416, None, "bad range", {"Content-Range": f"bytes */{total}"})
            if m.group(1) == "":  # suffix range
                start, end = max(0, total - int(m.group(2))), total - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            if start >= total or start > end:
                raise _HttpError(416, None, "range not satisfiable", {"Content-Range": f"bytes */{total}"})
            h["Content-Range"] = f"bytes {start}-{end}/{total}"
            h["Content-Length"] = str(end - start + 1)
            return 206, (data[start:end + 1] if method == "GET" else None), h
        h["Content-Length"] = str(total)
        return 200, (data if method == "GET" else None), h


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def _fake_hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    data = HubData(tmp_path_factory.mktemp("fakehub-data"))
    hub = FakeHub(data).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def fake_hub(_fake_hub_server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub, with clean records, and the HF clients pointed at it with a private HF_HOME.

    ``huggingface_hub`` and ``datasets`` read some settings at import time, so the module-level
    constants are patched as well as the environment.
    """
    hub = _fake_hub_server
    hub.reset()
    point_clients_at(hub, tmp_path / "hf-home", monkeypatch)
    yield hub


def point_clients_at(hub: FakeHub, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the HF clients of this process at ``hub``, with a private HF_HOME ``home``."""
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "DO_NOT_TRACK": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HF_TOKEN_FILE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
              "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)

    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    try:
        import datasets.config as dc
    except ImportError:  # pragma: no cover
        dc = None
    if dc is not None:
        monkeypatch.setattr(dc, "HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(dc, "HUB_DATASETS_URL", hub.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
        monkeypatch.setattr(dc, "HF_DATASETS_OFFLINE", False)
        monkeypatch.setattr(dc, "HF_DATASETS_CACHE", home / "datasets")
        monkeypatch.setattr(dc, "HF_HUB_OFFLINE", False, raising=False)
        monkeypatch.setattr(dc, "USE_PARQUET_EXPORT", False, raising=False)
