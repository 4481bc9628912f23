"""Manifests that go through pydantic (test_crd.py) and through the API server (test_crd_cluster.py):
both must accept or both reject, for the same reason."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from datasetprep.spec import format_validation_error, parse_spec
from paths import REPO


VALID_FILES = {
    "source": {"files": {"paths": ["corpus/*.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
}


VALID_HUB = {
    "source": {"hub": {"repo": "wikitext", "subset": "wikitext-103-v1"}},
    "tokenizer": {"type": "tiktoken", "hub": {"repo": "meta-llama/Llama-3.1-8B", "file": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
    "hfTokenSecretRef": {"name": "hf-token"},
}


def variant(base: dict, path: str, value: Any) -> dict:
    """A copy of ``base`` with ``path`` (dotted) set to ``value``, or removed for ``...``."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return data


CASES: list[tuple[str, dict, str | None, str | None]] = [
    ("valid-files", VALID_FILES, None, None),
    ("valid-hub", VALID_HUB, None, None),
    ("valid-null-tokenizer", variant(VALID_FILES, "tokenizer", {"type": "null", "vocabSize": 65500}), None, None),
    ("valid-dots-in-names", variant(VALID_FILES, "output.prefix", "a/b..c/...d"), None, None),
    ("valid-dot-slash", variant(VALID_FILES, "source.files.paths", ["./corpus.jsonl"]), None, None),
    ("valid-keep-shards", VALID_FILES | {"shards": 3, "keepShards": True}, None, None),
    ("valid-keep-shards-off", VALID_FILES | {"keepShards": False}, None, None),
    ("valid-parallelism", VALID_FILES | {"shards": 4, "parallelism": 4}, None, None),
    ("source-both", variant(VALID_FILES, "source.hub", {"repo": "wikitext"}),
     "exactly one of `hub` or `files`", "exactly one of `hub` or `files`"),
    ("source-neither", variant(VALID_FILES, "source.files", ...),
     "exactly one of `hub` or `files`", "exactly one of `hub` or `files`"),
    ("null-with-path", variant(VALID_FILES, "tokenizer", {"type": "null", "vocabSize": 10, "path": {"path": "t"}}),
     "takes no `hub` or `path`", "takes no `hub` or `path`"),
    ("null-without-vocab", variant(VALID_FILES, "tokenizer", {"type": "null"}),
     "needs `vocabSize`", "needs `vocabSize`"),
    ("tokenizer-both", variant(VALID_FILES, "tokenizer.hub", {"repo": "gpt2"}),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("tokenizer-neither", variant(VALID_FILES, "tokenizer.path", ...),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("tokenizer-auto-neither", variant(VALID_FILES, "tokenizer", {}),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("vocab-for-sentencepiece", variant(VALID_FILES, "tokenizer.vocabSize", 8000),
     "only for type `null`", "only for type `null`"),
    ("prefix-absolute", variant(VALID_FILES, "output.prefix", "/data/x"), "relative path", "relative path"),
    ("prefix-dotdot", variant(VALID_FILES, "output.prefix", "a/../../x"), "'..'", "'..'"),
    ("prefix-dotdot-end", variant(VALID_FILES, "output.prefix", "a/.."), "'..'", "'..'"),
    ("prefix-dot", variant(VALID_FILES, "output.prefix", "./"), "must name a file or prefix",
     "must name a file or prefix"),
    ("prefix-folder", variant(VALID_FILES, "output.prefix", "data/"), "names a folder", "names a folder"),
    ("prefix-folder-dot", variant(VALID_FILES, "output.prefix", "data/."), "names a folder", "names a folder"),
    ("valid-max-document-bytes", VALID_FILES | {"maxDocumentBytes": 1 << 30}, None, None),
    ("max-document-bytes-small", VALID_FILES | {"maxDocumentBytes": 100}, "greater than or equal to 1024",
     "greater than or equal to 1024"),
    ("max-document-bytes-huge", VALID_FILES | {"maxDocumentBytes": 1 << 40}, "less than or equal to",
     "less than or equal to"),
    ("paths-absolute", variant(VALID_FILES, "source.files.paths", ["ok.jsonl", "/etc/x.jsonl"]),
     "relative path", "relative path"),
    ("paths-dotdot", variant(VALID_FILES, "source.files.paths", ["../x.jsonl"]), "'..'", "'..'"),
    ("tokenizer-path-absolute", variant(VALID_FILES, "tokenizer.path.path", "/models/t.model"),
     "relative path", "relative path"),
    ("parallelism-over-shards", VALID_FILES | {"shards": 2, "parallelism": 3},
     "cannot exceed shards", "cannot exceed shards"),
    ("parallelism-over-default-shards", VALID_FILES | {"parallelism": 2},
     "cannot exceed shards", "cannot exceed shards"),
    ("keep-shards-one-shard", VALID_FILES | {"keepShards": True},
     "keepShards needs shards > 1", "keepShards needs shards > 1"),
    ("keep-shards-shards-1", VALID_FILES | {"shards": 1, "keepShards": True},
     "keepShards needs shards > 1", "keepShards needs shards > 1"),
    ("text-keys-duplicate", variant(VALID_FILES, "source.textKeys", ["text", "code", "text"]),
     "duplicates", "Duplicate value"),
    ("text-keys-charset", variant(VALID_FILES, "source.textKeys", ["te xt"]), "may only hold", "should match"),
    ("text-keys-empty", variant(VALID_FILES, "source.textKeys", []), "at least 1 item", "should have at least 1"),
    ("workers-zero", VALID_FILES | {"workers": 0}, "greater than or equal to 1", "greater than or equal to 1"),
    ("tokenizer-type-unknown", variant(VALID_FILES, "tokenizer.type", "bpe"), "'auto'", "Unsupported value"),
    ("claim-name-invalid", variant(VALID_FILES, "output.claimName", "Data_1"), "should match", "should match"),
    ("hub-repo-invalid", variant(VALID_HUB, "source.hub.repo", "a/b/c"), "should match", "should match"),
    ("missing-output", variant(VALID_FILES, "output", ...), "Field required", "Required value"),
    ("unknown-field", VALID_FILES | {"tokenizerPath": "x"}, "Extra inputs are not permitted", "unknown field"),
]


def pydantic_verdict(spec: dict) -> str | None:
    try:
        parse_spec(copy.deepcopy(spec))
    except ValidationError as exc:
        return format_validation_error(exc)
    return None


EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if p.name != "training-job.yaml")
"""Examples holding DatasetPreps (training-job.yaml, the training side of blend.yaml, is checked in
test_blending.py)."""


def example_preps(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "DatasetPrep"]
