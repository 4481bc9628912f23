"""What lies under an output prefix on the volume: the paths, the manifests, and their clean-up.

The names are :mod:`datasetprep.naming`'s; this module turns them into paths next to the prefix,
reads the manifests back (:class:`~datasetprep.contract.Manifest`) and deletes what they list -- and
only that: a file is deleted only when a manifest of ours names it, by a bare name in the output's
own folder, and only when it is a plain file (never through a link); a work or temporary folder
only when it is provably this prefix's (``ownership``). Names are compared exactly, never as glob
patterns.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from . import naming, ownership
from .contract import Manifest, ManifestOutput, ShardDataset
from .errors import BinarizeError
from .volumes import inside, read_nofollow


def manifest_path(prefix: str | Path) -> Path:
    return Path(naming.manifest_file(str(prefix)))


def dataset_paths(prefix: str | Path, keys: Iterable[str], level: str = naming.LEVEL) -> list[Path]:
    """The ``.bin`` and ``.idx`` of every text key's dataset."""
    out = []
    for k in keys:
        p = naming.dataset_prefix(str(prefix), k, level)
        out += [Path(p + ".bin"), Path(p + ".idx")]
    return out


def blend_path(prefix: str | Path, key: str, level: str = naming.LEVEL) -> Path:
    """The blend list of one text key, for Megatron-LM's ``--data-args-path``."""
    return Path(naming.blend_file(str(prefix), key, level))


def work_dir(prefix: str | Path, key: str) -> Path:
    """The work folder of the chunk plan ``key`` (its parts and their records)."""
    return Path(prefix).parent / naming.work_dir_name(str(prefix), key)


def output_paths(prefix: str | Path, keys: Iterable[str], level: str = naming.LEVEL) -> list[Path]:
    """Every final name a run of this prefix may write or delete (merged and kept-shard layouts):
    datasets, manifest, blend lists, and the shards' datasets and manifests found next to it."""
    keys = list(keys)
    out = dataset_paths(prefix, keys, level) + [manifest_path(prefix)] + [blend_path(prefix, k, level) for k in keys]
    name = Path(prefix).name
    pattern = re.compile(re.escape(name) + r"_shard([0-9]{5})(?:" + "|".join(
        [re.escape(naming.MANIFEST_SUFFIX)] + [re.escape(f"_{k}_{level}") + r"\.(?:bin|idx)" for k in keys]) + ")")
    try:
        out += [Path(prefix).parent / e for e in sorted(os.listdir(Path(prefix).parent)) if pattern.fullmatch(e)]
    except OSError:
        pass
    return out


def make_work_dir(path: Path, prefix: str | Path) -> Path:
    """The work folder ``path`` of ``prefix`` with its ``parts`` folder, made (with the owner record)
    or found; never a link (one there was planted: following it would write elsewhere)."""
    ownership.make_owned_dir(path, Path(prefix).name, exist_ok=True)
    parts = path / "parts"
    try:
        parts.mkdir()
    except FileExistsError:
        if not stat.S_ISDIR(os.stat(parts, follow_symlinks=False).st_mode):
            raise BinarizeError(f"{parts} is not a folder (a symbolic link?); datasetprep did not make it: remove "
                                f"{path} and run again") from None
    return path


def tmp_dir(prefix: str | Path, tag: str) -> Path:
    """A folder for files about to be published under ``prefix``."""
    return Path(prefix).parent / naming.tmp_dir_name(str(prefix), tag)


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest at ``path``, or None if it is missing or not one (a link there is not followed)."""
    try:
        return Manifest.read(read_nofollow(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def files_intact(folder: Path, entries: Sequence[ManifestOutput | ShardDataset]) -> bool:
    """Every ``{prefix}.bin/.idx`` listed still has the size the manifest recorded (a cheap check)."""
    try:
        return all(Path(folder, f"{o.prefix}.bin").stat().st_size == o.bin_bytes
                   and Path(folder, f"{o.prefix}.idx").stat().st_size == o.idx_bytes for o in entries)
    except OSError:
        return False


def outputs_intact(prefix: Path, manifest: Manifest) -> bool:
    """The published files still match the manifest's sizes (a cheap check before reuse)."""
    if manifest.layout == "shards":
        return bool(manifest.outputs) and all(
            o.blend_file is not None and (prefix.parent / o.blend_file).is_file()
            and files_intact(prefix.parent, o.shards or []) for o in manifest.outputs)
    return bool(manifest.outputs) and files_intact(prefix.parent, manifest.outputs)


def shard_manifests(prefix: str | Path) -> Iterator[tuple[int, Path, Manifest]]:
    """``(index, path, manifest)`` of every shard manifest of ours under this prefix (names compared
    exactly, never as a pattern)."""
    out_dir, name = Path(prefix).parent, Path(prefix).name
    pattern = re.compile(re.escape(name) + r"_shard([0-9]{5})" + re.escape(naming.MANIFEST_SUFFIX))
    try:
        entries = sorted(os.listdir(out_dir))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match:
            m = read_manifest(out_dir / entry)
            if m is not None and m.layout == "shard":
                yield int(match.group(1)), out_dir / entry, m


def shard_published(prefix: str | Path, keys: Sequence[str], work_key: str, index: int,
                    shards: int) -> Manifest | None:
    """Shard ``index`` of ``shards``'s published manifest if it is of this very work (same chunk plan,
    same slice) and its files are intact; else None (then the shard is made again)."""
    m = read_manifest(manifest_path(naming.shard_prefix(str(prefix), index)))
    if (m is None or m.work_key != work_key or m.shard != (index, shards)
            or [o.key for o in m.outputs] != list(keys)):
        return None
    return m if files_intact(Path(prefix).parent, m.outputs) else None


def listed_files(folder: Path, entries: Iterable[ManifestOutput | ShardDataset]) -> list[Path]:
    """The ``.bin``/``.idx`` of every dataset a manifest lists (bare names only: never elsewhere)."""
    return [folder / (o.prefix + ext) for o in entries if "/" not in o.prefix for ext in (".bin", ".idx")]


def other_layout_names(prefix: str | Path, keys: Sequence[str], level: str, keep_shards: int) -> list[str]:
    """What an earlier run with another layout left under this prefix, to remove when publishing:
    the merged dataset (when shards are kept), shard datasets beyond the N kept, or all of them and
    their blend lists (when merged).  Only files a shard manifest of ours lists count."""
    names = []
    if keep_shards:
        names += [p.name for p in dataset_paths(prefix, keys, level)]
    else:
        names += [blend_path(prefix, key, level).name for key in keys]
    for index, path, m in list(shard_manifests(prefix)):
        if index >= keep_shards:
            names += [path.name] + [p.name for p in listed_files(path.parent, m.outputs)]
    return names


def remove_stale_work_dirs(prefix: str | Path, keep: Path | None,
                           kinds: tuple[str, ...] = (naming.WORK_DIR_PREFIX, naming.TMP_DIR_PREFIX)) -> None:
    """This prefix's work folders of other chunk plans, and its unpublished files: a rerun starts
    clean. Only folders that are provably this prefix's (``ownership.owned_dirs``); the caller holds
    the prefix lock and has finished a cut publish first (its staged files are in one of them)."""
    for d in ownership.owned_dirs(Path(prefix).parent, Path(prefix).name, kinds):
        if keep is None or d != keep:
            shutil.rmtree(d, ignore_errors=True)


def remove_output(prefix: str | Path, keys: Sequence[str], level: str = naming.LEVEL,
                  root: str | Path | None = None, log: Callable[[str], None] = lambda m: None) -> tuple[int, int]:
    """Delete a published dataset (``spec.deleteDataOnDelete``): what its manifests list (merged files,
    or shard datasets, their manifests and blend lists), the manifest itself, and unfinished work
    folders of this prefix.  Nothing else: not the inputs, the tokenizer or the Hub cache, which
    other datasets may share, and never through a link: a listed name is deleted only when it is a
    plain file whose folder resolves inside ``root`` (the claim).  The caller holds the prefix lock.
    Returns the files and bytes removed."""
    out_dir = Path(prefix).parent
    if root is not None and not inside(os.path.realpath(root), os.path.realpath(out_dir)):
        log(f"{out_dir} resolves to {os.path.realpath(out_dir)}, outside the claim: nothing deleted there")
        return 0, 0
    removed = [0, 0]

    def rm(path: Path) -> None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            log(f"left {path} alone: it is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a file'}, "
                "not a file datasetprep wrote")
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        removed[0] += 1
        removed[1] += st.st_size

    top = read_manifest(manifest_path(prefix))
    if top is not None and top.layout == "shards":  # its blend lists (the shard datasets: below)
        for o in top.outputs:
            if o.blend_file and "/" not in o.blend_file:
                rm(out_dir / o.blend_file)
    elif top is not None:
        for p in listed_files(out_dir, top.outputs):
            rm(p)
    for key in keys:  # the blend lists (also of a run whose last step did not finish)
        rm(blend_path(prefix, key, level))
    for _, path, m in list(shard_manifests(prefix)):
        for p in listed_files(out_dir, m.outputs):
            rm(p)
        rm(path)
    rm(manifest_path(prefix))
    for d in ownership.owned_dirs(out_dir, Path(prefix).name):
        removed[1] += sum(e.stat(follow_symlinks=False).st_size for e in _walk_files(d))
        shutil.rmtree(d, ignore_errors=True)
    fsync_dir(out_dir)
    return removed[0], removed[1]


def _walk_files(d: Path) -> Iterator[os.DirEntry]:
    """The plain files under ``d``, links not followed."""
    try:
        entries = list(os.scandir(d))
    except OSError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(e.path))
        elif e.is_file(follow_symlinks=False):
            yield e


def fsync_dir(d: Path) -> None:
    """Make the renames in folder ``d`` durable (best effort: some filesystems cannot)."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
