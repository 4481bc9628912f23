"""Prometheus metrics of the operator, in a registry of its own (one per running operator).

A private :class:`prometheus_client.CollectorRegistry` instead of the process-global one keeps two
operators in one process (tests restart the operator in-process) from colliding, and keeps the
endpoint free of whatever else the process registered.

Exposed:

* ``datasetprep_resources{phase}`` -- DatasetPreps served by this operator, by ``status.phase``
  (``Unknown`` before the first status), counted from kopf's in-memory index at scrape time.
* ``datasetprep_runs_started_total``, ``datasetprep_runs_succeeded_total``,
  ``datasetprep_runs_failed_total`` -- Jobs created and runs finished by this operator.
* ``datasetprep_tokens_produced_total`` -- tokens in the outputs of succeeded runs.
* ``datasetprep_reconcile_errors_total`` -- handler calls that raised.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


PhaseCounts = Callable[[], Mapping[str, int]]


class _PhaseCollector(Collector):
    """Counts resources by phase at scrape time, from a live source (the operator's phase index)."""

    def __init__(self) -> None:
        self.source: PhaseCounts = dict

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict(self.source())
        family = GaugeMetricFamily("datasetprep_resources", "DatasetPreps by status.phase.", labels=["phase"])
        for phase in PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class Metrics:
    """The operator's metrics and, optionally, the HTTP server that exposes them."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._phases = _PhaseCollector()
        self.registry.register(self._phases)
        counter = lambda name, doc: prometheus_client.Counter(name, doc, registry=self.registry)  # noqa: E731
        self.runs_started = counter("datasetprep_runs_started", "Jobs created for DatasetPreps.")
        self.runs_succeeded = counter("datasetprep_runs_succeeded", "Runs whose output was published.")
        self.runs_failed = counter("datasetprep_runs_failed", "Runs that failed.")
        self.tokens_produced = counter("datasetprep_tokens_produced", "Tokens written by succeeded runs.")
        self.reconcile_errors = counter("datasetprep_reconcile_errors", "Handler calls that raised.")
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- what the reconciler and handlers report
    def run_started(self) -> None:
        self.runs_started.inc()

    def run_succeeded(self, tokens: int | None) -> None:
        self.runs_succeeded.inc()
        if tokens:
            self.tokens_produced.inc(tokens)

    def run_failed(self) -> None:
        self.runs_failed.inc()

    def reconcile_error(self) -> None:
        self.reconcile_errors.inc()

    def count_phases_from(self, source: PhaseCounts) -> None:
        """Read ``datasetprep_resources`` from ``source() -> {phase: count}`` at every scrape."""
        self._phases.source = source

    # -- exposition
    def render(self) -> str:
        """The text exposition (what ``/metrics`` serves)."""
        return prometheus_client.generate_latest(self.registry).decode()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``addr:port`` in a background thread until :meth:`stop`."""
        self._server, self._thread = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)

    def stop(self) -> None:
        """Stop the HTTP server, if one runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
