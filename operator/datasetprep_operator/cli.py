"""Start the operator from Python: what ``datasetprep operator`` calls.

    from datasetprep_operator.cli import run
    run(namespaces=["ml"], all_namespaces=False, liveness="http://0.0.0.0:8080/healthz",
        metrics_port=9090, peering=None, standalone=True)

It is the programmatic equivalent of ``kopf run -m datasetprep_operator.handlers`` with our
settings and logging: one line per decision (``namespace/name: ...``) at INFO, as text or as JSON
(``log_format="json"`` or ``DATASETPREP_LOG_FORMAT=json``) for log shippers.
"""
from __future__ import annotations

import dataclasses
import importlib

import kopf

from datasetprep_operator.config import OperatorConfig

HANDLERS_MODULE = "datasetprep_operator.handlers"


def resolve_scope(config: OperatorConfig, namespaces: list[str] | None, all_namespaces: bool) -> tuple[bool, list[str]]:
    """``(clusterwide, namespaces)`` from the flags, else from ``DATASETPREP_WATCH_NAMESPACES``.

    Raises:
        ValueError: both namespaces and all_namespaces were asked for.
    """
    if namespaces and all_namespaces:
        raise ValueError("pass either namespaces or all_namespaces, not both")
    if namespaces:
        return False, list(namespaces)
    if all_namespaces or config.clusterwide:
        return True, []
    return False, list(config.watch_namespaces)


def configure_logging(log_format: str) -> None:
    """INFO to stderr, as text lines or JSON objects (with the DatasetPrep as ``object``)."""
    if log_format == "json":
        kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey="object")
    else:
        kopf.configure(log_format=kopf.LogFormat.FULL)


def run(
    namespaces: list[str] | None = None,
    all_namespaces: bool = False,
    liveness: str | None = None,
    metrics_port: int | None = None,
    peering: str | None = None,
    standalone: bool = True,
    *,
    priority: int | None = None,
    log_format: str | None = None,
) -> None:
    """Run the operator until it is signalled to stop (SIGINT/SIGTERM).

    Args:
        namespaces: namespaces to serve (kopf globs such as ``team-*`` allowed). None: see below.
        all_namespaces: serve every namespace. With neither this nor ``namespaces``, the scope comes
            from ``DATASETPREP_WATCH_NAMESPACES`` (unset: every namespace).
        liveness: kopf liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz``; None: none.
        metrics_port: port for Prometheus ``/metrics``; None: ``DATASETPREP_METRICS_PORT`` (unset: off).
        peering: name of the KopfPeering / ClusterKopfPeering object to coordinate replicas through
            (its CRDs and objects come with the Helm chart). Setting it turns peering on and
            ``standalone`` off: only one replica handles resources at a time.
        standalone: without ``peering``, run without any peering (a single replica).
        priority: kopf peering priority of this replica (the highest live one works, the others
            stand by); replicas of equal priority all pause. None: kopf's default (0).
        log_format: ``text`` or ``json``; None: ``DATASETPREP_LOG_FORMAT`` (unset: text).

    Raises:
        ValueError: contradictory arguments or a malformed ``DATASETPREP_*`` variable.
    """
    config = OperatorConfig.from_env()
    if metrics_port is not None:
        config = dataclasses.replace(config, metrics_port=metrics_port or None)
    if log_format is not None:
        config = dataclasses.replace(config, log_format=log_format)
    clusterwide, watched = resolve_scope(config, namespaces, all_namespaces)
    # The scope the operator really serves (the start-up handler turns namespace discovery off for
    # exact names, which kopf does not tell it).
    config = dataclasses.replace(config, watch_namespaces=() if clusterwide else tuple(watched))
    configure_logging(config.log_format)
    importlib.import_module(HANDLERS_MODULE)  # registers the handlers in kopf's default registry
    kopf.run(
        clusterwide=clusterwide,
        namespaces=watched,
        liveness_endpoint=liveness,
        peering_name=peering,
        standalone=False if peering else standalone,
        priority=priority,
        memo=kopf.Memo(config=config),
    )
