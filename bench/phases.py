#!/usr/bin/env python3
"""Phase times of one `datasetprep` command: imports, then `prepare` (tokenizer load, plan),
`_tokenize` (the workers) and `_publish_merged` (assembly, fsync, renames), each timed around the
pipeline function, printed on stderr.  For A/B runs of two builds, point PYTHONPATH at one's jobimage/.

Usage: python bench/phases.py binarize --input CORPUS --output-prefix OUT --tokenizer-model TOK \\
           --workers 2 --append-eod --no-progress
"""
import functools
import sys
import time

T0 = time.perf_counter()
sys.argv = ["datasetprep"] + sys.argv[1:]
from datasetprep import cli, pipeline  # noqa: E402

marks = [("imports", T0, time.perf_counter())]


def _timed(mod, name):
    f = getattr(mod, name)

    @functools.wraps(f)
    def g(*a, **k):
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            marks.append((name, s, time.perf_counter()))
    setattr(mod, name, g)


for _name in ("prepare", "_tokenize", "_publish_merged"):
    _timed(pipeline, _name)
rc = cli.main()
print(" ".join(f"{m[0]} {m[2] - m[1]:.2f}" for m in marks), f"total {time.perf_counter() - T0:.2f}", file=sys.stderr)
sys.exit(rc)
