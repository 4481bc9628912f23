"""A DatasetBlend's files Job: check every dataset of the blend where the training pods will find it, then
write the trainers' blend files onto the volume.

The operator cannot write a PersistentVolumeClaim (it mounts none), so it hands a
:class:`~datasetprep.contract.BlendOrder` to a short Job of the job image that mounts the claims exactly
where the training pods will (``spec.mountPath``). The Job:

1. expands kept-shards components from their own blend lists (weight = component share x shard tokens /
   component tokens, the prefixes moved from the component's mount path to the blend's);
2. reads every dataset's ``.idx`` header (O(1) each: magic, version, dtype, and both files' sizes against
   the header) and compares dtype and counts with what the DatasetPrep's status said -- a path that is wrong
   in the ConfigMap is a failed Job here, not a failed training start;
3. writes ``data-args.txt`` or ``per-split-data-args.json`` and ``sequences-per-dataset.json``
   (:mod:`datasetprep.blendformats`) into a new folder ``folder/version``, renamed into place at once, marked
   as the blend's (``.datasetprep-owner-{uid}``, with the generation the order was made for), and removes
   the blend's own older versions except those the order keeps (the one the training ConfigMap names now).

Two files Jobs may write one folder at once (two DatasetBlends naming the same ``spec.files.path``, or a
version and its successor, whose Job starts before the older one is deleted). Step 3 therefore runs under
a lock on the folder (``.datasetprep-lock-blend-files``, ``flock``, held by one Job at a time; the kernel
drops it when its holder dies): the temporary folder a Job writes (``.tmp-{version}-{random id}``) is its
own, and a temporary found there while holding the lock is of a Job that is gone -- only those are
removed. A Job prunes only versions that were there when it started, marked as its own blend's, of an
earlier generation: a version written by a Job that ran beside it (its successor, finishing first), or
before it started (its successor, whose pod ran first), and another blend's versions in a shared folder
are never pruned by it. A version two blends wrote (the same lists in the same folder) goes when the last
of them prunes it. With a claim (``order.root``) the folder is held by descriptor from the claim's root down
(:class:`~datasetprep.volumes.HeldFolder`): a folder above it swapped for a link while the Job works
redirects nothing, and the Job fails naming it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from . import blendformats, ownership
from .contract import BlendOrder, BlendSource, BlendWritten
from .errors import BinarizeError
from .indexed import IndexHeader, read_header
from .layout import fsync_dir
from .publish import write_text
from .volumes import HeldFolder, confine, read_nofollow

_VERSION = re.compile(r"^[0-9a-f]{8,64}$")
_TMP = ".tmp-"
LOCK_NAME = "blend-files"
"""The folder's lock: ``.datasetprep-lock-blend-files`` (:class:`~datasetprep.ownership.PrefixLock`)."""


def _shards(src: BlendSource) -> Iterator[tuple[float, str]]:
    """A kept-shards component's datasets, from its blend list on the volume."""
    assert src.blend_file is not None and src.list_root is not None and src.pod_root is not None
    try:
        text = Path(src.blend_file).read_text(encoding="utf-8")
    except OSError as e:
        raise BinarizeError(f"{src.component}: cannot read its blend list {src.blend_file} ({e.strerror}); is the "
                            f"claim mounted where the blend says?") from None
    words = text.split()
    if len(words) % 2:
        raise BinarizeError(f"{src.component}: {src.blend_file} is not a list of `tokens prefix` pairs")
    pairs = []
    for raw, prefix in zip(words[0::2], words[1::2]):
        if not raw.isdigit():
            raise BinarizeError(f"{src.component}: {src.blend_file} has the weight {raw!r}, not a token count")
        root = src.list_root.rstrip("/") + "/"
        if not prefix.startswith(root):
            raise BinarizeError(f"{src.component}: {src.blend_file} lists {prefix}, outside {src.list_root}")
        pairs.append((int(raw), posixpath.join(src.pod_root, prefix[len(root):])))
    total = sum(t for t, _ in pairs)
    if total != src.tokens:
        raise BinarizeError(f"{src.component}: its blend list {src.blend_file} counts {total:,} tokens but the "
                            f"DatasetPrep's status says {src.tokens:,}: its data changed since; the blend follows "
                            f"once it is Ready again")
    for tokens, prefix in pairs:
        if tokens:
            yield src.share * tokens / total, prefix


def _check(prefix: str, src: BlendSource, header: IndexHeader) -> None:
    if header.dtype.name != src.dtype:
        raise BinarizeError(f"{src.component}: {prefix}.idx holds {header.dtype.name} tokens, its DatasetPrep "
                            f"says {src.dtype}")
    if src.sequences is not None and header.sequences != src.sequences:
        raise BinarizeError(f"{src.component}: {prefix}.idx has {header.sequences:,} sequences, its DatasetPrep "
                            f"says {src.sequences:,}: the files changed since; rerun the DatasetPrep")
    if src.documents is not None and header.documents != src.documents:
        raise BinarizeError(f"{src.component}: {prefix}.idx has {header.documents:,} documents, its DatasetPrep "
                            f"says {src.documents:,}: the files changed since; rerun the DatasetPrep")


def _datasets(src: BlendSource) -> Iterator[tuple[float, str]]:
    if src.prefix is not None:
        yield src.share, src.prefix
    else:
        yield from _shards(src)


def expand(order: BlendOrder, header: Callable[[str], IndexHeader] = read_header
           ) -> tuple[dict[str, list[tuple[float, str]]], dict[str, tuple[int, int]]]:
    """Every list's (weight, prefix) pairs, and each prefix's (sequences, header document count); every
    dataset checked."""
    lists: dict[str, list[tuple[float, str]]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for split, sources in order.lists.items():
        pairs = lists.setdefault(split, [])
        for src in sources:
            for weight, prefix in _datasets(src):
                try:
                    h = header(prefix)
                except (OSError, ValueError) as e:
                    raise BinarizeError(f"{src.component}: {e}") from None
                _check(prefix, src, h)
                counts[prefix] = (h.sequences, h.document_count)
                pairs.append((weight, prefix))
    return lists, counts


def render(lists: dict[str, list[tuple[float, str]]], counts: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The files of one version: name -> text."""
    texts = {blendformats.SEQUENCES_FILE: blendformats.sequences_text(counts)}
    if "all" in lists:
        texts[blendformats.DATA_ARGS_FILE] = blendformats.data_args_text(lists["all"])
    else:
        texts[blendformats.PER_SPLIT_FILE] = blendformats.per_split_text(lists)
    return texts


def _confined(order: BlendOrder) -> Path:
    """``order.folder``, every link resolved, inside the files claim's mount (when the order names it)."""
    if order.root is None:
        return Path(order.folder)
    return confine(order.root, order.folder, "spec.files.path", shown=os.path.relpath(order.folder, order.root))


@contextlib.contextmanager
def _held(order: BlendOrder, folder: Path) -> Iterator[HeldFolder | None]:
    """The blend folder, made, and held from the files claim's root down when the order names it."""
    try:
        held = None if order.root is None else HeldFolder(order.root, folder, "spec.files.path", create=True)
        if held is None:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BinarizeError(f"cannot create the blend folder {folder}: {e.strerror}") from None
    if held is None:
        yield None
        return
    with held, held.messages():
        yield held


def _versions(folder: Path) -> set[str]:
    """The version folders in ``folder`` now (links are never versions)."""
    return {e.name for e in os.scandir(folder) if _VERSION.match(e.name) and e.is_dir(follow_symlinks=False)}


OWNER_MARK = ".datasetprep-owner-"
"""``{version}/.datasetprep-owner-{blend uid}``: the version is this blend's (JSON ``{"generation": N}``).
A version two blends wrote (the same lists in the same folder: the same content address) has two marks."""


def _marks(version_dir: Path) -> dict[str, int]:
    """Owner uid -> generation of every mark in a version folder (an unreadable mark counts as generation -1)."""
    marks = {}
    for e in os.scandir(version_dir):
        if e.name.startswith(OWNER_MARK) and e.is_file(follow_symlinks=False):
            try:
                marks[e.name[len(OWNER_MARK):]] = int(json.loads(Path(e.path).read_text())["generation"])
            except (OSError, ValueError, KeyError, TypeError):
                marks[e.name[len(OWNER_MARK):]] = -1
    return marks


def _same_files(final: Path, texts: dict[str, str]) -> bool:
    """``final`` is a folder (not a link) holding exactly these files' texts, as plain files."""
    if final.is_symlink() or not final.is_dir():
        return False
    try:
        return all(read_nofollow(final / name) == text.encode("utf-8") for name, text in texts.items())
    except OSError:
        return False


def _publish(folder: Path, order: BlendOrder, texts: dict[str, str], candidates: set[str], *,
             lock_wait: float = 0.0, held: HeldFolder | None = None, log: Callable[[str], None] = print) -> None:
    """Write ``folder/version`` (a temporary of this Job renamed into place; a version already there with the
    same files gets this blend's mark only) and prune, of ``candidates``, the versions this order may
    remove (:func:`_prune`), under the folder's lock; ``folder`` is the held path when ``held``."""
    version = order.version
    mark = {f"{OWNER_MARK}{order.owner}": json.dumps({"generation": order.generation or 0})} if order.owner else {}
    with ownership.PrefixLock(folder, LOCK_NAME, wait=lock_wait, who="datasetprep job (DatasetBlend files)"):
        for entry in folder.iterdir():  # the lock is ours: a temporary here is of a Job that is gone
            if entry.name.startswith(_TMP) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        final = folder / version
        if _same_files(final, texts):  # written before (a retried pod, or another blend with the same lists)
            for name, text in mark.items():
                write_text(final / name, text)
            fsync_dir(final)
        else:
            tmp = folder / f"{_TMP}{version}-{uuid.uuid4().hex[:16]}"
            tmp.mkdir()
            try:
                for name, text in texts.items():
                    write_text(tmp / name, text)
                others = _marks(final) if final.is_dir() and not final.is_symlink() else {}
                for owner, generation in others.items():  # a damaged version: replaced, its owners kept
                    if f"{OWNER_MARK}{owner}" not in mark:
                        write_text(tmp / f"{OWNER_MARK}{owner}", json.dumps({"generation": generation}))
                for name, text in mark.items():
                    write_text(tmp / name, text)
                if held is not None:
                    held.check(then="no blend files were written")
                if final.is_symlink():  # not ours: the link goes, never what it points at
                    final.unlink()
                elif final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        fsync_dir(folder)
        _prune(folder, order, candidates & _versions(folder) - {version}, log)


def _prune(folder: Path, order: BlendOrder, candidates: set[str], log: Callable[[str], None]) -> None:
    """Remove what this order may remove of ``candidates`` (versions not kept that were there when the Job
    started). An order of an older operator (no owner): all of them. Else only versions marked as this
    blend's, of an earlier generation: this blend's mark goes, and the folder with it once no other
    blend's mark is left. Versions without any mark (written before marks existed) are left, and said."""
    unmarked = []
    for name in sorted(candidates):
        path = folder / name  # a version is never a link (_versions)
        if order.owner is None:
            shutil.rmtree(path, ignore_errors=True)
            continue
        marks = _marks(path)
        if not marks:
            unmarked.append(name)
            continue
        if order.owner not in marks or marks[order.owner] >= (order.generation or 0):
            continue  # another blend's, or this blend's newer one (its Job finished first)
        if len(marks) == 1:
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path / f"{OWNER_MARK}{order.owner}")
    if unmarked:
        log(f"left {len(unmarked)} older version(s) in {folder} without an owner mark (written by an older "
            f"operator, or not by one): {', '.join(unmarked)}; delete them by hand once no training pod uses them")


def write_blend(order: BlendOrder, *, log: Callable[[str], None] = print, lock_wait: float = 0.0) -> BlendWritten:
    """Run one :class:`~datasetprep.contract.BlendOrder`; raises BinarizeError with a message for users.

    ``lock_wait``: seconds to wait for another Job writing the same folder (then fail naming it)."""
    folder = _confined(order)
    with _held(order, folder) as held:
        at = held.path if held is not None else folder
        older = _versions(at) - set(order.keep)  # what this Job may prune: nothing written beside it
        lists, counts = expand(order)
        texts = render(lists, counts)
        _publish(at, order, texts, older, lock_wait=lock_wait, held=held, log=log)
        if held is not None:
            held.check(then=f"the blend files were written in the folder the Job held, not at {order.folder}")
    final = folder / order.version
    listing = texts.get(blendformats.DATA_ARGS_FILE) or texts[blendformats.PER_SPLIT_FILE]
    log(f"blend {final}: {len(counts)} datasets checked, {', '.join(sorted(texts))} written")
    path = posixpath.join(order.folder, order.version)
    return BlendWritten(
        blend_folder=path,
        data_args=posixpath.join(path, blendformats.DATA_ARGS_FILE) if "all" in lists else None,
        per_split_data_args=None if "all" in lists else posixpath.join(path, blendformats.PER_SPLIT_FILE),
        sequences=posixpath.join(path, blendformats.SEQUENCES_FILE), datasets=len(counts),
        listing_sha256=hashlib.sha256(listing.encode()).hexdigest())
