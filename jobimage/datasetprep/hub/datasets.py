"""Resolving a dataset revision to a commit and a file list (cached on the volume), and downloading
its files into the cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..spec import HubDatasetSource
from .client import (
    PARQUET_EXPORT_REVISION, HubError, HubNotFoundError, HubOfflineError, HubSettings, RemoteFile, RetryPolicy, _Hub,
    _SHA_RE, _closing, _file_url, _format_of,
)
from .layout import ResolvedDataset, _configs, _plan_from_export, _plan_from_listing

log = logging.getLogger("datasetprep.hub")

# =============================================================================================== cache


def _repo_dir(cache_dir: Path, repo_type: str, repo: str) -> Path:
    return Path(cache_dir) / ("datasets" if repo_type == "dataset" else "models") / repo.replace("/", "--")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _ref_path(repo_dir: Path, revision: str) -> Path:
    return repo_dir / "refs" / quote(revision, safe="")


def _read_ref(repo_dir: Path, revision: str) -> str | None:
    if _SHA_RE.fullmatch(revision):
        return revision
    try:
        sha = _ref_path(repo_dir, revision).read_text().strip()
    except OSError:
        return None
    return sha if _SHA_RE.fullmatch(sha) else None


def _write_ref(repo_dir: Path, revision: str, sha: str) -> None:
    if revision != sha:
        try:
            _write_atomic(_ref_path(repo_dir, revision), sha)
        except OSError as e:  # read-only cache: offline replay just won't work
            log.warning("could not record %s -> %s in the cache: %s", revision, sha, e)


def _resolution_key(src: HubDatasetSource) -> str:
    doc = json.dumps([src.subset, src.split, list(src.data_files) if src.data_files else None])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _record_path(cache_dir: Path, src_repo: str, revision_sha: str, key: str) -> Path:
    return _repo_dir(cache_dir, "dataset", src_repo) / "resolved" / revision_sha / f"{key}.json"


def _complete(path: Path, rf: RemoteFile) -> bool:
    """A cached file is complete when it has the size the Hub lists and, where the Hub lists a hash
    (LFS sha256, git blob sha1), that hash.  The hash is checked once and remembered in a stamp next
    to the file, keyed by size, mtime, ctime and inode: later runs only ``stat`` it, and a file
    changed since (ctime cannot be set back) is hashed again, and downloaded again if it no longer
    matches."""
    try:
        st = path.stat()
    except OSError:
        return False
    if rf.size is not None and st.st_size != rf.size:
        return False
    if not (rf.sha256 or rf.blob_id):
        return True
    try:
        if json.loads(_stamp_path(path).read_text()) == _stamp(st, rf):
            return True
    except (OSError, ValueError):
        pass
    if not _hash_matches(path, rf, st.st_size):
        log.warning("cached %s does not match the hash the Hub lists for %s: downloading it again", path, rf.path)
        return False
    _remember_verified(path, rf)
    return True


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp(st: os.stat_result, rf: RemoteFile) -> dict:
    return {"stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], "sha256": rf.sha256,
            "blob_id": rf.blob_id}


def _hash_matches(path: Path, rf: RemoteFile, size: int) -> bool:
    h256 = hashlib.sha256() if rf.sha256 else None
    h1 = hashlib.sha1(b"blob %d\0" % size) if rf.blob_id else None
    try:
        with open(path, "rb") as f:
            for blk in iter(lambda: f.read(1 << 20), b""):
                for h in (h256, h1):
                    if h is not None:
                        h.update(blk)
    except OSError:
        return False
    return (h256 is None or h256.hexdigest() == rf.sha256) and (h1 is None or h1.hexdigest() == rf.blob_id)


def _remember_verified(path: Path, rf: RemoteFile) -> None:
    """Record that ``path`` (as it is now) was verified against ``rf``'s hash (see :func:`_complete`)."""
    if not (rf.sha256 or rf.blob_id):
        return
    try:
        _write_atomic(_stamp_path(path), json.dumps(_stamp(path.stat(), rf)))
    except OSError as e:  # a read-only cache: the file is just hashed again next time
        log.warning("could not record the verification of %s: %s", path, e)


def _cached_resolution(src: HubDatasetSource, cache_dir: Path | None) -> ResolvedDataset | None:
    if cache_dir is None:
        return None
    sha = _read_ref(_repo_dir(cache_dir, "dataset", src.repo), src.revision)
    if sha is None:
        return None
    try:
        d = json.loads(_record_path(cache_dir, src.repo, sha, _resolution_key(src)).read_text())
        return ResolvedDataset.from_dict(d)
    except (OSError, ValueError, TypeError):
        return None


def _save_resolution(resolved: ResolvedDataset, src_key: str, cache_dir: Path) -> None:
    repo_dir = _repo_dir(cache_dir, "dataset", resolved.repo)
    try:
        _write_atomic(_record_path(cache_dir, resolved.repo, resolved.revision_sha or resolved.sha, src_key),
                      json.dumps(resolved.to_dict(), indent=1))
    except OSError as e:
        log.warning("could not record the resolution of %s in the cache: %s", resolved.repo, e)
    _write_ref(repo_dir, resolved.revision, resolved.revision_sha or resolved.sha)


# =============================================================================================== datasets


def _card_of(hub: _Hub, info: Any, repo: str, sha: str, names: set[str]) -> dict | None:
    card = getattr(info, "card_data", None)
    if card is not None:
        try:
            return card.to_dict()
        except Exception:  # noqa: BLE001
            pass
    if "README.md" not in names:
        return None
    # A mirror that does not send cardData: read the YAML header of README.md ourselves.
    ctx = hub.ctx(repo, "dataset", "read README.md", sha, "README.md")

    def once() -> bytes:
        resp, _ = hub.open(_file_url(hub.endpoint, "dataset", repo, sha, "README.md"))
        with _closing(resp):
            return resp.read()

    text = hub.call(once, ctx).decode("utf-8", "replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise HubError(f"the README.md of dataset repo {repo} has invalid YAML: {e}") from None
    return data if isinstance(data, dict) else None


def resolve_dataset(src: HubDatasetSource, token: str | None, endpoint: str | None = None, *,
                    cache_dir: Path | str | None = None, retry: RetryPolicy | None = None,
                    hub: HubSettings | None = None) -> ResolvedDataset:
    """Pin ``src`` to a commit and list the data files of its (subset, split).

    Order: explicit ``dataFiles`` globs; else the README's ``configs:`` (as ``datasets`` reads them);
    else the conventional layouts (``data/<split>-NNNNN-of-NNNNN.*``, ``<split>/…``, ``*<split>*…``,
    a top-level folder named as the subset); if the files found are not Parquet / JSON Lines (CSV,
    a loading script, …) the Hub's Parquet export (``refs/convert/parquet``) is used instead.

    With ``cache_dir`` (default: ``hub.cache_dir``) the result is recorded there and
    replayed without network in offline mode, or when ``revision`` is a commit sha already resolved.
    Raises :class:`HubNotFoundError` (listing the available subsets and splits),
    :class:`HubAuthError`, :class:`HubUnavailableError`, :class:`HubOfflineError`.
    """
    settings = HubSettings.resolve(hub, endpoint=endpoint, retry=retry)
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    offline = settings.offline
    hub_ = _Hub(settings, token)
    if offline or _SHA_RE.fullmatch(src.revision):
        cached = _cached_resolution(src, cache)
        if cached is not None:
            log.info("dataset %s@%s: resolution replayed from the cache (%s)", src.repo, src.revision, cached.sha)
            return cached
        if offline:
            raise HubOfflineError(
                f"offline mode (HF_HUB_OFFLINE=1): dataset {src.repo}@{src.revision} (subset {src.subset!r}, split "
                f"{src.split!r}) was never resolved into the cache at {cache or '(no cache dir given)'}; run once "
                "with network access, or unset HF_HUB_OFFLINE")

    info = hub_.repo_info(src.repo, "dataset", src.revision)
    revision_sha = info.sha
    if not revision_sha:
        raise HubError(f"the Hub did not give a commit sha for dataset {src.repo}@{src.revision}")
    names = {s.rfilename for s in (info.siblings or [])}
    if info.siblings is None:
        names = {f.path for f in hub_.call(
            lambda: [e for e in hub_.api.list_repo_tree(src.repo, repo_type="dataset", revision=revision_sha,
                                                       recursive=True) if hasattr(e, "size")],
            hub_.ctx(src.repo, "dataset", "list files", revision_sha))}
    files_list = sorted(names)

    data_revision, sha = src.revision, revision_sha
    if src.revision == PARQUET_EXPORT_REVISION:
        plan = _plan_from_export(src, files_list)
    else:
        card = _card_of(hub_, info, src.repo, revision_sha, names)
        plan = None
        try:
            plan = _plan_from_listing(src, files_list, card)
        except HubNotFoundError:
            if src.data_files or _configs(card) or any(_format_of(f) for f in files_list):
                raise
            plan = None  # no data files at all (e.g. a loading script): try the Parquet export below
        if plan is None or any(_format_of(f) is None for f in plan.files):
            unsupported = sorted({posixpath.basename(f).split(".", 1)[-1] for f in (plan.files if plan else [])
                                  if _format_of(f) is None})
            if src.data_files:
                raise HubError(f"dataFiles of dataset repo {src.repo} match files datasetprep cannot read "
                               f"({', '.join(unsupported)}): it reads Parquet and JSON Lines (.jsonl/.json, "
                               "optionally .gz/.zst)")
            try:
                export = hub_.repo_info(src.repo, "dataset", PARQUET_EXPORT_REVISION)
            except HubNotFoundError:
                what = f"are {', '.join(unsupported)}" if unsupported else "are not data files datasetprep reads"
                raise HubError(f"the files of dataset {src.repo} (subset {src.subset or 'default'!r}, split "
                               f"{src.split!r}) {what}, and the repo has no Parquet export "
                               f"({PARQUET_EXPORT_REVISION}); datasetprep reads Parquet and JSON Lines: convert "
                               "the data, or point dataFiles at such files") from None
            export_names = sorted(s.rfilename for s in (export.siblings or []))
            export_src = src.model_copy(update={"subset": plan.subset if plan else src.subset})
            plan = _plan_from_export(export_src, export_names)
            plan.notes.insert(0, f"{src.repo}@{src.revision} has no Parquet/JSON Lines files for this split: "
                                 f"using the Hub's Parquet export {PARQUET_EXPORT_REVISION} at {export.sha}")
            log.info("%s", plan.notes[0])
            data_revision, sha = PARQUET_EXPORT_REVISION, export.sha

    meta = hub_.paths_info(src.repo, "dataset", sha, plan.files)
    missing = [f for f in plan.files if f not in meta]
    if missing:
        raise HubError(f"dataset repo {src.repo} at {sha} lists {missing[:5]} but the Hub has no size for them")
    resolved = ResolvedDataset(
        repo=src.repo, revision=src.revision, sha=sha, subset=plan.subset, split=plan.split,
        files=[meta[f] for f in plan.files], endpoint=hub_.endpoint, data_revision=data_revision,
        revision_sha=revision_sha, source=plan.source, available=plan.available, notes=plan.notes,
        key=_resolution_key(src),
    )
    log.info("dataset %s@%s resolved to %s: subset %s, split %s, %d file(s), %d bytes", src.repo, src.revision,
             sha, plan.subset or "default", plan.split, len(resolved.files), resolved.total_bytes)
    if cache is not None:
        _save_resolution(resolved, _resolution_key(src), cache)
    return resolved


def dataset_cache_dir(cache_dir: Path | str, resolved: ResolvedDataset) -> Path:
    """Where :func:`download_dataset` puts the files: ``<cache>/datasets/<owner>--<name>/<sha>``."""
    return _repo_dir(Path(cache_dir), "dataset", resolved.repo) / resolved.sha


def download_dataset(resolved: ResolvedDataset, cache_dir: Path | str, token: str | None, *,
                     endpoint: str | None = None, retry: RetryPolicy | None = None,
                     max_workers: int = 4, hub: HubSettings | None = None) -> list[Path]:
    """Download the resolved files into ``<cache>/datasets/<owner>--<name>/<sha>/<path>``.

    Files already there (complete by construction: written atomically after verification) are not
    downloaded again, so a second call, from any process, makes no request.  Returns the local
    paths in the resolved order.  Also records the resolution so that offline mode can replay it.
    """
    cache = Path(cache_dir)
    root = dataset_cache_dir(cache, resolved)
    paths = [root / f.path for f in resolved.files]
    todo = [(f, p) for f, p in zip(resolved.files, paths) if not _complete(p, f)]
    if todo:
        settings = HubSettings.resolve(hub, endpoint=endpoint or resolved.endpoint, retry=retry)
        if settings.offline:
            raise HubOfflineError(
                f"offline mode (HF_HUB_OFFLINE=1): {len(todo)} file(s) of dataset {resolved.repo}@{resolved.sha} are "
                f"not in the cache at {root} (e.g. {todo[0][0].path}); run once with network access, or unset "
                "HF_HUB_OFFLINE")
        client = _Hub(settings, token)
        log.info("downloading %d file(s) of %s@%s (%d bytes) into %s", len(todo), resolved.repo, resolved.sha,
                 sum(f.size or 0 for f, _ in todo), root)
        workers = max(1, min(max_workers, len(todo)))

        def fetch(f: RemoteFile, p: Path) -> None:
            client.download(resolved.repo, "dataset", resolved.sha, f, p)  # verified: size and hash
            _remember_verified(p, f)

        if workers == 1:
            for f, p in todo:
                fetch(f, p)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="hub-download") as pool:
                futures = [pool.submit(fetch, f, p) for f, p in todo]
                for fut in futures:
                    fut.result()
    else:
        log.info("dataset %s@%s: all %d file(s) already in the cache at %s", resolved.repo, resolved.sha,
                 len(paths), root)
    if resolved.key:
        _save_resolution(resolved, resolved.key, cache)
    return paths
