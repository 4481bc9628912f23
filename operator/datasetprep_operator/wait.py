"""``datasetprep wait dsp/NAME`` (or ``dsb/NAME``): wait until a DatasetPrep or a DatasetBlend is Ready
*or* Stalled, say which, and exit accordingly -- what ``kubectl wait --for=condition=Ready`` cannot do
(it waits out its whole timeout on a failed run).

It runs where kubectl runs, with the same credentials (``$KUBECONFIG`` or in-cluster), and needs only
``get`` and ``watch`` on the resource. It reads conditions as ``kubectl wait`` does: a condition
counts only when its ``observedGeneration`` is the object's current generation, so a Ready left from
an older spec is not taken for the new run's. Both kinds follow kstatus (``Ready``, ``Reconciling``,
``Stalled``); a DatasetBlend has no phase or progress, so its waiting line is its Reconciling message
(e.g. which components it waits for).

Exit status: 0 Ready (its message on stdout); 1 Stalled (its reason and message on stderr), deleted
while waiting, or not found; 124 the timeout passed first (like ``timeout(1)``).
"""
from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from datasetprep.blendspec import BLEND_KIND, BLEND_PLURAL, BLEND_SHORT_NAMES, BLEND_SINGULAR
from datasetprep.spec import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from datasetprep_operator.blendstatus import read_blend_status
from datasetprep_operator.status import condition, read_status

EXIT_READY, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124



@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind ``datasetprep wait`` waits for: its API names and how its status is read."""

    kind: str
    plural: str
    names: frozenset[str]
    """What kubectl takes for it before the ``/`` (``dsp``, ``datasetprep``, ``datasetpreps.datasetprep.io``...)."""
    example: str


def _names(singular: str, plural: str, short: list[str]) -> frozenset[str]:
    return frozenset({*short, singular, plural, f"{singular}.{GROUP}", f"{plural}.{GROUP}"})


PREP = Kind(KIND, PLURAL, _names(SINGULAR, PLURAL, SHORT_NAMES), f"{SHORT_NAMES[0]}/wikitext")
BLEND = Kind(BLEND_KIND, BLEND_PLURAL, _names(BLEND_SINGULAR, BLEND_PLURAL, BLEND_SHORT_NAMES),
             f"{BLEND_SHORT_NAMES[0]}/pretrain-mix")
KINDS = (PREP, BLEND)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parse_timeout(text: str) -> float | None:
    """Seconds from ``6h``, ``1h30m``, ``90s``, ``45`` (seconds) or ``0`` (look once); None for
    ``none``/``-1`` (no limit).

    Raises:
        ValueError: anything else.
    """
    value = text.strip().lower()
    if value in ("none", "-1"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"--timeout {text!r}: give a duration such as 6h, 1h30m, 90s or 45 (seconds), "
                             "or none for no limit") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError(f"--timeout {text!r} is negative; use none for no limit")
    return seconds


def parse_target(text: str) -> tuple[Kind, str]:
    """The kind and name from ``dsp/NAME`` or ``dsb/NAME`` (or ``datasetprep/NAME``,
    ``datasetblends.datasetprep.io/NAME``, ...); a bare ``NAME`` is a DatasetPrep.

    Raises:
        ValueError: another kind, or no name.
    """
    prefix, _, name = text.rpartition("/")
    kind = next((k for k in KINDS if prefix.lower() in k.names), None) if prefix else PREP
    if kind is None:
        raise ValueError(f"{text!r}: datasetprep wait waits for DatasetPreps (dsp/NAME) and DatasetBlends "
                         f"(dsb/NAME), not {prefix}")
    if not name:
        raise ValueError(f"{text!r}: name the {kind.kind}, e.g. {kind.example}")
    return kind, name


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Where a DatasetPrep stands for its current generation."""

    done: bool
    ready: bool
    message: str
    """Ready: its message. Stalled: ``REASON: message``. Else: what it is doing, for the progress line."""


def verdict(body: Mapping[str, Any], kind: Kind = PREP) -> Verdict:
    """Ready=True or Stalled=True for the current generation ends the wait; anything else does not."""
    generation = (body.get("metadata") or {}).get("generation")
    status = read_blend_status(body.get("status")) if kind is BLEND else read_status(body.get("status"))
    ready, stalled = condition(status, "Ready"), condition(status, "Stalled")
    if ready is not None and ready.status == "True" and ready.observed_generation == generation:
        return Verdict(True, True, ready.message)
    if stalled is not None and stalled.status == "True" and stalled.observed_generation == generation:
        return Verdict(True, False, f"{stalled.reason}: {stalled.message}" if stalled.reason else stalled.message)
    if status.observed_generation != generation:
        return Verdict(False, False, "waiting for the operator to see the current spec")
    reconciling = condition(status, "Reconciling")
    what = (reconciling.message if reconciling is not None else "") or status.message or ""
    if kind is BLEND:
        return Verdict(False, False, what or "waiting")
    summary = status.progress.summary if status.progress and status.progress.summary else ""
    return Verdict(False, False, ", ".join(x for x in (status.phase or "Pending", summary, what) if x))


def default_namespace() -> str:
    """The current kubeconfig context's namespace (``$KUBECONFIG``, read now, as ``kube.py`` does),
    the pod's own in a cluster, else ``default``."""
    import os

    import kubernetes

    try:
        _, active = kubernetes.config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return namespace
    except (kubernetes.config.ConfigException, OSError):
        if _IN_CLUSTER_NAMESPACE.is_file():
            return _IN_CLUSTER_NAMESPACE.read_text().strip()
    return "default"


class Waiter:
    """Follows one DatasetPrep or DatasetBlend with a watch until it is Ready or Stalled."""

    def __init__(self, api: Any, namespace: str, name: str, *, kind: Kind = PREP, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, quiet: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace, self.name, self.kind = namespace, name, kind
        self.out, self.err, self.quiet, self.clock = out, err, quiet, clock
        self.last_line = ""

    def _get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.kind.plural,
                                                            self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _report(self, v: Verdict) -> None:
        if not self.quiet and v.message != self.last_line:
            self.last_line = v.message
            print(f"{self.name}: {v.message}", file=self.err, flush=True)

    def _finish(self, v: Verdict) -> int:
        if v.ready:
            print(f"{self.name}: Ready: {v.message}", file=self.out, flush=True)
            return EXIT_READY
        print(f"{self.name}: Stalled: {v.message}", file=self.err, flush=True)
        return EXIT_FAILED

    def run(self, timeout: float | None) -> int:
        """Wait up to ``timeout`` seconds (None: no limit; 0: look once)."""
        import kubernetes

        deadline = None if timeout is None else self.clock() + timeout
        body = self._get()
        if body is None:
            raise ValueError(f"{self.kind.kind} {self.name} not found in namespace {self.namespace}")
        while True:
            v = verdict(body, self.kind)
            if v.done:
                return self._finish(v)
            self._report(v)
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                print(f"{self.name}: timed out after {timeout:g}s, neither Ready nor Stalled: {v.message}",
                      file=self.err, flush=True)
                return EXIT_TIMEOUT
            watch = kubernetes.watch.Watch()
            chunk = 300 if left is None else max(1, min(300, int(left) + 1))
            try:
                for event in watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                          self.kind.plural, field_selector=f"metadata.name={self.name}",
                                          resource_version=body["metadata"]["resourceVersion"],
                                          timeout_seconds=chunk):
                    if event["type"] == "DELETED":
                        print(f"{self.name}: deleted while waiting", file=self.err, flush=True)
                        return EXIT_FAILED
                    if event["type"] in ("ADDED", "MODIFIED"):
                        body = event["object"]
                        v = verdict(body, self.kind)
                        if v.done or (deadline is not None and self.clock() >= deadline):
                            break
                        self._report(v)
            except kubernetes.client.exceptions.ApiException as exc:
                if exc.status != 410:  # a resourceVersion too old: start over from a fresh read
                    raise
            finally:
                watch.stop()
            fresh = self._get()
            if fresh is None:
                print(f"{self.name}: deleted while waiting", file=self.err, flush=True)
                return EXIT_FAILED
            body = fresh


def run(target: str, namespace: str | None, timeout: str, quiet: bool = False) -> int:
    """``datasetprep wait TARGET``; the exit status (see the module docstring)."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from datasetprep_operator.kube import api_client_from_environment

    kind, name = parse_target(target)
    seconds = parse_timeout(timeout)
    try:
        api = api_client_from_environment()
    except kubernetes.config.ConfigException as exc:
        raise ValueError(f"no cluster to ask: {exc} (set KUBECONFIG, as for kubectl)") from None
    namespace = namespace or default_namespace()
    try:
        return Waiter(api, namespace, name, kind=kind, quiet=quiet).run(seconds)
    except ApiException as exc:
        raise ValueError(f"cannot read {kind.kind} {name} in namespace {namespace}: HTTP {exc.status} {exc.reason}"
                         + (f" (the credentials need get and watch on {kind.plural})" if exc.status == 403 else "")
                         ) from None
    finally:
        api.close()
