"""Fail fast: check access to the dataset and tokenizer repositories before any heavy work."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..spec import DatasetPrepSpec, HubDatasetSource, HubTokenizerSource
from .client import HubOfflineError, HubSettings, RetryPolicy, _Hub
from .datasets import _complete, _repo_dir, dataset_cache_dir, resolve_dataset
from .layout import ResolvedDataset
from .tokenizer import _plan_tokenizer, _replay_tokenizer


@dataclasses.dataclass
class PreflightResult:
    dataset: ResolvedDataset | None = None
    tokenizer_sha: str | None = None
    tokenizer_file: str | None = None


def preflight(spec: DatasetPrepSpec | None = None, token: str | None = None, *,
              dataset: HubDatasetSource | None = None, tokenizer: HubTokenizerSource | None = None,
              endpoint: str | None = None, retry: RetryPolicy | None = None,
              cache_dir: Path | str | None = None, tokenizer_dir: Path | str | None = None,
              hub: HubSettings | None = None) -> PreflightResult:
    """Fail fast, before anything heavy: can the token read the dataset and the tokenizer?

    Resolves the dataset (metadata only) and the tokenizer repo's commit, and sends one HEAD for the
    first data file and for the tokenizer file (gated repos show their metadata to anyone, only the
    files are gated).  Nothing is downloaded.  Sources come from ``spec`` (``source.hub``,
    ``tokenizer.hub``) or the keyword arguments.

    Offline mode: checks that the dataset resolution (in ``cache_dir``, default ``hub.cache_dir``)
    and the tokenizer (in ``tokenizer_dir``, default ``cache_dir``) are
    in the cache, raising :class:`HubOfflineError` if not; what has no known cache is not checked.
    """
    if spec is not None:
        dataset = dataset or spec.source.hub
        tokenizer = tokenizer or spec.tokenizer.hub
    result = PreflightResult()
    settings = HubSettings.resolve(hub, endpoint=endpoint, retry=retry)
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    tok_cache = Path(tokenizer_dir) if tokenizer_dir is not None else cache
    if settings.offline:
        if dataset is not None and cache is not None:
            result.dataset = resolve_dataset(dataset, token, cache_dir=cache, hub=settings)
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
    client = _Hub(settings, token)
    if dataset is not None:
        resolved = resolve_dataset(dataset, token, cache_dir=cache, hub=settings)
        result.dataset = resolved
        local = cache is not None and all(
            _complete(dataset_cache_dir(cache, resolved) / f.path, f) for f in resolved.files)
        if resolved.files and not local:
            client.head_ok(resolved.repo, "dataset", resolved.sha, resolved.files[0].path)
    if tokenizer is not None:
        plan = _plan_tokenizer(client, tokenizer)
        client.head_ok(tokenizer.repo, "model", plan.sha, plan.main)
        result.tokenizer_sha, result.tokenizer_file = plan.sha, plan.main
    return result

