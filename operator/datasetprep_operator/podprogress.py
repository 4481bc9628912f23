"""Live progress of a run's job pods, read from their logs.

Job pods have no API credentials (docs/security.md), so they cannot write anything on the API
server. Each one prints its :class:`~datasetprep.contract.ProgressRecord` as a
``datasetprep-progress {json}`` line at most every few seconds (``datasetprep.progress.LogProgress``).
:class:`ProgressLogs` reads the tail of each pod's log through the kubelet's log API (``tailLines``
and ``limitBytes`` keep every read small) and remembers the newest record of each pod, so that a
finished pod's last record still counts and its log is read once. *When* to read is the reconciler's
decision: only while a run is Running and a status write is due (``reconcile._live_progress``).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from datasetprep.contract import ProgressRecord

#: Lines of a pod's log read per look: the job prints a record every 5 s, among a few other lines.
LOG_TAIL_LINES = 20
#: Bytes of a pod's log read per look, at most (a record line is about 250 bytes).
LOG_LIMIT_BYTES = 16 * 1024


class LogReader(Protocol):
    def pod_log_tail(self, namespace: str, name: str, lines: int, *, limit_bytes: int | None = None,
                     container: str | None = None) -> str | None: ...


def latest_record(text: str) -> ProgressRecord | None:
    """The last progress record in a piece of log, if any."""
    for line in reversed(text.splitlines()):
        record = ProgressRecord.from_log_line(line)
        if record is not None:
            return record
    return None


class ProgressLogs:
    """The newest progress record of each job pod, by run (the DatasetPrep's uid).

    A run's entries go when the run is forgotten (:meth:`forget`, once it is no longer Running), and
    a pod's when it is no longer listed, so a long-running operator keeps nothing of old runs.
    """

    def __init__(self, container: str | None = None) -> None:
        self.container = container
        self._runs: dict[str, dict[str, tuple[ProgressRecord | None, bool]]] = {}
        self._guard = threading.Lock()

    def read(self, kube: LogReader, namespace: str, run: str, pods: Iterable[Mapping[str, Any]]) -> list[ProgressRecord]:
        """Read the logs of ``pods`` that may say something new; the newest record of each pod.

        A Running pod's log tail is read every time; a finished pod's once (its log does not change);
        a Pending pod has printed nothing yet. A read that fails keeps the record seen before.
        """
        with self._guard:
            known = self._runs.get(run, {})
        now: dict[str, tuple[ProgressRecord | None, bool]] = {}
        for pod in pods:
            name = (pod.get("metadata") or {}).get("name")
            phase = (pod.get("status") or {}).get("phase")
            if not name:
                continue
            record, final = known.get(name, (None, False))
            if not final and phase in ("Running", "Succeeded", "Failed"):
                text = kube.pod_log_tail(namespace, name, LOG_TAIL_LINES, limit_bytes=LOG_LIMIT_BYTES,
                                         container=self.container)
                record = latest_record(text or "") or record
                final = phase != "Running" and text is not None
            now[name] = (record, final)
        with self._guard:
            self._runs[run] = now
        return [record for record, _ in now.values() if record is not None]

    def forget(self, run: str) -> None:
        """Drop what is known of a run's pods."""
        with self._guard:
            self._runs.pop(run, None)
