"""Example specs and job results shared by the operator's tests (camelCase specs as in a resource,
results as the job writes them)."""
from __future__ import annotations

from typing import Any


SPEC = {
    "source": {"files": {"paths": ["corpus.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
}


RESULT = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 3, "sequences": 3,
                 "tokens": 30, "dtype": "uint16", "bin_sha256": "b", "idx_sha256": "i"}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2,
                  "fingerprint": "t" * 64},
    "fingerprint": "f", "resolved_revision": None,
}


def sharded(**extra: Any) -> dict:
    return {**SPEC, "shards": 3, **extra}


KEPT_RESULT = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 3, "sequences": 3,
                 "tokens": 30, "dtype": "uint16", "blend_file": "llama_dataset_text_document.blend.txt",
                 "shards": 3, "blend_weights": [12, 0, 18]}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2,
                  "fingerprint": "t" * 64},
    "fingerprint": "f", "resolved_revision": None,
}


HUB_SPEC = {
    "source": {"hub": {"repo": "wikitext", "subset": "wikitext-103-v1", "split": "train"}},
    "tokenizer": {"type": "tiktoken", "hub": {"repo": "meta-llama/Llama-3.1-8B", "file": "tokenizer.model"}},
    "output": {"claimName": "datasets", "prefix": "llama_dataset"},
    "hfTokenSecretRef": {"name": "hf-token"},
    "resources": {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
}


FILES_SPEC = {
    "source": {"files": {"claimName": "raw", "paths": ["corpus/*.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"claimName": "models", "path": "sp/tokenizer.model"}},
    "output": {"claimName": "datasets", "prefix": "out/a", "mountPath": "/data"},
}


SUCCESS = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 526, "sequences": 522,
                 "tokens": 821228, "dtype": "uint16", "bin_sha256": "b" * 64, "idx_sha256": "i" * 64}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2,
                  "fingerprint": "t" * 64},
    "fingerprint": "f" * 64,
    "resolved_revision": None,
}
