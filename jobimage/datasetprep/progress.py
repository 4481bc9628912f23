"""Progress reporting: a live bar on a terminal, plain periodic lines otherwise."""
from __future__ import annotations

import sys
import time

from .pipeline import format_rate


def _eta(sec: float | None) -> str:
    if sec is None:
        return "--:--"
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe(stats: dict) -> str:
    r = format_rate(stats)
    return (f"{r['percent']:5.1f}% | {stats['documents']:,} docs {r['docs_s']:,.0f}/s | "
            f"{stats['tokens']:,} tokens {r['tokens_s']:,.0f}/s | {r['mib_s']:.2f} MiB/s | "
            f"chunks {stats['chunks_done']}/{stats['chunks_total']} | ETA {_eta(r['eta'])}")


class PlainProgress:
    """One line every ``interval`` seconds (logs, CI, Kubernetes pods)."""

    def __init__(self, stream=None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self.last = 0.0

    def __call__(self, stats: dict) -> None:
        now = time.monotonic()
        done = stats["chunks_done"] == stats["chunks_total"]
        key = (stats["chunks_done"], stats["documents"])
        if (now - self.last >= self.interval or done) and key != getattr(self, "_key", None):
            self.last, self._key = now, key
            print(f"progress: {describe(stats)}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar with docs/s, tokens/s, MiB/s and ETA."""

    def __init__(self, description: str = "binarize"):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
        )
        self.task = self.p.add_task(description, total=1, info="")
        self.p.start()

    def __call__(self, stats: dict) -> None:
        r = format_rate(stats)
        info = (f"{stats['documents']:,} docs {r['docs_s']:,.0f}/s · {r['tokens_s']:,.0f} tok/s · "
                f"{r['mib_s']:.1f} MiB/s")
        self.p.update(self.task, total=max(stats["bytes_total"], 1), completed=stats["bytes_done"], info=info)

    def close(self) -> None:
        self.p.stop()


def make(enabled: bool = True, stream=None):
    if not enabled:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            return RichProgress()
        except Exception:  # pragma: no cover - rich missing or broken terminal
            pass
    return PlainProgress(stream)


class PodProgress:
    """Publishes progress on the job's own Pod as the annotation ``datasetprep.io/progress``
    (JSON), at most every ``interval`` seconds; the operator aggregates the pods of a run into
    ``status.progress``.  Needs only ``pods: get, patch`` in the namespace.  Failures to report are
    logged once and never fail the job."""

    ANNOTATION = "datasetprep.io/progress"

    def __init__(self, inner, api, name: str, namespace: str, shard: int | None, interval: float = 5.0):
        self.inner, self.api, self.name, self.namespace = inner, api, name, namespace
        self.shard, self.interval = shard, interval
        self.last = 0.0
        self.warned = False

    @classmethod
    def from_env(cls, inner, shard: int | None = None):
        import os

        name, ns = os.environ.get("DATASETPREP_POD_NAME"), os.environ.get("DATASETPREP_POD_NAMESPACE")
        if not name or not ns:
            return inner
        try:
            from kubernetes import client, config

            kubeconfig = os.environ.get("DATASETPREP_KUBECONFIG")
            if kubeconfig:
                api_client = config.new_client_from_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
            return cls(inner, client.CoreV1Api(api_client), name, ns, shard)
        except Exception as e:  # no API access: progress stays in the log only
            print(f"progress: not reporting to the API ({type(e).__name__}: {e})", file=sys.stderr)
            return inner

    def __call__(self, stats: dict) -> None:
        if self.inner:
            self.inner(stats)
        now = time.monotonic()
        final = stats["chunks_done"] == stats["chunks_total"]
        if now - self.last < self.interval and not final:
            return
        self.last = now
        r = format_rate(stats)
        doc = {"bytesDone": stats["bytes_done"], "bytesTotal": stats["bytes_total"], "documents": stats["documents"],
               "tokens": stats["tokens"], "tokensPerSecond": int(r["tokens_s"]), "chunksDone": stats["chunks_done"],
               "chunksTotal": stats["chunks_total"], "shard": self.shard, "time": time.time()}
        import json

        body = {"metadata": {"annotations": {self.ANNOTATION: json.dumps(doc, separators=(",", ":"))}}}
        try:
            self.api.patch_namespaced_pod(self.name, self.namespace, body)
        except Exception as e:
            if not self.warned:
                self.warned = True
                print(f"progress: cannot annotate pod {self.namespace}/{self.name}: {e}", file=sys.stderr)

    def close(self) -> None:
        if self.inner:
            self.inner.close()
