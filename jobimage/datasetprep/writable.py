"""Can the job write where it must? Checked once, at the start of ``datasetprep job``, so that a volume
the job's uid may not write to fails the run at once with a message naming the folder, its owner and
mode, the job's identity and the fixes -- not with a traceback half-way through.

The usual cause: a shared volume whose folder belongs to root (an NFS export, a hostPath), where the
pod's ``fsGroup`` does not apply.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import BinarizeError
from .spec import DatasetPrepSpec
from .volumes import HeldFolder, Volumes

#: How a user fixes it; the job image cannot tell which of these fits their storage.
FIXES = ("make the folder writable for that uid on the volume (e.g. chown {uid}:{gid} it, or make it group-writable "
         "for a group the job is in); or set spec.securityContext (runAsUser, runAsGroup, supplementalGroups) to an "
         "identity that may write there, e.g. supplementalGroups: [{owner_gid}] if its group may write; or let the "
         "operator prepare it (chart value jobVolumeInit.enabled=true: a root init container creates the folder and "
         "chowns it; not with NFS root squashing)")


def folders_to_write(spec: DatasetPrepSpec, volumes: Volumes, *, downloads: bool) -> list[tuple[Path, str]]:
    """``(folder, what names it)``: the output prefix's folder, and with ``downloads`` (Hub sources and
    tokenizers) the state folder on the output claim."""
    folders = [(volumes.output_prefix.parent, "spec.output.prefix")]
    if downloads and (spec.source.hub is not None or spec.tokenizer.hub is not None):
        folders.append((volumes.state(""), "the Hub cache of spec.output.claimName"))
    return folders


def require_writable(folders: Iterable[tuple[Path, str]], *, claim: str, root: Path | None = None) -> None:
    """Create each folder if needed and a file in it (removed at once). With ``root`` (the claim's folder)
    the folders are made and used from it down without following a link (:class:`HeldFolder`).

    Raises:
        BinarizeError: (permanent) the job may not write there; the message says why and how to fix it.
    """
    for folder, what in folders:
        try:
            if root is None:
                folder.mkdir(parents=True, exist_ok=True)
                _write_check(folder)
            else:
                with HeldFolder(root, folder, what, claim, create=True) as held:
                    _write_check(held.path)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise BinarizeError(_message(folder, what, claim, exc)) from None


def _write_check(folder: Path) -> None:
    with tempfile.TemporaryFile(dir=folder, prefix=".datasetprep-write-check-"):
        pass


def _message(folder: Path, what: str, claim: str, exc: OSError) -> str:
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    uid, gid, groups = os.getuid(), os.getgid(), sorted(set(os.getgroups()) - {os.getgid()})
    who = f"uid {uid} gid {gid}" + (f" (groups {', '.join(map(str, groups))})" if groups else "")
    if exc.errno == errno.EROFS:
        return (f"cannot write to {folder} ({what}, claim {claim}): the volume is mounted read-only; "
                f"give the output claim a volume the job may write to")
    st = where.stat()
    found = f"{where} is owned by uid {st.st_uid} gid {st.st_gid} with mode {stat.S_IMODE(st.st_mode):04o}"
    return (f"cannot write to {folder} ({what}, claim {claim}): {found}, and the job runs as {who}. Fix: "
            + FIXES.format(uid=uid, gid=gid, owner_gid=st.st_gid))
