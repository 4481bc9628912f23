"""Fail fast: check access to the dataset and tokenizer repositories before any heavy work."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..spec import DatasetPrepSpec, HubDatasetSource, HubTokenizerSource
from .client import (
    DEFAULT_ENDPOINT, HubAuthError, HubError, HubNotFoundError, HubOfflineError, HubUnavailableError,
    NOT_FOUND_DATASET, NOT_FOUND_TOKENIZER, PARQUET_EXPORT_REVISION, RedactTokenFilter, RetryPolicy, _Hub,
    auth_message, install_token_redaction, is_offline, set_default_retry_policy, token_from_env,
)
from .layout import RemoteFile, ResolvedDataset, glob_to_regex, infer_split_patterns, match_files
from .datasets import _cache_root, _complete, _repo_dir, dataset_cache_dir, download_dataset, resolve_dataset
from .streaming import iter_streaming_records
from .tokenizer import _plan_tokenizer, _replay_tokenizer, fetch_tokenizer


# =============================================================================================== preflight


@dataclasses.dataclass
class PreflightResult:
    dataset: ResolvedDataset | None = None
    tokenizer_sha: str | None = None
    tokenizer_file: str | None = None


def preflight(spec: DatasetPrepSpec | None = None, token: str | None = None, *,
              dataset: HubDatasetSource | None = None, tokenizer: HubTokenizerSource | None = None,
              endpoint: str | None = None, retry: RetryPolicy | None = None,
              cache_dir: Path | str | None = None, tokenizer_dir: Path | str | None = None) -> PreflightResult:
    """Fail fast, before anything heavy: can the token read the dataset and the tokenizer?

    Resolves the dataset (metadata only) and the tokenizer repo's commit, and sends one HEAD for the
    first data file and for the tokenizer file (gated repos show their metadata to anyone, only the
    files are gated).  Nothing is downloaded.  Sources come from ``spec`` (``source.hub``,
    ``tokenizer.hub``) or the keyword arguments.

    Offline mode: checks that the dataset resolution (in ``cache_dir``, default env
    ``DATASETPREP_HUB_CACHE``) and the tokenizer (in ``tokenizer_dir``, default ``cache_dir``) are
    in the cache, raising :class:`HubOfflineError` if not; what has no known cache is not checked.
    """
    if spec is not None:
        dataset = dataset or spec.source.hub
        tokenizer = tokenizer or spec.tokenizer.hub
    result = PreflightResult()
    cache = Path(cache_dir) if cache_dir is not None else _cache_root()
    tok_cache = Path(tokenizer_dir) if tokenizer_dir is not None else cache
    if is_offline():
        if dataset is not None and cache is not None:
            result.dataset = resolve_dataset(dataset, token, endpoint, cache_dir=cache, retry=retry)
        if tokenizer is not None and tok_cache is not None:
            hit = _replay_tokenizer(tokenizer, tok_cache)
            if hit is None:
                raise HubOfflineError(f"offline mode (HF_HUB_OFFLINE=1): tokenizer {tokenizer.repo}@"
                                      f"{tokenizer.revision} is not in the cache at {tok_cache}; run once with "
                                      "network access, or unset HF_HUB_OFFLINE")
            result.tokenizer_sha = hit[1]
            result.tokenizer_file = hit[0].relative_to(_repo_dir(tok_cache, "model", tokenizer.repo) / hit[1]
                                                       ).as_posix()
        return result
    hub = _Hub(endpoint, token, retry)
    if dataset is not None:
        resolved = resolve_dataset(dataset, token, endpoint, cache_dir=cache, retry=retry)
        result.dataset = resolved
        local = cache is not None and all(
            _complete(dataset_cache_dir(cache, resolved) / f.path, f) for f in resolved.files)
        if resolved.files and not local:
            hub.head_ok(resolved.repo, "dataset", resolved.sha, resolved.files[0].path)
    if tokenizer is not None:
        plan = _plan_tokenizer(hub, tokenizer)
        hub.head_ok(tokenizer.repo, "model", plan.sha, plan.main)
        result.tokenizer_sha, result.tokenizer_file = plan.sha, plan.main
    return result


__all__ = [
    "HubError", "HubAuthError", "HubNotFoundError", "HubUnavailableError", "HubOfflineError",
    "RetryPolicy", "set_default_retry_policy", "RemoteFile", "ResolvedDataset", "PreflightResult",
    "resolve_dataset", "download_dataset", "dataset_cache_dir", "iter_streaming_records", "fetch_tokenizer",
    "preflight", "token_from_env", "RedactTokenFilter", "install_token_redaction", "is_offline",
    "auth_message", "glob_to_regex", "match_files", "infer_split_patterns", "DEFAULT_ENDPOINT",
    "PARQUET_EXPORT_REVISION", "NOT_FOUND_DATASET", "NOT_FOUND_TOKENIZER",
]
