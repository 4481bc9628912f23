"""Publishing: the final names show one run's complete output, or none -- at every instant, even if
the process is killed in the middle.

Everything is written and fsynced under a temporary folder first (:func:`new_tmp_dir`). Then
:func:`publish`:

1. writes a **journal** ``.datasetprep-publish-{name}.json`` next to the prefix (every move
   temporary → final name with its size, every name to remove) and fsyncs it and the folder -- from
   here on the publish is decided;
2. **retires** the names about to change, the ones that make a dataset usable first: the manifest,
   then every ``.idx`` and blend list (then whatever the new layout no longer has);
3. renames the data (``.bin``), then the ``.idx`` files and blend lists, then the manifest, each by
   one ``rename`` relative to the output folder's descriptor, and fsyncs the folder;
4. removes the journal (fsynced) and the temporary folder.

So a pair ``X.bin``/``X.idx`` only ever exists as one run's complete output: during a publish an
``.idx`` is either absent or already the new one, and the new ``.idx`` appears only after its
``.bin``. A trainer that ignores our manifest sees no dataset (Megatron-LM fails to open the
missing ``.idx``) or a complete one, never an old ``.idx`` beside a new ``.bin``. Our own readers can
tell more: the manifest, renamed last, names the size and sha256 of both files, and a journal
left next to them means a publish was cut -- the next run on the prefix, ``inspect`` and ``merge``
finish it (:func:`recover`; or undo it when its staged files are gone), under the prefix lock.

A SIGTERM or Ctrl-C that arrives during steps 2-4 is held back until they end (``signals.deferred``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import indexed, naming, ownership, signals, volumes
from .chunks import ChunkResult
from .contract import Manifest, ManifestOutput
from .errors import BinarizeError
from .layout import dataset_paths, fsync_dir, manifest_path, tmp_dir

JOURNAL_KIND = "datasetprep.io/publish"
DATA, COMMIT, MANIFEST = 0, 1, 2
"""Stages of a move: the data (``.bin``) first, then what makes it usable (``.idx``, blend list),
then the manifest."""


def check_outputs(prefix: str, keys: Sequence[str], level: str, overwrite: bool) -> None:
    """Refuse to overwrite unless asked, and fail early on an unwritable folder."""
    out_dir = Path(prefix).parent
    if not out_dir.exists():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BinarizeError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BinarizeError(f"cannot write to output folder {out_dir}: permission denied")
    if not overwrite:
        existing = [p for p in dataset_paths(prefix, keys, level) + [manifest_path(prefix)] if p.exists()]
        if existing:
            raise BinarizeError(
                f"output {existing[0]} already exists; pass --overwrite (spec: a new prefix) to replace it"
            )


ASSEMBLY_DIR_PREFIX = "assemble-"
"""A temporary folder in a work folder (:func:`new_tmp_dir` with ``under``)."""


def new_tmp_dir(prefix: str, under: Path | None = None, tag: str = "") -> Path:
    """A fresh folder for files about to be published under ``prefix`` (in ``under``, e.g. the work
    folder, or else next to the prefix, with the prefix's owner record)."""
    tag = f"{tag}{uuid.uuid4().hex[:8]}"
    if under is not None:
        path = under / f"{ASSEMBLY_DIR_PREFIX}{tag}"
        path.mkdir()
        return path
    return ownership.make_owned_dir(tmp_dir(prefix, tag), Path(prefix).name)


@dataclasses.dataclass(frozen=True)
class Move:
    """One finished file: from the temporary folder to its final name in the output folder."""

    src: Path
    dst: str
    """A file name in the output folder (no folder part)."""
    stage: int = DATA


@dataclasses.dataclass(frozen=True)
class Assembled:
    """One text key's dataset, complete in the temporary folder, and where it goes."""

    output: ManifestOutput
    tmp: str
    final: str

    @property
    def moves(self) -> list[Move]:
        name = Path(self.final).name
        return [Move(Path(self.tmp + ".bin"), name + ".bin", DATA), Move(Path(self.tmp + ".idx"), name + ".idx", COMMIT)]


class Assembly:
    """One dataset per text key, assembled in ``tmp`` while the run's chunks finish.

    :meth:`add` takes each chunk's result as it arrives, in any order; the chunk's parts are appended
    to the ``.bin`` files as soon as every chunk before it in ``order`` is in. :meth:`finish` appends
    the rest, writes the ``.idx`` files and checks that what was appended early is the start of the
    final list. Without ``order`` nothing is appended early (all of it is left to :meth:`finish`).
    """

    def __init__(self, keys: Sequence[str], prefix: str, level: str, dtype: np.dtype, tmp: Path,
                 order: Iterable[int] = ()) -> None:
        self.keys, self.prefix, self.level, self.dtype, self.tmp = list(keys), prefix, level, np.dtype(dtype), tmp
        self._order = list(order)
        self._waiting: dict[int, ChunkResult] = {}
        self._taken: list[ChunkResult] = []
        self._bins: list[indexed.BinAssembly] = []

    def _names(self, key: str) -> tuple[str, str]:
        final = naming.dataset_prefix(self.prefix, key, self.level)
        return os.fspath(self.tmp / Path(final).name), final

    def add(self, result: ChunkResult) -> None:
        self._waiting[result.index] = result
        while len(self._taken) < len(self._order) and self._order[len(self._taken)] in self._waiting:
            r = self._waiting.pop(self._order[len(self._taken)])
            if not self._bins:
                self._bins = [indexed.BinAssembly(self._names(key)[0] + ".bin") for key in self.keys]
            for b, part in zip(self._bins, r.parts):
                b.append(part)
            self._taken.append(r)

    def finish(self, results: Sequence[ChunkResult]) -> list[Assembled]:
        """Every chunk's parts, in the order of ``results``, as one dataset per key."""
        early = [(r.index, r.parts) for r in self._taken]
        if early != [(r.index, r.parts) for r in results[:len(early)]]:
            raise BinarizeError("internal error: the chunks appended while the run went on are not the first "
                                "of its results")
        out = []
        for k, key in enumerate(self.keys):
            tmp_prefix, final = self._names(key)
            info = indexed.assemble([r.parts[k] for r in results], tmp_prefix, self.dtype,
                                    self._bins[k] if self._bins else None)
            out.append(Assembled(ManifestOutput(key=key, prefix=Path(final).name, **info), tmp_prefix, final))
        return out

    def close(self) -> None:
        """Give up: the open files closed (the caller removes ``tmp``)."""
        for b in self._bins:
            try:
                b.close()
            except (OSError, ValueError):
                pass


def assemble(results: Sequence[ChunkResult], keys: Sequence[str], prefix: str, level: str, dtype: np.dtype,
             tmp: Path) -> list[Assembled]:
    """Concatenate the chunks' parts, in plan order, into one dataset per text key in ``tmp``."""
    return Assembly(keys, prefix, level, dtype, tmp).finish(results)


def write_text(path: Path, text: str) -> None:
    """A small file, fsynced (it is about to be renamed into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- the publish


def publish(prefix: str | Path, moves: Sequence[Move], manifest: Manifest | None, tmp: Path, *,
            remove: Iterable[str] = ()) -> None:
    """Move the finished files into place (with the journal, see the module doc), then the manifest.

    Args:
        moves: the finished files; their folder is ``tmp`` or below it.
        manifest: written last (None: ``datasetprep merge``, which writes none).
        remove: names in the output folder that the new output no longer has (another layout's
            files); they go before anything new appears.
    """
    folder, name = Path(prefix).parent, Path(prefix).name
    moves = list(moves)
    if manifest is not None:
        staged = tmp / "manifest.json"
        write_text(staged, manifest.to_json())
        moves.append(Move(staged, manifest_path(prefix).name, MANIFEST))
    dsts = [m.dst for m in moves]
    if len(set(dsts)) != len(dsts) or any("/" in d or d in ("", ".", "..") for d in dsts):
        raise BinarizeError(f"internal error: the outputs' final names are not distinct file names: {dsts}")
    base = os.path.realpath(folder)  # a held folder (/proc/self/fd/N) resolves to where it is

    def rel(p: Path) -> str:  # the journal's paths, relative to the output folder (a later run reads them)
        return os.path.normpath(os.path.join(os.path.relpath(os.path.realpath(p.parent), base), p.name))

    doc = {"kind": JOURNAL_KIND, "version": 1, "prefix": name, "tmp": rel(tmp),
           "moves": [{"src": rel(m.src), "dst": m.dst, "stage": m.stage, "size": os.stat(m.src).st_size}
                     for m in moves],
           "remove": [r for r in _retire_order(remove) if r not in dsts]}
    fsync_dir(tmp)
    for m in moves:
        if m.src.parent != tmp:
            fsync_dir(m.src.parent)
    with signals.deferred(), _Folder(folder) as d, _opened(tmp) as tmp_fd:
        d.write_journal(name, doc)
        d.apply(doc, tmp_fd)
        d.unlink(naming.journal_file_name(name))
        d.fsync()
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _opened(tmp: Path) -> Iterator[int]:
    """The temporary folder by a descriptor (never through a link in its last name; the work folder
    above it is held by a run on a claim): the staged files are renamed from it."""
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _retire_order(names: Iterable[str]) -> list[str]:
    """Names to remove, those that make a dataset usable (``.idx``, blend lists, manifests) first."""
    names = list(dict.fromkeys(names))
    return [n for n in names if not n.endswith(".bin")] + [n for n in names if n.endswith(".bin")]


def recover(prefix: str | Path, log: Callable[[str], None] = lambda m: None) -> bool:
    """Finish (or, when its staged files are gone, undo) a publish under ``prefix`` that was cut.

    The caller holds the prefix lock. Returns whether there was one."""
    folder, name = Path(prefix).parent, Path(prefix).name
    journal = folder / naming.journal_file_name(name)
    (folder / (journal.name + ".tmp")).unlink(missing_ok=True)  # a journal never committed: nothing was moved
    if not os.path.lexists(journal):
        return False
    doc = _read_journal(journal)
    with signals.deferred(), _Folder(folder) as d:
        tmp_fd = d.open_below(doc["tmp"])
        try:
            complete = d.complete(doc, tmp_fd)
            if complete:
                d.apply(doc, tmp_fd)
        finally:
            if tmp_fd is not None:
                os.close(tmp_fd)
        if complete:
            log(f"finished the publish of {prefix} that an earlier run began (journal {journal.name})")
        else:
            d.undo(doc)
            log(f"undid the publish of {prefix} that an earlier run began: its staged files are gone "
                f"(journal {journal.name}); nothing of it is left under the final names")
        d.unlink(journal.name)
        d.fsync()
    shutil.rmtree(folder / doc["tmp"], ignore_errors=True)
    return True


def pending_for(dataset: str | Path) -> str | None:
    """The prefix whose cut publish (a journal next to it) names the file pair ``dataset`` (a path
    without ``.bin``/``.idx``), or None."""
    folder, name = Path(dataset).parent, Path(dataset).name
    try:
        entries = [e for e in os.listdir(folder) if e.startswith(naming.JOURNAL_PREFIX) and e.endswith(".json")]
    except OSError:
        return None
    for e in entries:
        try:
            doc = _read_journal(folder / e)
        except BinarizeError:
            continue
        if any(m.get("dst") in (name + ".bin", name + ".idx") for m in doc.get("moves", [])):
            return os.fspath(folder / doc.get("prefix", ""))
    return None


def recover_dataset(dataset: str | Path, log: Callable[[str], None] = lambda m: None) -> None:
    """Before reading the pair ``dataset``: finish a publish of it that was cut (``inspect``, ``merge``)."""
    prefix = pending_for(dataset)
    if prefix is None:
        return
    try:
        with ownership.PrefixLock(Path(prefix).parent, Path(prefix).name, wait=30.0, who="datasetprep (reader)"):
            recover(prefix, log)
    except BinarizeError as e:
        raise BinarizeError(f"{dataset}: a publish of it was cut and is not finished "
                            f"({naming.journal_file_name(Path(prefix).name)} next to it), and it cannot be "
                            f"finished now: {e}") from None


def _read_journal(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise BinarizeError(f"cannot read the publish journal {path} ({e}); it was written and fsynced before "
                            "anything was moved, so the disk damaged it: check the output folder") from None
    if not isinstance(doc, dict) or doc.get("kind") != JOURNAL_KIND or not isinstance(doc.get("moves"), list):
        raise BinarizeError(f"{path} is not a datasetprep publish journal; remove it if it is not yours")
    for m in doc["moves"]:
        if not (isinstance(m, dict) and _ours(m.get("src")) and isinstance(m.get("dst"), str) and "/" not in m["dst"]
                and isinstance(m.get("size"), int) and m.get("stage") in (DATA, COMMIT, MANIFEST)):
            raise BinarizeError(f"{path}: a move that is not one of ours: {m}")
    if not _ours(doc.get("tmp")) or not all(isinstance(r, str) and "/" not in r for r in doc.get("remove", [])):
        raise BinarizeError(f"{path}: names that are not ours; remove it if it is not yours")
    return doc


def _ours(rel: Any) -> bool:
    """A path of a journal: relative, in a hidden folder of ours next to the prefix, no way up."""
    parts = Path(rel).parts if isinstance(rel, str) and rel else ()
    return bool(parts) and not os.path.isabs(rel) and ".." not in parts and parts[0].startswith(naming.HIDDEN_PREFIX)


class _Folder:
    """The output folder, by a descriptor opened once: every final name is renamed, unlinked and
    fsynced relative to it. A run on a claim passes its held folder (``/proc/self/fd/N``, see
    :class:`~datasetprep.volumes.HeldFolder`), a magic link that opens the very folder it holds: then
    swapping a folder above it for a link cannot redirect them either."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> "_Folder":
        nofollow = 0 if volumes.is_held(self.folder) else os.O_NOFOLLOW
        try:
            self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | nofollow | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BinarizeError(f"output folder {self.folder} became a symbolic link during the run; "
                                    "nothing was published") from None
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)

    def exists(self, rel: str, dir_fd: int | None = None) -> bool:
        try:
            os.stat(rel, dir_fd=self.fd if dir_fd is None else dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def size(self, rel: str, dir_fd: int | None = None) -> int | None:
        try:
            return os.stat(rel, dir_fd=self.fd if dir_fd is None else dir_fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return None

    def open_below(self, rel: str) -> int | None:
        """The folder ``rel`` below this one, opened name by name without following a link; None if it is
        gone."""
        fd = self.fd
        try:
            for part in Path(rel).parts:
                parent, fd = fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         dir_fd=fd)
                if parent != self.fd:
                    os.close(parent)
        except OSError as e:
            if fd != self.fd:
                os.close(fd)
            if isinstance(e, FileNotFoundError):
                return None
            raise BinarizeError(f"{self.folder / rel}: a folder of a cut publish is not a folder datasetprep made "
                                f"({e.strerror}; a symbolic link?): remove it and run again") from None
        return fd

    @staticmethod
    def _staged(doc: dict[str, Any], m: dict[str, Any], tmp_fd: int | None) -> tuple[str, int | None]:
        """A move's staged file as (name, folder descriptor): in the temporary folder's descriptor when
        it lies there, else relative to this folder."""
        head, _, tail = m["src"].rpartition("/")
        return (tail, tmp_fd) if tmp_fd is not None and head == doc["tmp"] else (m["src"], None)

    def unlink(self, rel: str) -> None:
        try:
            os.unlink(rel, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:  # some filesystems cannot fsync a folder
            pass

    def write_journal(self, name: str, doc: dict[str, Any]) -> None:
        final = naming.journal_file_name(name)
        fd = os.open(final + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=self.fd)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(final + ".tmp", final, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        self.fsync()

    def complete(self, doc: dict[str, Any], tmp_fd: int | None = None) -> bool:
        """Every move is either still staged with its size, or done (its final name has that size)."""
        for m in doc["moves"]:
            src = self._staged(doc, m, tmp_fd)
            if self.size(*src) != m["size"] and (self.exists(*src) or self.size(m["dst"]) != m["size"]):
                return False
        return True

    def apply(self, doc: dict[str, Any], tmp_fd: int | None = None) -> None:
        """Do what is left of a publish (idempotent: a cut replay is replayed again); the staged files
        are renamed from ``tmp_fd`` (the temporary folder) when given."""
        pending = [m for m in doc["moves"] if self.exists(*self._staged(doc, m, tmp_fd))]
        if pending:  # nothing new is visible yet under a retired name
            by_stage = sorted(pending, key=lambda m: -m["stage"])
            for name in [m["dst"] for m in by_stage if m["stage"] != DATA] + list(doc.get("remove", [])):
                self.unlink(name)
        for stage in (DATA, COMMIT, MANIFEST):
            for m in pending:
                if m["stage"] == stage:
                    src, src_fd = self._staged(doc, m, tmp_fd)
                    os.replace(src, m["dst"], src_dir_fd=self.fd if src_fd is None else src_fd, dst_dir_fd=self.fd)
        self.fsync()

    def undo(self, doc: dict[str, Any]) -> None:
        """Take every final name of the publish away (the manifest first): nothing half-published stays."""
        for m in sorted(doc["moves"], key=lambda m: -m["stage"]):
            self.unlink(m["dst"])
        for name in doc.get("remove", []):
            self.unlink(name)
        self.fsync()
