#!/usr/bin/env python3
"""Benchmark: end-to-end `datasetprep binarize` against the raw tokenizer limit, same run.

For each tokenizer type it prints
  * ours: MiB/s and tokens/s of `datasetprep binarize --workers W` end to end (process start-up,
    planning, tokenization, concatenation, fsync and publish included), and the peak RSS of the
    whole process tree (sampled from /proc every 20 ms);
  * raw: the same tokenizer library encoding the same texts one document at a time in a tight loop
    (texts already in memory, not timed), in W processes, each taking an equal share of the bytes;
  * the ratio ours / raw.

Usage:
  python bench/bench_binarize.py --corpus bench/data/corpus-200.jsonl [--workers 2]
         [--types sentencepiece,huggingface,huggingface-lib,tiktoken] [--raw-sample-mib 64]

`--raw-sample-mib` measures the raw limit on the first N MiB of the corpus (the rate is stable);
0 means the whole corpus.  Megatron-LM is not runnable here (it needs Python 3.12, torch and
triton); its figures quoted in bench/RESULTS.md come from the engine issue, measured on a corpus
made the same way on this kind of machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATASETPREP_SHARED") or REPO.parent / "shared")
SP = SHARED / "golden/tokenizers/a_sp_bpe8k/tokenizer.model"
HF = SHARED / "golden/tokenizers/b_hf_bpe8k"


def tree_rss(root: int) -> int:
    """Sum of VmRSS (bytes) over root and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[int(d)] = int(line.split()[1]) * 1024
                        break
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_ours(cmd: list[str]) -> tuple[float, int]:
    peak = 0
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(p.pid))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = p.communicate()
    el = time.perf_counter() - t0
    done.set()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"datasetprep failed: {err}")
    return el, peak


def _load_texts(path: Path, limit_bytes: int) -> list[str]:
    texts, n = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            texts.append(t)
            n += len(t.encode("utf-8"))
            if limit_bytes and n >= limit_bytes:
                break
    return texts


def _make_encoder(kind: str, extra: dict):
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(SP))
        return sp.encode_as_ids
    if kind in ("huggingface", "huggingface-lib"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(HF / "tokenizer.json"))
        return lambda t: tok.encode(t).ids
    if kind == "tiktoken":
        sys.path.insert(0, str(REPO / "jobimage"))
        from datasetprep.tokenization import TikTok, TokenizerConfig

        return TikTok(TokenizerConfig("tiktoken", extra["tiktoken_file"])).encode
    raise ValueError(kind)


def _raw_worker(kind, extra, texts, q, go):
    try:
        enc = _make_encoder(kind, extra)
    except BaseException as e:  # report, never leave the parent waiting
        q.put(f"error: {type(e).__name__}: {e}")
        raise
    q.put("ready")
    go.wait()  # all workers start together
    t0 = time.perf_counter()
    n = 0
    for t in texts:
        n += len(enc(t))
    q.put((time.perf_counter() - t0, n))


def run_raw(kind: str, extra: dict, texts: list[str], workers: int) -> tuple[float, int]:
    """Wall time for W processes each encoding an equal byte share, one document per call."""
    shares = [[] for _ in range(workers)]
    sizes = [0] * workers
    for t in texts:  # greedy balance by bytes
        i = sizes.index(min(sizes))
        shares[i].append(t)
        sizes[i] += len(t.encode("utf-8"))
    ctx = mp.get_context("fork")
    qs = [ctx.Queue() for _ in range(workers)]
    go = ctx.Event()
    ps = [ctx.Process(target=_raw_worker, args=(kind, extra, s, q, go)) for s, q in zip(shares, qs)]
    for p in ps:
        p.start()
    for q in qs:
        msg = q.get(timeout=120)
        if msg != "ready":
            for p in ps:
                p.kill()
            raise SystemExit(f"raw-limit worker failed: {msg}")
    go.set()
    res = [q.get() for q in qs]
    for p in ps:
        p.join()
    return max(r[0] for r in res), sum(r[1] for r in res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--types", default="sentencepiece,huggingface")
    ap.add_argument("--raw-sample-mib", type=float, default=64)
    ap.add_argument("--skip-raw", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    size = a.corpus.stat().st_size
    text_bytes_total = None
    tmp = Path(tempfile.mkdtemp(prefix="dsp-bench-"))
    extra = {}
    rows = []
    try:
        if "tiktoken" in a.types:
            sys.path.insert(0, str(REPO / "tests"))
            from tokfiles import ranks_from_hf_bpe, write_ranks

            extra["tiktoken_file"] = str(write_ranks(ranks_from_hf_bpe(), tmp / "ranks-derived-from-hf.model"))
        print(f"corpus {a.corpus} ({size / 2**20:.1f} MiB JSONL), {a.workers} workers, {os.cpu_count()} cores",
              flush=True)
        for kind in a.types.split(","):
            model = {"sentencepiece": SP, "huggingface": HF, "huggingface-lib": HF}.get(kind) or extra.get(
                "tiktoken_file")
            out = tmp / kind
            cmd = [sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(a.corpus), "--output-prefix",
                   str(out), "--tokenizer-model", str(model), "--workers", str(a.workers), "--append-eod",
                   "--no-progress"]
            if kind == "huggingface-lib":
                cmd.append("--no-native")
            if kind == "tiktoken":
                cmd += ["--eod-id", "0"]  # the derived rank file has no special tokens
            el, peak = run_ours(cmd)
            man = json.loads((tmp / f"{kind}.manifest.json").read_text())
            tokens = man["outputs"][0]["tokens"]
            engine = man["tokenizer"]["engine"]
            if text_bytes_total is None:
                text_bytes_total = sum(len(t.encode("utf-8")) for t in _load_texts(a.corpus, 0))
            ours_mib = text_bytes_total / 2**20 / el
            row = {"type": kind, "engine": engine, "seconds": round(el, 2), "text_mib": round(text_bytes_total / 2**20, 1),
                   "mib_s": round(ours_mib, 2), "jsonl_mib_s": round(size / 2**20 / el, 2),
                   "tokens_s": int(tokens / el), "peak_rss_mib": round(peak / 2**20, 1)}
            for f in tmp.glob(f"{kind}*"):
                f.unlink()
            if not a.skip_raw:
                texts = _load_texts(a.corpus, int(a.raw_sample_mib * 2**20))
                nb = sum(len(t.encode("utf-8")) for t in texts)
                rk = "huggingface" if kind == "huggingface-lib" else kind
                rel, rtok = run_raw(rk, extra, texts, a.workers)
                row.update({"raw_mib_s": round(nb / 2**20 / rel, 2), "raw_tokens_s": int(rtok / rel),
                            "raw_sample_mib": round(nb / 2**20, 1)})
                row["ratio"] = round(row["mib_s"] / row["raw_mib_s"], 2)
                del texts
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| type | engine | MiB/s (text) | tokens/s | raw limit MiB/s | ours/raw | peak RSS (tree) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['engine']} | {r['mib_s']} | {r['tokens_s']:,} | {r.get('raw_mib_s', '-')} | "
              f"{r.get('ratio', '-')} | {r['peak_rss_mib']} MiB |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
