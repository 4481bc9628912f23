"""Glue between kopf and the reconciler: settings, per-operator state and one handler body.

``handlers.py`` only registers entry points; each one calls a function from here, which turns
kopf's kwargs into the reconciler's plain inputs and the reconciler's :class:`Outcome` back into
``patch.status`` writes, events and kopf's retry signals. The per-operator state (settings from the
environment, the API client, metrics) lives in kopf's ``memo`` as a :class:`Runtime`, never in
module globals, so several operators can run in one process (as the tests do).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from datasetprep_operator import builders
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.kube import Kube, api_client_from_environment
from datasetprep_operator.metrics import PHASES, Metrics
from datasetprep_operator.reconcile import Context, Resource, Seen, delete_data, reconcile

FINALIZER = "datasetprep.io/finalizer"
ANNOTATION_PREFIX = "datasetprep.io"


@dataclasses.dataclass
class Runtime:
    """What one running operator keeps between handler calls."""

    config: OperatorConfig
    metrics: Metrics
    ctx: Context


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings for this operator (called from the startup handler)."""
    # Our own finalizer name; kopf only adds it to objects that some deletion handler matches.
    settings.persistence.finalizer = FINALIZER
    # Handler progress in status.kopf (declared with x-kubernetes-preserve-unknown-fields in the CRD),
    # the last-handled spec in an annotation of ours.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    # Post the events we create explicitly (kopf.info/warn), not every log line.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "datasetprep-operator"
    # Watches end server-side every ~10 min and are re-established; a silent connection is dropped.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 120


def start(memo: kopf.Memo, settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter,
          phases: Mapping[str, Any]) -> Runtime:
    """Build the per-operator state; ``memo.config`` (set by ``cli.run``) wins over the environment.

    Args:
        phases: kopf's index of DatasetPreps by phase, read by the metrics at scrape time.
    """
    try:
        config = memo.get("config") or OperatorConfig.from_env()
    except ValueError as exc:  # a misconfiguration does not fix itself: stop instead of retrying
        raise kopf.PermanentError(f"invalid operator settings: {exc}") from exc
    configure_settings(settings)
    metrics = Metrics()
    metrics.count_phases_from(phase_counts(phases))
    if config.metrics_port:
        metrics.serve(config.metrics_port)
        logger.info(f"Serving Prometheus metrics on port {config.metrics_port}")
    kube = Kube(api_client_from_environment())
    return Runtime(config=config, metrics=metrics, ctx=Context(kube=kube, config=config, metrics=metrics))


def stop(runtime: Runtime | None) -> None:
    """Release what :func:`start` took (the metrics port, the API connection pool)."""
    if runtime is None:
        return
    runtime.metrics.stop()
    runtime.ctx.kube.api.close()


def job_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the Job index keeps of each of our Jobs: enough to tell its state and its owner."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "ownerReferences")},
        "spec": {"completions": (body.get("spec") or {}).get("completions")},
        "status": dict(body.get("status") or {}),
    }


def reusable_entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    """The reuse index's entry for a DatasetPrep: ``{(namespace, reuse key): summary}`` while it is
    Ready with an output others may point at, else nothing (which drops an earlier entry)."""
    key = builders.reusable_key(body)
    if key is None:
        return {}
    meta = body.get("metadata") or {}
    output = (body.get("status") or {}).get("output") or {}
    return {(meta.get("namespace"), key): {"name": meta.get("name"), "uid": meta.get("uid"),
                                           "reusedFrom": output.get("reusedFrom")}}


def pod_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the pod index keeps of each job pod: its name, phase and progress annotation."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {"name": meta.get("name"), "annotations": {
            k: v for k, v in annotations.items() if k == builders.PROGRESS_ANNOTATION}},
        "status": {"phase": (body.get("status") or {}).get("phase")},
    }


def handle_delete(runtime: Runtime, body: kopf.Body) -> None:
    """A DatasetPrep with ``deleteDataOnDelete`` is being deleted: clean up before kopf lets it go."""
    outcome = delete_data(Resource(body), runtime.ctx)
    for event in outcome.events:
        post = kopf.info if event.type == "Normal" else kopf.warn
        post(body, reason=event.reason, message=event.message)
    if outcome.error is not None:
        raise outcome.error


def handle(runtime: Runtime, body: kopf.Body, patch: kopf.Patch, jobs: kopf.Index | None,
           pods: kopf.Index | None, reusable: kopf.Index | None = None) -> None:
    """Reconcile one DatasetPrep and hand the result to kopf (status patch, events, retry signal)."""
    res = Resource(body)
    if res.meta.get("deletionTimestamp"):
        return  # being deleted: no new Job, no status (the delete handler, if any, does the rest)

    def seen_job(namespace: str, name: str) -> Mapping[str, Any] | None:
        return next(iter((jobs or {}).get((namespace, name), ())), None)

    def seen_pods(namespace: str, job: str) -> list[Mapping[str, Any]]:
        return list((pods or {}).get((namespace, job), ()))

    def seen_reusable(namespace: str, key: str) -> list[Mapping[str, Any]]:
        return list((reusable or {}).get((namespace, key), ()))

    try:
        outcome = reconcile(res, runtime.ctx, seen=Seen(job=seen_job, pods=seen_pods, reusable=seen_reusable))
    except Exception:
        runtime.metrics.reconcile_error()
        raise
    for key, value in outcome.status.items():
        patch.status[key] = value
    for event in outcome.events:
        post = kopf.info if event.type == "Normal" else kopf.warn
        post(body, reason=event.reason, message=event.message)
    if outcome.error is not None:
        if not isinstance(outcome.error, kopf.TemporaryError):  # waiting (e.g. for a claim) is no error
            runtime.metrics.reconcile_error()
        raise outcome.error


def phase_key(status: Mapping[str, Any] | None) -> str:
    """The phase a DatasetPrep is counted under in ``datasetprep_resources``."""
    phase = (status or {}).get("phase")
    return phase if phase in PHASES else "Unknown"


def phase_counts(index: Mapping[str, Any]) -> Callable[[], dict[str, int]]:
    """``{phase: count}`` from the phase index, safe to call from the metrics server's thread."""
    def counts() -> dict[str, int]:
        for _ in range(3):  # the index may change under us while the event loop updates it
            try:
                return {phase: len(store) for phase, store in list(index.items())}
            except RuntimeError:
                continue
        return {}
    return counts
