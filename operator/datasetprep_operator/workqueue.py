"""A keyed work queue: each key is worked on by one worker at a time, however often it is added.

What controller-runtime's workqueue gives Go operators, on asyncio: watch events of a DatasetPrep,
its Jobs and its pods all *add* the DatasetPrep's key; a key added again while it waits is one
item, a key added while it is being worked on is worked on once more afterwards (so the newest
state is always seen), and a key is never worked on by two workers at once. The work itself is
synchronous (API calls through the kubernetes client) and runs in a thread pool of ``concurrency``
threads, so a slow API server delays a resource, not the whole operator.

The work function returns how many seconds later the key wants another look (None: only when an
event adds it); an exception is logged and retried with a per-key exponential back-off.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Hashable

logger = logging.getLogger(__name__)

#: Back-off after a failed work call: 1, 2, 4, ... seconds, at most this.
MAX_BACKOFF_SECONDS = 60.0


class WorkQueue:
    """Keys to work on, de-duplicated, one worker per key at a time, delayed adds merged."""

    def __init__(self, work: Callable[[Hashable], float | None], *, concurrency: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._work = work
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._pending: set[Hashable] = set()  # in the queue
        self._running: set[Hashable] = set()  # being worked on
        self._dirty: set[Hashable] = set()  # added while being worked on
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Hashable, int] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency,
                                                               thread_name_prefix="reconcile")
        self._workers = [self._loop.create_task(self._worker(), name=f"reconcile worker {i}")
                         for i in range(concurrency)]

    def add(self, key: Hashable, delay: float | None = None) -> None:
        """Work on ``key`` soon (or in ``delay`` seconds; an earlier add wins). Call from the loop's thread."""
        if delay is not None and delay > 0:
            when = self._loop.time() + delay
            current = self._timers.get(key)
            if current is not None and current[0] <= when:
                return
            if current is not None:
                current[1].cancel()
            self._timers[key] = (when, self._loop.call_at(when, self._fire, key))
            return
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def forget(self, key: Hashable) -> None:
        """Drop a delayed look at ``key`` (e.g. the resource is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._pending) + len(self._running)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._running.add(key)
            delay: float | None = None
            try:
                delay = await self._loop.run_in_executor(self._executor, self._work, key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed look is retried, never the end of the worker
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1))
                logger.exception(f"reconciling {key} failed; retrying in {delay:.0f}s")
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add(key, delay)

    async def stop(self) -> None:
        """Stop the workers and timers; let the work calls in flight finish."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._loop.run_in_executor(None, lambda: self._executor.shutdown(wait=True))
