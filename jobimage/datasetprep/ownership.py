"""Who owns what under an output prefix: the prefix lock, and the owner record of every folder a run makes.

* **The prefix lock** (:class:`PrefixLock`): ``.datasetprep-lock-{name}`` next to the prefix, held
  with ``flock`` for the whole run. Writers of the final names (a whole run, the merge step, the
  clean-up, ``datasetprep merge``) hold it exclusively; the shard pods of one sharded run hold it
  shared (they tokenize side by side) and each holds its own shard's prefix exclusively. A second
  run on a busy prefix waits (job pods, up to ``DATASETPREP_LOCK_WAIT`` seconds) or fails at once
  (the command line) with a message naming the holder: the lock file holds the exclusive holder's
  owner record (pid, host, pod, command, since when).

  Liveness comes from ``flock`` itself: the kernel drops the lock when its process dies, however it
  dies (SIGKILL included), so no stale lock outlives its run -- on local disks at once, on NFS when
  the client unlocks (process death) or, if the whole node died, when the server's lease expires
  (NFSv4: about 90 s). A retried pod of the same Job therefore finds the lock free once the old pod
  is gone, and waits while it is still running (two writers would corrupt each other's work).
  The exclusive holder removes the lock file on release (unlink, then unlock); a waiter that got the
  lock checks that the file it locked is still the one at the path, else it tries again.

* **Owner records** (:func:`make_owned_dir`, :func:`owned_dirs`): every work and temporary folder a
  run makes holds ``owner.json`` naming the exact prefix it belongs to. Clean-up deletes a folder only
  when its record names this very prefix (a folder made before records existed, or whose record was
  never written because the run died right after ``mkdir``, counts when its whole name is exactly
  ``{kind}{prefix name}-{hex id}``): ``--output-prefix wiki`` never touches ``wiki-en``'s work.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import BinarizeError
from .naming import LOCK_FILE_PREFIX, TMP_DIR_PREFIX, WORK_DIR_PREFIX

OWNER_FILE = "owner.json"
OWNER_KIND = "datasetprep.io/owner"
POLL_SECONDS = 0.5
NOTE_EVERY = 30.0


class PrefixBusy(BinarizeError):
    """Another run holds the output prefix (the message names it)."""

    kind = "transient"


def _owner_doc(prefix_name: str, who: str) -> dict[str, Any]:
    return {"kind": OWNER_KIND, "prefix": prefix_name, "pid": os.getpid(), "host": socket.gethostname(),
            "who": who, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def describe_owner(doc: dict[str, Any] | None) -> str:
    """An owner record as words for a message."""
    if not doc:
        return "another datasetprep run (it has not said who it is yet)"
    who = doc.get("who") or "datasetprep"
    return f"{who} (pid {doc.get('pid')} on host {doc.get('host')}, since {doc.get('since')})"


# ----------------------------------------------------------------------------- the prefix lock

#: Locks this process holds: path -> [fd, shared, count] (a run takes its prefix at several levels).
_held: dict[str, list] = {}


class PrefixLock:
    """``flock`` on ``{folder}/.datasetprep-lock-{name}``, as a context manager (re-entrant in a process).

    Args:
        folder: the output folder (already checked to be inside its claim).
        name: the prefix's last segment.
        shared: shard pods of one run; everything else takes it exclusively.
        wait: seconds to wait for a busy prefix before failing (0: fail at once).
        who: the holder in words (command, pod, resource), written for the others to read.
        log: where the waiting is told.
    """

    def __init__(self, folder: str | os.PathLike, name: str, *, shared: bool = False, wait: float = 0.0,
                 who: str = "datasetprep", log: Callable[[str], None] = lambda m: None) -> None:
        self.path = os.path.join(os.fspath(folder), LOCK_FILE_PREFIX + name)
        self.name, self.shared, self.wait, self.who, self.log = name, shared, wait, who, log

    def __enter__(self) -> "PrefixLock":
        held = _held.get(self.path)
        if held is not None:
            if held[1] and not self.shared:
                raise BinarizeError(f"internal error: the lock on {self.name} is held shared, not exclusively")
            held[2] += 1
            return self
        fd = self._acquire()
        _held[self.path] = [fd, self.shared, 1]
        if not self.shared:
            _write_owner(fd, _owner_doc(self.name, self.who))
        return self

    def __exit__(self, *exc: Any) -> None:
        held = _held[self.path]
        held[2] -= 1
        if held[2]:
            return
        del _held[self.path]
        fd, shared = held[0], held[1]
        try:
            if not shared:  # the file goes while we hold it: a waiter that locked it sees it is gone
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def _acquire(self) -> int:
        deadline = time.monotonic() + self.wait
        noted = 0.0
        while True:
            fd = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as e:
                holder = self._holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise BinarizeError(f"cannot lock {self.path} ({e.strerror}): the output folder's "
                                        "filesystem must support file locks (flock)") from None
                now = time.monotonic()
                if now >= deadline:
                    raise PrefixBusy(f"output prefix {self.name!r} is in use by {holder}; wait for it to finish "
                                     f"(or stop it), then run again") from None
                if now - noted >= NOTE_EVERY:
                    self.log(f"output prefix {self.name!r} is in use by {holder}; waiting up to "
                             f"{int(deadline - now)} s more")
                    noted = now
                time.sleep(min(POLL_SECONDS, max(0.0, deadline - now)))
                continue
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # the holder removed the file as it released it: lock the new one

    def _holder(self, fd: int) -> str:
        """Who holds the lock: the exclusive holder's record, or the shard pods of a sharded run."""
        try:
            probe = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return describe_owner(None)
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held exclusively: its holder wrote its record
            return describe_owner(_read_owner(fd))
        finally:
            os.close(probe)
        return "the shard pods of a sharded run (they hold it together while they tokenize)"


def _open_lock_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BinarizeError(f"{path} is a symbolic link; datasetprep made no such link: remove it") from None
        raise BinarizeError(f"cannot create the lock file {path}: {e.strerror}") from None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_owner(fd: int, doc: dict[str, Any]) -> None:
    data = (json.dumps(doc) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def holds(folder: str | os.PathLike, name: str) -> bool:
    """Whether this process holds the prefix lock of ``name`` in ``folder`` (exclusively)."""
    held = _held.get(os.path.join(os.fspath(folder), LOCK_FILE_PREFIX + name))
    return held is not None and not held[1]


# ----------------------------------------------------------------------------- owned folders


def make_owned_dir(path: Path, prefix_name: str, *, exist_ok: bool = False) -> Path:
    """Make a work or temporary folder of prefix ``prefix_name`` with its owner record.

    An existing folder (``exist_ok``) must be a real folder of this prefix, not a link: a link there
    was planted, and following it would write outside the output folder."""
    try:
        path.mkdir()
    except FileExistsError:
        if not exist_ok:
            raise
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise BinarizeError(f"{path} is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}: "
                                "datasetprep did not make it; remove it and run again") from None
        doc = read_owner_record(path)
        if doc is not None and doc.get("prefix") == prefix_name:
            return path
    _write_record(path / OWNER_FILE, _owner_doc(prefix_name, "datasetprep"))
    return path


def _write_record(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)


def read_owner_record(folder: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(65536))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("kind") == OWNER_KIND else None


#: What follows ``{kind}{prefix name}-`` in the name of a folder of ours (hex ids, optional tags).
_ID = re.compile(r"(?:[0-9a-f]{16}|stream-[0-9a-f]{8}|(?:shard[0-9]{5}-)?[0-9a-f]{8})")


def owned_dirs(folder: Path, prefix_name: str, kinds: tuple[str, ...] = (WORK_DIR_PREFIX, TMP_DIR_PREFIX)
               ) -> Iterator[Path]:
    """The work/temporary folders in ``folder`` that provably belong to prefix ``prefix_name``: their
    owner record names it, or (no record) their name is exactly ``{kind}{prefix_name}-{id}``. Links
    and plain files are never ours."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        kind = next((k for k in kinds if e.name.startswith(k)), None)
        if kind is None or not e.is_dir(follow_symlinks=False):
            continue
        doc = read_owner_record(Path(e.path))
        if doc is not None:
            if doc.get("prefix") == prefix_name:
                yield Path(e.path)
            continue
        rest = e.name[len(kind):]
        if rest.startswith(prefix_name + "-") and _ID.fullmatch(rest[len(prefix_name) + 1:]):
            yield Path(e.path)
