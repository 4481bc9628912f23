"""HTTP to the Hub: typed errors, the settings (endpoint, offline mode, retries with backoff), the
token (environment, redaction), and the one-attempt client ``_Hub`` over ``huggingface_hub``."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import posixpath
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from .. import __version__

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


class HubUnreachableError(HubUnavailableError):
    """No connection to the Hub at all (DNS, refused, no route, connect timeout, untrusted TLS, proxy)
    through all retries: more often a cluster's egress than the Hub."""


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


_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclasses.dataclass(frozen=True)
class HubSettings:
    """Where the Hub is and how to talk to it; read from the environment once (:meth:`from_env`, at
    the entry point) and passed down as ``hub=`` to every function of this package."""

    endpoint: str = DEFAULT_ENDPOINT
    """``HF_ENDPOINT``: the Hub, or a mirror of it."""
    offline: bool = False
    """``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE``): use the cache only."""
    cache_dir: Path | None = None
    """``DATASETPREP_HUB_CACHE``: the resolution cache when a call names none (the job passes its volume's)."""
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    """``DATASETPREP_HUB_MAX_ATTEMPTS``, ``..._BASE_DELAY``, ``..._MAX_DELAY``, ``..._TOTAL_TIMEOUT``,
    ``..._HTTP_TIMEOUT``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "HubSettings":
        env = os.environ if environ is None else environ
        cache = (env.get("DATASETPREP_HUB_CACHE") or "").strip()
        return cls(endpoint=((env.get("HF_ENDPOINT") or "").strip() or DEFAULT_ENDPOINT).rstrip("/"),
                   offline=_offline(env), cache_dir=Path(cache) if cache else None, retry=RetryPolicy.from_env(env))

    @classmethod
    def resolve(cls, hub: "HubSettings | None", *, endpoint: str | None = None,
                retry: RetryPolicy | None = None) -> "HubSettings":
        """``hub`` (default: :meth:`from_env`, for callers of the library that pass none), with an
        ``endpoint`` or ``retry`` given to one call taking precedence."""
        base = hub if hub is not None else cls.from_env()
        return dataclasses.replace(base, endpoint=(endpoint or base.endpoint).rstrip("/"), retry=retry or base.retry)


def _offline(env: Mapping[str, str]) -> bool:
    if any((env.get(name) or "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in _OFFLINE_VARIABLES):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)  # set by huggingface_hub from the environment at import
    except ImportError:  # pragma: no cover - a dependency
        return False


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


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def _unreachable(exc: BaseException, endpoint: str) -> str | None:
    """Why no connection could be made to ``endpoint``, or None when the failure came later (an HTTP
    status, a reset or a read timeout after connecting: the Hub's side)."""
    import errno
    import socket
    import ssl

    import httpx2

    chain = _chain(exc)
    host = urlsplit(endpoint).hostname or endpoint
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"the name {host} does not resolve (DNS: {e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"{host} refused the connection"
        if isinstance(e, ssl.SSLCertVerificationError):
            return (f"the TLS certificate of {host} is not trusted ({e.verify_message or e}); a proxy that inspects TLS "
                    "needs its CA in the job image")
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no route to {host} ({e.strerror})"
    if any(isinstance(e, httpx2.ProxyError) for e in chain):
        return f"the proxy refused or failed the connection ({exc})"
    if any(isinstance(e, httpx2.ConnectTimeout) for e in chain):
        return f"no answer from {host} while connecting (traffic dropped by a firewall or NetworkPolicy?)"
    if any(isinstance(e, httpx2.ConnectError) for e in chain):
        return f"cannot connect to {host} ({exc})"
    return None


def _gave_up_message(exc: BaseException, ctx: _Ctx, attempt: int, elapsed: float) -> HubUnavailableError:
    """The final error after the retries: the cluster cannot reach the Hub, or the Hub kept failing."""
    where = f"({ctx.what}, {_kind(ctx.repo_type)} repo {ctx.repo}) after {attempt} attempt(s) in {elapsed:.1f}s"
    cause = _unreachable(exc, ctx.endpoint)
    if cause is not None:
        scheme, host, port = _origin(ctx.endpoint)
        which = " (the default)" if ctx.endpoint == DEFAULT_ENDPOINT else ""
        msg = (f"cannot reach the Hub at {ctx.endpoint} {where}: {cause}. Check that the job pods may connect to "
               f"{host}:{port} (egress firewall; NetworkPolicy: the chart's networkPolicy.jobs.hubPorts), that "
               f"HF_ENDPOINT is right (it is {ctx.endpoint}{which}), and the proxy settings (HTTPS_PROXY, NO_PROXY; "
               "on Kubernetes in the operator's DATASETPREP_JOB_ENV)")
        return HubUnreachableError(_redact(msg, ctx.token))
    last = _describe(exc)
    msg = (f"the Hub at {ctx.endpoint} kept failing {where}; last error: {last}. This is usually temporary (a Hub "
           "outage or rate limit): retry later (files already downloaded are kept), or raise "
           "DATASETPREP_HUB_MAX_ATTEMPTS / DATASETPREP_HUB_TOTAL_TIMEOUT")
    if last == "HTTP 429":
        msg += "; HTTP 429 is the Hub's rate limit: use a token (spec.hfTokenSecretRef) or run fewer jobs at once"
    return HubUnavailableError(_redact(msg, ctx.token))


def _retrying(fn: Callable[[], T], ctx: _Ctx, policy: RetryPolicy) -> T:
    """Run ``fn`` with the retry policy; translate the final failure into a :class:`HubError`."""
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
                raise _gave_up_message(exc, ctx, attempt, elapsed) from exc
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
    """``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) is set, read now."""
    return HubSettings.from_env().offline


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme)


def _file_url(endpoint: str, repo_type: str, repo: str, revision: str, path: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{endpoint}/{prefix}{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


# =============================================================================================== http
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



@contextlib.contextmanager
def _closing(resp):
    try:
        yield resp
    finally:
        resp.close()


class _Hub:
    """Single-attempt HTTP calls against one endpoint with one token (retries: see _retrying)."""

    def __init__(self, settings: HubSettings, token: str | None) -> None:
        self.settings = settings
        self.endpoint = settings.endpoint
        self.token = token or None
        self.retry = settings.retry
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
        if self.settings.offline:
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
