"""Progress displays: a live bar on a terminal, plain periodic lines otherwise, and the job pod's own
report to the operator (:class:`LogProgress`). Each is a callable that takes a :class:`~datasetprep.stats.Stats`."""
from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from .stats import Stats


class Reporter(Protocol):
    def __call__(self, stats: Stats) -> None: ...
    def close(self) -> None: ...


def _eta(sec: float | None) -> str:
    if sec is None:
        return "--:--"
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe(stats: Stats) -> str:
    r = stats.rates()
    return (f"{r.percent:5.1f}% | {stats.documents:,} docs {r.docs_s:,.0f}/s | "
            f"{stats.tokens:,} tokens {r.tokens_s:,.0f}/s | {r.mib_s:.2f} MiB/s | "
            f"chunks {stats.chunks_done}/{stats.chunks_total} | ETA {_eta(r.eta)}")


class PlainProgress:
    """One line every ``interval`` seconds (logs, CI, Kubernetes pods)."""

    def __init__(self, stream=None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self.last = 0.0
        self._key: tuple[int, int] | None = None

    def __call__(self, stats: Stats) -> None:
        now = time.monotonic()
        key = (stats.chunks_done, stats.documents)
        if (now - self.last >= self.interval or stats.finished) and key != self._key:
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

    def __call__(self, stats: Stats) -> None:
        r = stats.rates()
        info = f"{stats.documents:,} docs {r.docs_s:,.0f}/s · {r.tokens_s:,.0f} tok/s · {r.mib_s:.1f} MiB/s"
        self.p.update(self.task, total=max(stats.bytes_total, 1), completed=stats.bytes_done, info=info)

    def close(self) -> None:
        self.p.stop()


def make(enabled: bool = True, stream=None) -> Reporter | None:
    if not enabled:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress()
    return PlainProgress(stream)


class LogProgress:
    """The job pod's report to the operator: its :class:`~datasetprep.contract.ProgressRecord` as one
    ``datasetprep-progress {json}`` line (:meth:`~datasetprep.contract.ProgressRecord.to_log_line`) on
    ``stream`` at most every ``interval`` seconds, and once at the end.

    Job pods have no API credentials: the operator reads these lines from the tail of the pod's log
    (the kubelet's log API) and folds the newest one of each pod into ``status.progress``.
    """

    def __init__(self, inner: Reporter | None, stream: TextIO, shard: int | None, interval: float = 5.0):
        self.inner, self.stream, self.shard, self.interval = inner, stream, shard, interval
        self.last: float | None = None

    def __call__(self, stats: Stats) -> None:
        if self.inner:
            self.inner(stats)
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval and not stats.finished:
            return
        self.last = now
        print(stats.record(self.shard).to_log_line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.inner:
            self.inner.close()
