#!/usr/bin/env python3
"""Single-core throughput: datasetprep_native.ByteLevelBPE vs HF `tokenizers` (one doc per call).

Usage: python bench/bpe_native_bench.py [--tokenizer PATH] [--corpus PATH] [--repeat N]

The corpus texts (corpus_a.jsonl by default) are encoded `--repeat` times; every pass is timed
and the best pass is reported, in MiB of UTF-8 input per second.  The first native pass (cold
word caches, includes one-off Unicode class table construction) is reported separately.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SHARED = Path(os.environ.get("DATASETPREP_SHARED", HERE.parents[2] / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=str(SHARED / "golden/tokenizers/b_hf_bpe8k/tokenizer.json"))
    ap.add_argument("--corpus", default=str(SHARED / "golden/corpus_a.jsonl"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-hf", action="store_true", help="skip the (slow) HF baseline")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time instead of wall clock (steadier on a busy machine)")
    args = ap.parse_args()

    import datasetprep_native
    import tokenizers

    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    mib = nbytes / 2**20
    print(f"corpus: {len(texts)} docs, {mib:.2f} MiB; tokenizer: {args.tokenizer}; "
          f"clock: {'process CPU time' if args.cpu_time else 'wall'}")

    clock = time.process_time if args.cpu_time else time.perf_counter

    def best(fn, n):
        times = []
        for _ in range(n):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return times

    results = {}
    if not args.no_hf:
        hf = tokenizers.Tokenizer.from_file(args.tokenizer)
        hf.encode(texts[1])
        ts = best(lambda: [hf.encode(t).ids for t in texts], max(1, min(args.repeat, 3)))
        results["hf Tokenizer.encode per doc"] = mib / min(ts)

    with open(args.tokenizer, encoding="utf-8") as f:
        tj = f.read()
    for label, kw in [("native", {}), ("native (chunking=False)", {"chunking": False})]:
        enc = datasetprep_native.ByteLevelBPE.from_json(tj, **kw)
        t0 = clock()
        for t in texts:
            enc.encode(t)
        results[f"{label} encode per doc, cold pass"] = mib / (clock() - t0)
        ts = best(lambda: [np.frombuffer(enc.encode(t), "<u4") for t in texts], args.repeat)
        results[f"{label} encode per doc"] = mib / min(ts)
        ts = best(lambda: enc.encode_many(texts), args.repeat)
        results[f"{label} encode_many"] = mib / min(ts)

    base = results.get("hf Tokenizer.encode per doc")
    for k, v in results.items():
        rel = f"  ({v / base:5.1f}x HF)" if base else ""
        print(f"{k:45s} {v:8.2f} MiB/s{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
