"""The volumes a run sees: claim name → the folder it is mounted at, and every path on them, confined.

In a pod the folders are the mount paths (``DATASETPREP_VOLUMES``); locally (``datasetprep run``)
the folders the user names with ``--volume claim=DIR``. Every path the spec names is resolved here,
relative to its claim's folder, so this is the one place that decides where a spec may read and write.

**Confinement.** The spec model refuses absolute paths and ``..``; what it cannot see is the volume:
a symbolic link on it may point anywhere. Every path a run reads, writes or deletes is resolved
(every link followed, :func:`confine`) and must stay inside the real folder of its claim, else the
run is refused with a message naming the spec field and the link. The resolved path is what the run
then uses.

**Holding.** Someone who can write to the claim *while* the run works could swap a checked folder
(or one above it) for a link between the check and the use. So a run does not use the output folder
by its path: it holds it (:class:`HeldFolder`), opened folder by folder from the claim's root with
``O_NOFOLLOW | O_DIRECTORY``, and works below ``/proc/self/fd/N``, which the kernel resolves from the
held folder itself; it checks the chain again before it publishes (and after) and names the folder
that was swapped. Part files are opened with ``O_NOFOLLOW`` and clean-up never follows links.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import BinarizeError
from .naming import STATE_DIR
from .spec import DatasetPrepSpec


class ConfinementError(BinarizeError):
    """A path leaves its claim (through a symbolic link); the message names the field and the link."""


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether the (already resolved) ``path`` is ``root`` or below it (``root`` resolved too)."""
    root, path = os.fspath(root), os.fspath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def escaping_link(root: Path, path: Path) -> tuple[Path, str] | None:
    """The first symbolic link on the way from ``root`` to ``path`` that leads out of ``root``, and
    where it points; None if there is none."""
    real_root = os.path.realpath(root)
    try:
        rel = Path(os.path.relpath(path, root))
    except ValueError:
        return None
    at = Path(root)
    for part in rel.parts:
        at = at / part
        if os.path.islink(at) and not inside(real_root, os.path.realpath(at)):
            try:
                return at, os.readlink(at)
            except OSError:
                return at, "?"
    return None


def confine(root: str | os.PathLike, path: str | os.PathLike, what: str, claim: str | None = None,
            shown: str | None = None) -> Path:
    """``path`` with every symbolic link resolved, checked to be inside ``root``; the resolved path.

    Args:
        what: the spec field (or flag) the path comes from, for the message.
        claim: the claim's name, for the message.
        shown: the path as the spec wrote it (default: ``path`` relative to ``root``).

    Raises:
        ConfinementError: the path leads outside ``root``; the message names ``what`` and the link.
    """
    root, path = Path(root), Path(path)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if inside(real_root, real):
        return Path(real)
    on = f"claim {claim!r} (mounted at {root})" if claim else f"folder {root}"
    link = escaping_link(root, path)
    if link is None:
        raise ConfinementError(f"{what}: {path} resolves to {real}, outside {on}; point it at a path inside")
    at, target = link
    raise ConfinementError(
        f"{what}: {shown or os.path.relpath(path, root)} leaves {on}: {os.path.relpath(at, root)} is a symbolic link to "
        f"{target}, outside the claim; remove the link (or make it point inside the claim), or change {what}")


def check_final_names(root: str | os.PathLike, folder: Path, names: Iterable[str], what: str,
                      claim: str | None = None, shown: Path | None = None) -> None:
    """Refuse when one of ``names`` in ``folder`` is a symbolic link that leads outside ``root``
    (a file of ours there was replaced by a link: reading, replacing or deleting it must not touch
    what it points at). ``shown``: the folder's path for the message (when ``folder`` is a held one)."""
    real_root = os.path.realpath(root)
    for name in names:
        p = folder / name
        try:
            st = os.stat(p, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) and not inside(real_root, os.path.realpath(p)):
            on = f"claim {claim!r}" if claim else f"folder {root}"
            shown_path = os.path.relpath((shown or folder) / name, root)
            raise ConfinementError(
                f"{what}: {shown_path} is a symbolic link to {os.readlink(p)}, outside {on}; "
                "datasetprep made no such link: remove it and run again")


class FolderSwapped(ConfinementError):
    """A folder on the way from the claim's root to the output was swapped (for a link, or another
    folder) while a run held it; the message names it."""


PROC_FD = "/proc/self/fd"


def read_nofollow(path: str | os.PathLike) -> bytes:
    """A whole file's bytes; a link at ``path`` is not followed (OSError ELOOP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_held(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a held folder's own path (``/proc/self/fd/N``: a link to that very folder)."""
    return os.path.dirname(os.fspath(path)) == PROC_FD


class HeldFolder:
    """A folder of a claim, held by descriptors from the claim's real root down for as long as a run uses it.

    Each folder on the way is opened relative to the one above with ``O_NOFOLLOW | O_DIRECTORY`` (and,
    with ``create``, made first by ``mkdir`` relative to it): a link anywhere on the way fails the open.
    The run then works below :attr:`path`, ``/proc/self/fd/N``: the kernel resolves what lies below it
    from the held folder itself, exactly as ``openat(N, ...)`` would, so every create, rename, unlink and
    fsync of the run -- in this process and in the worker processes it forks, which inherit the
    descriptor -- lands in the folder that was checked, whatever is swapped above it later. (A claim is a
    mount: nobody on it can move the held folder off it, ``rename`` across mounts fails.) :meth:`hold`
    holds a folder below it the same way (the work folder). :meth:`check` compares the chain with what
    the paths show now, device and inode, folder by folder from the top, and names the first one that
    changed; messages and logs show the logical path, never ``/proc/self/fd/N`` (:meth:`show`).

    Args:
        root: the claim's folder (its mount; it may itself be reached through a link).
        folder: the folder to hold, already confined (``confine``: every link on the way resolved); a
            link found on the way now was planted since, and fails the open.
        what: the spec field the folder comes from, for messages.
        create: make the folders that are missing.

    Raises:
        FolderSwapped: a folder on the way is a link (or no folder) now.
        OSError: a folder cannot be made or opened (e.g. permission denied); ``FileNotFoundError`` when
            it is missing and not ``create``.
    """

    def __init__(self, root: str | os.PathLike, folder: str | os.PathLike, what: str, claim: str | None = None,
                 *, create: bool = False) -> None:
        if not os.path.isdir(PROC_FD):
            raise BinarizeError(f"{PROC_FD} is missing: datasetprep holds the output folder through it (Linux's "
                                "/proc, mounted in every container); mount /proc")
        self.root = Path(os.path.realpath(root))
        self.logical = Path(os.path.abspath(folder))
        rel = os.path.relpath(self.logical, self.root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ConfinementError(f"{what}: {folder} is outside the claim (mounted at {root})")
        self.parts = () if rel == os.curdir else Path(rel).parts
        self.what, self.claim = what, claim
        self.fds: list[int] = []
        self._below: dict[str, tuple[int, Path]] = {}
        try:
            self.fds.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for i, part in enumerate(self.parts):
                self.fds.append(self._open(self.fds[-1], part, self.root.joinpath(*self.parts[:i + 1]), create))
        except BaseException:
            self.close()
            raise

    def _open(self, parent: int, name: str, shown: Path, create: bool) -> int:
        try:
            return os.open(name, _FOLDER, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise FolderSwapped(self._changed(shown, "now")) from None
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent)
        return self._open(parent, name, shown, create=False)

    @property
    def path(self) -> Path:
        """The held folder as a path the kernel resolves from its descriptor: use it for everything below."""
        return Path(PROC_FD, str(self.fds[-1]))

    def hold(self, path: Path) -> Path:
        """``path``, a folder below :attr:`path` (``path / "a" / "b"``), held the same way (no link
        followed on the way); its held path. Held until :meth:`close`."""
        rel = Path(os.path.relpath(path, self.path))
        if rel.parts[:1] == (os.pardir,) or os.fspath(rel) == os.curdir:
            raise ValueError(f"{path} is not below the held folder {self.path}")
        at, fd = self.logical, self.fds[-1]
        for part in rel.parts:
            at = at / part
            held = self._below.get(os.fspath(at))
            if held is None:
                held = (self._open(fd, part, at, create=False), at)
                self._below[os.fspath(at)] = held
            fd = held[0]
        return Path(PROC_FD, str(fd))

    def release(self, path: Path) -> None:
        """Stop holding ``path`` (below :attr:`path`, by name) and the folders held below it (the run
        removes it)."""
        logical = self.logical / os.path.relpath(path, self.path)
        for key in [k for k in self._below if k == os.fspath(logical) or k.startswith(os.fspath(logical) + os.sep)]:
            with contextlib.suppress(OSError):
                os.close(self._below.pop(key)[0])

    def check(self, then: str = "") -> None:
        """Raise :class:`FolderSwapped`, naming the folder, if a folder on the way from the claim's root
        (or one held below) is no longer the one held; ``then`` says what that means for the run."""
        # (descriptor, path, the folder whose place now to name): the chain names the held folder's
        chain = [(fd, self.root.joinpath(*self.parts[:i]), self.fds[-1]) for i, fd in enumerate(self.fds)]
        below = [(fd, at, fd) for fd, at in sorted(self._below.values(), key=lambda b: len(b[1].parts))]
        for fd, at, where in chain + below:
            held = os.fstat(fd)
            try:
                now = os.lstat(at)
            except OSError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                raise FolderSwapped(self._changed(at, now, where) + (f"; {then}" if then else ""))

    def _changed(self, at: Path, now: os.stat_result | str | None, fd: int | None = None) -> str:
        name = "the claim's folder" if at == self.root else os.path.relpath(at, self.root)
        if now == "now" or (now is not None and not isinstance(now, str) and stat.S_ISLNK(now.st_mode)):
            try:
                how = f"is a symbolic link to {os.readlink(at)}"
            except OSError:
                how = "is no folder"
        elif now is None:
            how = "was moved away or removed"
        else:
            how = "was replaced by another folder"
        where = ""
        if fd is not None:
            with contextlib.suppress(OSError):
                where = f" (the folder this run holds is now at {os.readlink(f'{PROC_FD}/{fd}')})"
        return (f"{self.what}: {name} {how}: it changed after the run checked it{where}; nothing was written, "
                f"renamed or deleted through it. Put the folder back where it was (remove the link), then run "
                f"again: the run goes on from the work it did")

    def show(self, text: str) -> str:
        """``text`` with every held path shown as its logical path."""
        paths = {os.fspath(self.path): os.fspath(self.logical)} if self.fds else {}
        paths.update({os.fspath(Path(PROC_FD, str(fd))): logical for logical, (fd, _) in self._below.items()})
        if not paths:
            return text
        pattern = "|".join(re.escape(p) + r"(?![0-9])" for p in sorted(paths, key=len, reverse=True))
        return re.sub(pattern, lambda m: paths[m.group(0)], text)

    def showing(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log``, with held paths shown as their logical paths."""
        return lambda message: log(self.show(message))

    @contextlib.contextmanager
    def messages(self) -> Iterator[None]:
        """Errors raised inside name the logical paths, not the held ones."""
        try:
            yield
        except Exception as e:
            if isinstance(e, OSError):
                for attr in ("filename", "filename2"):
                    if isinstance(getattr(e, attr, None), str):
                        setattr(e, attr, self.show(getattr(e, attr)))
            elif e.args and isinstance(e.args[0], str):
                e.args = (self.show(e.args[0]),) + e.args[1:]
            raise

    def close(self) -> None:
        for fd in [fd for fd, _ in self._below.values()] + self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds, self._below = [], {}

    def __enter__(self) -> "HeldFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Volumes:
    """Claim name → folder, for one spec (whose output claim is the default of every other path)."""

    def __init__(self, spec: DatasetPrepSpec, folders: Mapping[str, str | Path]) -> None:
        self.spec = spec
        self.folders = {claim: Path(folder) for claim, folder in folders.items()}

    def _claim(self, claim: str | None) -> str:
        return claim or self.spec.output.claim_name

    def root(self, claim: str | None, what: str) -> Path:
        """The real folder of ``claim`` (default: the output claim); ``what`` names the spec field for errors."""
        name = self._claim(claim)
        if name not in self.folders:
            raise BinarizeError(f"{what} uses claim {name!r}, which is not mounted "
                                f"(mounted: {', '.join(self.folders) or 'none'})")
        return Path(os.path.realpath(self.folders[name]))

    def path(self, claim: str | None, relative: str, what: str, shown: str | None = None) -> Path:
        """``relative`` (a path the spec names; the spec model refuses ``..`` and absolute ones) on
        ``claim``, resolved and confined to it."""
        root = self.root(claim, what)
        return confine(root, root / relative, what, self._claim(claim), shown or relative)

    def confine(self, claim: str | None, path: str | os.PathLike, what: str) -> Path:
        """A path found on ``claim`` (e.g. a glob's match), resolved and confined to it."""
        return confine(self.root(claim, what), path, what, self._claim(claim))

    @property
    def output_claim(self) -> str:
        return self.spec.output.claim_name

    @property
    def output_root(self) -> Path:
        return self.root(self.spec.output.claim_name, "spec.output.claimName")

    @property
    def output_prefix(self) -> Path:
        """``output.prefix`` on the output claim: its folder resolved and confined, then its last
        segment (a name prefix, not a file: a link of that name is not followed)."""
        rel = Path(self.spec.output.prefix)
        folder = self.path(self.spec.output.claim_name, os.fspath(rel.parent), "spec.output.prefix",
                           self.spec.output.prefix)
        return folder / rel.name

    def hold_output(self, *, create: bool = False) -> HeldFolder:
        """The output prefix's folder, held for the run (:class:`HeldFolder`); made first with ``create``."""
        return HeldFolder(self.output_root, self.output_prefix.parent, "spec.output.prefix", self.output_claim,
                          create=create)

    def state(self, name: str) -> Path:
        """A folder of ``.datasetprep/`` on the output claim (the Hub cache, fetched tokenizers), confined."""
        return self.path(self.spec.output.claim_name, f"{STATE_DIR}/{name}", f"the output claim's {STATE_DIR}/{name}")
