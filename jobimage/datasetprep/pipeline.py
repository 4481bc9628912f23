"""The binarization pipeline: chunk plan → worker pool → parts → concatenation → atomic publish.

* The input is cut into chunks (:mod:`~datasetprep.chunks`); W worker processes
  (:mod:`~datasetprep.pool`) take them and write one *part* per chunk and text key straight to disk,
  recording every finished chunk so a rerun redoes at most the chunks that were in flight.
* The parts are concatenated in plan order (``indexed.assemble``), so the bytes are the same for
  any number of workers or shards, and equal to Megatron-LM's single-stream output.
* The outputs appear under their final names only once all are complete (:mod:`~datasetprep.publish`),
  followed by the manifest. An error anywhere stops the run within seconds and leaves nothing under
  the final names.
* Safety around all of it: the request is checked before any work (:func:`check_request`), the run
  holds its prefix (:mod:`~datasetprep.ownership`) and first finishes a publish an earlier run left
  cut, no output may be one of the inputs, every input keeps the identity it was planned with until
  the publish (:func:`~datasetprep.chunks.unchanged`), and with a claim (``Request.root``) nothing is
  read, written or deleted through a link that leaves it (:mod:`~datasetprep.volumes`).

The shape of the work is a :class:`~datasetprep.contract.RunPlan` (:func:`execute`): everything
here (:func:`run`), slice i of n (:func:`run_shard`), the merge after every shard (:func:`finish`),
and with kept shards each shard's own dataset plus a blend list instead of one merged dataset.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, chunks as chunk_plan, indexed, layout, naming, ownership, publish as publishing
from . import tokenization, volumes
from .chunks import ChunkResult, InputStat
from .contract import (Manifest, ManifestInput, ManifestOutput, ManifestStats, ManifestTokenizer, RunPlan, ShardDone,
                       ShardDataset)
from .errors import BinarizeError, InputError, WorkerLost  # noqa: F401 - BinarizeError/WorkerLost: part of this API
from .hashes import FORMAT_VERSION, chunk_plan_key
from .limits import DEFAULT_MAX_DOCUMENT_BYTES, ResumeCheck
from .pool import ChunkTask, RecordsTask, Setup, run_tasks
from .publish import COMMIT, Assembled, Assembly, Move, assemble, check_outputs, new_tmp_dir, publish, write_text
from .readers import Chunk
from .stats import Stats
from .tokenization import TokenizerConfig, TokenizerError


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where an output came from, recorded in its manifest (``datasetprep run`` and the job set it)."""

    fingerprint: str | None = None
    """The work fingerprint (:func:`datasetprep.hashes.work_fingerprint`)."""
    source: dict[str, Any] | None = None
    tokenizer_file: str | None = None


@dataclasses.dataclass
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
    level: str = naming.LEVEL
    input_sha256: str | None = None  # the inputs' digest when the caller computed it already
    partitions: int = 1  # Megatron's --partitions K (round-robin document order)
    keep_sequential: bool = False  # with partitions: Megatron's --keep-sequential-samples (order kept)
    progress: Callable[[Stats], None] | None = None
    provenance: Provenance = dataclasses.field(default_factory=Provenance)
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES  # a larger document fails the run
    root: Path | None = None
    """The claim the outputs must stay in (``datasetprep run``, the job): nothing is written, read or
    deleted through a link that leaves it. None: no claim (``binarize``)."""
    claim: str | None = None
    """The claim's name, for messages."""
    held: volumes.HeldFolder | None = None
    """The output folder held by descriptor (``output_prefix`` lies below its ``/proc/self/fd/N``
    path); checked before every publish, and the work folder is held below it."""
    input_snapshot: Mapping[str, InputStat] | None = None
    """The inputs' identities when the caller started using them (before hashing them); default: now."""
    resume_check: ResumeCheck = "content"
    lock_wait: float = 0.0
    """Seconds to wait for a prefix another run holds (0: fail at once, naming it)."""
    who: str = "datasetprep"
    """This run in words, for the lock's owner record (command, pod, resource)."""
    log: Callable[[str], None] = lambda m: None


@dataclasses.dataclass(frozen=True)
class Work:
    """What every step of a run starts from: the checked tokenizer, the dtype, the chunk plan and
    its work folder (named by the plan's hash)."""

    tok: tokenization.Tokenizer
    dtype: np.dtype
    files: list[Path]
    chunks: list[Chunk]
    key: str
    dir: Path
    snap: Mapping[str, InputStat]
    """Every input's identity as planned: held to the end of the run."""
    held: Path | None = None
    """The work folder held by descriptor below the held output folder (:func:`_held_work`): what is
    written in it goes there, whatever is swapped in its place. ``dir`` names it (to remove it:
    ``rmtree`` never follows a link)."""
    held_parts: Path | None = None

    @property
    def inside(self) -> Path:
        """Where to write in the work folder."""
        return self.held or self.dir

    @property
    def part_dir(self) -> str:
        return os.fspath(self.held_parts or self.dir / "parts")


def check_request(req: Request) -> None:
    """What can be refused before any work: nothing has been written when this fails."""
    if not req.keys:
        raise BinarizeError("no text keys given (--json-keys)")
    twice = sorted({k for k in req.keys if req.keys.count(k) > 1})
    if twice:
        raise BinarizeError(f"--json-keys (spec: source.textKeys) names {twice[0]!r} more than once: each key makes "
                            "one output, so give each once")


def load_checked(req: Request) -> tokenization.Tokenizer:
    """The tokenizer, loaded once here to check it before any worker starts."""
    check_request(req)
    tok = tokenization.load(req.tokenizer)
    if req.append_eod and tok.eod is None:
        raise TokenizerError(
            f"--append-eod needs an end-of-document token, but this {tok.kind} tokenizer defines none: "
            "set eos_token in tokenizer_config.json, or give the id with --eod-id (spec: tokenizer.eodId), "
            "or drop --append-eod"
        )
    return tok


def plan(req: Request) -> tuple[list[Path], list[Chunk]]:
    """The deterministic work plan: data files and chunks (independent of workers and shards)."""
    return chunk_plan.plan(req.inputs, req.chunk_bytes, partitions=req.partitions,
                           keep_sequential=req.keep_sequential, max_document_bytes=req.max_document_bytes)


def prepare(req: Request) -> Work:
    tok = load_checked(req)
    snap = dict(req.input_snapshot) if req.input_snapshot is not None else None
    if snap is None:
        snap = chunk_plan.snapshot(chunk_plan.expand(req.inputs))
    files, chunks = plan(req)
    snap = {os.fspath(f): snap[os.fspath(f)] if os.fspath(f) in snap else InputStat.of(f) for f in files}
    chunk_plan.unchanged(snap)  # the plan was made from these very files
    _refuse_outputs_that_are_inputs(req, files)
    key = chunk_plan_key(files, tokenizer_fingerprint=req.tokenizer.fingerprint(), keys=req.keys,
                         append_eod=req.append_eod, level=req.level, chunks=chunk_plan.describe(chunks))
    return Work(tok, indexed.dtype_for_vocab(tok.vocab_size), files, chunks, key,
                layout.work_dir(req.output_prefix, key), snap)


def _refuse_outputs_that_are_inputs(req: Request, files: list[Path]) -> None:
    """No output of this prefix (or a link or hard link to one) may be an input: publishing it
    would replace the input."""
    ids = {}
    for f in files:
        st = os.stat(f)
        ids[(st.st_dev, st.st_ino)] = f
    for out in layout.output_paths(req.output_prefix, req.keys, req.level):
        try:
            st = os.stat(out)
        except OSError:
            continue
        f = ids.get((st.st_dev, st.st_ino))
        if f is not None:
            raise BinarizeError(f"input {f} is also an output of this run ({out}): publishing would replace the "
                                "input; choose another output prefix (or move the input)")


@contextlib.contextmanager
def holding(req: Request, *, shared: bool = False) -> Iterator[None]:
    """The run's hold on its prefix: the request checked, the output folder made (inside its claim),
    the prefix lock taken, and a publish an earlier run left cut finished first."""
    check_request(req)
    folder, name = Path(req.output_prefix).parent, Path(req.output_prefix).name
    check_outputs(req.output_prefix, req.keys, req.level, overwrite=True)  # the folder exists and is writable
    _confine(req, folder)
    with ownership.PrefixLock(folder, name, shared=shared, wait=req.lock_wait, who=req.who, log=req.log):
        if req.held is not None:
            req.held.check(then="the run stopped before any work")
        if not shared:
            publishing.recover(req.output_prefix, req.log)
        yield


def _confine(req: Request, folder: Path, prefix: str | None = None) -> None:
    """With a claim: the output folder, and every name of ours in it, may not lead out of it; a
    held folder (and the work folder held below it) must still be where it was."""
    if req.root is None:
        return
    if req.held is not None:
        req.held.check(then="nothing was published")
    volumes.confine(req.root, folder, "spec.output.prefix", req.claim)
    names = [p.name for p in layout.output_paths(prefix or req.output_prefix, req.keys, req.level)]
    volumes.check_final_names(req.root, folder, names, "spec.output.prefix", req.claim,
                              shown=req.held.logical if req.held is not None else None)


def execute(req: Request, plan_: RunPlan) -> Manifest | ShardDone:
    """Do one step of a run (see :class:`~datasetprep.contract.RunPlan`)."""
    if plan_.step == "shard":
        return run_shard(req, plan_)
    if plan_.step == "merge":
        return finish(req, plan_)
    if plan_.step != "all":
        raise BinarizeError(f"the pipeline has no {plan_.step} step")
    if not plan_.keep_shards:
        return run(req)
    # one machine makes every shard's dataset in turn, then the blend lists
    with holding(req):
        overall = _Overall(req)
        for i in range(plan_.shards):
            run_shard(dataclasses.replace(req, progress=overall.report),
                      RunPlan.shard(i, plan_.shards, keep_shards=True))
            overall.next_shard()
        return finish(req, RunPlan(step="merge", shards=plan_.shards, keep_shards=True))


class _Overall:
    """One progress display over the shards a single machine makes in turn."""

    def __init__(self, req: Request) -> None:
        self.req = req
        chunks = plan(req)[1]
        self.bytes_total, self.chunks_total = sum(c.size for c in chunks), len(chunks)
        self.offset = Stats()  # what the shards before this one did
        self.last = Stats()
        self.started: float | None = None

    def report(self, stats: Stats) -> None:
        self.last = stats
        self.started = self.started or stats.started
        if self.req.progress is not None:
            off = self.offset
            self.req.progress(dataclasses.replace(
                stats, started=self.started, bytes_total=self.bytes_total, chunks_total=self.chunks_total,
                bytes_done=stats.bytes_done + off.bytes_done, documents=stats.documents + off.documents,
                tokens=stats.tokens + off.tokens, chunks_done=stats.chunks_done + off.chunks_done,
                chunks_reused=stats.chunks_reused + off.chunks_reused))

    def next_shard(self) -> None:
        last, off = self.last, self.offset
        self.offset = Stats(bytes_done=off.bytes_done + last.bytes_done, documents=off.documents + last.documents,
                            tokens=off.tokens + last.tokens, chunks_done=off.chunks_done + last.chunks_done,
                            chunks_reused=off.chunks_reused + last.chunks_reused)
        self.last = Stats()


def run(req: Request) -> Manifest:
    """Binarize everything here; returns the manifest (also written next to the outputs).

    The work folder is stable for the same work, and every finished chunk is recorded there, so a
    rerun after a crash redoes at most the chunks that were in flight.
    """
    t0 = time.time()
    check_request(req)  # before anything is written, the output folder included
    check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
    with holding(req):
        check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)  # a finished cut publish counts
        work = prepare(req)
        layout.remove_stale_work_dirs(req.output_prefix, keep=work.dir)
        work = _made(req, work)
        _remove_stale_assemblies(work)
        # the inputs' digest and the outputs' .bin files are made while the workers tokenize (the
        # parts appended in plan order as they finish), so that little is left after the last chunk
        digest = _InputDigest(req.input_sha256, work.files)
        tmp = new_tmp_dir(req.output_prefix, under=work.inside)
        assembly = Assembly(req.keys, req.output_prefix, req.level, work.dtype, tmp, order=range(len(work.chunks)))
        try:
            results, stats = _tokenize(req, work, range(len(work.chunks)), t0, on_chunk=assembly.add)
        except BaseException:
            assembly.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _publish_merged(req, work.tok, work.dtype, work.files, work, results, stats, t0, work.snap,
                               assembly=assembly, digest=digest)


def run_shard(req: Request, plan_: RunPlan) -> ShardDone:
    """Tokenize slice ``plan_.index`` of ``plan_.shards`` (one pod of an Indexed Job); nothing is
    assembled (see :func:`finish`), except with kept shards: then the slice is published as its own
    dataset ``{prefix}_shard{i:05d}_{key}_document``."""
    if plan_.step != "shard" or plan_.index is None:
        raise BinarizeError("a shard step needs its shard index")
    t0 = time.time()
    i, n = plan_.index, plan_.shards
    # the other shard pods of this run work beside us; a retried pod of this shard waits for the
    # attempt before it to be gone (two writers of one chunk would race)
    with holding(req, shared=True), _holding_shard(req, i):
        work = prepare(req)
        if plan_.keep_shards:
            published = layout.shard_published(req.output_prefix, req.keys, work.key, i, n)
            if published is not None:  # an earlier attempt (or run) finished this shard: nothing to redo
                return ShardDone(shard=i, shards=n, chunks=published.stats.chunks,
                                 chunks_reused=published.stats.chunks, documents=published.outputs[0].documents,
                                 published=True, already_published=True)
        selected = chunk_plan.shard_slice(len(work.chunks), i, n)
        work = _made(req, work)
        results, stats = _tokenize(req, work, selected, t0)
        if plan_.keep_shards:
            _publish_shard(req, work, results, plan_, stats, t0)
        else:
            chunk_plan.unchanged(work.snap)
    return ShardDone(shard=i, shards=n, chunks=len(selected), chunks_reused=stats.chunks_reused,
                     documents=sum(r.documents for r in results), published=plan_.keep_shards)


@contextlib.contextmanager
def _holding_shard(req: Request, i: int) -> Iterator[None]:
    """Shard i's own prefix, exclusively (a cut publish of it finished first)."""
    prefix = naming.shard_prefix(req.output_prefix, i)
    folder = Path(prefix).parent
    _confine(req, folder, prefix)
    with ownership.PrefixLock(folder, Path(prefix).name, wait=req.lock_wait, who=req.who, log=req.log):
        publishing.recover(prefix, req.log)
        yield


def finish(req: Request, plan_: RunPlan) -> Manifest:
    """After every shard of ``plan_``: assemble and publish (the merge step). With kept shards nothing
    is concatenated: every shard must have published its own dataset, and the blend lists of them are
    written instead (see :func:`_finish_kept`)."""
    t0 = time.time()
    check_request(req)  # before anything is written, the output folder included
    check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
    with holding(req):
        check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
        layout.remove_stale_work_dirs(req.output_prefix, None, kinds=(naming.TMP_DIR_PREFIX,))  # a cut finish's
        work = _held_work(req, prepare(req))
        if plan_.keep_shards:
            return _finish_kept(req, work, plan_.shards, t0)
        verified = Stats()
        results, missing = chunk_plan.resume(work.part_dir, work.chunks, range(len(work.chunks)), req.keys,
                                             verified, work.snap, req.resume_check, threads=req.workers)
        if missing:
            raise BinarizeError(f"chunk {missing[0]} of {len(work.chunks)} is not done (or failed verification); "
                                "rerun its shard before merging")
        size = sum(c.size for c in work.chunks)
        stats = Stats(started=t0, bytes_done=size, bytes_total=size, documents=sum(r.documents for r in results),
                      chunks_done=len(work.chunks), chunks_total=len(work.chunks), chunks_reused=len(work.chunks))
        return _publish_merged(req, work.tok, work.dtype, work.files, work, results, stats, t0, work.snap)


def run_stream(req: Request, batches: Iterable[tuple[list, int]], bytes_hint: int = 0) -> Manifest:
    """Binarize records that arrive as an iterator of ``(records, nbytes)`` batches (Hub streaming
    mode: nothing is materialised).  The driver reads, the workers tokenize and write parts; at most
    2×W batches are in flight, so memory stays bounded.  No resume: a rerun streams again."""
    t0 = time.time()
    check_request(req)  # before anything is written, the output folder included
    check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
    with holding(req):
        check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
        tok = load_checked(req)
        dtype = indexed.dtype_for_vocab(tok.vocab_size)
        wd = layout.make_work_dir(layout.work_dir(req.output_prefix, "stream-" + uuid.uuid4().hex[:8]),
                                  req.output_prefix)
        work = _held_work(req, Work(tok, dtype, [], [], "stream", wd, {}))
        stats = Stats(started=t0, bytes_total=bytes_hint)

        def tasks() -> Iterator[RecordsTask]:
            first = 0
            for i, (records, nbytes) in enumerate(batches):
                stats.chunks_total += 1
                yield RecordsTask(i, records, nbytes, first, work.part_dir)
                first += len(records)

        try:
            results = run_tasks(tasks(), _setup(req, dtype), workers=req.workers, stats=stats, report=req.progress,
                                loaded=tok)
        except BaseException:
            _remove_work(req, wd)
            raise
        return _publish_merged(req, tok, dtype, [], work, results, stats, t0, {})


# ----------------------------------------------------------------------------- tokenizing


def _setup(req: Request, dtype: np.dtype) -> Setup:
    return Setup(tokenizer=req.tokenizer, keys=tuple(req.keys), append_eod=req.append_eod, dtype=dtype.str)


def _made(req: Request, work: Work) -> Work:
    """The work folder (and its parts folder) made, or found, and held (:func:`_held_work`)."""
    try:
        layout.make_work_dir(work.dir, req.output_prefix)
    except OSError as e:
        raise BinarizeError(f"cannot write to output folder {work.dir.parent}: {e.strerror}") from None
    return _held_work(req, work)


def _held_work(req: Request, work: Work) -> Work:
    """When the run holds its output folder: its work folder and the parts folder, held below it (no link
    followed), so that parts, records and the assembled outputs are written there whatever is swapped in
    their place; the publish checks they still are where they were. A work folder not made yet: as is."""
    if req.held is None:
        return work
    try:
        return dataclasses.replace(work, held_parts=req.held.hold(work.dir / "parts"), held=req.held.hold(work.dir))
    except FileNotFoundError:
        return work


def _remove_stale_assemblies(work: Work) -> None:
    """The temporary folders a killed attempt was assembling in (the caller holds the prefix alone:
    no shard step is writing its own); the chunks it finished are reused, its assembly is not."""
    try:
        entries = list(os.scandir(work.inside))
    except FileNotFoundError:
        return
    for e in entries:
        if e.name.startswith(publishing.ASSEMBLY_DIR_PREFIX) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)


def _remove_work(req: Request, wd: Path) -> None:
    """Remove a work folder, by its name (``rmtree`` never follows a link), held no longer."""
    if req.held is not None:
        req.held.release(wd)
    shutil.rmtree(wd, ignore_errors=True)


def _tokenize(req: Request, work: Work, selected: range, t0: float,
              on_chunk: Callable[[ChunkResult], None] = lambda r: None) -> tuple[list[ChunkResult], Stats]:
    """The selected chunks: those recorded by an earlier attempt, the rest tokenized now (and recorded).
    ``on_chunk`` sees each chunk's result once, in any order: the earlier attempt's first."""
    stats = Stats(started=t0, bytes_total=sum(work.chunks[j].size for j in selected), chunks_total=len(selected))

    def finished(r: ChunkResult) -> None:
        chunk_plan.write_record(work.part_dir, r)
        on_chunk(r)

    try:
        done, todo = chunk_plan.resume(work.part_dir, work.chunks, selected, req.keys, stats, work.snap,
                                       req.resume_check, threads=req.workers)
        for r in sorted(done, key=lambda r: r.index):
            on_chunk(r)
        tasks = (ChunkTask(i, work.chunks[i], work.part_dir, work.snap.get(work.chunks[i].path)) for i in todo)
        fresh = run_tasks(tasks, _setup(req, work.dtype), workers=max(1, min(req.workers, len(todo))), stats=stats,
                          report=req.progress, on_result=finished, loaded=work.tok) if todo else []
    except (InputError, TokenizerError):
        _remove_work(req, work.dir)  # permanent: the input or tokenizer must change first
        raise
    return sorted(done + fresh, key=lambda r: r.index), stats


# ----------------------------------------------------------------------------- publishing


def _manifest(req: Request, tok: tokenization.Tokenizer, dtype: np.dtype, outputs: list[ManifestOutput],
              stats: Stats, seconds: float, *, input_sha256: str | None, provenance: Provenance,
              **layout_fields: Any) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION, datasetprep_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), level=req.level, append_eod=req.append_eod,
        dtype=dtype.name,
        tokenizer=ManifestTokenizer(type=tok.kind, engine=getattr(tok, "engine", tok.kind),
                                    megatron_type=naming.MEGATRON_TOKENIZER[tok.kind], path=req.tokenizer.path,
                                    vocab_size=tok.vocab_size, eod_id=tok.eod, fingerprint=req.tokenizer.fingerprint()),
        input=ManifestInput(files=[os.fspath(p) for p in req.inputs], bytes=stats.bytes_total, sha256=input_sha256),
        outputs=outputs,
        stats=ManifestStats(seconds=round(seconds, 3), workers=req.workers, chunks=stats.chunks_total,
                            chunks_reused=stats.chunks_reused),
        fingerprint=provenance.fingerprint, source=provenance.source, tokenizer_file=provenance.tokenizer_file,
        **layout_fields)


def files_digest(files: list[Path]) -> str:
    """One sha256 over (name, size, sha256) of each file, in order: the input fingerprint."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0{tokenization.file_sha256(p)}\n".encode())
    return h.hexdigest()


class _InputDigest:
    """The inputs' digest, computed on a thread while the outputs are assembled (unless known)."""

    def __init__(self, known: str | None, files: list[Path]) -> None:
        self.value = known
        self._thread = None
        if known is None and files:
            self._thread = threading.Thread(target=self._compute, args=(files,), daemon=True)
            self._thread.start()

    def _compute(self, files: list[Path]) -> None:
        try:
            self.value = files_digest(files)
        except OSError:  # reported by the workers with context; the digest stays optional
            self.value = None

    def result(self) -> str | None:
        if self._thread is not None:
            self._thread.join()
        return self.value


def _publish_merged(req: Request, tok: tokenization.Tokenizer, dtype: np.dtype, files: list[Path], work: Work,
                    results: list[ChunkResult], stats: Stats, t0: float,
                    snap: Mapping[str, InputStat], *, assembly: Assembly | None = None,
                    digest: _InputDigest | None = None) -> Manifest:
    """Concatenate every chunk into one dataset per text key and publish them with the manifest.
    ``assembly``: begun while the chunks were made (in its own temporary folder), else begun here."""
    wd = work.dir
    if not sum(r.documents for r in results):
        if assembly is not None:
            assembly.close()
        _remove_work(req, wd)
        raise InputError(f"the inputs hold no records ({', '.join(map(str, files[:3])) or 'stream'})")
    digest = digest or _InputDigest(req.input_sha256, files)
    if assembly is None:
        assembly = Assembly(req.keys, req.output_prefix, req.level, dtype, new_tmp_dir(req.output_prefix,
                                                                                       under=work.inside))
    tmp = assembly.tmp
    try:
        assembled = assembly.finish(results)
        manifest = _manifest(req, tok, dtype, [a.output for a in assembled], stats, time.time() - t0,
                             input_sha256=digest.result(), provenance=req.provenance)
        chunk_plan.unchanged(snap)  # the inputs still are what was tokenized (and hashed)
        check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)  # someone may have written them meanwhile
        _confine(req, Path(req.output_prefix).parent)
        publish(req.output_prefix, [m for a in assembled for m in a.moves], manifest, tmp,
                remove=layout.other_layout_names(req.output_prefix, req.keys, req.level, keep_shards=0))
    except BaseException:
        assembly.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_work(req, wd)
    return manifest


def _publish_shard(req: Request, work: Work, results: list[ChunkResult], plan_: RunPlan, stats: Stats,
                   t0: float) -> Manifest:
    """Assemble this shard's chunks into its own dataset and publish it (with its manifest)."""
    i, n = plan_.index or 0, plan_.shards
    prefix = naming.shard_prefix(req.output_prefix, i)
    with _holding_shard(req, i):
        tmp = new_tmp_dir(prefix, under=work.inside, tag=f"shard{i:05d}-")
        try:
            assembled: list[Assembled] = assemble(results, req.keys, prefix, req.level, work.dtype, tmp)
            manifest = _manifest(req, work.tok, work.dtype, [a.output for a in assembled], stats, time.time() - t0,
                                 input_sha256=None, provenance=Provenance(fingerprint=req.provenance.fingerprint),
                                 layout="shard", shard=(i, n), work_key=work.key)
            chunk_plan.unchanged(work.snap)
            check_outputs(prefix, req.keys, req.level, overwrite=True)
            _confine(req, Path(prefix).parent, prefix)
            # The whole dataset's manifest and blend lists list the shards; they are no longer true
            # once one changes, and the finishing step writes them again.
            stale = [layout.manifest_path(req.output_prefix).name] + [
                layout.blend_path(req.output_prefix, key, req.level).name for key in req.keys]
            publish(prefix, [m for a in assembled for m in a.moves], manifest, tmp, remove=stale)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _finish_kept(req: Request, work: Work, n: int, t0: float) -> Manifest:
    """Check every shard's published dataset, then write one blend list per text key
    (``{prefix}_{key}_document.blend.txt``: ``tokens prefix`` per non-empty shard, as Megatron-LM's
    ``--data-args-path`` reads it, weights = token counts so that sampling follows the data) and
    the manifest of the whole.  Reads no token: it is quick whatever the size."""
    shards = []
    for i in range(n):
        with _holding_shard(req, i):  # a cut publish of a shard is finished (or undone) first
            m = layout.shard_published(req.output_prefix, req.keys, work.key, i, n)
        if m is None:
            raise BinarizeError(f"shard {i} of {n} has not published its dataset, or its files changed since "
                                f"({naming.shard_prefix(req.output_prefix, i)}.manifest.json); rerun that shard first")
        shards.append(m)
    out_dir = Path(req.output_prefix).parent
    if not sum(m.outputs[0].documents for m in shards):
        raise InputError(f"the inputs hold no records ({', '.join(map(str, req.inputs[:3]))})")
    tmp = new_tmp_dir(req.output_prefix)
    try:
        outputs, moves = [], []
        for k, key in enumerate(req.keys):
            entries = [m.outputs[k] for m in shards]
            final = layout.blend_path(req.output_prefix, key, req.level)
            write_text(tmp / final.name, "".join(f"{e.tokens} {(out_dir / e.prefix).resolve()}\n"
                                                 for e in entries if e.sequences))
            moves.append(Move(tmp / final.name, final.name, COMMIT))
            outputs.append(ManifestOutput(
                key=key, prefix=Path(naming.dataset_prefix(req.output_prefix, key, req.level)).name,
                blend_file=final.name, documents=sum(e.documents for e in entries),
                sequences=sum(e.sequences for e in entries), tokens=sum(e.tokens for e in entries),
                dtype=work.dtype.name, max_document_tokens=max(e.max_document_tokens for e in entries),
                shards=[ShardDataset.model_validate(e.model_dump()) for e in entries]))
        stats = Stats(started=t0, bytes_total=sum(m.input.bytes for m in shards), chunks_total=len(work.chunks),
                      chunks_reused=len(work.chunks))
        manifest = _manifest(req, work.tok, work.dtype, outputs, stats, time.time() - t0,
                             input_sha256=req.input_sha256, provenance=req.provenance, layout="shards", shards=n,
                             work_key=work.key)
        chunk_plan.unchanged(work.snap)
        check_outputs(req.output_prefix, req.keys, req.level, req.overwrite)
        _confine(req, out_dir)
        publish(req.output_prefix, moves, manifest, tmp,
                remove=layout.other_layout_names(req.output_prefix, req.keys, req.level, keep_shards=n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_work(req, work.dir)  # the chunk parts are in the shard datasets now
    return manifest


__all__ = ["BinarizeError", "InputError", "WorkerLost", "Provenance", "Request", "Work", "check_request", "execute",
           "finish", "files_digest", "load_checked", "plan", "prepare", "run", "run_shard", "run_stream"]
