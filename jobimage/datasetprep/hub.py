"""HuggingFace Hub sources: resolve, download (cached on the volume), stream, fetch tokenizers.

Public API (stable; see ``docs/hub.md``)::

    HubError, HubAuthError, HubNotFoundError, HubUnavailableError, HubOfflineError
    RetryPolicy, set_default_retry_policy(policy)
    RemoteFile, ResolvedDataset, PreflightResult
    resolve_dataset(src, token, endpoint=None, *, cache_dir=None, retry=None) -> ResolvedDataset
    download_dataset(resolved, cache_dir, token, *, endpoint=None, retry=None, max_workers=4) -> list[Path]
    dataset_cache_dir(cache_dir, resolved) -> Path
    iter_streaming_records(resolved, token, *, endpoint=None, retry=None, files=None,
                           batch_size=1024, columns=None) -> Iterator[dict]
    fetch_tokenizer(src, dest_dir, token, *, endpoint=None, retry=None) -> tuple[Path, str]
    preflight(spec=None, token=None, *, dataset=None, tokenizer=None, endpoint=None, retry=None,
              cache_dir=None, tokenizer_dir=None) -> PreflightResult
    token_from_env(environ=None) -> str | None
    RedactTokenFilter(token), install_token_redaction(token, logger=None)
    is_offline() -> bool

Design notes:

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from . import __version__
from .spec import DatasetPrepSpec, HubDatasetSource, HubTokenizerSource

log = logging.getLogger("datasetprep.hub")

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
PARQUET_EXPORT_REVISION = "refs/convert/parquet"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_CHUNK = 1 << 20
_RANGE_READ = 8 << 20  # bytes per ranged GET when streaming

# =============================================================================================== errors


class HubError(Exception):
    """A problem with a Hub source, explained for users (never contains the token)."""


class HubAuthError(HubError):
    """401/403: the repo is gated or private and the token (if any) was not granted access."""


class HubNotFoundError(HubError):
    """404: repo, revision, subset, split or file does not exist."""


class HubUnavailableError(HubError):
    """Transient errors (5xx, 429, timeouts, connection resets) persisted through all retries."""


class HubOfflineError(HubError):
    """Offline mode (``HF_HUB_OFFLINE=1``) and what is needed is not in the cache."""


def _kind(repo_type: str) -> str:
    return "dataset" if repo_type == "dataset" else "model"


def _repo_page(endpoint: str, repo_type: str, repo: str) -> str:
    return f"{endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"


def auth_message(repo: str, endpoint: str, repo_type: str = "model") -> str:
    """The first sentence of every :class:`HubAuthError`."""
    return (f"gated or private repo {repo}: request access at {_repo_page(endpoint, repo_type, repo)} and check "
            "the token's scope (a read token of an account that was granted access)")


NOT_FOUND_DATASET = "not found: check repo id / subset / split"
NOT_FOUND_TOKENIZER = "not found: check repo id / revision / file"


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _HF_TOKEN_RE.sub("***", text)


# =============================================================================================== retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for transient errors only.

    Attempt ``n`` (1-based) that fails transiently waits ``min(max_delay, base_delay * 2**(n-1))``,
    of which a random fraction ``jitter`` is drawn uniformly (``jitter=0.5``: between 50% and 100%
    of it), or the server's ``Retry-After`` when longer (capped at ``max_delay``).  It gives up after
    ``max_attempts`` attempts or when the next wait would pass ``total_timeout`` seconds since the
    first attempt.  ``sleep`` is injectable for tests.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    total_timeout: float = 600.0
    jitter: float = 0.5
    http_timeout: float = 60.0  # per-request read timeout (connect: min(10, this))
    sleep: Callable[[float], None] = dataclasses.field(default=time.sleep, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        d = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        j = max(0.0, min(1.0, self.jitter))
        d = d * (1 - j) + d * j * (rng or random).random()
        if retry_after is not None:
            d = max(d, min(float(retry_after), self.max_delay))
        return d

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RetryPolicy":
        """Defaults, overridden by ``DATASETPREP_HUB_MAX_ATTEMPTS``, ``..._BASE_DELAY``,
        ``..._MAX_DELAY``, ``..._TOTAL_TIMEOUT`` and ``..._HTTP_TIMEOUT`` (seconds)."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for field, conv in (("max_attempts", int), ("base_delay", float), ("max_delay", float),
                            ("total_timeout", float), ("http_timeout", float)):
            v = env.get(f"DATASETPREP_HUB_{field.upper()}")
            if v:
                try:
                    kw[field] = conv(v)
                except ValueError:
                    log.warning("ignoring DATASETPREP_HUB_%s=%r (not a number)", field.upper(), v)
        if "max_attempts" in kw:
            kw["max_attempts"] = max(1, kw["max_attempts"])
        return cls(**kw)


_default_retry: RetryPolicy | None = None


def set_default_retry_policy(policy: RetryPolicy | None) -> None:
    """Set the policy used when a call passes ``retry=None`` (None: back to :meth:`RetryPolicy.from_env`)."""
    global _default_retry
    _default_retry = policy


def _policy(retry: RetryPolicy | None) -> RetryPolicy:
    return retry or _default_retry or RetryPolicy.from_env()


class _Transient(Exception):
    """Internal: a transient failure detected by this module (short body, bad hash, CDN error)."""


@dataclasses.dataclass
class _Ctx:
    """What a call is about, for error messages."""

    repo: str
    repo_type: str  # "dataset" | "model"
    endpoint: str
    token: str | None
    what: str
    revision: str | None = None
    path: str | None = None


def _http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _classify(exc: BaseException) -> tuple[bool, float | None]:
    """(transient?, Retry-After seconds)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False, None
    if isinstance(exc, _Transient):
        return True, None
    if isinstance(exc, HfHubHTTPError):
        status = _http_status(exc)
        if status is not None and (status in (408, 425, 429) or status >= 500):
            ra = None
            try:
                raw = exc.response.headers.get("Retry-After")  # type: ignore[union-attr]
                ra = float(raw) if raw is not None else None
            except (TypeError, ValueError):
                ra = None
            return True, ra
        return False, None
    if isinstance(exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)):
        return True, None
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True, None
    return False, None


def _describe(exc: BaseException) -> str:
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}"
    if isinstance(exc, _Transient):
        return str(exc)
    return type(exc).__name__


def _server_message(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    if resp is None:
        return ""
    msg = resp.headers.get("X-Error-Message") or ""
    if not msg:
        try:
            body = resp.json()
            msg = body.get("error", "") if isinstance(body, dict) else ""
        except Exception:
            msg = ""
    return str(msg)[:300]


def _translate(exc: BaseException, ctx: _Ctx) -> HubError:
    """A huggingface_hub / httpx error → the user-facing HubError."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kind = _kind(ctx.repo_type)
    nf = NOT_FOUND_DATASET if ctx.repo_type == "dataset" else NOT_FOUND_TOKENIZER
    if isinstance(exc, OfflineModeIsEnabled):
        msg = (f"offline mode (HF_HUB_OFFLINE=1): cannot {ctx.what} for {kind} repo {ctx.repo} and it is not in "
               "the cache; run once with network access, or unset HF_HUB_OFFLINE")
        return HubOfflineError(_redact(msg, ctx.token))
    status = _http_status(exc)
    if isinstance(exc, HfHubHTTPError) and (isinstance(exc, GatedRepoError) or status in (401, 403)):
        msg = auth_message(ctx.repo, ctx.endpoint, ctx.repo_type)
        if not ctx.token:
            msg += ("; no token was sent: set spec.hfTokenSecretRef to a Secret holding a HuggingFace read token "
                    "(the job gets it as HF_TOKEN)")
        elif status == 401:
            msg += "; the Hub refused the token (HTTP 401): it may be revoked, expired or mistyped"
        else:
            msg += f"; the token's account has no access to this repo (HTTP {status})"
        if isinstance(exc, RepositoryNotFoundError) and not isinstance(exc, GatedRepoError) and status == 401:
            msg += " (the Hub answers the same for a repo that does not exist: check the repo id too)"
        return HubAuthError(_redact(msg, ctx.token))
    if isinstance(exc, RevisionNotFoundError):
        msg = f"{nf}: revision {ctx.revision!r} does not exist in {kind} repo {ctx.repo}"
        return HubNotFoundError(_redact(msg, ctx.token))
    if isinstance(exc, RemoteEntryNotFoundError):
        msg = f"{nf}: file {ctx.path!r} does not exist in {kind} repo {ctx.repo} at revision {ctx.revision!r}"
        return HubNotFoundError(_redact(msg, ctx.token))
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        msg = f"{nf}: {kind} repo {ctx.repo} does not exist on {ctx.endpoint}"
        if ctx.token:
            msg += " (or it is private and the token's account has no access to it)"
        return HubNotFoundError(_redact(msg, ctx.token))
    if isinstance(exc, HfHubHTTPError):
        detail = _server_message(exc)
        msg = f"the Hub answered HTTP {status} to {ctx.what} for {kind} repo {ctx.repo}" + (
            f": {detail}" if detail else "")
        return HubError(_redact(msg, ctx.token))
    msg = f"could not {ctx.what} for {kind} repo {ctx.repo}: {type(exc).__name__}: {exc}"
    return HubError(_redact(msg, ctx.token))


def _retrying(fn: Callable[[], T], ctx: _Ctx, retry: RetryPolicy | None) -> T:
    """Run ``fn`` with the retry policy; translate the final failure into a :class:`HubError`."""
    policy = _policy(retry)
    start = time.monotonic()
    attempt = 0
    waited = 0.0
    while True:
        attempt += 1
        try:
            return fn()
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            transient, retry_after = _classify(exc)
            if not transient:
                raise _translate(exc, ctx) from exc
            elapsed = max(time.monotonic() - start, waited)
            delay = policy.delay(attempt, retry_after)
            if attempt >= policy.max_attempts or elapsed + delay > policy.total_timeout:
                msg = (f"the Hub at {ctx.endpoint} did not answer ({ctx.what}, {_kind(ctx.repo_type)} repo "
                       f"{ctx.repo}) after {attempt} attempt(s) in {elapsed:.1f}s; last error: {_describe(exc)}. "
                       "This is usually temporary (Hub outage, rate limit, network): retry later, or raise "
                       "DATASETPREP_HUB_MAX_ATTEMPTS / DATASETPREP_HUB_TOTAL_TIMEOUT")
                raise HubUnavailableError(_redact(msg, ctx.token)) from exc
            log.warning("%s (%s repo %s): transient error (%s); retry %d of %d in %.2fs", ctx.what,
                        _kind(ctx.repo_type), ctx.repo, _describe(exc), attempt, policy.max_attempts - 1, delay)
            policy.sleep(delay)
            waited += delay


# =============================================================================================== tokens & logs


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The token from ``HF_TOKEN``, else from the file named by ``HF_TOKEN_FILE``; None if neither."""
    env = os.environ if environ is None else environ
    tok = (env.get("HF_TOKEN") or "").strip()
    if tok:
        return tok
    path = (env.get("HF_TOKEN_FILE") or "").strip()
    if path:
        try:
            tok = Path(path).read_text().strip()
        except OSError as e:
            raise HubError(f"HF_TOKEN_FILE={path} cannot be read: {e.strerror or e}") from None
        return tok or None
    return None


class RedactTokenFilter(logging.Filter):
    """Replace the token (and anything shaped like a HuggingFace token) with ``***`` in log records.

    Install it on the handlers (``install_token_redaction``) so it sees records from every logger.
    """

    def __init__(self, token: str | None, replacement: str = "***") -> None:
        super().__init__()
        self.token = token or None
        self.replacement = replacement

    def _clean(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, self.replacement)
        return _HF_TOKEN_RE.sub(self.replacement, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not kill logging
            msg = str(record.msg)
        clean = self._clean(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        return True


def install_token_redaction(token: str | None, logger: logging.Logger | None = None) -> RedactTokenFilter:
    """Add a :class:`RedactTokenFilter` to every handler of ``logger`` (default: the root logger)."""
    f = RedactTokenFilter(token)
    target = logger or logging.getLogger()
    for h in target.handlers:
        h.addFilter(f)
    target.addFilter(f)
    return f


# =============================================================================================== environment


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(name) or "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme)


def _file_url(endpoint: str, repo_type: str, repo: str, revision: str, path: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{endpoint}/{prefix}{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


# =============================================================================================== http


@contextlib.contextmanager
def _closing(resp):
    try:
        yield resp
    finally:
        resp.close()


class _Hub:
    """Single-attempt HTTP calls against one endpoint with one token (retries: see _retrying)."""

    def __init__(self, endpoint: str | None, token: str | None, retry: RetryPolicy | None) -> None:
        self.endpoint = _endpoint(endpoint)
        self.token = token or None
        self.retry = _policy(retry)
        self._api = None

    @property
    def api(self):
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=self.token or False, library_name="datasetprep",
                              library_version=__version__)
        return self._api

    def timeout(self):
        import httpx2

        t = self.retry.http_timeout
        return httpx2.Timeout(t, connect=min(10.0, t))

    def headers(self, auth: bool = True) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        h = build_hf_headers(token=(self.token if auth and self.token else False), library_name="datasetprep",
                             library_version=__version__)
        return dict(h)

    def ctx(self, repo: str, repo_type: str, what: str, revision: str | None = None, path: str | None = None) -> _Ctx:
        return _Ctx(repo, repo_type, self.endpoint, self.token, what, revision, path)

    def call(self, fn: Callable[[], T], ctx: _Ctx) -> T:
        if is_offline():
            from huggingface_hub.errors import OfflineModeIsEnabled

            raise _translate(OfflineModeIsEnabled("offline"), ctx)
        return _retrying(fn, ctx, self.retry)

    # -- API ------------------------------------------------------------------------------------
    def repo_info(self, repo: str, repo_type: str, revision: str):
        ctx = self.ctx(repo, repo_type, f"read repo info at revision {revision!r}", revision)
        if repo_type == "dataset":
            return self.call(lambda: self.api.dataset_info(repo, revision=revision, timeout=self.retry.http_timeout),
                             ctx)
        return self.call(lambda: self.api.model_info(repo, revision=revision, timeout=self.retry.http_timeout), ctx)

    def paths_info(self, repo: str, repo_type: str, sha: str, paths: Sequence[str]) -> dict[str, "RemoteFile"]:
        """Size / hashes of files (POST paths-info, in batches); missing paths are simply absent."""
        from huggingface_hub.utils import get_session, hf_raise_for_status

        out: dict[str, RemoteFile] = {}
        url = f"{self.endpoint}/api/{repo_type}s/{repo}/paths-info/{quote(sha, safe='')}"
        paths = list(paths)
        for i in range(0, len(paths), 200):
            batch = paths[i:i + 200]

            def once(batch=batch):
                r = get_session().post(url, data={"paths": batch, "expand": False}, headers=self.headers(),
                                       timeout=self.timeout())
                hf_raise_for_status(r)
                return r.json()

            entries = self.call(once, self.ctx(repo, repo_type, "list file sizes", sha))
            for e in entries:
                if e.get("type") != "file":
                    continue
                lfs = e.get("lfs") or None
                out[e["path"]] = RemoteFile(path=e["path"], size=int(e["size"]),
                                            sha256=(lfs or {}).get("oid"), blob_id=None if lfs else e.get("oid"))
        return out

    # -- files ----------------------------------------------------------------------------------
    def open(self, url: str, *, method: str = "GET", range_: tuple[int, int | None] | None = None):
        """Send one request, following redirects by hand: the token never leaves the Hub origin.

        Returns ``(response, final_url)``; the response is streamed and must be closed.  Errors from
        the Hub raise huggingface_hub's typed errors; errors from another origin (CDN) are transient.
        """
        from huggingface_hub.utils import get_session, hf_raise_for_status

        client = get_session()
        base = self.headers()
        if range_ is not None:
            start, end = range_
            base["Range"] = f"bytes={start}-{'' if end is None else end}"
        hub_origin = _origin(self.endpoint)
        auth = True
        target = url
        for _ in range(10):
            if _origin(target) != hub_origin:
                auth = False
            h = base if auth else {k: v for k, v in base.items() if k.lower() != "authorization"}
            req = client.build_request(method, target, headers=h, timeout=self.timeout())
            resp = client.send(req, stream=True, follow_redirects=False)
            if resp.has_redirect_location:
                loc = urljoin(target, resp.headers["Location"])
                resp.close()
                target = loc
                continue
            if resp.status_code >= 400:
                try:
                    resp.read()
                finally:
                    resp.close()
                if _origin(target) != hub_origin:
                    raise _Transient(f"HTTP {resp.status_code} from the file storage")
                hf_raise_for_status(resp)
            return resp, target
        raise _Transient("too many redirects")

    def head_ok(self, repo: str, repo_type: str, sha: str, path: str) -> None:
        """Check that the file is readable with this token (HEAD on the Hub, nothing downloaded)."""
        url = _file_url(self.endpoint, repo_type, repo, sha, path)
        ctx = self.ctx(repo, repo_type, f"check access to {path}", sha, path)

        def once():
            from huggingface_hub.utils import get_session, hf_raise_for_status

            r = get_session().request("HEAD", url, headers=self.headers(), timeout=self.timeout(),
                                      follow_redirects=False)
            if r.status_code >= 400:
                hf_raise_for_status(r)

        self.call(once, ctx)

    def download(self, repo: str, repo_type: str, sha: str, rf: "RemoteFile", dest: Path) -> None:
        """Download one file atomically to ``dest`` (verified), resuming within the retry loop."""
        url = _file_url(self.endpoint, repo_type, repo, sha, rf.path)
        ctx = self.ctx(repo, repo_type, f"download {rf.path}", sha, rf.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
        st: dict[str, Any] = {}

        def reset_hashes() -> None:
            st["n"] = 0
            st["sha256"] = hashlib.sha256()
            st["sha1"] = hashlib.sha1(b"blob %d\0" % rf.size) if rf.size is not None else None

        reset_hashes()
        open(tmp, "wb").close()

        def once() -> None:
            pos = st["n"]
            resp, _ = self.open(url, range_=(pos, None) if pos else None)
            with _closing(resp), open(tmp, "r+b") as f:
                if pos and resp.status_code != 206:  # the server ignored the Range: start over
                    reset_hashes()
                    f.truncate(0)
                f.seek(st["n"])
                for chunk in resp.iter_bytes(_CHUNK):
                    f.write(chunk)
                    st["n"] += len(chunk)
                    st["sha256"].update(chunk)
                    if st["sha1"] is not None:
                        st["sha1"].update(chunk)
                if rf.size is not None and st["n"] > rf.size:
                    reset_hashes()
                    f.truncate(0)
                    raise _Transient(f"more bytes than the Hub listed for {rf.path}")
                f.flush()
                os.fsync(f.fileno())
            if rf.size is not None and st["n"] != rf.size:
                raise _Transient(f"short read ({st['n']} of {rf.size} bytes)")
            bad = ((rf.sha256 and st["sha256"].hexdigest() != rf.sha256)
                   or (rf.blob_id and st["sha1"] is not None and st["sha1"].hexdigest() != rf.blob_id))
            if bad:
                reset_hashes()
                with open(tmp, "r+b") as f:
                    f.truncate(0)
                raise _Transient("checksum mismatch")

        try:
            self.call(once, ctx)
            os.replace(tmp, dest)
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        log.info("downloaded %s/%s (%s bytes)", repo, rf.path, st["n"])


# =============================================================================================== model


def _format_of(path: str) -> str | None:
    """``parquet`` / ``jsonl`` (plain, .gz or .zst) or None (a format datasetprep does not read)."""
    name = posixpath.basename(path).lower()
    for c in (".gz", ".zst"):
        if name.endswith(c):
            name = name[: -len(c)]
            break
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file in a Hub repo at a commit: path, size and the hash the Hub lists for it."""

    path: str
    size: int | None = None
    sha256: str | None = None  # LFS / Xet files: sha256 of the content
    blob_id: str | None = None  # regular git files: git blob sha1

    @property
    def format(self) -> str | None:
        return _format_of(self.path)


@dataclasses.dataclass
class ResolvedDataset:
    """A Hub dataset source pinned to a commit: which files make the (subset, split)."""

    repo: str
    revision: str  # as requested
    sha: str  # commit the files are read from (record this)
    subset: str | None  # config name actually used (None: the repo has no named configs)
    split: str
    files: list[RemoteFile]
    endpoint: str
    data_revision: str = ""  # ref the files come from: == revision, or refs/convert/parquet
    revision_sha: str = ""  # commit `revision` resolved to (== sha unless the Parquet export is used)
    source: str = "configs"  # dataFiles | configs | layout | parquetExport
    available: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # subset -> splits
    notes: list[str] = dataclasses.field(default_factory=list)
    key: str = ""  # cache key of the request (subset, split, dataFiles) it answers

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["files"] = [dataclasses.asdict(f) for f in self.files]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResolvedDataset":
        d = dict(d)
        d["files"] = [RemoteFile(**f) for f in d.get("files", [])]
        return cls(**d)


# =============================================================================================== globbing


_FILES_TO_IGNORE = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip",
                    "dataset_dict.json"}
_DATA_EXTENSIONS = {
    "parquet", "json", "jsonl", "ndjson", "csv", "tsv", "txt", "arrow", "zip", "tar", "tgz", "gz", "zst", "xz",
    "bz2", "lz4", "xml", "h5", "hdf5", "lance", "tfrecord", "npy", "npz",
}


def _segment_regex(seg: str) -> str:
    out, i = "", 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            while i + 1 < len(seg) and seg[i + 1] == "*":
                i += 1
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = seg.find("]", i + 2 if i + 1 < len(seg) and seg[i + 1] in "!^" else i + 1)
            if j == -1:
                out += re.escape(c)
            else:
                body = seg[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """fsspec (>= 2023.12) glob semantics, as ``datasets`` resolves ``data_files``: ``*`` and ``?``
    stay inside one path segment, a whole ``**`` segment spans any number of directories."""
    segs = [s for s in pattern.strip("/").split("/") if s not in ("", ".")]
    rx = ""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            rx += ".+" if last else "(?:[^/]+/)*"
        else:
            rx += _segment_regex(seg) + ("" if last else "/")
    return re.compile(rx + r"\Z")


def _hidden_or_special_unrequested(path: str, pattern: str) -> bool:
    def hidden(parts: Iterable[str]) -> int:
        return sum(1 for p in parts if p.startswith(".") and set(p) != {"."})

    def special(parts: Iterable[str]) -> int:
        return sum(1 for p in parts if p.startswith("__"))

    pp, tp = path.split("/"), pattern.strip("/").split("/")
    return hidden(pp) != hidden(tp) or special(pp[:-1]) != special(tp[:-1])


def match_files(patterns: Sequence[str], files: Sequence[str], *, data_only: bool = False) -> list[str]:
    """Files matching the patterns: pattern order, sorted within a pattern, no duplicates.

    Like ``datasets``: hidden files/dirs and ``__special__`` dirs only when the pattern names them,
    ``README.md`` & co. only when named; ``data_only`` keeps files with a data-file extension.
    """
    out: list[str] = []
    seen: set[str] = set()
    for pat in patterns:
        rx = glob_to_regex(pat)
        base = posixpath.basename(pat.rstrip("/"))
        for f in sorted(files):
            if f in seen or not rx.match(f):
                continue
            if posixpath.basename(f) in _FILES_TO_IGNORE and posixpath.basename(f) != base:
                continue
            if _hidden_or_special_unrequested(f, pat):
                continue
            if data_only and not any(s.lower() in _DATA_EXTENSIONS for s in posixpath.basename(f).split(".")[1:]):
                continue
            seen.add(f)
            out.append(f)
    return out


# =============================================================================================== layouts

_SPLIT_KEYWORDS = {
    "train": ["train", "training"],
    "validation": ["validation", "valid", "dev", "val"],
    "test": ["test", "testing", "eval", "evaluation"],
}
_SEP = "-._ 0-9"
_SPLIT_SHARDED = "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*"
# datasets also has "logs" (**/*.eval) and "harbor" (task.toml / instruction.md) layouts: not text
# corpora, left out.
_DEFAULT_PATTERN_DICTS: list[dict[str, list[str]]] = [
    {s: [p.format(keyword=k, sep=_SEP) for k in kws for p in
         ("**/{keyword}/**", "**/{keyword}[{sep}]*/**", "**/*[{sep}]{keyword}/**", "**/*[{sep}]{keyword}[{sep}]*/**")]
     for s, kws in _SPLIT_KEYWORDS.items()},
    {s: [p.format(keyword=k, sep=_SEP) for k in kws for p in ("**/{keyword}[{sep}]*", "**/*[{sep}]{keyword}[{sep}]*")]
     for s, kws in _SPLIT_KEYWORDS.items()},
    {"train": ["**"]},
]


def infer_split_patterns(files: Sequence[str]) -> dict[str, list[str]]:
    """The split → patterns ``datasets`` infers for a folder without ``configs:`` (empty: no data)."""
    data = match_files(["**"], files, data_only=True)
    sharded = glob_to_regex(_SPLIT_SHARDED.replace("{split}", "*"))
    splits: list[str] = []
    for f in data:
        if sharded.match(f):
            name = posixpath.basename(f).split("-")[0]
            m = re.match(r"(.+)-\d{5}-of-\d{5}", posixpath.basename(f))
            name = m.group(1) if m else name
            if name not in splits:
                splits.append(name)
    if splits:
        order = [s for s in ("train", "validation", "test") if s in splits] + sorted(
            s for s in splits if s not in ("train", "validation", "test"))
        return {s: [_SPLIT_SHARDED.format(split=s)] for s in order}
    for patterns in _DEFAULT_PATTERN_DICTS:
        found = {s: ps for s, ps in patterns.items() if match_files(ps, data, data_only=True)}
        if found:
            return found
    return {}


def _sanitize_data_files(data_files: Any) -> dict[str, list[str]]:
    """``configs[].data_files`` (str | list[str] | list[{split, path}] | dict) → split → patterns."""
    if data_files is None:
        return {}
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, Mapping):
        return {str(k): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        if any(isinstance(x, Mapping) for x in data_files):
            out: dict[str, list[str]] = {}
            for x in data_files:
                if not isinstance(x, Mapping) or "split" not in x or "path" not in x:
                    raise HubError(f"invalid data_files entry in the repo's README: {x!r}")
                p = x["path"]
                out[str(x["split"])] = list(p) if isinstance(p, (list, tuple)) else [p]
            return out
        return {"train": [str(x) for x in data_files]}
    raise HubError(f"invalid data_files in the repo's README: {data_files!r}")


def _join(data_dir: str | None, pattern: str) -> str:
    if not data_dir:
        return pattern
    return posixpath.join(data_dir.strip("/"), pattern.lstrip("/"))


def _configs(card: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not card:
        return []
    cfgs = card.get("configs")
    if not cfgs:
        return []
    if not isinstance(cfgs, list) or not all(isinstance(c, Mapping) and "config_name" in c for c in cfgs):
        raise HubError("the repo's README has an invalid `configs:` section (each entry needs `config_name`)")
    return [dict(c) for c in cfgs]


def _config_split_patterns(cfg: Mapping[str, Any], files: Sequence[str]) -> dict[str, list[str]]:
    data_dir = cfg.get("data_dir")
    if cfg.get("data_files") is not None:
        return {s: [_join(data_dir, p) for p in ps] for s, ps in _sanitize_data_files(cfg["data_files"]).items()}
    sub = [f[len(data_dir.strip('/')) + 1:] for f in files if data_dir and f.startswith(data_dir.strip("/") + "/")] \
        if data_dir else list(files)
    return {s: [_join(data_dir, p) for p in ps] for s, ps in infer_split_patterns(sub).items()}


def _default_config(cfgs: list[dict[str, Any]]) -> str | None:
    flagged = [c["config_name"] for c in cfgs if c.get("default")]
    if flagged:
        return flagged[0]
    if len(cfgs) == 1:
        return cfgs[0]["config_name"]
    return None


def _fmt_available(available: Mapping[str, Sequence[str]]) -> str:
    if not available:
        return "none (no data files found)"
    return "; ".join(f"{name} ({', '.join(splits) or 'no splits'})" for name, splits in available.items())


@dataclasses.dataclass
class _Plan:
    subset: str | None
    split: str
    files: list[str]
    source: str
    available: dict[str, list[str]]
    notes: list[str] = dataclasses.field(default_factory=list)


def _not_found(repo: str, detail: str, available: Mapping[str, Sequence[str]]) -> HubNotFoundError:
    return HubNotFoundError(f"{NOT_FOUND_DATASET}: dataset repo {repo}: {detail}. "
                            f"Available subsets and splits: {_fmt_available(available)}")


def _plan_from_listing(src: HubDatasetSource, files: Sequence[str], card: Mapping[str, Any] | None) -> _Plan:
    """Decide the files for (subset, split) on one commit, without network."""
    repo, subset, split = src.repo, src.subset, src.split
    if src.data_files:
        matched = match_files(list(src.data_files), files)
        if not matched:
            sample = ", ".join(list(files)[:20]) + (" ..." if len(files) > 20 else "")
            raise HubNotFoundError(f"{NOT_FOUND_DATASET}: no file of dataset repo {repo} matches dataFiles "
                                   f"{list(src.data_files)}; files in the repo: {sample or 'none'}")
        return _Plan(subset, split, matched, "dataFiles", {subset or "default": [split]})

    cfgs = _configs(card)
    if cfgs:
        available = {c["config_name"]: list(_config_split_patterns(c, files)) for c in cfgs}
        name = subset if subset is not None else _default_config(cfgs)
        if name is None:
            raise _not_found(repo, "the dataset has several subsets and none is the default: set `subset`",
                             available)
        cfg = next((c for c in cfgs if c["config_name"] == name), None)
        if cfg is None:
            raise _not_found(repo, f"subset {name!r} does not exist", available)
        patterns = _config_split_patterns(cfg, files)
        if split not in patterns:
            raise _not_found(repo, f"split {split!r} does not exist in subset {name!r}", available)
        matched = match_files(patterns[split], files)
        if not matched:
            raise _not_found(repo, f"no file matches the patterns {patterns[split]} of subset {name!r} split "
                             f"{split!r}", available)
        return _Plan(name, split, matched, "configs", available)

    # No configs: the conventional layout at the root is the "default" subset; a top-level folder
    # can be named as a subset (like datasets' data_dir).
    default = infer_split_patterns(files)
    used = set()
    for ps in default.values():
        used.update(match_files(ps, files, data_only=True))
    available: dict[str, list[str]] = {}
    if default:
        available["default"] = list(default)
    for d in sorted({f.split("/", 1)[0] for f in files if "/" in f}):
        inside = [f[len(d) + 1:] for f in files if f.startswith(d + "/")]
        if d.startswith((".", "__")) or all(f"{d}/{x}" in used for x in inside):
            continue
        sp = infer_split_patterns(inside)
        if sp:
            available[d] = list(sp)
    name = subset if subset not in (None, "default") else None
    if name is None:
        patterns = default
        shown: str | None = None if subset is None else "default"
    else:
        if name not in available:
            raise _not_found(repo, f"subset {name!r} does not exist", available)
        inside = [f[len(name) + 1:] for f in files if f.startswith(name + "/")]
        patterns = {s: [_join(name, p) for p in ps] for s, ps in infer_split_patterns(inside).items()}
        shown = name
    if not patterns:
        raise _not_found(repo, "no data files found", available)
    if split not in patterns:
        raise _not_found(repo, f"split {split!r} does not exist in subset {shown or 'default'!r}", available)
    return _Plan(shown, split, _majority_format(match_files(patterns[split], files, data_only=True)), "layout",
                 available)


def _family(path: str) -> str:
    fmt = _format_of(path)
    if fmt:
        return fmt
    parts = posixpath.basename(path).lower().split(".")[1:]
    return next((p for p in parts if p not in ("gz", "zst", "xz", "bz2", "lz4")), parts[-1] if parts else "")


def _majority_format(files: list[str]) -> list[str]:
    """As ``datasets`` infers one loader from the most common extension and drops the other files:
    keep the most common family (a supported one on ties)."""
    counts: dict[str, int] = {}
    for f in files:
        counts[_family(f)] = counts.get(_family(f), 0) + 1
    if len(counts) <= 1:
        return files
    best = max(counts, key=lambda fam: (counts[fam], fam in ("parquet", "jsonl")))
    kept = [f for f in files if _family(f) == best]
    log.info("layout: using the %d %s file(s), ignoring %d other file(s)", len(kept), best, len(files) - len(kept))
    return kept


def _plan_from_export(src: HubDatasetSource, files: Sequence[str]) -> _Plan:
    """refs/convert/parquet: ``<subset>/<split>/NNNN.parquet`` (``partial-<split>`` when truncated)."""
    layout: dict[str, dict[str, list[str]]] = {}
    for f in sorted(files):
        parts = f.split("/")
        if len(parts) == 3 and parts[2].endswith(".parquet"):
            layout.setdefault(parts[0], {}).setdefault(parts[1], []).append(f)
    available = {c: sorted({s.removeprefix("partial-") for s in splits}) for c, splits in layout.items()}
    name = src.subset
    if name is None:
        name = "default" if "default" in layout else (next(iter(layout)) if len(layout) == 1 else None)
        if name is None:
            raise _not_found(src.repo, "the Parquet export has several subsets: set `subset`", available)
    if name not in layout:
        raise _not_found(src.repo, f"subset {name!r} does not exist", available)
    splits = layout[name]
    notes = []
    if src.split in splits:
        chosen = splits[src.split]
    elif f"partial-{src.split}" in splits:
        chosen = splits[f"partial-{src.split}"]
        notes.append(f"the Hub's Parquet export of {src.repo} {name}/{src.split} is partial (the dataset is "
                     "bigger than the export limit): only its first rows are used")
        log.warning("%s", notes[-1])
    else:
        raise _not_found(src.repo, f"split {src.split!r} does not exist in subset {name!r}", available)
    return _Plan(name, src.split, chosen, "parquetExport", available, notes)


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


def _cache_root() -> Path | None:
    v = os.environ.get("DATASETPREP_HUB_CACHE")
    return Path(v) if v else None


def _complete(path: Path, rf: RemoteFile) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return rf.size is None or size == rf.size


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
                    cache_dir: Path | str | None = None, retry: RetryPolicy | None = None) -> ResolvedDataset:
    """Pin ``src`` to a commit and list the data files of its (subset, split).

    Order: explicit ``dataFiles`` globs; else the README's ``configs:`` (as ``datasets`` reads them);
    else the conventional layouts (``data/<split>-NNNNN-of-NNNNN.*``, ``<split>/…``, ``*<split>*…``,
    a top-level folder named as the subset); if the files found are not Parquet / JSON Lines (CSV,
    a loading script, …) the Hub's Parquet export (``refs/convert/parquet``) is used instead.

    With ``cache_dir`` (default: env ``DATASETPREP_HUB_CACHE``) the result is recorded there and
    replayed without network in offline mode, or when ``revision`` is a commit sha already resolved.
    Raises :class:`HubNotFoundError` (listing the available subsets and splits),
    :class:`HubAuthError`, :class:`HubUnavailableError`, :class:`HubOfflineError`.
    """
    cache = Path(cache_dir) if cache_dir is not None else _cache_root()
    hub = _Hub(endpoint, token, retry)
    if is_offline() or _SHA_RE.fullmatch(src.revision):
        cached = _cached_resolution(src, cache)
        if cached is not None:
            log.info("dataset %s@%s: resolution replayed from the cache (%s)", src.repo, src.revision, cached.sha)
            return cached
        if is_offline():
            raise HubOfflineError(
                f"offline mode (HF_HUB_OFFLINE=1): dataset {src.repo}@{src.revision} (subset {src.subset!r}, split "
                f"{src.split!r}) was never resolved into the cache at {cache or '(no cache dir given)'}; run once "
                "with network access, or unset HF_HUB_OFFLINE")

    info = hub.repo_info(src.repo, "dataset", src.revision)
    revision_sha = info.sha
    if not revision_sha:
        raise HubError(f"the Hub did not give a commit sha for dataset {src.repo}@{src.revision}")
    names = {s.rfilename for s in (info.siblings or [])}
    if info.siblings is None:
        names = {f.path for f in hub.call(
            lambda: [e for e in hub.api.list_repo_tree(src.repo, repo_type="dataset", revision=revision_sha,
                                                       recursive=True) if hasattr(e, "size")],
            hub.ctx(src.repo, "dataset", "list files", revision_sha))}
    files_list = sorted(names)

    data_revision, sha = src.revision, revision_sha
    if src.revision == PARQUET_EXPORT_REVISION:
        plan = _plan_from_export(src, files_list)
    else:
        card = _card_of(hub, info, src.repo, revision_sha, names)
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
                export = hub.repo_info(src.repo, "dataset", PARQUET_EXPORT_REVISION)
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

    meta = hub.paths_info(src.repo, "dataset", sha, plan.files)
    missing = [f for f in plan.files if f not in meta]
    if missing:
        raise HubError(f"dataset repo {src.repo} at {sha} lists {missing[:5]} but the Hub has no size for them")
    resolved = ResolvedDataset(
        repo=src.repo, revision=src.revision, sha=sha, subset=plan.subset, split=plan.split,
        files=[meta[f] for f in plan.files], endpoint=hub.endpoint, data_revision=data_revision,
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
                     max_workers: int = 4) -> list[Path]:
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
        if is_offline():
            raise HubOfflineError(
                f"offline mode (HF_HUB_OFFLINE=1): {len(todo)} file(s) of dataset {resolved.repo}@{resolved.sha} are "
                f"not in the cache at {root} (e.g. {todo[0][0].path}); run once with network access, or unset "
                "HF_HUB_OFFLINE")
        hub = _Hub(endpoint or resolved.endpoint, token, retry)
        log.info("downloading %d file(s) of %s@%s (%d bytes) into %s", len(todo), resolved.repo, resolved.sha,
                 sum(f.size or 0 for f, _ in todo), root)
        workers = max(1, min(max_workers, len(todo)))
        if workers == 1:
            for f, p in todo:
                hub.download(resolved.repo, "dataset", resolved.sha, f, p)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="hub-download") as pool:
                futures = [pool.submit(hub.download, resolved.repo, "dataset", resolved.sha, f, p) for f, p in todo]
                for fut in futures:
                    fut.result()
    else:
        log.info("dataset %s@%s: all %d file(s) already in the cache at %s", resolved.repo, resolved.sha,
                 len(paths), root)
    if resolved.key:
        _save_resolution(resolved, resolved.key, cache)
    return paths


# =============================================================================================== streaming


class _RemoteRaw(io.RawIOBase):
    """A seekable read-only view of a remote file: every read is one ranged GET (with retries)."""

    def __init__(self, hub: _Hub, repo: str, sha: str, rf: RemoteFile) -> None:
        super().__init__()
        self.hub, self.repo, self.sha, self.rf = hub, repo, sha, rf
        self.url = _file_url(hub.endpoint, "dataset", repo, sha, rf.path)
        self.size = rf.size if rf.size is not None else self._head_size()
        self.pos = 0
        self.requests = 0

    def _head_size(self) -> int:  # pragma: no cover - sizes always come from paths-info
        def once() -> int:
            resp, _ = self.hub.open(self.url, range_=(0, 0))
            with _closing(resp):
                cr = resp.headers.get("Content-Range", "")
                return int(cr.rsplit("/", 1)[-1]) if "/" in cr else int(resp.headers.get("Content-Length", 0))

        return self.hub.call(once, self.hub.ctx(self.repo, "dataset", f"read {self.rf.path}", self.sha,
                                                self.rf.path))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        elif whence == io.SEEK_END:
            self.pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        self.pos = max(0, self.pos)
        return self.pos

    def readinto(self, b) -> int:  # type: ignore[override]
        want = min(len(b), self.size - self.pos)
        if want <= 0:
            return 0
        start, end = self.pos, self.pos + want - 1

        def once() -> bytes:
            self.requests += 1
            resp, _ = self.hub.open(self.url, range_=(start, end))
            with _closing(resp):
                data = resp.read()
            if resp.status_code == 200:  # Range ignored: cut it ourselves
                data = data[start:end + 1]
            if len(data) != want:
                raise _Transient(f"short range read ({len(data)} of {want} bytes)")
            return data

        data = self.hub.call(once, self.hub.ctx(self.repo, "dataset", f"read {self.rf.path}", self.sha,
                                                self.rf.path))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _iter_parquet(fileobj, columns: Sequence[str] | None, batch_size: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fileobj)
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
        yield from batch.to_pylist()


def _iter_jsonl(fileobj, path: str, columns: Sequence[str] | None) -> Iterator[dict]:
    name = path.lower()
    stream: Any = fileobj
    if name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=fileobj, mode="rb")
    elif name.endswith(".zst"):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(fileobj, read_across_frames=True)
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
    for lineno, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise HubError(f"{path} line {lineno}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise HubError(f"{path} line {lineno}: a JSON object was expected, got {type(rec).__name__}")
        yield {k: rec.get(k) for k in columns} if columns else rec


def iter_streaming_records(resolved: ResolvedDataset, token: str | None, *, endpoint: str | None = None,
                           retry: RetryPolicy | None = None, files: Sequence[str] | None = None,
                           batch_size: int = 1024, columns: Sequence[str] | None = None) -> Iterator[dict]:
    """The records of the resolved files, read over HTTP as they are consumed (nothing on disk).

    Files are read in the resolved order (``files``: only these paths, e.g. one shard's share).
    Parquet is read row group by row group through ranged GETs; JSON Lines (.gz/.zst too) as a
    byte stream of ranged GETs, so a dropped connection resumes where it stopped.  Every request is
    retried per the policy.  ``columns`` keeps only these keys.
    """
    if is_offline():
        raise HubOfflineError(f"offline mode (HF_HUB_OFFLINE=1): streaming dataset {resolved.repo} needs the "
                              "network; use download mode (streaming: false) after a first online run")
    hub = _Hub(endpoint or resolved.endpoint, token, retry)
    wanted = set(files) if files is not None else None
    for rf in resolved.files:
        if wanted is not None and rf.path not in wanted:
            continue
        fmt = rf.format
        if fmt is None:
            raise HubError(f"{rf.path}: datasetprep reads Parquet and JSON Lines files only")
        raw = _RemoteRaw(hub, resolved.repo, resolved.sha, rf)
        buf = io.BufferedReader(raw, buffer_size=_RANGE_READ if fmt == "jsonl" else 1 << 20)
        log.info("streaming %s/%s (%s bytes)", resolved.repo, rf.path, rf.size)
        with buf:
            if fmt == "parquet":
                yield from _iter_parquet(buf, columns, batch_size)
            else:
                yield from _iter_jsonl(buf, rf.path, columns)


# =============================================================================================== tokenizers


@dataclasses.dataclass
class _TokPlan:
    sha: str
    main: str
    files: list[RemoteFile]  # main first


def _tokenizer_key(src: HubTokenizerSource) -> str:
    return hashlib.sha256(json.dumps([src.file]).encode()).hexdigest()[:16]


def _plan_tokenizer(hub: _Hub, src: HubTokenizerSource) -> _TokPlan:
    info = hub.repo_info(src.repo, "model", src.revision)
    sha = info.sha
    if not sha:
        raise HubError(f"the Hub did not give a commit sha for model {src.repo}@{src.revision}")
    names = {s.rfilename for s in (info.siblings or [])}
    if info.siblings is None:  # a mirror without siblings: ask for the candidates directly
        cands = set(TOKENIZER_FILES) | set(TOKENIZER_EXTRAS) | ({src.file} if src.file else set())
        names = set(hub.paths_info(src.repo, "model", sha, sorted(cands)))
    if src.file:
        main = src.file.strip("/")
        if main not in names:
            toks = sorted(n for n in names if "token" in posixpath.basename(n).lower())
            raise HubNotFoundError(f"{NOT_FOUND_TOKENIZER}: file {main!r} is not in model repo {src.repo} at "
                                   f"revision {src.revision!r} ({sha}); tokenizer files there: "
                                   f"{', '.join(toks) or 'none'}")
    else:
        main = next((n for n in TOKENIZER_FILES if n in names), "")
        if not main:
            toks = sorted(n for n in names if "token" in posixpath.basename(n).lower())
            raise HubNotFoundError(f"{NOT_FOUND_TOKENIZER}: model repo {src.repo} at revision {src.revision!r} "
                                   f"has neither tokenizer.json nor tokenizer.model at its root; set tokenizer.hub.file"
                                   f" (tokenizer files there: {', '.join(toks) or 'none'})")
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
                    endpoint: str | None = None, retry: RetryPolicy | None = None) -> tuple[Path, str]:
    """Download the tokenizer file (+ ``tokenizer_config.json`` / ``special_tokens_map.json`` when
    present) into ``<dest>/models/<owner>--<name>/<sha>/``; returns (path of the main file, sha).

    ``src.file`` unset: ``tokenizer.json`` if the repo has one, else ``tokenizer.model``.  Reused
    without download when already there; offline mode replays the recorded revision → sha.
    """
    dest = Path(dest_dir)
    repo_dir = _repo_dir(dest, "model", src.repo)
    manifest_name = f"tokenizer-{_tokenizer_key(src)}.json"

    if is_offline() or _SHA_RE.fullmatch(src.revision):
        hit = _replay_tokenizer(src, dest)
        if hit is not None:
            log.info("tokenizer %s@%s: reused from %s", src.repo, src.revision, hit[0])
            return hit
        if is_offline():
            raise HubOfflineError(f"offline mode (HF_HUB_OFFLINE=1): tokenizer {src.repo}@{src.revision} is not in "
                                  f"the cache at {dest}; run once with network access, or unset HF_HUB_OFFLINE")
    hub = _Hub(endpoint, token, retry)
    plan = _plan_tokenizer(hub, src)
    root = repo_dir / plan.sha
    for rf in plan.files:
        p = root / rf.path
        if not _complete(p, rf):
            hub.download(src.repo, "model", plan.sha, rf, p)
    _write_atomic(repo_dir / "resolved" / plan.sha / manifest_name,
                  json.dumps({"main": plan.main, "files": [dataclasses.asdict(f) for f in plan.files]}, indent=1))
    _write_ref(repo_dir, src.revision, plan.sha)
    log.info("tokenizer %s@%s resolved to %s: %s", src.repo, src.revision, plan.sha, root / plan.main)
    return root / plan.main, plan.sha


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
