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
        if now - self.last >= self.interval or done:
            self.last = now
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
