"""Why a run's pods do not start or keep failing: pure verdicts, each with the cause and the fix.

The reconciler asks while a Job is unfinished. Its inputs are what the watches saw (the Job, the
pods' summaries kept by the pod index) and, only where those say nothing, events: the Job's when it has
had no pod past a grace period (the Job controller says why it could not create one, e.g. ``FailedCreate``:
``serviceaccount "datasetprep-job" not found``), a pod's when it has waited in ``ContainerCreating`` past a
grace period (the kubelet says why only there, e.g. ``FailedMount``: ``secret "hf-token" not found``). A
verdict becomes ``Stalled=True`` with its reason and message; once the cause is gone, the next look returns
None and the run is reported as running again. A message holds no clock (no "for 47s"): the same trouble
reads the same at every look, so it is written and announced once.

Reasons:

* ``PodsNotCreated`` -- the Job has no pod: the Job controller's ``FailedCreate`` event (missing
  ServiceAccount, quota, admission), or no word at all past the grace period.
* ``ImagePullFailed`` -- the container image cannot be pulled (wrong name or tag, registry
  unreachable, missing pull secret).
* ``Unschedulable`` -- the scheduler finds no node (resources, node selectors, taints).
* ``PodConfigError`` -- a Secret or ConfigMap the pod needs is missing (e.g. the HF token Secret, which
  the pod mounts: the kubelet's ``FailedMount`` event), or the kubelet cannot build the container.
* ``PodPending`` -- a pod is Pending past :data:`PENDING_DEADLINE_SECONDS` with no known reason
  (often a volume that does not mount); the kubelet's latest warning about it is quoted.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: A Job without a pod this long after its creation is looked into (its events are read).
CREATE_GRACE_SECONDS = 10.0
#: A pod with a known problem (image pull, unschedulable, config) is reported once it is this old:
#: long enough for a registry hiccup or an autoscaler's first reaction, short enough for "within a minute".
TROUBLE_GRACE_SECONDS = 15.0
#: A pod still Pending this long after it was scheduled (else after its creation), without a known reason,
#: is reported.
PENDING_DEADLINE_SECONDS = 45.0
#: A Job still without a pod this long, and no event saying why, is reported: a loaded Job controller can
#: take tens of seconds to create 100 pods (bench/bench_load.py), which is no trouble to stall on.
SILENT_NO_POD_SECONDS = 45.0
#: At most this many stuck pods of a run have their events read at one look (a shard Job may have hundreds,
#: stuck for one reason).
POD_EVENT_READS = 3
#: How often a run with a verdict (or a Job still without pods) is looked at again.
RECHECK_SECONDS = 15.0

_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                           "RegistryUnavailable", "SignatureValidationFailed"})
_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_BACK_OFF = re.compile(r'Back-off pulling image "[^"]*": (\w+): (.+)', re.S)
#: What the kubelet says (a ``FailedMount`` event) when a pod's Secret or ConfigMap volume has no object.
_MISSING_OBJECT = re.compile(r'\b(?:secret|configmap) "[^"]+" not found')


@dataclasses.dataclass(frozen=True)
class Trouble:
    """A reason the run cannot proceed, for ``Stalled=True``."""

    reason: str
    message: str


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp as the API server writes them, or None."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _age(obj: Mapping[str, Any], now: float) -> float:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return 0.0 if created is None else now - created


def _waiting(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """``state.waiting`` of every (init) container of the pod that waits."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            yield waiting


def _pending_age(pod: Mapping[str, Any], now: float) -> float:
    """Seconds the pod has waited on its node: since it was scheduled (a pod that waited its turn for a node
    is not late for that), else since its creation."""
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
            scheduled = parse_time(cond.get("lastTransitionTime"))
            if scheduled is not None:
                return now - scheduled
    return _age(pod, now)


def _unschedulable(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return cond
    return None


def _stuck(pods: Sequence[Mapping[str, Any]], now: float) -> list[Mapping[str, Any]]:
    """Pods still Pending past :data:`TROUBLE_GRACE_SECONDS` (not being deleted), by name."""
    stuck = [p for p in pods if (p.get("status") or {}).get("phase") in (None, "Pending")
             and not (p.get("metadata") or {}).get("deletionTimestamp") and _age(p, now) >= TROUBLE_GRACE_SECONDS]
    return sorted(stuck, key=lambda p: (p.get("metadata") or {}).get("name") or "")


def _said(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's own status says why it waits (a known waiting reason, or unschedulable)."""
    known = _PULL_REASONS | _CONFIG_REASONS
    return _unschedulable(pod) is not None or any(w.get("reason") in known for w in _waiting(pod))


def pods_needing_events(pods: Sequence[Mapping[str, Any]], *, now: float) -> list[Mapping[str, Any]]:
    """The stuck pods whose status does not say why (e.g. ``ContainerCreating`` while a volume does not
    mount): their events do (:func:`pod_trouble`'s ``events``)."""
    return [p for p in _stuck(pods, now) if not _said(p)]


def _latest_warning(events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    warnings = [e for e in events if e.get("type") == "Warning" and e.get("message")]
    return max(warnings, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", default=None)


def _pulling(events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the kubelet's latest word about the pod is that it is pulling the image (a big image takes
    minutes: no trouble)."""
    latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", default=None)
    return latest is not None and latest.get("reason") == "Pulling"


def _pull_error(reason: str, detail: str) -> tuple[str, str]:
    """The pull error itself: the kubelet alternates ``ErrImagePull: <error>`` with ``ImagePullBackOff:
    Back-off pulling image "X": ErrImagePull: <error>`` between attempts; both read as the first, so the
    verdict does not change with the attempt the look happens to see."""
    m = _BACK_OFF.match(detail) if reason == "ImagePullBackOff" else None
    return (m.group(1), m.group(2).strip()) if m else (reason, detail)


def _config_trouble(name: str, reason: str, detail: str) -> Trouble:
    return Trouble("PodConfigError", (
        f"pod {name} cannot start its container ({reason}: {detail or 'no detail'}); a Secret or "
        "ConfigMap the pod needs is missing (spec.hfTokenSecretRef names the token's Secret): "
        "create it and the pod starts by itself"))


def pod_trouble(pods: Sequence[Mapping[str, Any]], *, now: float, image: str,
                events: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Trouble | None:
    """What keeps the run's pods from running, judged from their watched state; None if nothing does.

    Args:
        pods: the Job's pods (summaries from the pod index; finished ones are ignored).
        now: the current time (seconds since the epoch).
        image: the job image, named in the image-pull message.
        events: the events of the pods :func:`pods_needing_events` named, by pod name.
    """
    for pod in _stuck(pods, now):
        name = (pod.get("metadata") or {}).get("name") or ""
        for state in _waiting(pod):
            reason, detail = state.get("reason") or "", (state.get("message") or "").strip()
            if reason in _PULL_REASONS:
                reason, detail = _pull_error(reason, detail)
                return Trouble("ImagePullFailed", (
                    f"pod {name} cannot pull its image {image} ({reason}{': ' + detail if detail else ''}); "
                    "check the image name and tag (spec.image, else the operator's DATASETPREP_JOB_IMAGE, the "
                    "chart's jobImage), that the nodes reach the registry, and the pull secret of the job's "
                    "ServiceAccount; the run starts by itself once the image can be pulled"))
            if reason in _CONFIG_REASONS:
                return _config_trouble(name, reason, detail)
        cond = _unschedulable(pod)
        if cond is not None:
            return Trouble("Unschedulable", (
                f"pod {name} cannot be scheduled: {(cond.get('message') or 'no node fits').strip()}; lower "
                "spec.resources, or make room in the cluster (nodes, quotas, taints); the pod starts by "
                "itself once a node fits"))
        pod_events = (events or {}).get(name, ())
        warning = _latest_warning(pod_events)
        said = f"{warning.get('reason')}: {warning['message'].strip()}" if warning else ""
        if warning and _MISSING_OBJECT.search(warning["message"]):
            return _config_trouble(name, warning.get("reason") or "Warning", warning["message"].strip())
        if _pending_age(pod, now) >= PENDING_DEADLINE_SECONDS and not (warning is None and _pulling(pod_events)):
            cause = f"the kubelet says {said}" if said else "a volume may not mount or the node may be slow to start it"
            return Trouble("PodPending", (f"pod {name} has been Pending for more than {PENDING_DEADLINE_SECONDS:g}s; "
                                          f"{cause}: see `kubectl describe pod {name}` (its events say why)"))
    return None


def create_trouble(job: Mapping[str, Any], events: Sequence[Mapping[str, Any]], *, service_account: str,
                   namespace: str, now: float) -> Trouble | None:
    """Why a Job has no pod, from its events (the newest ``FailedCreate`` wins); None while no event says
    why and the Job is younger than :data:`SILENT_NO_POD_SECONDS` (a busy Job controller, not trouble).

    Args:
        job: the Job.
        events: the Job's events (core/v1, as the API server returns them).
        service_account: the job pods' ServiceAccount (named in the fix).
        namespace: the Job's namespace.
        now: seconds since the epoch.
    """
    name = (job.get("metadata") or {}).get("name")
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        if _age(job, now) < SILENT_NO_POD_SECONDS:
            return None
        return Trouble("PodsNotCreated", (
            f"Job {name} has created no pod yet and no event says why; see `kubectl describe job {name}`"))
    latest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    detail = (latest.get("message") or "").strip()
    lowered = detail.lower()
    if "serviceaccount" in lowered and "not found" in lowered:
        fix = (f"create the ServiceAccount {service_account} in namespace {namespace} (the Helm chart creates it "
               f"in every namespace of jobServiceAccount.namespaces: add {namespace} there and upgrade), or use a "
               "namespace that has it")
    elif "exceeded quota" in lowered:
        fix = "raise the namespace's ResourceQuota, or lower spec.resources"
    elif "podsecurity" in lowered or "pod security" in lowered:
        fix = "the namespace's Pod Security admission refuses the pod: relax its level or use another namespace"
    else:
        fix = "fix what the message names"
    return Trouble("PodsNotCreated", (f"Job {name} cannot create its pod: {detail}; {fix}; the Job controller "
                                      "retries by itself (within a minute), and the run then proceeds"))


def job_needs_events(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, now: float) -> bool:
    """True when the Job has had no pod for longer than the grace period (its events say why)."""
    status = job.get("status") or {}
    if pods or status.get("active") or status.get("succeeded") or status.get("failed") or status.get("ready"):
        return False
    return _age(job, now) >= CREATE_GRACE_SECONDS


def next_look(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, now: float) -> float | None:
    """Seconds until a look could find trouble that is not there yet (a grace period or the Pending
    deadline running out), else None: nothing to wait for."""
    if not pods:
        left = CREATE_GRACE_SECONDS - _age(job, now)
        return max(left, 1.0) if left > 0 else RECHECK_SECONDS
    waits = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            continue
        age, pending = _age(pod, now), _pending_age(pod, now)
        if age < TROUBLE_GRACE_SECONDS:
            waits.append(TROUBLE_GRACE_SECONDS - age)
        elif pending < PENDING_DEADLINE_SECONDS:
            waits.append(min(PENDING_DEADLINE_SECONDS - pending, RECHECK_SECONDS))
        else:
            waits.append(RECHECK_SECONDS)
    return max(min(waits), 1.0) if waits else None
