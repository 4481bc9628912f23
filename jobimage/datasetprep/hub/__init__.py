"""HuggingFace Hub sources: resolve, download (cached on the volume), stream, fetch tokenizers.

Public API (stable; see ``docs/hub.md``)::

    HubError, HubAuthError, HubNotFoundError, HubUnavailableError (HubUnreachableError), HubOfflineError
    RetryPolicy, HubSettings (endpoint, offline, cache_dir, retry; HubSettings.from_env())
    RemoteFile, ResolvedDataset, PreflightResult
    resolve_dataset(src, token, endpoint=None, *, cache_dir=None, retry=None, hub=None) -> ResolvedDataset
    download_dataset(resolved, cache_dir, token, *, endpoint=None, retry=None, max_workers=4, hub=None) -> list[Path]
    dataset_cache_dir(cache_dir, resolved) -> Path
    iter_streaming_records(resolved, token, *, endpoint=None, retry=None, files=None,
                           batch_size=1024, columns=None, hub=None) -> Iterator[dict]
    fetch_tokenizer(src, dest_dir, token, *, endpoint=None, retry=None, hub=None) -> tuple[Path, str]
    preflight(spec=None, token=None, *, dataset=None, tokenizer=None, endpoint=None, retry=None,
              cache_dir=None, tokenizer_dir=None, hub=None) -> PreflightResult
    token_from_env(environ=None) -> str | None
    RedactTokenFilter(token), install_token_redaction(token, logger=None)
    is_offline() -> bool

Design notes:

* Settings (endpoint, offline mode, resolution cache, retry policy) are a :class:`HubSettings`, made
  once from the environment by the caller (the job's entry point) and passed as ``hub=``; ``endpoint``
  and ``retry`` given to one call take precedence. Without ``hub`` a call reads the environment
  (``HubSettings.from_env``) itself, which is what library users of this package expect.

* Every HTTP call is a single attempt made with ``huggingface_hub``'s own client, URL builders and
  ``hf_raise_for_status`` (so errors are its typed errors: ``GatedRepoError``,
  ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``RemoteEntryNotFoundError``,
  ``HfHubHTTPError``); retries happen in exactly one place, :func:`_retrying`, with exponential
  backoff and jitter, on transient errors only (5xx, 408, 429, timeouts, connection resets),
  bounded in attempts and in total time.  401/403/404 are never retried.
* Data files are downloaded by this module (not ``hf_hub_download``) into
  ``<cache>/datasets/<owner>--<name>/<sha>/<path in repo>``: plain files (no symlinks: some RWX
  volumes have none), written to a temp name, checked against the size and hash the Hub lists
  (sha256 for LFS/Xet files, the git blob sha1 otherwise), fsynced and renamed into place.  An
  existing file is complete by construction, so a second run downloads nothing.
* The token is only ever taken from the arguments (never from ``~/.cache/huggingface`` or the
  environment behind the caller's back), sent only to the Hub origin (dropped on redirects to a
  CDN), and never logged or put in a message.

Modules, in the order a run uses them: ``client`` (HTTP, errors, retries, the token), ``layout``
(what a repository holds; subsets and splits), ``datasets`` (resolve a revision, download into the
cache), ``streaming``, ``tokenizer`` and ``preflight``.  Callers import from ``datasetprep.hub``.
"""
from __future__ import annotations

from .client import (  # noqa: F401
    DEFAULT_ENDPOINT, PARQUET_EXPORT_REVISION, TOKENIZER_FILES, TOKENIZER_EXTRAS, HubError, HubAuthError,
    HubNotFoundError, HubUnavailableError, HubUnreachableError, HubOfflineError, auth_message, NOT_FOUND_DATASET,
    NOT_FOUND_TOKENIZER, RetryPolicy, HubSettings, token_from_env, RedactTokenFilter,
    install_token_redaction, is_offline, RemoteFile,
)
from .layout import (  # noqa: F401
    ResolvedDataset, glob_to_regex, match_files, infer_split_patterns,
)
from .datasets import (  # noqa: F401
    resolve_dataset, dataset_cache_dir, download_dataset,
)
from .streaming import (  # noqa: F401
    iter_streaming_records,
)
from .tokenizer import (  # noqa: F401
    fetch_tokenizer,
)
from .preflight import (  # noqa: F401
    PreflightResult, preflight,
)

__all__ = [
    'DEFAULT_ENDPOINT', 'PARQUET_EXPORT_REVISION', 'TOKENIZER_FILES', 'TOKENIZER_EXTRAS', 'HubError',
    'HubAuthError', 'HubNotFoundError', 'HubUnavailableError', 'HubUnreachableError', 'HubOfflineError', 'auth_message',
    'NOT_FOUND_DATASET', 'NOT_FOUND_TOKENIZER', 'RetryPolicy', 'HubSettings', 'token_from_env',
    'RedactTokenFilter', 'install_token_redaction', 'is_offline', 'RemoteFile', 'ResolvedDataset',
    'glob_to_regex', 'match_files', 'infer_split_patterns', 'resolve_dataset', 'dataset_cache_dir',
    'download_dataset', 'iter_streaming_records', 'fetch_tokenizer', 'PreflightResult', 'preflight',
]
