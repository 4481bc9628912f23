"""How far a run is: the counters the pool updates, and the figures shown from them."""
from __future__ import annotations

import dataclasses
import time

from .contract import ProgressRecord


@dataclasses.dataclass
class Rates:
    """Derived figures for progress displays (of this attempt's own work)."""

    elapsed: float
    mib_s: float
    docs_s: float
    tokens_s: float
    percent: float
    eta: float | None
    """Seconds left, or None while nothing has been done yet."""


@dataclasses.dataclass
class Stats:
    """Counters of one run (or one shard of it). Progress callbacks get a copy (:meth:`snapshot`).

    Chunks an earlier attempt finished (``*_reused``) count as done -- no dip in the figures after a
    restart -- but not in this attempt's rates: they took no time now.
    """

    started: float = dataclasses.field(default_factory=time.time)
    bytes_total: int = 0
    chunks_total: int = 0
    bytes_done: int = 0
    documents: int = 0
    tokens: int = 0
    chunks_done: int = 0
    chunks_reused: int = 0
    bytes_reused: int = 0
    documents_reused: int = 0
    tokens_reused: int = 0

    def add(self, nbytes: int, documents: int, tokens: int) -> None:
        """Work done now (reported by the workers as they go)."""
        self.bytes_done += nbytes
        self.documents += documents
        self.tokens += tokens

    def reuse(self, nbytes: int, documents: int, tokens: int) -> None:
        """A chunk an earlier attempt finished: done, but not in the rates."""
        self.add(nbytes, documents, tokens)
        self.chunks_done += 1
        self.chunks_reused += 1
        self.bytes_reused += nbytes
        self.documents_reused += documents
        self.tokens_reused += tokens

    @property
    def finished(self) -> bool:
        return self.chunks_done == self.chunks_total

    def snapshot(self) -> "Stats":
        return dataclasses.replace(self)

    def rates(self, now: float | None = None) -> Rates:
        elapsed = max((time.time() if now is None else now) - self.started, 1e-6)
        total = self.bytes_total or 1
        rate = (self.bytes_done - self.bytes_reused) / elapsed
        return Rates(elapsed=elapsed, mib_s=rate / 2**20, docs_s=(self.documents - self.documents_reused) / elapsed,
                     tokens_s=(self.tokens - self.tokens_reused) / elapsed,
                     percent=min(100.0, 100.0 * self.bytes_done / total),
                     eta=(total - self.bytes_done) / rate if rate > 0 else None)

    def record(self, shard: int | None) -> ProgressRecord:
        """The progress record a job pod publishes."""
        return ProgressRecord(bytes_done=self.bytes_done, bytes_total=self.bytes_total, documents=self.documents,
                              tokens=self.tokens, tokens_per_second=int(self.rates().tokens_s),
                              chunks_done=self.chunks_done, chunks_total=self.chunks_total, shard=shard,
                              time=time.time())
