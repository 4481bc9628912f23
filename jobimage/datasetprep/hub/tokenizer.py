"""Fetching a tokenizer file (and its config) from a model repository, pinned to a commit."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
from pathlib import Path

from ..spec import HubTokenizerSource
from .client import (
    HubError, HubNotFoundError, HubOfflineError, HubSettings, NOT_FOUND_TOKENIZER, RetryPolicy, TOKENIZER_EXTRAS,
    TOKENIZER_FILES, _Hub, _SHA_RE,
)
from .layout import RemoteFile
from .datasets import _complete, _read_ref, _remember_verified, _repo_dir, _write_atomic, _write_ref

log = logging.getLogger("datasetprep.hub")

# =============================================================================================== tokenizers


@dataclasses.dataclass
class _TokPlan:
    sha: str
    main: str
    files: list[RemoteFile]  # main first


#: Where Llama 3's repos keep the tiktoken rank file (the root has tokenizer.json).
LLAMA3_TIKTOKEN = "original/tokenizer.model"


def _tokenizer_key(src: HubTokenizerSource) -> str:
    return hashlib.sha256(json.dumps([src.file]).encode()).hexdigest()[:16]


def _tokenizer_like(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return "token" in name or name.endswith((".model", ".tiktoken")) or name in ("vocab.json", "merges.txt")


def _tokenizer_files_there(names: set[str], wanted: str | None) -> str:
    """``tokenizer files there: ...`` for an error message, with a guess when ``wanted`` is elsewhere
    (Llama 3's tiktoken ranks are at ``original/tokenizer.model``, not at the root)."""
    found = sorted(n for n in names if _tokenizer_like(n))
    text = f"tokenizer files there: {', '.join(found) or 'none'}"
    if wanted:
        same = [n for n in found if posixpath.basename(n) == posixpath.basename(wanted) and n != wanted]
        if same:
            text += f" -- set tokenizer.hub.file: {same[0]}"
    return text


def _plan_tokenizer(hub: _Hub, src: HubTokenizerSource) -> _TokPlan:
    info = hub.repo_info(src.repo, "model", src.revision)
    sha = info.sha
    if not sha:
        raise HubError(f"the Hub did not give a commit sha for model {src.repo}@{src.revision}")
    names = {s.rfilename for s in (info.siblings or [])}
    if info.siblings is None:  # a mirror without siblings: ask for the candidates directly
        cands = set(TOKENIZER_FILES) | set(TOKENIZER_EXTRAS) | {LLAMA3_TIKTOKEN} | ({src.file} if src.file else set())
        names = set(hub.paths_info(src.repo, "model", sha, sorted(cands)))
    if src.file:
        main = src.file.strip("/")
        if main not in names:
            raise HubNotFoundError(f"{NOT_FOUND_TOKENIZER}: file {main!r} is not in model repo {src.repo} at "
                                   f"revision {src.revision!r} ({sha}); {_tokenizer_files_there(names, main)}")
    else:
        main = next((n for n in TOKENIZER_FILES if n in names), "")
        if not main:
            raise HubNotFoundError(f"{NOT_FOUND_TOKENIZER}: model repo {src.repo} at revision {src.revision!r} "
                                   f"has neither tokenizer.json nor tokenizer.model at its root; set tokenizer.hub.file"
                                   f" ({_tokenizer_files_there(names, None)})")
    folder = posixpath.dirname(main)
    extras = []
    for name in TOKENIZER_EXTRAS:
        for cand in ([posixpath.join(folder, name)] if folder else []) + [name]:
            if cand in names:
                extras.append(cand)
                break
    meta = hub.paths_info(src.repo, "model", sha, [main, *extras])
    files = [meta.get(p) or RemoteFile(p) for p in [main, *extras]]
    return _TokPlan(sha, main, files)


def _replay_tokenizer(src: HubTokenizerSource, dest: Path) -> tuple[Path, str] | None:
    """The tokenizer from an earlier fetch into ``dest`` (revision → sha from refs/), or None."""
    repo_dir = _repo_dir(dest, "model", src.repo)
    sha = _read_ref(repo_dir, src.revision)
    if sha is None:
        return None
    try:
        man = json.loads((repo_dir / "resolved" / sha / f"tokenizer-{_tokenizer_key(src)}.json").read_text())
        files = [RemoteFile(**f) for f in man.get("files", [])]
    except (OSError, ValueError, TypeError):
        return None
    if files and all(_complete(repo_dir / sha / f.path, f) for f in files):
        return repo_dir / sha / man["main"], sha
    return None


def fetch_tokenizer(src: HubTokenizerSource, dest_dir: Path | str, token: str | None, *,
                    endpoint: str | None = None, retry: RetryPolicy | None = None,
                    hub: HubSettings | None = None) -> tuple[Path, str]:
    """Download the tokenizer file (+ ``tokenizer_config.json`` / ``special_tokens_map.json`` when
    present) into ``<dest>/models/<owner>--<name>/<sha>/``; returns (path of the main file, sha).

    ``src.file`` unset: ``tokenizer.json`` if the repo has one, else ``tokenizer.model``.  Reused
    without download when already there; offline mode replays the recorded revision → sha.
    """
    dest = Path(dest_dir)
    repo_dir = _repo_dir(dest, "model", src.repo)
    manifest_name = f"tokenizer-{_tokenizer_key(src)}.json"

    settings = HubSettings.resolve(hub, endpoint=endpoint, retry=retry)
    if settings.offline or _SHA_RE.fullmatch(src.revision):
        hit = _replay_tokenizer(src, dest)
        if hit is not None:
            log.info("tokenizer %s@%s: reused from %s", src.repo, src.revision, hit[0])
            return hit
        if settings.offline:
            raise HubOfflineError(f"offline mode (HF_HUB_OFFLINE=1): tokenizer {src.repo}@{src.revision} is not in "
                                  f"the cache at {dest}; run once with network access, or unset HF_HUB_OFFLINE")
    client = _Hub(settings, token)
    plan = _plan_tokenizer(client, src)
    root = repo_dir / plan.sha
    for rf in plan.files:
        p = root / rf.path
        if not _complete(p, rf):
            client.download(src.repo, "model", plan.sha, rf, p)
            _remember_verified(p, rf)
    _write_atomic(repo_dir / "resolved" / plan.sha / manifest_name,
                  json.dumps({"main": plan.main, "files": [dataclasses.asdict(f) for f in plan.files]}, indent=1))
    _write_ref(repo_dir, src.revision, plan.sha)
    log.info("tokenizer %s@%s resolved to %s: %s", src.repo, src.revision, plan.sha, root / plan.main)
    return root / plan.main, plan.sha
