#!/usr/bin/env python3
"""Per-core A/B of native engine builds: one fresh process per measurement, builds interleaved.

Each measurement loads a ``datasetprep_native`` build (a ``.so``: the installed one, or one built
from another commit with ``cargo build --release``), builds the engine of the Llama-3-shaped
``tokenizer.json`` or ``tokenizer.model`` (bench/llama3_shaped.py) and encodes the first
``--mib`` MiB of the corpus's texts one document per call; it prints the build's CPU seconds and
the encode's MiB of text per CPU-second.  Interleaving the builds in fresh processes makes the
comparison fair on a machine whose load moves.

Usage:
  python bench/bench_native_ab.py --corpus bench/data/corpus-200.jsonl \\
      --engine json-before=/tmp/old/libdatasetprep_native.so:json --engine json=:json --engine model=:model
  (``NAME=SO:KIND``; an empty SO is the installed module; KIND is json or model)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

CHILD = r'''
import importlib.machinery, importlib.util, json, sys, time
so, kind, folder, corpus, mib = sys.argv[1:6]
if so:
    loader = importlib.machinery.ExtensionFileLoader("datasetprep_native", so)
    spec = importlib.util.spec_from_file_location("datasetprep_native", so, loader=loader)
    dn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dn)
else:
    import datasetprep_native as dn
from pathlib import Path
texts, n = [], 0
with open(corpus, encoding="utf-8") as f:
    for line in f:
        t = json.loads(line)["text"]
        texts.append(t)
        n += len(t.encode())
        if n >= float(mib) * 2**20:
            break
folder = Path(folder)
pattern = json.loads((folder / "tokenizer.json").read_text())["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
c = time.process_time()
if kind == "json":
    data = (folder / "tokenizer.json").read_bytes()
    try:
        e = dn.Encoder.from_json(data, True)
    except TypeError:  # builds before from_json took bytes
        e = dn.Encoder.from_json(data.decode(), True)
else:
    e = dn.Encoder.from_tiktoken((folder / "tokenizer.model").read_bytes(), pattern)
build = time.process_time() - c
c = time.process_time()
for t in texts:
    e.encode(t)
print(json.dumps({"build_cpu_s": build, "encode_mib_per_cpu_s": n / 2**20 / (time.process_time() - c)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--engine", action="append", required=True, help="NAME=SO:KIND (SO empty: the installed module)")
    ap.add_argument("--mib", type=float, default=16)
    ap.add_argument("--runs", type=int, default=4)
    a = ap.parse_args()
    import llama3_shaped

    folder = llama3_shaped.ensure(a.corpus)
    engines = {}
    for spec in a.engine:
        name, _, rest = spec.partition("=")
        so, _, kind = rest.rpartition(":")
        if kind not in ("json", "model"):
            raise SystemExit(f"--engine {spec!r}: KIND must be json or model")
        engines[name] = (so, kind)
    results: dict[str, list[dict]] = {k: [] for k in engines}
    for _ in range(a.runs):
        for name, (so, kind) in engines.items():
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-c", CHILD, so, kind, str(folder), str(a.corpus), str(a.mib)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out) | {"load": load}
            results[name].append(r)
            print(name, json.dumps(r), flush=True)
    print()
    print("| engine | encode MiB/s per CPU-second | mean | build the engine, CPU s | load |")
    print("|---|---|---|---|---|")
    for name, rs in results.items():
        v = [r["encode_mib_per_cpu_s"] for r in rs]
        b = [r["build_cpu_s"] for r in rs]
        ld = [r["load"] for r in rs]
        print(f"| {name} | {' / '.join(f'{x:.2f}' for x in v)} | {sum(v) / len(v):.1f} | "
              f"{min(b):.2f}–{max(b):.2f} | {min(ld):.1f}–{max(ld):.1f} |")


if __name__ == "__main__":
    main()
