#!/usr/bin/env python3
"""Benchmark: streaming merge (concatenation of indexed datasets) against a plain file copy.

Builds N synthetic shard datasets (random token ids, realistic length distribution) totalling
``--gib`` GiB of ``.bin``, then measures in the same run:
  * ``datasetprep merge`` of the N shards (a subprocess; wall time, peak RSS of its tree), and
  * a plain copy of the same bytes (``cat shard*.bin > copy.bin`` equivalent with shutil, fsynced),
and prints GiB/s for both and the ratio merge/copy (target >= 0.5), plus RSS at two sizes to show
it does not grow with the data.

Usage: python bench/bench_merge.py [--gib 2] [--shards 8] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_binarize import run_ours as timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobimage"))
from datasetprep import indexed  # noqa: E402


def make_shard(prefix: Path, nbytes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = indexed.PartWriter(prefix, np.uint16)
    left = nbytes // 2
    while left > 0:
        n = int(min(left, 1 << 20))
        lens = rng.geometric(1 / 600, size=max(1, n // 600)).astype(np.int64)
        lens = lens[np.cumsum(lens) <= n]
        if not len(lens):
            lens = np.array([n])
        toks = rng.integers(0, 32000, size=int(lens.sum()), dtype=np.uint16)
        w.add_packed(toks, lens, np.ones(len(lens), dtype=np.int32))
        left -= int(lens.sum())
    info = w.close()
    indexed.assemble([info], os.fspath(prefix) + "_ds", np.dtype(np.uint16))
    for ext in (".bin", ".len", ".doc"):
        os.unlink(os.fspath(prefix) + ext)


def copy_files(srcs: list[Path], dst: Path) -> float:
    t0 = time.perf_counter()
    with open(dst, "wb") as out:
        for s in srcs:
            with open(s, "rb") as f:
                shutil.copyfileobj(f, out, 8 << 20)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - t0


def drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        pass


def one(size_gib: float, shards: int, base: Path) -> dict:
    d = Path(tempfile.mkdtemp(prefix="dsp-merge-", dir=base))
    try:
        per = int(size_gib * 2**30 / shards)
        for i in range(shards):
            make_shard(d / f"s{i:03d}", per, i)
        prefixes = [os.fspath(d / f"s{i:03d}_ds") for i in range(shards)]
        bins = [Path(p + ".bin") for p in prefixes]
        total = sum(b.stat().st_size for b in bins) + sum(Path(p + ".idx").stat().st_size for p in prefixes)
        os.sync()
        drop_caches()
        ct = copy_files(bins + [Path(p + ".idx") for p in prefixes], d / "copy.bin")
        (d / "copy.bin").unlink()
        os.sync()
        drop_caches()
        mt, peak = timed([sys.executable, "-m", "datasetprep.cli", "merge", "--input", *prefixes,
                          "--output-prefix", os.fspath(d / "merged")])
        return {"gib": round(total / 2**30, 2), "shards": shards, "merge_s": round(mt, 2),
                "merge_gib_s": round(total / 2**30 / mt, 3), "copy_s": round(ct, 2),
                "copy_gib_s": round(total / 2**30 / ct, 3), "ratio": round(ct / mt, 2),
                "merge_peak_rss_mib": round(peak / 2**20, 1)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    a = ap.parse_args()
    rows = [one(a.gib / 4, a.shards, a.dir), one(a.gib, a.shards, a.dir)]
    print("| data (GiB) | shards | merge GiB/s | copy GiB/s | merge/copy | merge peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gib']} | {r['shards']} | {r['merge_gib_s']} | {r['copy_gib_s']} | {r['ratio']} | "
              f"{r['merge_peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
