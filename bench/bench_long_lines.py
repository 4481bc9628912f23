"""Reading one very long JSONL line: time and peak memory of the reader, plain and .gz.

    python bench/bench_long_lines.py                 # 32, 128 and 512 MiB lines, plain and .gz
    python bench/bench_long_lines.py --sizes 32 128  # fewer
    python bench/bench_long_lines.py --bomb-gib 2    # also: a small .gz that expands to one 2 GiB line

Each case runs in a fresh child process (so its peak RSS is its own) and reads the file through
``readers.plan_chunks`` + ``readers.read_chunk`` (what a worker does before tokenizing), with the
maximum document size raised above the line.  The "bomb" case keeps the default maximum and shows
how fast, and in how much memory, an oversized line is refused.  Prints one line per case:
MiB/s of decompressed line, seconds, peak RSS of the child.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from datasetprep import readers
path, limit = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
err = None
n = 0
try:
    try:
        chunks = readers.plan_chunks([Path(path)], 32 << 20, max_document_bytes=limit)
    except TypeError:  # a version without the maximum (for before/after figures)
        chunks = readers.plan_chunks([Path(path)], 32 << 20)
    for c in chunks:
        for recs, _ in readers.read_chunk(c, ("text",)):
            n += sum(len(r[0]) for r in recs)
except readers.InputError as e:
    err = str(e)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "chars": n, "error": err,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_line_file(path: Path, mib: int, compress: bool) -> int:
    """One record {"text": "<mib MiB of words>"}; returns the decompressed size in bytes."""
    word = b"lorem ipsum dolor sit amet "
    block = word * ((1 << 20) // len(word)) + b"x" * ((1 << 20) % len(word))
    opener = (lambda p: gzip.open(p, "wb", compresslevel=6)) if compress else (lambda p: open(p, "wb"))
    with opener(path) as f:
        f.write(b'{"text": "')
        for _ in range(mib):
            f.write(block)
        f.write(b'"}\n')
    return mib * (1 << 20) + 12


def run_case(path: Path, limit: int, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(path), str(limit)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"still running after {timeout:.0f} s (stopped)", "seconds": timeout, "peak_rss_mib": 0}
    if p.returncode != 0:
        return {"error": f"child failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512], help="line sizes in MiB")
    ap.add_argument("--bomb-gib", type=float, default=2.0, help="the .gz bomb's line size in GiB (0: skip)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per case")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    print(f"# load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for mib in a.sizes:
            for compress in (False, True):
                f = Path(d) / (f"line{mib}.jsonl" + (".gz" if compress else ""))
                size = make_line_file(f, mib, compress)
                r = run_case(f, size + (1 << 20), a.timeout)
                if r.get("error"):
                    print(f"{mib:5d} MiB line {'.gz  ' if compress else 'plain'}: ERROR {r['error']}")
                else:
                    print(f"{mib:5d} MiB line {'.gz  ' if compress else 'plain'}: {mib / r['seconds']:8.1f} MiB/s "
                          f"{r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB")
                f.unlink()
        if a.bomb_gib:
            mib = int(a.bomb_gib * 1024)
            f = Path(d) / "bomb.jsonl.gz"
            make_line_file(f, mib, True)
            r = run_case(f, 256 << 20, a.timeout)
            print(f"bomb: {f.stat().st_size / 2**20:.1f} MiB .gz -> one {mib} MiB line, default maximum 256 MiB: "
                  f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB; "
                  f"{'refused: ' + r['error'][:160] if r.get('error') else 'NOT refused'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
