#!/usr/bin/env python3
"""Benchmark: the two endings of a sharded run, merged (`keepShards: false`) and kept shards.

Runs exactly what the Job pods run (`datasetprep job` with the spec in the environment), one pod
at a time on this machine, for both layouts on the same corpus and tokenizer:

  stage 1: N shard pods (JOB_COMPLETION_INDEX=i): tokenize slice i; with kept shards, also
           assemble and publish slice i as its own dataset;
  stage 2: the one `--merge` pod: assemble the whole dataset and hash the input (merged), or check
           the N shard manifests and write the blend list (kept).

It prints, per layout, the wall time and peak RSS (process tree) of each stage, the wall time a
cluster with N nodes would see (slowest shard pod + stage 2), and the ratio of the two stage-2
times.  Page cache is dropped before each pod when the machine allows it (root).

Usage: python bench/bench_keep_shards.py --corpus bench/data/corpus-200.jsonl [--shards 4] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_binarize import SP, run_ours as timed  # noqa: E402
from bench_merge import drop_caches  # noqa: E402


def pod(volume: Path, spec: dict, step: int, index: int | None = None) -> tuple[float, int]:
    """One job pod of the spec's run: stage ``step`` (0: the shards', 1: the merge), as the operator's Job
    manifest sets it up (the contract's environment)."""
    from datasetprep.contract import ENV_COMPLETION_INDEX, JobInputs, RunPlan
    from datasetprep.spec import parse_spec

    parsed = parse_spec(spec)
    inputs = JobInputs(spec=parsed, volumes={"data": str(volume)}, plan=RunPlan.stages(parsed)[step])
    env = dict(inputs.env(), DATASETPREP_TERMINATION_LOG=str(volume / "termination-log"))
    if index is not None:
        env[ENV_COMPLETION_INDEX] = str(index)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        os.sync()
        drop_caches()
        return timed([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())",
                      "job"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def layout(volume: Path, shards: int, workers: int, keep: bool) -> dict:
    spec = {"source": {"files": {"paths": ["corpus.jsonl"]}},
            "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
            "output": {"claimName": "data", "prefix": "kept/ds" if keep else "merged/ds"},
            "appendEod": True, "workers": workers, "shards": shards, "keepShards": keep}
    stage1 = [pod(volume, spec, 0, index=i) for i in range(shards)]
    stage2 = pod(volume, spec, 1)
    result = json.loads((volume / "termination-log").read_text())
    if not result.get("ok"):
        raise SystemExit(f"stage 2 failed: {result}")
    out = volume / ("kept" if keep else "merged")
    written = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".bin", ".idx"))
    return {"layout": "kept shards" if keep else "merged",
            "shard_pods_s": [round(t, 2) for t, _ in stage1], "shard_pod_peak_rss_mib": round(max(r for _, r in stage1) / 2**20),
            "stage2_s": round(stage2[0], 2), "stage2_peak_rss_mib": round(stage2[1] / 2**20),
            "cluster_wall_s": round(max(t for t, _ in stage1) + stage2[0], 2),
            "tokens": result["outputs"][0]["tokens"], "output_gib": round(written / 2**30, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    a = ap.parse_args()
    volume = Path(tempfile.mkdtemp(prefix="dsp-keep-", dir=a.dir))
    try:
        os.link(a.corpus, volume / "corpus.jsonl") if a.corpus.stat().st_dev == volume.stat().st_dev \
            else shutil.copy(a.corpus, volume / "corpus.jsonl")
        shutil.copy(SP, volume / "tokenizer.model")
        mib = a.corpus.stat().st_size / 2**20
        print(f"corpus {a.corpus} ({mib:.0f} MiB), {a.shards} shards, {a.workers} workers per pod, "
              "pods run one after another on this machine", flush=True)
        rows = [layout(volume, a.shards, a.workers, keep) for keep in (False, True)]
        for r in rows:
            print(json.dumps(r), flush=True)
        m, k = rows
        if m["tokens"] != k["tokens"]:
            raise SystemExit(f"token counts differ: merged {m['tokens']}, kept {k['tokens']}")
        print(f"stage 2: merged {m['stage2_s']} s, kept shards {k['stage2_s']} s "
              f"({m['stage2_s'] / max(k['stage2_s'], 1e-9):.1f}x shorter); slowest shard pod: merged "
              f"{max(m['shard_pods_s'])} s, kept {max(k['shard_pods_s'])} s; wall on {a.shards} nodes: merged "
              f"{m['cluster_wall_s']} s, kept {k['cluster_wall_s']} s")
    finally:
        shutil.rmtree(volume, ignore_errors=True)


if __name__ == "__main__":
    main()
