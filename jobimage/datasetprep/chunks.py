"""The chunk plan of a run, and the record of every finished chunk (what a restarted pod resumes from).

The plan depends on the input only -- not on workers or shards -- so every shard pod computes the same
plan and takes its slice of it (:func:`shard_slice`), and a rerun with other settings still finds the
chunks it finished. Each finished chunk leaves its parts (one per text key) and a record
``NNNNNNNN.done`` in the work folder with the parts' sizes and sha256 and what the chunk was made
from: its input file's identity (:class:`InputStat`: size, mtime, ctime, inode) and the sha256 of
the input bytes it covers (``readers.input_spans``), hashed while they were read.

A record is trusted only when (:func:`load_record`) its parts still match it, its input file has the
identity the run planned with, and -- unless the run trusts identities (``resume_check="stat"``) --
the input bytes it covers hash to what the record says: a file edited in place, even with its size
and mtime put back, is never resumed from stale records. The run's inputs are also held to their
planned identity from start to end (:func:`unchanged`): a worker checks its file before and after
reading a chunk, and the run checks every file again before it publishes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import indexed, readers
from .errors import InputChanged, InputError
from .volumes import read_nofollow
from .limits import DEFAULT_MAX_DOCUMENT_BYTES, ResumeCheck
from .readers import Chunk
from .stats import Stats

CHUNK_BYTES = 16 << 20


@dataclasses.dataclass
class ChunkResult:
    """One tokenized chunk: its part per text key (in key order), and what it held."""

    index: int
    parts: list[indexed.PartInfo]
    documents: int
    bytes: int
    reused: bool = False
    """Finished by an earlier attempt (read from its record, not tokenized now)."""
    input: dict[str, Any] | None = None
    """What it was made from: ``{"stat": InputStat as a list, "sha256": of the input bytes it covers}``."""


@dataclasses.dataclass(frozen=True)
class InputStat:
    """An input file's identity: what any write to it changes (``ctime`` even when the size and
    mtime are put back; the inode when the file is replaced)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "InputStat":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def as_list(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode]

    def difference(self, other: "InputStat | None") -> str:
        """How ``other`` (the file now) differs from this one, in words."""
        if other is None:
            return "it is gone"
        if other.inode != self.inode:
            return "it was replaced by another file"
        if other.size != self.size:
            return f"its size went from {self.size:,} to {other.size:,} bytes"
        if other.mtime_ns != self.mtime_ns:
            return f"it was modified at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(other.mtime_ns / 1e9))}"
        return "it was written to (its change time moved, although its size and modification time did not)"


def snapshot(files: Iterable[str | os.PathLike]) -> dict[str, InputStat]:
    """Every input file's identity, keyed by path as the chunk plan names it."""
    try:
        return {os.fspath(f): InputStat.of(f) for f in files}
    except FileNotFoundError as e:
        raise InputError(f"input {e.filename} does not exist (any more)") from None


def changed_message(path: str, before: InputStat, now: InputStat | None) -> str:
    return (f"input {path} changed while the run was using it: {before.difference(now)}. Nothing was published; "
            "run again once the file no longer changes (the chunks made from the old bytes are not reused)")


def unchanged(snap: Mapping[str, InputStat]) -> None:
    """Every input still has the identity it was planned with; else :class:`InputChanged`."""
    for path, before in snap.items():
        try:
            now: InputStat | None = InputStat.of(path)
        except FileNotFoundError:
            now = None
        if now != before:
            raise InputChanged(changed_message(path, before, now))


def auto_chunk_bytes(total: int) -> int:
    """About 64 chunks for small inputs (even load over workers), 16 MiB for large ones.  Depends on
    the input only, so a rerun with other workers or shards still finds the chunks it finished."""
    return max(1 << 20, min(CHUNK_BYTES, total // 64))


def plan(inputs: list[Path], chunk_bytes: int | None, *, partitions: int = 1,
         keep_sequential: bool = False,
         max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> tuple[list[Path], list[Chunk]]:
    """The deterministic work plan: data files and chunks (independent of workers and shards)."""
    files = expand(inputs)
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        raise InputError(f"input {empty[0]} is empty (0 bytes): nothing to tokenize")
    size = chunk_bytes or auto_chunk_bytes(sum(f.stat().st_size for f in files))
    if partitions > 1 and not keep_sequential:
        return files, readers.plan_round_robin(files, partitions, size, max_document_bytes)
    return files, readers.plan_chunks(files, size, max_document_bytes)


def expand(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The data files of the inputs (a folder stands for its files)."""
    return [f for p in inputs for f in (readers.expand_dir(Path(p)) if Path(p).is_dir() else [Path(p)])]


def describe(chunks: list[Chunk]) -> list[str]:
    """The chunks as they enter the chunk plan's hash (:func:`datasetprep.hashes.chunk_plan_key`)."""
    return [c.describe() + f":{c.stride}:{c.phase}" for c in chunks]


def shard_slice(n_chunks: int, index: int, shards: int) -> range:
    """The chunks shard ``index`` of ``shards`` works on: a contiguous slice, equal counts."""
    return range(n_chunks * index // shards, n_chunks * (index + 1) // shards)


def record_path(part_dir: str, index: int) -> str:
    return os.path.join(part_dir, f"{index:08d}.done")


def write_record(part_dir: str, result: ChunkResult) -> None:
    """Record a finished chunk (atomically), with sizes and sha256 of its part files and its input."""
    doc = {"index": result.index, "documents": result.documents, "bytes": result.bytes, "parts": [],
           "input": result.input}
    for p in result.parts:
        files = {ext: {"size": size, "sha256": sha} for ext, (size, sha) in (p.digests or {}).items()}
        doc["parts"].append({"base": os.path.basename(p.base), "documents": p.documents, "sequences": p.sequences,
                             "tokens": p.tokens, "max_document_tokens": p.max_document_tokens, "files": files})
    final = record_path(part_dir, result.index)
    fd = os.open(final + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(final + ".tmp", final)


def _file_matches(path: str, size: int, sha: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            return False
        return hashlib.file_digest(f, "sha256").hexdigest() == sha


def load_record(part_dir: str, index: int, keys: tuple[str, ...] | int, chunk: readers.Chunk | None = None,
                expect: InputStat | None = None, check: ResumeCheck = "content") -> ChunkResult | None:
    """A recorded chunk, verified (see the module doc); None if absent, corrupt, or made from other
    input bytes than ``chunk`` of a file with identity ``expect`` now holds."""
    nkeys = keys if isinstance(keys, int) else len(keys)
    try:
        doc = json.loads(read_nofollow(record_path(part_dir, index)))
        if chunk is not None and not _input_matches(doc.get("input"), chunk, expect, keys, check):
            return None
        parts = []
        for p in doc["parts"]:
            base = os.path.join(part_dir, os.path.basename(p["base"]))
            for ext, meta in p["files"].items():
                if not _file_matches(base + ext, meta["size"], meta["sha256"]):
                    return None
            parts.append(indexed.PartInfo(base, p["documents"], p["sequences"], p["tokens"], p["max_document_tokens"]))
        if len(parts) != nkeys:
            return None
        return ChunkResult(index, parts, doc["documents"], doc["bytes"], reused=True, input=doc.get("input"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _input_matches(recorded: Any, chunk: readers.Chunk, expect: InputStat | None, keys: tuple[str, ...] | int,
                   check: ResumeCheck) -> bool:
    """The record was made from the bytes ``chunk`` covers now."""
    if not isinstance(recorded, dict) or expect is None or recorded.get("stat") != expect.as_list():
        return False
    if check == "stat":
        return True
    if isinstance(keys, int):
        raise ValueError("a content check needs the text keys (Parquet chunks cover the keys' columns)")
    try:
        return readers.hash_input(chunk, keys) == recorded.get("sha256")
    except (OSError, InputError):
        return False


def resume(part_dir: str, chunks: list[readers.Chunk], selected: range | list[int], keys: tuple[str, ...],
           stats: Stats, snap: Mapping[str, InputStat], check: ResumeCheck = "content",
           threads: int = 1) -> tuple[list[ChunkResult], list[int]]:
    """The selected chunks an earlier attempt finished (counted in ``stats``), and those left to do.
    Records are verified on ``threads`` threads (hashing releases the GIL)."""
    recorded = [i for i in selected if os.path.exists(record_path(part_dir, i))]

    def load(i: int) -> ChunkResult | None:
        c = chunks[i]
        return load_record(part_dir, i, keys, c, snap.get(c.path), check)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(recorded) or 1))) as pool:
        found = dict(zip(recorded, pool.map(load, recorded)))
    done: list[ChunkResult] = []
    todo: list[int] = []
    for i in selected:
        r = found.get(i)
        if r is None:
            todo.append(i)
        else:
            done.append(r)
            stats.reuse(chunks[i].size, r.documents, sum(p.tokens for p in r.parts))
    return done, todo
