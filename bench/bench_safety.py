"""What the data-safety checks cost (docs/reliability.md quotes these figures).

    python bench/bench_safety.py                 # 1 GiB for the hashing figures, 150 MiB binarize A/B
    python bench/bench_safety.py --gib 4 --mib 300

Prints one line per figure:

* **input identity check** (end of every run, and before each chunk): ``stat`` of every input file
  against its planned identity, microseconds per file (1000 files).
* **resume content check** (``DATASETPREP_RESUME_CHECK=content``, the default): re-hashing the
  input bytes of recorded chunks, seconds per GiB, 1 and 2 threads, from the page cache (a cold
  read adds the storage's own time per GiB, whatever it is).
* **hashing while reading** (every chunk a worker tokenizes): a binarize run with and without it
  (the same run with the digest replaced by a no-op), the difference in per cent.
* **the publish** (journal, retire, renames, fsyncs): milliseconds for one dataset, by the folder's path
  (``binarize``) and through a held folder (a run on a claim: ``/proc/self/fd/N``, see
  ``volumes.HeldFolder``).
* **holding the output folder** (a run on a claim, once per run and step): opening the chain of
  folders from the claim's root (4 deep) and checking it (before every publish and at the end),
  microseconds each.

    python bench/bench_safety.py --only-publish   # the last two figures only
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from datasetprep import chunks, pipeline, pool, publish, readers, tokenization, volumes  # noqa: E402
from paths import CORPUS_A, SP_MODEL  # noqa: E402


def identity_check(d: Path, n: int = 1000) -> float:
    files = []
    for i in range(n):
        p = d / f"f{i:04d}.jsonl"
        p.write_text('{"text": "x"}\n')
        files.append(p)
    snap = chunks.snapshot(files)
    t0 = time.perf_counter()
    for _ in range(10):
        chunks.unchanged(snap)
    return (time.perf_counter() - t0) / 10 / n * 1e6


def corpus(path: Path, size: int) -> Path:
    one = CORPUS_A.read_bytes().rstrip(b"\n") + b"\n"
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(one)
            written += len(one)
    return path


def resume_check(path: Path, threads: int) -> float:
    plan = readers.plan_chunks([path], 16 << 20)
    list(ThreadPoolExecutor(threads).map(lambda c: readers.hash_input(c, ("text",)), plan[:4]))  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda c: readers.hash_input(c, ("text",)), plan))
    return (time.perf_counter() - t0) / (path.stat().st_size / 2**30)


class _NoDigest:
    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def binarize_seconds(src: Path, out: Path, hashing: bool) -> float:
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    real = pool.hashlib
    if not hashing:  # only the worker's digest of the input bytes (one worker runs in this process)
        pool.hashlib = types.SimpleNamespace(sha256=_NoDigest)  # type: ignore[assignment]
    try:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t0 = time.perf_counter()
        pipeline.run(pipeline.Request(inputs=[src], output_prefix=str(out / "x"), tokenizer=cfg, workers=1,
                                      chunk_bytes=16 << 20))
        return time.perf_counter() - t0
    finally:
        pool.hashlib = real


def publish_ms(d: Path, n: int = 20) -> tuple[float, float]:
    """One dataset published (median of ``n``), by the folder's path and through the folder held, the
    two sides interleaved (a change of the machine's load hits both)."""
    times: dict[bool, list[float]] = {False: [], True: []}
    with volumes.HeldFolder(d, d, "bench") as h:
        for i in range(n):
            for held in (False, True):
                at = h.path if held else d
                tmp = at / f".datasetprep-tmp-p-{i:04x}{int(held):04x}"
                tmp.mkdir()
                for name in ("a.bin", "a.idx"):
                    (tmp / name).write_bytes(os.urandom(1 << 16))
                    with open(tmp / name, "rb+") as f:
                        os.fsync(f.fileno())
                t0 = time.perf_counter()
                publish.publish(at / f"p{int(held)}", [
                    publish.Move(tmp / "a.bin", f"p{int(held)}_text_document.bin", publish.DATA),
                    publish.Move(tmp / "a.idx", f"p{int(held)}_text_document.idx", publish.COMMIT)], None, tmp)
                times[held].append(time.perf_counter() - t0)
    return tuple(sorted(t)[len(t) // 2] * 1000 for t in (times[False], times[True]))  # type: ignore[return-value]


def held_us(d: Path, depth: int = 4, n: int = 1000) -> tuple[float, float]:
    """Microseconds to hold a folder ``depth`` deep (open the chain, close it) and to check it."""
    folder = d.joinpath(*[f"level{i}" for i in range(depth)])
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    for _ in range(n):
        volumes.HeldFolder(d, folder, "bench").close()
    opened = (time.perf_counter() - t0) / n * 1e6
    with volumes.HeldFolder(d, folder, "bench") as h:
        t0 = time.perf_counter()
        for _ in range(n):
            h.check()
        checked = (time.perf_counter() - t0) / n * 1e6
    return opened, checked


def publish_figures(d: Path) -> None:
    (d / "pub").mkdir()
    by_path, held = publish_ms(d / "pub", 50)
    print(f"publish of one dataset (journal, renames, fsyncs; median of 50, interleaved): {by_path:.2f} ms by the "
          f"folder's path, {held:.2f} ms through the held folder")
    opened, checked = held_us(d / "held")
    print(f"holding the output folder 4 deep: {opened:.1f} µs to open the chain, {checked:.1f} µs per check")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the file hashed for the resume figures")
    ap.add_argument("--mib", type=int, default=150, help="size of the corpus of the binarize A/B")
    ap.add_argument("--repeat", type=int, default=3, help="binarize runs of each side (the best counts)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--only-publish", action="store_true", help="only the publish and holding figures")
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}; sha256 of this Python: "
          f"{hashlib.sha256().name}, OpenSSL {__import__('ssl').OPENSSL_VERSION}")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        d = Path(tmp)
        if a.only_publish:
            publish_figures(d)
            print(f"load average at end: {os.getloadavg()[0]:.2f}")
            return
        (d / "ids").mkdir()
        print(f"input identity check: {identity_check(d / 'ids'):.1f} µs per input file")
        big = corpus(d / "big.jsonl", int(a.gib * 2**30))
        for threads in (1, 2):
            print(f"resume content check, {threads} thread(s), page cache: {resume_check(big, threads):.2f} s per GiB")
        big.unlink()
        src = corpus(d / "src.jsonl", a.mib << 20)
        runs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(a.repeat):  # interleaved, so a change of the machine's load hits both sides
            for hashing in (True, False):
                runs[hashing].append(binarize_seconds(src, d / "o", hashing))
        with_hash, without = min(runs[True]), min(runs[False])
        mib = src.stat().st_size / 2**20
        print(f"binarize {mib:.0f} MiB, 1 worker, best of {a.repeat}: {with_hash:.2f} s hashing while reading, "
              f"{without:.2f} s without ({(with_hash - without) / without * 100:+.1f} %)")
        publish_figures(d)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
