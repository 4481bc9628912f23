"""The worker pool: W processes that each load the tokenizer once, take tasks and write parts.

A task is one chunk of the input files (:class:`ChunkTask`) or one batch of streamed records
(:class:`RecordsTask`); either way the worker writes one *part* per text key straight to disk and
returns a :class:`~datasetprep.chunks.ChunkResult` -- no process ever receives every token. Workers
report progress (bytes, documents, tokens) through a queue while they work. :func:`run_tasks` is
the one loop that feeds the pool, for the file path and the streaming path alike; with one worker
it runs the tasks in this process.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import dataclasses
import hashlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, Protocol

import numpy as np

from . import indexed, readers, tokenization
from .chunks import ChunkResult, InputStat, changed_message
from .errors import InputChanged, WorkerLost
from .readers import Chunk
from .stats import Stats
from .tokenization import TokenizerConfig, TokenizerError

#: Seconds between a worker's progress reports, and between two looks of the driver at the pool.
REPORT_INTERVAL = 0.25
POLL_INTERVAL = 0.2


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """Tokenize chunk ``index`` of the plan, whose file must have identity ``expect`` (as planned)."""

    index: int
    chunk: Chunk
    part_dir: str
    expect: InputStat | None = None


@dataclasses.dataclass(frozen=True)
class RecordsTask:
    """Tokenize one batch of streamed records (the ``first`` one is record ``first`` of the stream)."""

    index: int
    records: list
    nbytes: int
    first: int
    part_dir: str


Task = ChunkTask | RecordsTask


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every worker needs: the tokenizer (a config: each process loads its own) and the run's options."""

    tokenizer: TokenizerConfig
    keys: tuple[str, ...]
    append_eod: bool
    dtype: str


class Sink(Protocol):
    def put(self, item: tuple[int, int, int]) -> None: ...


class Worker:
    """One process's state: the loaded tokenizer and the run's options, and where progress goes."""

    def __init__(self, setup: Setup, tok: tokenization.Tokenizer, sink: Sink | None) -> None:
        self.tok = tok
        self.keys = setup.keys
        self.eod = tok.eod if setup.append_eod else None
        self.dtype = np.dtype(setup.dtype)
        self.sink = sink

    def run(self, task: Task) -> ChunkResult:
        if isinstance(task, ChunkTask):
            return self._run_chunk(task)
        return self._tokenize(task.index, iter([(task.records, task.nbytes)]), task.part_dir,
                              lambda k: f"streamed record {task.first + k + 1}", task.nbytes)

    def _run_chunk(self, task: ChunkTask) -> ChunkResult:
        """A chunk, from a file that keeps the planned identity from before its read to after it; the
        result records that identity and the sha256 of the input bytes read."""
        path = task.chunk.path
        before = _identity(path)
        if task.expect is not None and before != task.expect:
            raise InputChanged(changed_message(path, task.expect, before))
        digest = hashlib.sha256()
        result = self._tokenize(task.index, readers.read_chunk(task.chunk, self.keys, digest, lines=True),
                                task.part_dir,
                                lambda k: readers.record_location(task.chunk, k), task.chunk.size)
        after = _identity(path)
        if before is None or after != before:
            raise InputChanged(changed_message(path, before or task.expect, after))
        result.input = {"path": path, "range": [task.chunk.start, task.chunk.end], "stat": before.as_list(),
                        "sha256": digest.hexdigest()}
        return result

    def _tokenize(self, index: int, batches: Iterator[tuple[list, int]], part_dir: str,
                  locate: Callable[[int], str], size: int) -> ChunkResult:
        writers = [indexed.PartWriter(os.path.join(part_dir, f"{index:08d}.{k}"), self.dtype)
                   for k in range(len(self.keys))]
        docs = 0
        last = time.monotonic()
        pending = [0, 0, 0]  # bytes, documents, tokens not reported yet
        try:
            for batch, nbytes in batches:
                packed = _jsonl_packed(self.tok, batch, self.keys, self.eod, self.dtype)
                if packed is not None:  # the engine read the JSONL lines itself
                    before = writers[0].tokens
                    writers[0].add_packed(*packed)
                    pending[2] += writers[0].tokens - before
                    n = len(packed[2])  # one entry per document
                else:
                    records = readers.records_of(batch)
                    n = len(records)
                    for k, w in enumerate(writers):
                        before = w.tokens
                        self._add(w, [r[k] for r in records], lambda i, base=docs: locate(base + i))
                        pending[2] += w.tokens - before
                docs += n
                pending[0] += nbytes
                pending[1] += n
                now = time.monotonic()
                if self.sink is not None and now - last > REPORT_INTERVAL:
                    self.sink.put((pending[0], pending[1], pending[2]))
                    pending = [0, 0, 0]
                    last = now
            infos = [w.close() for w in writers]
        except BaseException:
            for w in writers:
                w.abort()
            raise
        if self.sink is not None and any(pending):
            self.sink.put((pending[0], pending[1], pending[2]))
        return ChunkResult(index, infos, docs, size)

    def _add(self, writer: indexed.PartWriter, values: list, where: Callable[[int], str]) -> None:
        if any(type(v) is not str for v in values):
            _write_sentence_docs(writer, self.tok, values, self.eod, self.dtype, where)
            return
        toks, seq_lens, per_doc = _encode_packed(self.tok, values, self.eod, self.dtype, where)
        writer.add_packed(toks, seq_lens, per_doc)


def _identity(path: str) -> InputStat | None:
    try:
        return InputStat.of(path)
    except FileNotFoundError:
        return None


def pack(ids_list: list, eod: int | None, dtype: np.dtype, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents' ids → (tokens back to back with EODs, sequence lengths, sequences per document).

    Empty documents give no sequence and no EOD, as Megatron-LM does.
    """
    n = len(ids_list)
    lens = np.fromiter(map(len, ids_list), dtype=np.int64, count=n)
    total = int(lens.sum())
    if n and isinstance(ids_list[0], np.ndarray):
        flat = np.concatenate(ids_list).astype(np.int64, copy=False) if total else np.zeros(0, np.int64)
    else:
        flat = np.fromiter(chain.from_iterable(ids_list), dtype=np.int64, count=total)
    if total:
        lo, hi = int(flat.min()), int(flat.max())
        info = np.iinfo(dtype)
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise TokenizerError(
                f"{where}token id {bad} does not fit the output dtype {np.dtype(dtype).name} (chosen from the "
                "tokenizer's vocabulary size, as Megatron-LM does); the tokenizer produced an id outside its "
                "vocabulary — check --vocab-size / the tokenizer file"
            )
    nonempty = lens > 0
    if eod is not None:
        out_lens = lens + nonempty
        out = np.empty(total + int(nonempty.sum()), dtype=dtype)
        eod_pos = np.cumsum(out_lens)[nonempty] - 1
        mask = np.ones(out.shape[0], dtype=bool)
        mask[eod_pos] = False
        out[mask] = flat
        out[eod_pos] = eod
        seq_lens = out_lens[nonempty]
    else:
        out = flat.astype(dtype)
        seq_lens = lens[nonempty]
    return out, seq_lens, nonempty.astype(np.int32)


def _encode_texts(tok, texts: list[str], where: Callable[[int], str]) -> list:
    try:
        return tok.encode_many(texts)
    except Exception:
        pass
    out = []  # find the record that broke the batch, to name it
    for i, t in enumerate(texts):
        try:
            out.append(tok.encode(t))
        except Exception as e:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as ue:
                raise TokenizerError(
                    f"{where(i)}: the text holds a lone UTF-16 surrogate (U+{ord(t[ue.start]):04X} at character "
                    f"{ue.start + 1}), which is not valid Unicode; fix the \\u escape in the source"
                ) from None
            raise TokenizerError(f"{where(i)}: the tokenizer failed: {e}") from None
    return out


def _encode_packed(tok, texts: list[str], eod, dtype, where: Callable[[int], str]):
    """The engine's packed arrays when it has them, else pack its per-document ids; any error
    takes the per-document path, which names the record at fault."""
    try:
        packed = tok.encode_packed(texts, eod, dtype)
    except Exception:
        packed = None
    return packed if packed is not None else pack(_encode_texts(tok, texts, where), eod, dtype)


def _jsonl_packed(tok, batch, keys, eod, dtype):
    """A batch of JSONL lines encoded by an engine that reads JSONL itself, or None.  A batch
    longer than the document limit may hold a document above it: the Python reader checks."""
    if not isinstance(batch, readers.LineBatch) or len(keys) != 1:
        return None
    if batch.limit is not None and len(batch.data) > batch.limit:
        return None
    try:
        return tok.encode_jsonl_packed(bytes(batch.data), keys[0], eod, dtype)
    except Exception:
        return None  # read and encoded again the usual way, which names the record at fault


def _write_sentence_docs(writer, tok, values, eod, dtype, where):
    """Slow path for list-valued fields: each element is its own sequence (Megatron's behaviour)."""
    for i, v in enumerate(values):
        parts = v if isinstance(v, list) else [v]
        seqs = []
        for s in parts:
            try:
                ids = tok.encode(s)
            except Exception:
                _encode_texts(tok, [s], lambda _, i=i: where(i))  # raises a TokenizerError naming the record
                raise
            if len(ids):
                seqs.append(np.asarray(ids, dtype=np.int64))
        if seqs and eod is not None:
            seqs[-1] = np.append(seqs[-1], eod)
        arrs = []
        for s in seqs:
            toks, _, _ = pack([s], None, dtype, where(i) + ": ")
            arrs.append(toks)
        writer.add_document(arrs)


# ----------------------------------------------------------------------------- in a worker process

#: This process's worker, made once by the pool's initializer (a pool process serves one run).
_process_worker: Worker | None = None


PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 1.0


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends, however it ends (SIGKILL included): the kernel sends
    SIGKILL when the parent exits (``PR_SET_PDEATHSIG``; Linux), and a watchdog thread checks the
    parent every second as well (other systems, and the moment before the first takes effect)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_process(setup: Setup, sink: Any, parent: int) -> None:
    global _process_worker
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler (raise Terminated) is not ours
    tok = tokenization.load(setup.tokenizer)
    if hasattr(tok, "threads"):
        tok.threads = 1  # W processes already fill the cores
    _process_worker = Worker(setup, tok, sink)


def _run_in_process(task: Task) -> ChunkResult:
    if _process_worker is None:  # the pool's initializer makes it before any task runs
        raise RuntimeError("internal error: a pool process without its worker")
    return _process_worker.run(task)


# ----------------------------------------------------------------------------- the driver


class _InlineSink:
    """Progress of the one in-process worker, straight into the stats (reported at most every 0.25 s)."""

    def __init__(self, stats: Stats, report: Callable[[Stats], None] | None) -> None:
        self.stats, self.report, self.last = stats, report, 0.0

    def put(self, item: tuple[int, int, int]) -> None:
        self.stats.add(*item)
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.report and (force or now - self.last > REPORT_INTERVAL):
            self.last = now
            self.report(self.stats.snapshot())


def run_tasks(tasks: Iterable[Task], setup: Setup, *, workers: int, stats: Stats,
              report: Callable[[Stats], None] | None = None,
              on_result: Callable[[ChunkResult], None] = lambda r: None,
              loaded: tokenization.Tokenizer | None = None) -> list[ChunkResult]:
    """Run every task; returns their results in index order.

    Tasks are taken from ``tasks`` as the pool has room (at most 2×``workers`` in flight), so a stream
    of record batches stays bounded in memory. ``on_result`` sees each result as it arrives (e.g. to
    record a finished chunk); ``report`` gets a copy of ``stats`` as they move. An error in any task
    stops the run within seconds: the pool is killed and the error raised here.

    Args:
        loaded: the tokenizer already loaded in this process, used when ``workers`` is 1.
    """
    if workers <= 1:
        results = _run_inline(tasks, setup, stats, report, on_result, loaded)
    else:
        results = _run_pool(tasks, setup, workers, stats, report, on_result)
    results.sort(key=lambda r: r.index)
    return results


def _run_inline(tasks: Iterable[Task], setup: Setup, stats: Stats, report: Callable[[Stats], None] | None,
                on_result: Callable[[ChunkResult], None], loaded: tokenization.Tokenizer | None) -> list[ChunkResult]:
    sink = _InlineSink(stats, report)
    worker = Worker(setup, loaded or tokenization.load(setup.tokenizer), sink)
    results = []
    for task in tasks:
        result = worker.run(task)
        on_result(result)
        results.append(result)
        stats.chunks_done += 1
        sink.flush(force=True)
    return results


def _run_pool(tasks: Iterable[Task], setup: Setup, workers: int, stats: Stats,
              report: Callable[[Stats], None] | None, on_result: Callable[[ChunkResult], None]) -> list[ChunkResult]:
    ctx = mp.get_context("fork")
    progress = ctx.Queue()
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_process,
                                initargs=(setup, progress, os.getpid()))
    results: list[ChunkResult] = []
    pending: set[cf.Future] = set()
    todo = iter(tasks)
    exhausted = False
    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < 2 * workers:
                task = next(todo, None)
                if task is None:
                    exhausted = True
                else:
                    pending.add(ex.submit(_run_in_process, task))
            done, pending = cf.wait(pending, timeout=POLL_INTERVAL, return_when=cf.FIRST_COMPLETED)
            _drain(progress, stats)
            for f in done:
                result = f.result()  # an error in a worker is raised here
                on_result(result)
                results.append(result)
                stats.chunks_done += 1
            if report:
                report(stats.snapshot())
        _drain(progress, stats)
        ex.shutdown(wait=True)
    except cf.process.BrokenProcessPool:
        _kill_pool(ex)
        raise WorkerLost("a worker process died without an error (killed by the OS? out of memory?); "
                         "retry with fewer --workers or more memory") from None
    except BaseException:
        _kill_pool(ex)
        raise
    finally:
        progress.close()
    if report:
        report(stats.snapshot())
    return results


def _drain(progress: Any, stats: Stats) -> None:
    while True:
        try:
            item = progress.get_nowait()
        except queue_mod.Empty:
            return
        stats.add(*item)


def _kill_pool(ex: cf.ProcessPoolExecutor) -> None:
    procs = list(getattr(ex, "_processes", {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    for p in procs:
        try:
            p.join(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass
