"""Where the shared test material lives (../shared next to the checkout, or DATASETPREP_SHARED)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATASETPREP_SHARED") or REPO.parent / "shared")
GOLDEN = SHARED / "golden"
SP_MODEL = GOLDEN / "tokenizers" / "a_sp_bpe8k" / "tokenizer.model"
HF_DIR = GOLDEN / "tokenizers" / "b_hf_bpe8k"
CORPUS_A = GOLDEN / "corpus_a.jsonl"
CORPUS_NULL = GOLDEN / "corpus_null.jsonl"


def golden_cases() -> list[dict]:
    """Every golden vector with the settings of the upstream command that made it."""
    cases = []
    for meta in sorted(GOLDEN.glob("*_document.json")):
        m = json.loads(meta.read_text())
        args = m["tokenizer_args"]
        kind = args[args.index("--tokenizer-type") + 1]
        model = args[args.index("--tokenizer-model") + 1] if "--tokenizer-model" in args else None
        vocab = int(args[args.index("--vocab-size") + 1]) if "--vocab-size" in args else None
        cmd = m["command"].split()
        partitions = int(cmd[cmd.index("--partitions") + 1]) if "--partitions" in cmd else 1
        cases.append({
            "name": meta.name[: -len("_text_document.json")],
            "prefix": GOLDEN / meta.name[: -len(".json")],
            "input": GOLDEN / m["input"]["path"],
            "kind": kind,
            "model": GOLDEN / model if model else None,
            "vocab_size": vocab,
            "append_eod": m["append_eod"],
            "partitions": partitions,
            "meta": m,
        })
    return cases


def read_texts(path: Path, key: str = "text") -> list[str]:
    """Records as Megatron reads them (text mode, universal newlines, json.loads)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)[key] for line in f]


def volume_manifest(name: str, prefix: str, workers: int = 1) -> str:
    """A DatasetPrep of the volume :func:`make_volume` makes: the corpus under raw/, the SentencePiece
    model, output ``prefix`` on claim ``data``, with EOD."""
    return f"""apiVersion: datasetprep.io/v1alpha1
kind: DatasetPrep
metadata: {{name: {name}}}
spec:
  source: {{files: {{paths: [raw/*.jsonl]}}, textKeys: [text]}}
  tokenizer: {{type: sentencepiece, path: {{path: tok/tokenizer.model}}}}
  output: {{claimName: data, prefix: {prefix}}}
  appendEod: true
  workers: {workers}
"""


def make_volume(root, manifest: str):
    """A volume folder with the golden corpus under raw/, the SentencePiece model under tok/ and
    ``manifest`` as dsp.yaml."""
    (root / "raw").mkdir()
    (root / "tok").mkdir()
    shutil.copy(CORPUS_A, root / "raw" / "corpus_a.jsonl")
    shutil.copy(SP_MODEL, root / "tok" / "tokenizer.model")
    (root / "dsp.yaml").write_text(manifest)
    return root
