"""A counting, optionally slow, proxy in front of the test bed's API server, for one client only.

The operator under test gets a kubeconfig that points here (plain HTTP on 127.0.0.1); the proxy
forwards every request to the real API server with the bed's admin credentials and records it
(method, path, query, status). Everything else -- the tests' own client, the job pods -- talks to
the API server directly, so the record is exactly the operator's requests.

It can also make the API server look slow, the way a loaded one is (issue 17 measured a p99 of 5-8 s
on 2 cores): ``latency(method, path)`` seconds before a request is forwarded, and every watch event
delivered ``watch_delay`` seconds after it arrived (in order). The second is what makes an operator
decide on stale bodies: its own status write comes back through the watch late.

    with ApiProxy(kubeconfig, watch_delay=3.0) as proxy:
        env["KUBECONFIG"] = str(proxy.kubeconfig)
        ...
        proxy.requests  # [{"method": "PATCH", "path": "/apis/...", "query": "...", "status": 200,
                        #   "kind": "datasetpreps/status", "name": "wiki", "patch": {...}, ...}]

A PATCH's body is kept (``patch``): what a status write wrote, so a test can tell a transition from a
progress update.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                "transfer-encoding", "upgrade", "host", "authorization", "content-length"}


def _upstream(kubeconfig: Path) -> tuple[str, ssl.SSLContext, Path]:
    """The API server's URL and a TLS context with the kubeconfig's CA and client certificate."""
    config = json.loads(kubeconfig.read_text()) if kubeconfig.read_text().lstrip().startswith("{") else None
    if config is None:
        import yaml

        config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    tmp = Path(tempfile.mkdtemp(prefix="apiproxy-"))
    files = {}
    for key in ("certificate-authority", "client-certificate", "client-key"):
        if f"{key}-data" in user or f"{key}-data" in cluster:
            data = user.get(f"{key}-data") or cluster.get(f"{key}-data")
            path = tmp / key
            path.write_bytes(base64.b64decode(data))
            files[key] = str(path)
        else:
            files[key] = user.get(key) or cluster.get(key)
    context = ssl.create_default_context(cafile=files["certificate-authority"])
    context.load_cert_chain(files["client-certificate"], files["client-key"])
    return cluster["server"].rstrip("/"), context, tmp


class ApiProxy:
    """See the module docstring."""

    def __init__(self, kubeconfig: Path, *, latency: Callable[[str, str], float] | None = None,
                 watch_delay: float = 0.0) -> None:
        self.server, self._ssl, self._tmp = _upstream(Path(kubeconfig))
        self.latency = latency or (lambda method, path: 0.0)
        self.watch_delay = watch_delay
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="apiproxy", daemon=True)
        self.port = 0
        self.kubeconfig = self._tmp / "kubeconfig"

    # -- lifecycle
    def __enter__(self) -> "ApiProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "proxy", "user": {"token": "proxied"}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}]}))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        # Bodies pass through as the API server sent them: it gzips a large list (> 128 KiB) for a client that
        # accepts it, as kopf does, and says so in Content-Encoding, which is forwarded. Decompressed on the way
        # (aiohttp's default) under that header, the list was unreadable: kopf's watcher silently listed again
        # and again, and a restarted operator with ~30 resources never started (bench/RESULTS.md).
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                                              auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    # -- what was asked
    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def count(self, since: float = 0.0, *, watches: bool = False) -> collections.Counter:
        """Requests since ``since`` (``time.time()``) by ``"METHOD kind"`` (watches left out unless asked)."""
        counter: collections.Counter = collections.Counter()
        for r in self.snapshot():
            if r["t"] >= since and (watches or not r["watch"]):
                counter[f"{r['method']} {r['kind']}"] += 1
        return counter

    def since(self, t: float, *, watches: bool = False) -> list[dict[str, Any]]:
        """The requests made since ``t`` (``time.time()``), watches left out unless asked."""
        return [r for r in self.snapshot() if r["t"] >= t and (watches or not r["watch"])]

    def wait_quiet(self, quiet: float, timeout: float) -> float:
        """Wait until the client has sent no request (watches aside) for ``quiet`` s, at most ``timeout`` s;
        returns the seconds waited."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            last = max((r["t"] for r in self.snapshot() if not r["watch"]), default=0.0)
            if time.time() - max(last, t0) >= quiet:
                break
            time.sleep(0.5)
        return time.time() - t0

    # -- the proxy
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        record = {"t": time.time(), "method": request.method, "path": request.path, "query": request.query_string,
                  "watch": watch, "kind": kind_of(request.path, request.method), "status": None}
        with self._lock:
            self.requests.append(record)
        delay = 0.0 if watch else self.latency(request.method, request.path)
        if delay > 0:
            await asyncio.sleep(delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        record["name"] = _object_name(request.method, request.path, body)
        if request.method == "PATCH":
            record["patch"] = _json_or_none(body)
        url = self.server + request.path_qs
        # As sent: no Content-Type stays none (aiohttp would add application/octet-stream, which the API
        # server refuses with 415, where it takes a bare body for JSON).
        async with self._session.request(request.method, url, headers=headers, data=body or None,
                                         skip_auto_headers=("Content-Type",)) as upstream:
            record["status"] = upstream.status
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS})
            await response.prepare(request)
            if watch and self.watch_delay > 0:
                await self._delayed_lines(upstream, response)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            record["seconds"] = time.time() - record["t"]  # the whole answer, as the client waited for it
            return response

    async def _delayed_lines(self, upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
        """Each watch event (one JSON line) reaches the client ``watch_delay`` s after it arrived."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for line in upstream.content:
                    await queue.put((time.monotonic() + self.watch_delay, line))
            finally:
                await queue.put(None)

        task = asyncio.create_task(pump())
        try:
            while (item := await queue.get()) is not None:
                due, line = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await response.write(line)
        finally:
            task.cancel()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _object_name(method: str, path: str, body: bytes) -> str | None:
    """The name of the object a write is about: from the body for a create, else the path's."""
    if method == "POST":
        try:
            return (json.loads(body).get("metadata") or {}).get("name")
        except (ValueError, AttributeError):
            return None
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts and parts.index("namespaces") + 3 < len(parts):
        return parts[parts.index("namespaces") + 3]
    return None


def kind_of(path: str, method: str) -> str:
    """A request's target in a word: ``datasetpreps/status``, ``jobs``, ``pods``, ``events``, ..."""
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
        rest = parts[parts.index("namespaces") + 2:]
    elif parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return "/".join(parts[:2]) or "/"
    if not rest:
        return "discovery"
    return rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
