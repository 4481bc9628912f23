#!/usr/bin/env python3
"""The Llama-3-shaped tokenizer pair of the benchmarks, trained on the bench corpus and cached.

128,000 byte-level BPE ranks trained with HF ``tokenizers`` on the first ``--train-mib`` MiB of
the corpus's texts (Llama 3's split pattern), written the way Llama 3 ships them: the rank file
``tokenizer.model`` (datasetprep reads it as a tiktoken file with Llama 3's 256 special tokens,
ids 128000-128255, int32 output) and the ``tokenizer.json`` that transformers' TikTokenConverter
makes from it (ignore_merges, the specials as added tokens, a BOS template), with a
``tokenizer_config.json`` naming BOS/EOS.  Cached under ``bench/data/llama3-shaped-<hash>/``
(the hash covers the corpus's size, the sample and the recipe), so later runs reuse it.

Usage: python bench/llama3_shaped.py --corpus bench/data/corpus-200.jsonl  (prints the folder)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tokfiles import train_byte_level_ranks, write_llama3_pair  # noqa: E402

RECIPE = "llama3-shaped v1: 128000 ranks, LLAMA3_PATTERN, TikTokenConverter merges, 256 specials, BOS template"


def texts_of(corpus: Path, mib: float):
    n = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            yield t
            n += len(t.encode("utf-8"))
            if n >= mib * 2**20:
                return


def ensure(corpus: Path, train_mib: float = 100, n_ranks: int = 128000) -> Path:
    key = hashlib.sha256(f"{RECIPE}|{corpus.stat().st_size}|{train_mib}|{n_ranks}".encode()).hexdigest()[:12]
    folder = REPO / "bench" / "data" / f"llama3-shaped-{key}"
    if (folder / "tokenizer.json").is_file():
        return folder
    t0 = time.time()
    ranks = train_byte_level_ranks(texts_of(corpus, train_mib), n_ranks)
    if len(ranks) != n_ranks:
        raise SystemExit(f"training gave {len(ranks)} ranks, not {n_ranks}: use a larger --train-mib")
    tmp = folder.with_name(folder.name + ".tmp")
    write_llama3_pair(ranks, tmp)
    tmp.rename(folder)
    print(f"trained {n_ranks} ranks on {train_mib} MiB in {time.time() - t0:.0f} s -> {folder}", file=sys.stderr)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--train-mib", type=float, default=100)
    a = ap.parse_args()
    print(ensure(a.corpus, a.train_mib))


if __name__ == "__main__":
    main()
