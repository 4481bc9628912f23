#!/usr/bin/env python3
"""Benchmark: end-to-end `datasetprep binarize` against the tokenizer libraries' raw limits, same run.

For each tokenizer it prints
  * per core: every engine (ours, tiktoken, riptoken, tokenizers, sentencepiece — those that read
    the file) encoding the first ``--core-sample-mib`` MiB of texts one document per call, in one
    process, timed with process CPU time (steadier than wall time on a shared machine);
  * end to end: MiB/s and tokens/s of `datasetprep binarize --workers W --append-eod` as a
    subprocess (start-up, planning, reading and parsing JSONL, tokenization, writing parts,
    concatenation, checksums, fsync and publish included), and the peak RSS of the whole process
    tree (sampled from /proc every 20 ms);
  * raw limits: each reference library encoding the same texts (the first ``--raw-sample-mib`` MiB,
    0 = the whole corpus) one document per call in a tight loop (texts already in memory, not
    timed) in W processes with equal byte shares, wall time;
  * the ratio lines of issue 14: ours / tiktoken raw (goal ≥ 2), ours / riptoken raw (goal ≥ 1.3),
    ours / sentencepiece raw (goal ≥ 0.95, every one of ``--sp-runs`` back-to-back runs); with
    ``--runs N`` every other tokenizer is measured N times back to back too (each run its own
    end-to-end figure and raw limits), and the lowest, median and highest ratio are printed;
  * beside every wall-clock figure, the same per CPU-second (user + system time of the whole
    process tree): on a machine shared with other work the wall-clock ratios move with the
    load from one measurement to the next, the CPU ratios much less (they leave out the serial
    start and end of a run, so they flatter ours a little).

Tokenizers (``--types``):
  hf8k          the golden HF byte-level BPE tokenizer.json (GPT-2 pattern, 8000 + 1);
                references: tiktoken and riptoken on the rank file derived from it with the same
                pattern, tokenizers on the tokenizer.json
  tt8k          that rank file read as a tiktoken file (Llama 3's pattern, as datasetprep reads
                rank files); references: tiktoken, riptoken
  llama3-json   the Llama-3-shaped pair's tokenizer.json (bench/llama3_shaped.py: 128,000 ranks
                trained on the corpus, cached); references: tiktoken and riptoken on its
                tokenizer.model (same ids, no BOS), tokenizers on the tokenizer.json
  llama3-model  the pair's tokenizer.model (a tiktoken rank file, int32 output)
  sentencepiece the golden SentencePiece BPE (8000); reference: sentencepiece
  hf-lib        hf8k with --no-native (the tokenizers library path); reference: tokenizers

Usage (one line, as the coordinator re-runs it):
  python bench/bench_binarize.py --corpus bench/data/corpus-200.jsonl --workers 2 \
      --types hf8k,tt8k,llama3-json,llama3-model,sentencepiece --sp-runs 3 --json bench/out/binarize.json
Peak RSS against input size (end to end only):
  python bench/bench_binarize.py --corpus bench/data/corpus-1200.jsonl --workers 2 \
      --types hf8k,tt8k,llama3-json,llama3-model,sentencepiece --core-sample-mib 0 --skip-raw
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "jobimage"))
sys.path.insert(0, str(REPO / "bench"))

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


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


def run_ours(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak tree RSS and CPU seconds (user + system of the whole process tree)."""
    import resource

    peak = 0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return el, peak, cpu


def count_texts(path: Path) -> tuple[int, int]:
    """Documents and UTF-8 bytes of text of a JSONL corpus (streamed: a 1.2 GiB corpus is not
    held in memory)."""
    docs = n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            docs += 1
            n += len(json.loads(line)["text"].encode("utf-8"))
    return docs, n


def load_texts(path: Path, limit_bytes: int) -> tuple[list[str], int]:
    texts, n = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            texts.append(t)
            n += len(t.encode("utf-8"))
            if limit_bytes and n >= limit_bytes:
                break
    return texts, n


# ------------------------------------------------------------------------------------------------
# Engines: (library, file, pattern) → a function encoding one document
# ------------------------------------------------------------------------------------------------


def make_encoder(engine: tuple):
    lib, path, pattern = engine
    if lib == "sentencepiece":
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(path)).encode_as_ids
    if lib == "tokenizers":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return lambda t: tok.encode(t).ids
    if lib in ("tiktoken", "riptoken"):
        from datasetprep.tokenization import read_tiktoken_ranks

        ranks = read_tiktoken_ranks(path)
        if lib == "tiktoken":
            import tiktoken

            return tiktoken.Encoding(name="bench", pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={}).encode_ordinary
        import riptoken

        return riptoken.CoreBPE(ranks, {}, pattern).encode_ordinary
    if lib == "ours":
        from datasetprep import tokenization

        tok = tokenization.load(tokenization.resolve_config("auto", path))
        return tok.encode
    raise ValueError(lib)


def _raw_worker(engine, texts, q, go):
    try:
        enc = make_encoder(engine)
    except BaseException as e:  # report, never leave the parent waiting
        q.put(f"error: {type(e).__name__}: {e}")
        raise
    q.put("ready")
    go.wait()  # all workers start together
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for t in texts:
        n += len(enc(t))
    q.put((time.perf_counter() - t0, n, time.process_time() - c0))


def run_raw(engine: tuple, texts: list[str], workers: int) -> tuple[float, int, float]:
    """Wall time for W processes each encoding an equal byte share, one document per call;
    tokens; CPU seconds of the W processes together."""
    shares = [[] for _ in range(workers)]
    sizes = [0] * workers
    for t in texts:  # greedy balance by bytes
        i = sizes.index(min(sizes))
        shares[i].append(t)
        sizes[i] += len(t.encode("utf-8"))
    ctx = mp.get_context("fork")
    qs = [ctx.Queue() for _ in range(workers)]
    go = ctx.Event()
    ps = [ctx.Process(target=_raw_worker, args=(engine, s, q, go)) for s, q in zip(shares, qs)]
    for p in ps:
        p.start()
    for q in qs:
        msg = q.get(timeout=300)
        if msg != "ready":
            for p in ps:
                p.kill()
            raise SystemExit(f"raw-limit worker failed: {msg}")
    go.set()
    res = [q.get() for q in qs]
    for p in ps:
        p.join()
    return max(r[0] for r in res), sum(r[1] for r in res), sum(r[2] for r in res)


def per_core(engine: tuple, texts: list[str]) -> float:
    """Process CPU seconds for one process encoding ``texts`` one document per call."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def work():
        enc = make_encoder(engine)
        t0 = time.process_time()
        for t in texts:
            enc(t)
        q.put(time.process_time() - t0)

    p = ctx.Process(target=work)
    p.start()
    r = q.get(timeout=3600)
    p.join()
    return r


# ------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------


def tokenizer_specs(types: list[str], corpus: Path, tmp: Path) -> dict[str, dict]:
    from datasetprep.tokenization import LLAMA3_PATTERN
    from tokfiles import ranks_from_hf_bpe, write_ranks

    specs: dict[str, dict] = {}
    derived = None
    if {"hf8k", "tt8k"} & set(types):
        derived = write_ranks(ranks_from_hf_bpe(), tmp / "ranks-derived-from-hf.model")
    l3 = None
    if {"llama3-json", "llama3-model"} & set(types):
        import llama3_shaped

        l3 = llama3_shaped.ensure(corpus)
    for t in types:
        if t == "hf8k":
            specs[t] = {"model": HF, "args": [], "refs": {
                "tiktoken": ("tiktoken", derived, GPT2_PATTERN), "riptoken": ("riptoken", derived, GPT2_PATTERN),
                "tokenizers": ("tokenizers", HF / "tokenizer.json", None)}}
        elif t == "tt8k":
            specs[t] = {"model": derived, "args": ["--eod-id", "0"], "refs": {  # no special tokens
                "tiktoken": ("tiktoken", derived, LLAMA3_PATTERN), "riptoken": ("riptoken", derived, LLAMA3_PATTERN)}}
        elif t == "llama3-json":
            specs[t] = {"model": l3, "args": [], "refs": {
                "tiktoken": ("tiktoken", l3 / "tokenizer.model", LLAMA3_PATTERN),
                "riptoken": ("riptoken", l3 / "tokenizer.model", LLAMA3_PATTERN),
                "tokenizers": ("tokenizers", l3 / "tokenizer.json", None)}}
        elif t == "llama3-model":
            specs[t] = {"model": l3 / "tokenizer.model", "args": [], "refs": {
                "tiktoken": ("tiktoken", l3 / "tokenizer.model", LLAMA3_PATTERN),
                "riptoken": ("riptoken", l3 / "tokenizer.model", LLAMA3_PATTERN)}}
        elif t == "sentencepiece":
            specs[t] = {"model": SP, "args": [], "refs": {"sentencepiece": ("sentencepiece", SP, None)}}
        elif t == "hf-lib":
            specs[t] = {"model": HF, "args": ["--no-native"], "refs": {
                "tokenizers": ("tokenizers", HF / "tokenizer.json", None)}}
        else:
            raise SystemExit(f"unknown type {t}")
    return specs


def end_to_end(spec: dict, corpus: Path, workers: int, tmp: Path, text_mib: float) -> dict:
    out = tmp / "out"
    cmd = [sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(corpus), "--output-prefix", str(out),
           "--tokenizer-model", str(spec["model"]), "--workers", str(workers), "--append-eod", "--no-progress",
           *spec["args"]]
    el, peak, cpu = run_ours(cmd)
    man = json.loads((tmp / "out.manifest.json").read_text())
    row = {"seconds": round(el, 2), "mib_s": round(text_mib / el, 2), "cpu_seconds": round(cpu, 2),
           "mib_per_cpu_s": round(text_mib / cpu, 2), "tokens_s": int(man["outputs"][0]["tokens"] / el),
           "engine": man["tokenizer"]["engine"], "dtype": man["dtype"], "peak_rss_mib": round(peak / 2**20, 1)}
    for f in tmp.glob("out*"):
        f.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--types", default="hf8k,tt8k,llama3-json,llama3-model,sentencepiece")
    ap.add_argument("--raw-sample-mib", type=float, default=0, help="raw limits on the first N MiB (0: all)")
    ap.add_argument("--core-sample-mib", type=float, default=16, help="per-core figures on the first N MiB (0: skip)")
    ap.add_argument("--sp-runs", type=int, default=1, help="back-to-back SentencePiece runs (each with its raw limit)")
    ap.add_argument("--runs", type=int, default=1,
                    help="back-to-back runs of every other tokenizer (each with its raw limits; a median line "
                         "per ratio follows)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--skip-raw", action="store_true",
                    help="end to end only (no raw limits, no ratios): e.g. peak RSS against input size")
    a = ap.parse_args()
    types = a.types.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="dsp-bench-"))
    results = {"corpus": str(a.corpus), "workers": a.workers, "types": {}}
    try:
        specs = tokenizer_specs(types, a.corpus, tmp)
        n_docs, all_bytes = count_texts(a.corpus)
        text_mib = all_bytes / 2**20
        size = a.corpus.stat().st_size
        print(f"corpus {a.corpus}: {size / 2**20:.1f} MiB JSONL, {n_docs} documents, {text_mib:.1f} MiB of text; "
              f"{a.workers} workers, {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
        raw_texts = []
        if a.skip_raw:
            pass
        elif a.raw_sample_mib:
            raw_texts, _ = load_texts(a.corpus, int(a.raw_sample_mib * 2**20))
        else:
            raw_texts, _ = load_texts(a.corpus, 0)
        raw_mib = sum(len(t.encode("utf-8")) for t in raw_texts) / 2**20
        core_texts, core_bytes = load_texts(a.corpus, int(a.core_sample_mib * 2**20)) if a.core_sample_mib else ([], 0)
        for t in types:
            spec = specs[t]
            res = {"per_core_mib_s": {}, "runs": []}
            if core_texts:
                engines = {"ours": ("ours", spec["model"], None), **spec["refs"]}
                for name, eng in engines.items():
                    res["per_core_mib_s"][name] = round(core_bytes / 2**20 / per_core(eng, core_texts), 2)
                print(f"[{t}] per core (CPU time, {core_bytes / 2**20:.1f} MiB, one document per call): "
                      + ", ".join(f"{k} {v}" for k, v in res["per_core_mib_s"].items()), flush=True)
            for run in range(a.sp_runs if t == "sentencepiece" else a.runs):
                load_before = os.getloadavg()[0]
                row = end_to_end(spec, a.corpus, a.workers, tmp, text_mib)
                row["load_before"] = load_before
                for name, eng in spec["refs"].items() if raw_texts else ():
                    if name == "tokenizers" and t != "hf-lib":
                        continue  # far below the goals' references; its per-core figure is above
                    rel, rtok, rcpu = run_raw(eng, raw_texts, a.workers)
                    row[f"raw_{name}_mib_s"] = round(raw_mib / rel, 2)
                    row[f"ours_over_{name}"] = round(row["mib_s"] / row[f"raw_{name}_mib_s"], 2)
                    row[f"raw_{name}_mib_per_cpu_s"] = round(raw_mib / rcpu, 2)
                    row[f"cpu_ours_over_{name}"] = round(row["mib_per_cpu_s"] / row[f"raw_{name}_mib_per_cpu_s"], 2)
                row["load_after"] = os.getloadavg()[0]
                res["runs"].append(row)
                print(f"[{t}] run {run + 1}: " + json.dumps(row), flush=True)
            results["types"][t] = res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    refs = ("tiktoken", "riptoken", "sentencepiece", "tokenizers")
    print("| tokenizer | run | engine | ours e2e MiB/s (per CPU-s) | tokens/s | peak RSS (tree) | raw 2-process MiB/s "
          "(per CPU-s) | ours / raw, wall (CPU) | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t, res in results["types"].items():
        for i, r in enumerate(res["runs"]):
            present = [x for x in refs if f"raw_{x}_mib_s" in r]
            raws = ", ".join(f"{x} {r[f'raw_{x}_mib_s']} ({r[f'raw_{x}_mib_per_cpu_s']})" for x in present)
            ratios = ", ".join(f"/{x} {r[f'ours_over_{x}']} ({r[f'cpu_ours_over_{x}']})" for x in present)
            print(f"| {t} | {i + 1} | {r['engine']} | {r['mib_s']} ({r['mib_per_cpu_s']}) | {r['tokens_s']:,} | "
                  f"{r['peak_rss_mib']} MiB | {raws} | {ratios} | {r['load_before']:.1f}-{r['load_after']:.1f} |")
    print()
    goals = {"tiktoken": 2.0, "riptoken": 1.3, "sentencepiece": 0.95}
    for t, res in results["types"].items():
        for i, r in enumerate(res["runs"]):
            for ref, goal in goals.items():
                if f"ours_over_{ref}" in r:
                    v, c = r[f"ours_over_{ref}"], r[f"cpu_ours_over_{ref}"]
                    print(f"RATIO {t} run {i + 1}: ours / {ref} raw = {r['mib_s']} / {r[f'raw_{ref}_mib_s']} = {v} "
                          f"(goal >= {goal}: {'met' if v >= goal else 'NOT met'}); per CPU-second {c}; "
                          f"load {r['load_before']:.1f}-{r['load_after']:.1f}")
    for t, res in results["types"].items():
        if len(res["runs"]) < 2:
            continue
        for ref, goal in goals.items():
            vals = sorted(r[f"ours_over_{ref}"] for r in res["runs"] if f"ours_over_{ref}" in r)
            if vals:
                cpu = sorted(r[f"cpu_ours_over_{ref}"] for r in res["runs"] if f"ours_over_{ref}" in r)
                print(f"RATIO {t} over {len(vals)} runs: ours / {ref} raw, wall: lowest {vals[0]}, median "
                      f"{vals[len(vals) // 2]}, highest {vals[-1]} (goal >= {goal}: "
                      f"{'met in every run' if vals[0] >= goal else 'NOT met in every run'}); per CPU-second "
                      f"lowest {cpu[0]}, median {cpu[len(cpu) // 2]}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
