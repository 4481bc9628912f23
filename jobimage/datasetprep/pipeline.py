"""The parallel binarization pipeline.

plan → W worker processes → parts → streaming concatenation → atomic publish.

* The input is cut into chunks (``readers.plan_chunks``).  Each worker process loads the tokenizer
  once, takes chunks, and writes one *part* per chunk and text key straight to disk; no process
  ever receives every token.
* The parts are concatenated in plan order (``indexed.assemble``), so the bytes are the same for
  any number of workers, and equal to Megatron-LM's single-stream output.
* Everything is written under a hidden temporary folder next to the output; the final names only
  appear by ``rename`` once every output is complete and fsynced, followed by the manifest.  An
  error anywhere (in any worker) stops the run within seconds and leaves nothing under the final
  names.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, indexed, readers, tokenization
from .readers import Chunk, InputError
from .tokenization import TokenizerConfig, TokenizerError

FORMAT_VERSION = 1  # bump when the bytes we write for the same input could change
CHUNK_BYTES = 16 << 20


class BinarizeError(RuntimeError):
    """A run failed; the message is for users (what is wrong and how to fix it)."""


@dataclass
class Request:
    """One binarization: inputs → ``{output_prefix}_{key}_document.{bin,idx}`` per key."""

    inputs: list[Path]
    output_prefix: str
    tokenizer: TokenizerConfig
    keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = 1
    overwrite: bool = False
    chunk_bytes: int | None = None  # None: total input / 64, clamped to [1 MiB, 16 MiB]
    level: str = "document"
    input_sha256: str | None = None  # the inputs' digest when the caller computed it already
    partitions: int = 1  # Megatron's --partitions K (round-robin document order)
    keep_sequential: bool = False  # with partitions: Megatron's --keep-sequential-samples (order kept)
    progress: Callable[[dict], None] | None = None
    manifest_extra: dict = field(default_factory=dict)
    keep_shards: int = 0  # N > 0: shard pods publish their own datasets and ``finish`` writes a blend list


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


class _Worker:
    """Per-process state: the tokenizer and run constants (set once by the pool initializer)."""

    tok: tokenization.Tokenizer | None = None
    keys: tuple[str, ...] = ()
    append_eod = False
    dtype = np.dtype(np.uint16)
    queue = None


def _init_worker(cfg: TokenizerConfig, keys, append_eod: bool, dtype: str, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _Worker.tok = tokenization.load(cfg)
    if hasattr(_Worker.tok, "threads"):
        _Worker.tok.threads = 1  # W processes already fill the cores
    _Worker.keys = tuple(keys)
    _Worker.append_eod = append_eod
    _Worker.dtype = np.dtype(dtype)
    _Worker.queue = queue


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


def _write_sentence_docs(writer, tok, values, eod, dtype, where):
    """Slow path for list-valued fields: each element is its own sequence (Megatron's behaviour)."""
    for i, v in enumerate(values):
        parts = v if isinstance(v, list) else [v]
        seqs = []
        for s in parts:
            ids = tok.encode(s)
            if len(ids):
                seqs.append(np.asarray(ids, dtype=np.int64))
        if seqs and eod is not None:
            seqs[-1] = np.append(seqs[-1], eod)
        arrs = []
        for s in seqs:
            toks, _, _ = pack([s], None, dtype, where(i) + ": ")
            arrs.append(toks)
        writer.add_document(arrs)


def process_chunk(index: int, chunk: Chunk, part_dir: str) -> dict:
    """Tokenize one chunk into one part per key.  Runs in a worker process (or inline for W=1)."""
    return _tokenize(index, readers.read_chunk(chunk, _Worker.keys), part_dir,
                     lambda k: readers.record_location(chunk, k), chunk.size)


def process_records(index: int, records: list, nbytes: int, first: int, part_dir: str) -> dict:
    """Tokenize one batch of streamed records (Hub streaming mode) into one part per key."""
    return _tokenize(index, iter([(records, nbytes)]), part_dir, lambda k: f"streamed record {first + k + 1}",
                     nbytes)


def _tokenize(index: int, batches, part_dir: str, locate, size: int) -> dict:
    tok = _Worker.tok
    keys = _Worker.keys
    eod = tok.eod if _Worker.append_eod else None
    dtype = _Worker.dtype
    writers = [indexed.PartWriter(os.path.join(part_dir, f"{index:08d}.{k}"), dtype) for k in range(len(keys))]
    docs = 0
    last = time.monotonic()
    pend_bytes = pend_docs = pend_tokens = 0
    try:
        for records, nbytes in batches:
            for k, w in enumerate(writers):
                values = [r[k] for r in records]
                def where(i, k=k, base=docs):
                    return locate(base + i)
                if any(type(v) is not str for v in values):
                    _write_sentence_docs(w, tok, values, eod, dtype, where)
                    continue
                ids = _encode_texts(tok, values, where)
                before = w.tokens
                toks, seq_lens, per_doc = pack(ids, eod, dtype)
                w.add_packed(toks, seq_lens, per_doc)
                pend_tokens += w.tokens - before
            docs += len(records)
            pend_docs += len(records)
            pend_bytes += nbytes
            now = time.monotonic()
            if _Worker.queue is not None and now - last > 0.25:
                _Worker.queue.put((pend_bytes, pend_docs, pend_tokens))
                pend_bytes = pend_docs = pend_tokens = 0
                last = now
        infos = [w.close() for w in writers]
    except BaseException:
        for w in writers:
            w.abort()
        raise
    if _Worker.queue is not None and (pend_bytes or pend_docs or pend_tokens):
        _Worker.queue.put((pend_bytes, pend_docs, pend_tokens))
    return {"index": index, "parts": infos, "documents": docs, "bytes": size}


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def files_digest(files: list[Path]) -> str:
    """One sha256 over (name, size, sha256) of each file, in order: the input fingerprint."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0{tokenization.file_sha256(p)}\n".encode())
    return h.hexdigest()


def _hash_files(files: list[Path], out: dict) -> None:
    try:
        out["sha256"] = files_digest(files)
    except OSError as e:  # reported by the workers with context; keep the hash optional
        out["error"] = str(e)


def final_paths(output_prefix: str, keys, level: str = "document") -> list[Path]:
    out = []
    for k in keys:
        p = indexed.output_prefix(output_prefix, k, level)
        out += [indexed.bin_path(p), indexed.idx_path(p)]
    return out


def manifest_path(output_prefix: str) -> Path:
    return Path(f"{output_prefix}.manifest.json")


def check_outputs(req: Request) -> None:
    """Refuse to overwrite unless asked, and fail early on an unwritable folder."""
    out_dir = Path(req.output_prefix).parent
    if not out_dir.exists():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BinarizeError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BinarizeError(f"cannot write to output folder {out_dir}: permission denied")
    if not req.overwrite:
        existing = [p for p in final_paths(req.output_prefix, req.keys, req.level) + [manifest_path(req.output_prefix)]
                    if p.exists()]
        if existing:
            raise BinarizeError(
                f"output {existing[0]} already exists; pass --overwrite (spec: a new prefix) to replace it"
            )


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _kill_pool(ex: cf.ProcessPoolExecutor) -> None:
    procs = list(getattr(ex, "_processes", {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass
    for p in procs:
        try:
            p.join(timeout=5)
        except Exception:
            pass


def _load_checked(req: Request):
    if not req.keys:
        raise BinarizeError("no text keys given (--json-keys)")
    tok = tokenization.load(req.tokenizer)  # validates the file before any worker starts
    if req.append_eod and tok.eod is None:
        raise TokenizerError(
            f"--append-eod needs an end-of-document token, but this {tok.kind} tokenizer defines none: "
            "set eos_token in tokenizer_config.json, or give the id with --eod-id (spec: tokenizer.eodId), "
            "or drop --append-eod"
        )
    return tok


def plan(req: Request) -> tuple[list[Path], list[Chunk]]:
    """The deterministic work plan: data files and chunks (independent of workers and shards)."""
    files = [f for p in req.inputs for f in (readers.expand_dir(Path(p)) if Path(p).is_dir() else [Path(p)])]
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise InputError(f"input {empty[0]} is empty (0 bytes): nothing to tokenize")
    size = req.chunk_bytes or auto_chunk_bytes(sum(f.stat().st_size for f in files))
    if req.partitions > 1 and not req.keep_sequential:
        chunks = readers.plan_round_robin(files, req.partitions, size)
    else:
        chunks = readers.plan_chunks(files, size)
    return files, chunks


def auto_chunk_bytes(total: int) -> int:
    """About 64 chunks for small inputs (even load over workers), 16 MiB for large ones.  Depends on
    the input only, so a rerun with other workers or shards still finds the chunks it finished."""
    return max(1 << 20, min(CHUNK_BYTES, total // 64))


def work_key(req: Request, files: list[Path], chunks: list[Chunk]) -> str:
    """Names the work directory: same inputs (path, size, mtime), tokenizer, options and plan ⇒ same
    directory, so a rerun after a crash resumes; anything else starts clean."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{os.path.realpath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps({"tok": req.tokenizer.fingerprint(), "keys": list(req.keys), "eod": req.append_eod,
                         "level": req.level, "format": FORMAT_VERSION,
                         "plan": [c.describe() + f":{c.stride}:{c.phase}" for c in chunks]}).encode())
    return h.hexdigest()[:16]


def work_dir(req: Request, key: str) -> Path:
    return Path(req.output_prefix).parent / f".datasetprep-work-{Path(req.output_prefix).name}-{key}"


def _prepare(req: Request):
    """What every step of a run starts from: the checked tokenizer, the dtype, the plan and its work
    folder (named by the work key)."""
    tok = _load_checked(req)
    files, chunks = plan(req)
    key = work_key(req, files, chunks)
    return tok, indexed.dtype_for_vocab(tok.vocab_size), files, chunks, key, work_dir(req, key)


def run(req: Request, shard: tuple[int, int] | None = None) -> dict:
    """Binarize; returns the manifest (also written next to the outputs).

    The work directory is stable for the same work, and every finished chunk is recorded there, so
    a rerun after a crash redoes at most the chunks that were in flight.  With ``shard=(i, n)``
    only slice i of n of the chunks is processed and nothing is assembled (see ``finish``): that is
    one pod of an Indexed Job.
    """
    t0 = time.time()
    if shard is None:
        check_outputs(req)
    tok, dtype, files, chunks, key, wd = _prepare(req)
    if shard is None:
        _remove_stale_work_dirs(req, keep=wd)
    elif req.keep_shards:
        published = shard_published(req, key, shard)
        if published is not None:  # an earlier attempt (or run) finished this shard: nothing to redo
            return {"shard": shard[0], "shards": shard[1], "chunks": published["stats"]["chunks"],
                    "chunks_reused": published["stats"]["chunks"], "documents": published["outputs"][0]["documents"],
                    "published": True, "already_published": True, "work_dir": os.fspath(wd)}
    try:
        (wd / "parts").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BinarizeError(f"cannot write to output folder {wd.parent}: {e.strerror}") from None
    selected = list(range(len(chunks)))
    if shard is not None:
        i, n = shard
        selected = list(range(len(chunks) * i // n, len(chunks) * (i + 1) // n))
    stats = {"bytes_done": 0, "bytes_total": sum(chunks[j].size for j in selected), "documents": 0, "tokens": 0,
             "started": t0, "chunks_done": 0, "chunks_total": len(selected), "chunks_reused": 0}
    try:
        results = _run_chunks(req, tok, chunks, selected, str(wd / "parts"), dtype, stats)
    except (InputError, TokenizerError):
        shutil.rmtree(wd, ignore_errors=True)  # permanent: the input or tokenizer must change first
        raise
    if shard is not None:
        info = {"shard": shard[0], "shards": shard[1], "chunks": len(selected),
                "chunks_reused": stats["chunks_reused"], "documents": sum(r["documents"] for r in results),
                "work_dir": os.fspath(wd)}
        if req.keep_shards:
            _publish_shard(req, tok, dtype, wd, key, results, shard, stats, t0)
            info["published"] = True
        return info
    return _finish(req, tok, dtype, files, chunks, wd, results, stats, t0)


def finish(req: Request) -> dict:
    """Assemble and publish after every shard of ``run(req, shard=...)`` is done (the merge step).

    With ``req.keep_shards`` nothing is concatenated: every shard must have published its own
    dataset, and the blend list of them is written instead (see ``_finish_shards``).
    """
    t0 = time.time()
    check_outputs(req)
    tok, dtype, files, chunks, key, wd = _prepare(req)
    if req.keep_shards:
        return _finish_shards(req, tok, dtype, key, wd, len(chunks), t0)
    results = []
    for i in range(len(chunks)):
        r = _load_done(str(wd / "parts"), i, len(req.keys))
        if r is None:
            raise BinarizeError(f"chunk {i} of {len(chunks)} is not done (or failed verification); "
                                "rerun its shard before merging")
        results.append(r)
    stats = {"bytes_done": readers.file_bytes(chunks), "bytes_total": readers.file_bytes(chunks),
             "documents": sum(r["documents"] for r in results), "tokens": 0, "started": t0,
             "chunks_done": len(chunks), "chunks_total": len(chunks), "chunks_reused": len(chunks)}
    return _finish(req, tok, dtype, files, chunks, wd, results, stats, t0)


def run_stream(req: Request, batches, bytes_hint: int = 0) -> dict:
    """Binarize records that arrive as an iterator of ``(records, nbytes)`` batches (Hub streaming
    mode: nothing is materialised).  The driver reads, the workers tokenize and write parts; at most
    2×W batches are in flight, so memory stays bounded.  No resume: a rerun streams again."""
    t0 = time.time()
    check_outputs(req)
    tok = _load_checked(req)
    dtype = indexed.dtype_for_vocab(tok.vocab_size)
    wd = work_dir(req, "stream-" + uuid.uuid4().hex[:8])
    (wd / "parts").mkdir(parents=True)
    stats = {"bytes_done": 0, "bytes_total": bytes_hint, "documents": 0, "tokens": 0, "started": t0,
             "chunks_done": 0, "chunks_total": 0, "chunks_reused": 0}
    part_dir = str(wd / "parts")
    results: list[dict] = []
    try:
        if req.workers <= 1:
            _Worker.tok, _Worker.keys, _Worker.append_eod, _Worker.dtype = tok, tuple(req.keys), req.append_eod, dtype
            _Worker.queue = _LocalQueue(stats, req.progress)
            first = 0
            for i, (recs, nb) in enumerate(batches):
                stats["chunks_total"] += 1
                results.append(process_records(i, recs, nb, first, part_dir))
                first += len(recs)
                stats["chunks_done"] += 1
            _Worker.queue = None
        else:
            results = _stream_pool(req, batches, part_dir, dtype, stats)
    except BaseException:
        _Worker.queue = None
        shutil.rmtree(wd, ignore_errors=True)
        raise
    return _finish(req, tok, dtype, [], [], wd, results, stats, t0)


def _stream_pool(req: Request, batches, part_dir: str, dtype, stats: dict) -> list[dict]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    ex = cf.ProcessPoolExecutor(max_workers=req.workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(req.tokenizer, tuple(req.keys), req.append_eod, dtype.str, queue))
    results: list[dict] = []
    pending: set = set()
    first = 0

    def collect(block: bool) -> None:
        nonlocal pending
        if not pending:
            return
        done, pending = cf.wait(pending, timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        _drain(queue, stats)
        for f in done:
            exc = f.exception()
            if exc is not None:
                raise exc
            results.append(f.result())
            stats["chunks_done"] += 1
        if req.progress:
            req.progress(dict(stats))

    try:
        for i, (recs, nb) in enumerate(batches):
            stats["chunks_total"] += 1
            pending.add(ex.submit(process_records, i, recs, nb, first, part_dir))
            first += len(recs)
            collect(block=len(pending) >= 2 * req.workers)
        while pending:
            collect(block=True)
        ex.shutdown(wait=True)
    except BaseException:
        _kill_pool(ex)
        raise
    finally:
        queue.close()
    results.sort(key=lambda r: r["index"])
    return results


def _finish(req, tok, dtype, files, chunks, wd: Path, results, stats, t0) -> dict:
    if not sum(r["documents"] for r in results):
        shutil.rmtree(wd, ignore_errors=True)
        raise InputError(f"the inputs hold no records ({', '.join(map(str, files[:3])) or 'stream'})")
    fp: dict = {"sha256": req.input_sha256} if req.input_sha256 else {}
    hasher = None
    if not fp:  # hash the inputs while the outputs are assembled
        hasher = threading.Thread(target=_hash_files, args=(files, fp), daemon=True)
        hasher.start()
    tmp = wd / f"assemble-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        outputs = []
        for k, key in enumerate(req.keys):
            parts = [r["parts"][k] for r in results]
            final = indexed.output_prefix(req.output_prefix, key, req.level)
            tmp_prefix = os.fspath(tmp / Path(final).name)
            info = indexed.assemble(parts, tmp_prefix, dtype)
            info.update({"key": key, "prefix": Path(final).name, "tmp": tmp_prefix, "final": final})
            outputs.append(info)
        if hasher is not None:
            hasher.join()
        manifest = _manifest(req, tok, dtype, outputs, fp, stats, time.time() - t0)
        _publish(req, _dataset_moves(outputs), manifest, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(wd, ignore_errors=True)
    _remove_other_layout(req, keep_shards=0)
    return manifest


# ---------------------------------------------------------------------------------------------
# Kept shards: one dataset per shard and a Megatron blend list instead of one merged dataset
# ---------------------------------------------------------------------------------------------


def shard_prefix(output_prefix: str, index: int) -> str:
    """``{prefix}_shard{i:05d}``: shard i's own dataset is ``{prefix}_shard{i:05d}_{key}_document``."""
    return f"{output_prefix}_shard{index:05d}"


def blend_path(output_prefix: str, key: str, level: str = "document") -> Path:
    """The blend list of one text key, for Megatron-LM's ``--data-args-path``."""
    return Path(indexed.output_prefix(output_prefix, key, level) + ".blend.txt")


def files_intact(folder: Path, entries: list[dict]) -> bool:
    """Every ``{prefix}.bin/.idx`` listed still has the size the manifest recorded (a cheap check)."""
    try:
        for o in entries:
            base = Path(folder) / o["prefix"]
            if (os.path.getsize(f"{base}.bin") != o["bin_bytes"]
                    or os.path.getsize(f"{base}.idx") != o["idx_bytes"]):
                return False
    except (OSError, KeyError, TypeError):
        return False
    return True


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object file (a manifest), or None if it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def shard_published(req: Request, key: str, shard: tuple[int, int]) -> dict | None:
    """Shard i of n's published manifest if it is of this very work (same work key, same slice)
    and its files are intact; else None (then the shard is made again)."""
    m = read_json(manifest_path(shard_prefix(req.output_prefix, shard[0])))
    if (not m or m.get("work_key") != key or m.get("shard") != list(shard)
            or len(m.get("outputs") or ()) != len(req.keys)
            or [o.get("key") for o in m["outputs"]] != list(req.keys)):
        return None
    return m if files_intact(Path(req.output_prefix).parent, m["outputs"]) else None


def _shard_manifests(output_prefix: str):
    """``(index, path, manifest)`` of every shard manifest of ours under this prefix."""
    out_dir, name = Path(output_prefix).parent, Path(output_prefix).name
    for path in out_dir.glob(f"{glob_escape(name)}_shard[0-9][0-9][0-9][0-9][0-9].manifest.json"):
        m = read_json(path) or {}
        if m.get("layout") == "shard":
            yield int(path.name[len(name) + len("_shard"):][:5]), path, m


def _listed_files(folder: Path, entries) -> list[Path]:
    """The ``.bin``/``.idx`` of every dataset a manifest lists (bare names only: never elsewhere)."""
    return [folder / (o["prefix"] + ext) for o in entries or ()
            if isinstance(o, dict) and isinstance(o.get("prefix"), str) and "/" not in o["prefix"]
            for ext in (".bin", ".idx")]


def _publish_shard(req: Request, tok, dtype, wd: Path, key: str, results: list[dict], shard: tuple[int, int],
                   stats: dict, t0: float) -> dict:
    """Assemble this shard's chunks into its own dataset and publish it (with its manifest)."""
    i, n = shard
    sub = dataclasses.replace(req, output_prefix=shard_prefix(req.output_prefix, i), overwrite=True,
                              manifest_extra={})
    tmp = wd / f"assemble-shard{i:05d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        outputs = []
        for k, name in enumerate(req.keys):
            final = indexed.output_prefix(sub.output_prefix, name, req.level)
            tmp_prefix = os.fspath(tmp / Path(final).name)
            info = indexed.assemble([r["parts"][k] for r in results], tmp_prefix, dtype)
            info.update({"key": name, "prefix": Path(final).name, "tmp": tmp_prefix, "final": final})
            outputs.append(info)
        manifest = _manifest(sub, tok, dtype, outputs, {}, stats, time.time() - t0)
        manifest.update({"layout": "shard", "shard": [i, n], "work_key": key,
                         "fingerprint": req.manifest_extra.get("fingerprint")})
        # The whole dataset's manifest lists the shards; it is no longer true once one changes, and
        # the finishing step writes it again.
        manifest_path(req.output_prefix).unlink(missing_ok=True)
        _publish(sub, _dataset_moves(outputs), manifest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _finish_shards(req: Request, tok, dtype, key: str, wd: Path, nchunks: int, t0: float) -> dict:
    """Check every shard's published dataset, then write one blend list per text key
    (``{prefix}_{key}_document.blend.txt``: ``tokens prefix`` per non-empty shard, as Megatron-LM's
    ``--data-args-path`` reads it, weights = token counts so that sampling follows the data) and
    the manifest of the whole.  Reads no token: it is quick whatever the size."""
    n = req.keep_shards
    shards = []
    for i in range(n):
        m = shard_published(req, key, (i, n))
        if m is None:
            raise BinarizeError(f"shard {i} of {n} has not published its dataset, or its files changed since "
                                f"({shard_prefix(req.output_prefix, i)}.manifest.json); rerun that shard first")
        shards.append(m)
    out_dir = Path(req.output_prefix).parent
    if not sum(m["outputs"][0]["documents"] for m in shards):
        raise InputError(f"the inputs hold no records ({', '.join(map(str, req.inputs[:3]))})")
    tmp = out_dir / f".datasetprep-tmp-{Path(req.output_prefix).name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        outputs, moves = [], []
        for k, name in enumerate(req.keys):
            entries = [m["outputs"][k] for m in shards]
            lines = [f"{e['tokens']} {(out_dir / e['prefix']).resolve()}\n" for e in entries if e["sequences"]]
            final = blend_path(req.output_prefix, name, req.level)
            with open(tmp / final.name, "w", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            moves.append((tmp / final.name, final))
            outputs.append({
                "key": name, "prefix": Path(indexed.output_prefix(req.output_prefix, name, req.level)).name,
                "blend_file": final.name,
                "documents": sum(e["documents"] for e in entries), "sequences": sum(e["sequences"] for e in entries),
                "tokens": sum(e["tokens"] for e in entries), "dtype": dtype.name,
                "max_document_tokens": max(e.get("max_document_tokens", 0) for e in entries),
                "shards": [{k2: e[k2] for k2 in ("prefix", "documents", "sequences", "tokens", "bin_bytes",
                                                 "idx_bytes", "bin_sha256", "idx_sha256")} for e in entries],
            })
        stats = {"bytes_total": sum(m["input"]["bytes"] for m in shards), "chunks_total": nchunks,
                 "chunks_reused": nchunks}
        manifest = _manifest(req, tok, dtype, [], {"sha256": req.input_sha256}, stats, time.time() - t0)
        manifest.update({"layout": "shards", "shards": n, "work_key": key, "outputs": outputs})
        _publish(req, moves, manifest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(wd, ignore_errors=True)  # the chunk parts are in the shard datasets now
    _remove_other_layout(req, keep_shards=n)
    return manifest


def _remove_other_layout(req: Request, keep_shards: int) -> None:
    """After publishing, remove what an earlier run with another layout left under this prefix:
    the merged dataset (when shards are kept), shard datasets beyond the N kept, or all of them and
    their blend lists (when merged).  Only files a shard manifest of ours lists are touched."""
    out_dir = Path(req.output_prefix).parent
    if keep_shards:
        for p in final_paths(req.output_prefix, req.keys, req.level):
            p.unlink(missing_ok=True)
    else:
        for key in req.keys:
            blend_path(req.output_prefix, key, req.level).unlink(missing_ok=True)
    for index, path, m in list(_shard_manifests(req.output_prefix)):
        if index >= keep_shards:
            for p in _listed_files(out_dir, m.get("outputs")):
                p.unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def remove_output(output_prefix: str, keys, level: str = "document") -> dict:
    """Delete a published dataset (``spec.deleteDataOnDelete``): what its manifests list (merged files,
    or shard datasets, their manifests and blend lists), the manifest itself, and unfinished work
    folders of this prefix.  Nothing else: not the inputs, the tokenizer or the Hub cache, which
    other datasets may share.  Returns what was removed."""
    out_dir = Path(output_prefix).parent
    name = Path(output_prefix).name
    removed = {"files": 0, "bytes": 0}

    def rm(path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        removed["files"] += 1
        removed["bytes"] += size

    top = read_json(manifest_path(output_prefix)) or {}
    if top.get("layout") == "shards":  # its blend lists (the shard datasets: below)
        for o in top.get("outputs") or ():
            if isinstance(o, dict) and isinstance(o.get("blend_file"), str) and "/" not in o["blend_file"]:
                rm(out_dir / o["blend_file"])
    else:
        for p in _listed_files(out_dir, top.get("outputs")):
            rm(p)
    for key in keys:  # the blend lists (also of a run whose last step did not finish)
        rm(blend_path(output_prefix, key, level))
    for _, path, m in list(_shard_manifests(output_prefix)):
        for p in _listed_files(out_dir, m.get("outputs")):
            rm(p)
        rm(path)
    rm(manifest_path(output_prefix))
    for pattern in (".datasetprep-work-", ".datasetprep-tmp-"):
        for d in out_dir.glob(f"{pattern}{glob_escape(name)}-*"):
            if d.is_dir():
                removed["bytes"] += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                shutil.rmtree(d, ignore_errors=True)
    _fsync_dir(out_dir)
    return removed


def glob_escape(text: str) -> str:
    """``text`` as a literal in a glob pattern."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _remove_stale_work_dirs(req: Request, keep: Path) -> None:
    for d in keep.parent.glob(f".datasetprep-work-{Path(req.output_prefix).name}-*"):
        if d != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    for d in keep.parent.glob(f".datasetprep-tmp-{Path(req.output_prefix).name}-*"):
        shutil.rmtree(d, ignore_errors=True)


def _mark_done(part_dir: str, result: dict) -> None:
    """Record a finished chunk (atomically), with sizes and sha256 of its part files."""
    i = result["index"]
    doc = {"index": i, "documents": result["documents"], "bytes": result["bytes"], "parts": []}
    for p in result["parts"]:
        files = {ext: {"size": size, "sha256": sha} for ext, (size, sha) in p.digests.items()}
        doc["parts"].append({"base": os.path.basename(p.base), "documents": p.documents, "sequences": p.sequences,
                             "tokens": p.tokens, "max_document_tokens": p.max_document_tokens, "files": files})
    tmp = os.path.join(part_dir, f"{i:08d}.done.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(part_dir, f"{i:08d}.done"))


def _load_done(part_dir: str, i: int, nkeys: int) -> dict | None:
    """A recorded chunk, verified against its sizes and checksums; None if absent or corrupt."""
    try:
        with open(os.path.join(part_dir, f"{i:08d}.done")) as f:
            doc = json.load(f)
        parts = []
        for p in doc["parts"]:
            base = os.path.join(part_dir, p["base"])
            for ext, meta in p["files"].items():
                if os.path.getsize(base + ext) != meta["size"] or tokenization.file_sha256(base + ext) != meta["sha256"]:
                    return None
            parts.append(indexed.PartInfo(base, p["documents"], p["sequences"], p["tokens"], p["max_document_tokens"]))
        if len(parts) != nkeys:
            return None
        return {"index": i, "parts": parts, "documents": doc["documents"], "bytes": doc["bytes"], "reused": True}
    except (OSError, ValueError, KeyError):
        return None


def _run_chunks(req: Request, tok, chunks: list[Chunk], selected: list[int], part_dir: str, dtype,
                stats: dict) -> list[dict]:
    results: list[dict] = []
    todo = []
    for i in selected:
        r = _load_done(part_dir, i, len(req.keys))
        if r is None:
            todo.append(i)
        else:
            results.append(r)
            tokens = sum(p.tokens for p in r["parts"])
            stats["chunks_done"] += 1
            stats["chunks_reused"] += 1
            stats["bytes_done"] += chunks[i].size
            stats["documents"] += r["documents"]
            stats["tokens"] += tokens
            # done by an earlier attempt: counted as done, but not in this attempt's rates
            stats["bytes_reused"] = stats.get("bytes_reused", 0) + chunks[i].size
            stats["documents_reused"] = stats.get("documents_reused", 0) + r["documents"]
            stats["tokens_reused"] = stats.get("tokens_reused", 0) + tokens
    if todo:
        results += _process(req, tok, chunks, todo, part_dir, dtype, stats)
    results.sort(key=lambda r: r["index"])
    return results


def _process(req: Request, tok, chunks: list[Chunk], todo: list[int], part_dir: str, dtype,
             stats: dict) -> list[dict]:
    workers = max(1, min(req.workers, len(todo)))
    results: list[dict] = []
    report = req.progress
    if workers == 1:
        _Worker.tok, _Worker.keys, _Worker.append_eod, _Worker.dtype = tok, tuple(req.keys), req.append_eod, dtype
        q = _LocalQueue(stats, report)
        _Worker.queue = q
        try:
            for i in todo:
                r = process_chunk(i, chunks[i], part_dir)
                _mark_done(part_dir, r)
                results.append(r)
                stats["chunks_done"] += 1
                q.flush(force=True)
        finally:
            _Worker.queue = None
        return results
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    ex = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker,
        initargs=(req.tokenizer, tuple(req.keys), req.append_eod, dtype.str, queue),
    )
    futures = {ex.submit(process_chunk, i, chunks[i], part_dir): i for i in todo}
    pending = set(futures)
    try:
        while pending:
            done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            _drain(queue, stats)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    raise exc
                r = f.result()
                _mark_done(part_dir, r)
                results.append(r)
                stats["chunks_done"] += 1
            if report:
                report(dict(stats))
        _drain(queue, stats)
        ex.shutdown(wait=True)
    except cf.process.BrokenProcessPool:
        _kill_pool(ex)
        raise BinarizeError(
            "a worker process died without an error (killed by the OS? out of memory?); "
            "retry with fewer --workers or more memory"
        ) from None
    except BaseException:
        _kill_pool(ex)
        raise
    finally:
        queue.close()
    if report:
        report(dict(stats))
    return results


def _drain(queue, stats: dict) -> None:
    while True:
        try:
            b, d, t = queue.get_nowait()
        except Exception:
            return
        stats["bytes_done"] += b
        stats["documents"] += d
        stats["tokens"] += t


class _LocalQueue:
    """In-process stand-in for the progress queue when W=1."""

    def __init__(self, stats: dict, report):
        self.stats, self.report, self.last = stats, report, 0.0

    def put(self, item) -> None:
        b, d, t = item
        self.stats["bytes_done"] += b
        self.stats["documents"] += d
        self.stats["tokens"] += t
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.report and (force or now - self.last > 0.25):
            self.last = now
            self.report(dict(self.stats))


def _manifest(req: Request, tok, dtype, outputs: list[dict], fp: dict, stats: dict, seconds: float) -> dict:
    files = []
    for o in outputs:
        files.append({k: o[k] for k in ("key", "prefix", "documents", "sequences", "tokens", "dtype", "bin_bytes",
                                         "idx_bytes", "bin_sha256", "idx_sha256", "max_document_tokens")})
    return {
        "kind": "datasetprep.io/manifest",
        "format": "MMIDIDX",
        "format_version": FORMAT_VERSION,
        "datasetprep_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": req.level,
        "append_eod": req.append_eod,
        "dtype": dtype.name,
        "tokenizer": {
            "type": tok.kind,
            "engine": getattr(tok, "engine", tok.kind),
            "megatron_type": tokenization.MEGATRON_NAMES[tok.kind],
            "path": req.tokenizer.path,
            "vocab_size": tok.vocab_size,
            "eod_id": tok.eod,
            "fingerprint": req.tokenizer.fingerprint(),
        },
        "input": {
            "files": [os.fspath(p) for p in req.inputs],
            "bytes": stats["bytes_total"],
            "sha256": fp.get("sha256"),
        },
        "outputs": files,
        "stats": {"seconds": round(seconds, 3), "workers": req.workers, "chunks": stats["chunks_total"],
                  "chunks_reused": stats.get("chunks_reused", 0)},
        **req.manifest_extra,
    }


def _dataset_moves(outputs: list[dict]) -> list[tuple[str, str]]:
    """The (temporary, final) names of assembled ``.bin``/``.idx`` files."""
    return [(o["tmp"] + ext, o["final"] + ext) for o in outputs for ext in (".bin", ".idx")]


def _publish(req: Request, moves: list[tuple], manifest: dict, tmp: Path) -> None:
    """Rename the finished files (``moves``: temporary → final) into place, then the manifest."""
    check_outputs(req)  # someone may have written the names meanwhile
    mtmp = tmp / "manifest.json"
    with open(mtmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    # The manifest marks a complete output: take the old one away first, so that no moment shows
    # an old manifest next to new data.
    manifest_path(req.output_prefix).unlink(missing_ok=True)
    for src, dst in moves:
        os.replace(src, dst)
    os.replace(mtmp, manifest_path(req.output_prefix))
    _fsync_dir(Path(req.output_prefix).parent)


def format_rate(stats: dict) -> dict:
    """Derived figures for progress displays."""
    el = max(time.time() - stats["started"], 1e-6)
    done, total = stats["bytes_done"], stats["bytes_total"] or 1
    # rates are of the work this attempt did: chunks reused from an earlier attempt took no time
    rate = (done - stats.get("bytes_reused", 0)) / el
    return {
        "elapsed": el,
        "mib_s": rate / 2**20,
        "docs_s": (stats["documents"] - stats.get("documents_reused", 0)) / el,
        "tokens_s": (stats["tokens"] - stats.get("tokens_reused", 0)) / el,
        "percent": min(100.0, 100.0 * done / total),
        "eta": (total - done) / rate if rate > 0 else None,
    }
