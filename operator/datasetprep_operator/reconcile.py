"""Level-triggered reconciliation of one DatasetPrep.

:func:`reconcile` looks at the resource, its spec and its status, at the Jobs for the current
spec and (once a Job is over) at its pods, and returns what the status should become plus the
events worth posting. Every handler -- create, resume, update and the periodic timer -- calls the
same function, so it must be safe to run any number of times, from any starting point:

* The Job for a spec is named ``<name>-<spec hash>``. If it exists it is adopted, never recreated;
  a 409 on create is read back and checked, never taken on trust.
* ``spec.shards > 1`` runs in two stages: that Job is an Indexed Job with one pod per shard, and once
  it is Complete a merge Job ``<name>-<spec hash>-merge`` assembles and publishes the output. Each
  stage is found by name before anything is created, so a restarted operator picks up either.
* ``spec.reuse: IfIdentical``: before a run's first Job is created, another Ready DatasetPrep of the
  namespace with the same reuse key (``builders.reuse_key``) is looked for; if there is one, its
  output is pointed at and no Job is launched.
* The training ConfigMap is written only after the run succeeded, from the job's own report.
* A spec change starts a new run; the previous output and ConfigMap stay as they are until the new
  run succeeds. Unfinished Jobs of older specs are deleted at once, finished ones after the switch.
* An invalid spec, a failed Job or a foreign object in the way is final for that generation
  (``Stalled``): only a spec change starts over.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from datasetprep.spec import DatasetPrepSpec, format_validation_error, parse_spec
from datasetprep_operator import builders
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.kube import Kube, translate_api_errors

ACTIVE_PHASES = (None, "Pending", "Running")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
CLAIM_RETRY_SECONDS = 10
#: Live progress figures (bytes, tokens, rate, ETA) are written at most this often per resource.
PROGRESS_INTERVAL_SECONDS = 5.0


def utcnow() -> str:
    """RFC 3339 timestamp, as Kubernetes writes them."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the DatasetPrep."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    """What one reconciliation decided: a status merge-patch, events, and maybe an error to raise."""

    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)
    error: Exception | None = None


class MetricsSink:
    """What the reconciler reports to metrics (``metrics.Metrics`` implements it; tests may not)."""

    def run_started(self) -> None: ...
    def run_succeeded(self, tokens: int | None) -> None: ...
    def run_failed(self) -> None: ...


@dataclasses.dataclass
class Context:
    """Everything a reconciliation needs besides the resource."""

    kube: Kube
    config: OperatorConfig
    metrics: MetricsSink = dataclasses.field(default_factory=MetricsSink)
    now: Callable[[], str] = utcnow
    locks: "Locks" = dataclasses.field(default_factory=lambda: Locks())
    clock: Callable[[], float] = time.monotonic
    """Seconds, for throttling the progress writes."""
    progress_interval: float = PROGRESS_INTERVAL_SECONDS
    progress_written: dict[str, float] = dataclasses.field(default_factory=dict)
    """When live progress figures were last written, by resource uid (running resources only)."""


class _Lock:
    """A lock that weak references can point at (``threading.Lock`` objects cannot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Locks:
    """One lock per resource uid: the timer and the change handlers run in different threads.

    Entries live only while some thread holds or waits for them, so deleted resources leave nothing.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()

    def __call__(self, uid: str) -> _Lock:
        with self._guard:
            lock = self._locks.get(uid)
            if lock is None:
                lock = self._locks[uid] = _Lock()
            return lock


@dataclasses.dataclass(frozen=True)
class Resource:
    """The DatasetPrep as one handler call saw it."""

    body: Mapping[str, Any]

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.body["metadata"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def namespace(self) -> str:
        return self.meta["namespace"]

    @property
    def uid(self) -> str:
        return self.meta["uid"]

    @property
    def generation(self) -> int | None:
        return self.meta.get("generation")

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}


def needs_watching(status: Mapping[str, Any]) -> bool:
    """True while a run may still change state (the timer only runs for these)."""
    return (status or {}).get("phase") in ACTIVE_PHASES


@dataclasses.dataclass(frozen=True)
class Seen:
    """What the operator's watches last saw (kopf indexes).

    A Job found here saves a GET; absence proves nothing (a watch may lag), so it is checked. A
    reusable DatasetPrep found here is read back before it is trusted.

    Attributes:
        job: our Jobs by ``(namespace, name)``.
        pods: their pods by ``(namespace, job name)``.
        reusable: Ready DatasetPreps by ``(namespace, reuse key)``, as ``{"name", "uid", "reusedFrom"}``.
    """

    job: Callable[[str, str], "Mapping[str, Any] | None"] = lambda namespace, name: None
    pods: Callable[[str, str], "list[Mapping[str, Any]]"] = lambda namespace, job: []
    reusable: Callable[[str, str], "list[Mapping[str, Any]]"] = lambda namespace, key: []


def reconcile(res: Resource, ctx: Context, *, seen: Seen | None = None) -> Outcome:
    """Bring one DatasetPrep one step closer to its spec; see the module docstring.

    Args:
        res: the resource as the handler received it.
        ctx: API access, settings, metrics and the clock.
        seen: the watched Jobs, pods and reusable outputs.
    """
    with ctx.locks(res.uid):
        outcome = _reconcile(res, ctx, seen or Seen())
        if outcome.status.get("phase") != "Running":
            ctx.progress_written.pop(res.uid, None)
    outcome.status = status_changes(res.status, outcome.status)
    return outcome


def _reconcile(res: Resource, ctx: Context, seen: Seen) -> Outcome:
    try:
        spec = parse_spec(dict(res.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        return Outcome(
            status=builders.failed_status(res.status, reason="InvalidSpec", message=message,
                                          generation=res.generation, now=ctx.now()),
            error=kopf.PermanentError(f"invalid spec: {message}"),
        )
    jobs = builders.RunJobs.for_spec(res.name, spec)
    status = res.status
    if status.get("jobName") in jobs.names and status.get("phase") in ("Succeeded", "Failed"):
        return Outcome(status=builders.observed_status(status, generation=res.generation))
    key = builders.reuse_key(spec)
    if _reused_for_this_generation(res, key):
        return Outcome()
    outcome = _run(res, ctx, seen, spec, jobs, key)
    outcome.status["reuseKey"] = key
    return outcome


def _reused_for_this_generation(res: Resource, key: str) -> bool:
    """This generation already points at another resource's output (a spec change looks again)."""
    status = res.status
    return (status.get("phase") == "Succeeded" and status.get("observedGeneration") == res.generation
            and status.get("reuseKey") == key and bool((status.get("output") or {}).get("reusedFrom")))


def _run(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: builders.RunJobs,
         key: str) -> Outcome:
    """Find (or start) the current run's Jobs and report on them; or reuse an identical output."""
    events: list[Event] = []
    job = _find_job(res, ctx, seen, jobs.main)
    merge = _find_job(res, ctx, seen, jobs.merge) if job is None and jobs.merge else None
    if job is None and merge is None:
        if spec.reuse == "IfIdentical":
            found = _reusable_source(res, ctx, seen, key)
            if found is not None:
                return _reuse(res, ctx, spec, *found)
        missing = _missing_claims(res, ctx, spec)
        if missing:
            message = (f"PersistentVolumeClaim {', '.join(missing)} not found in namespace {res.namespace}; "
                       f"the Job starts once it exists")
            fresh = res.status.get("message") != message
            return Outcome(
                status=builders.waiting_status(res.status, reason="WaitingForClaim", message=message,
                                               generation=res.generation, now=ctx.now()),
                events=[Event("Warning", "WaitingForClaim", message)] if fresh else [],
                error=kopf.TemporaryError(message, delay=CLAIM_RETRY_SECONDS))
        manifest = builders.build_job(spec, parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                                      config=ctx.config, indexed=jobs.merge is not None)
        job, created = _create_job(res, ctx, manifest, keep=jobs.names, first_stage=True)
        if created:
            what = f"Indexed Job {jobs.main} ({spec.shards} shards)" if jobs.merge else f"Job {jobs.main}"
            events.append(Event("Normal", "JobCreated", f"Created {what}"))
    if job is not None:
        if not _owned_by(job, res.uid):
            return _job_conflict(res, ctx, jobs.main, events)
        state = job_state(job)
        if state == "running":
            return _running(res, ctx, seen, spec, jobs, job, shard_job=job, events=events)
        if state == "failed":
            return _job_failed(res, ctx, job, jobs.main, events)
        if jobs.merge is None:
            return _job_succeeded(res, ctx, spec, job, jobs.main, events, keep=jobs.names)
        # Every shard is done: stage 2 assembles and publishes.
        merge = _find_job(res, ctx, seen, jobs.merge)
        if merge is None:
            manifest = builders.build_job(spec, parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                                          config=ctx.config, merge=True)
            merge, created = _create_job(res, ctx, manifest, keep=jobs.names, first_stage=False)
            if created:
                events.append(Event("Normal", "MergeJobCreated",
                                    f"All {spec.shards} shards of Job {jobs.main} are done; created Job "
                                    f"{jobs.merge} to "
                                    + ("check the shard datasets and write their blend list" if spec.keep_shards
                                       else "assemble and publish the output")))
    if jobs.merge is None or merge is None:  # unreachable: each path above returned or has the merge Job
        raise kopf.TemporaryError(f"no Job found or created for {jobs.main}", delay=1)
    if not _owned_by(merge, res.uid):
        return _job_conflict(res, ctx, jobs.merge, events)
    state = job_state(merge)
    if state == "running":
        return _running(res, ctx, seen, spec, jobs, merge, shard_job=job, events=events)
    if state == "failed":
        return _job_failed(res, ctx, merge, jobs.merge, events)
    return _job_succeeded(res, ctx, spec, merge, jobs.merge, events, keep=jobs.names)


def delete_data(res: Resource, ctx: Context) -> Outcome:
    """``spec.deleteDataOnDelete``: the DatasetPrep is being deleted; delete its dataset first.

    Its run Jobs are stopped (and their pods gone) before a clean-up Job ``<name>-delete-data``
    deletes the files its manifests list. The data is kept, with a Warning event, when it is not this
    resource's to delete: another DatasetPrep points at it (``reusedFrom``), or this one itself only
    reused another's output. A clean-up that fails is reported and the deletion goes on (a
    finalizer must not hold the resource forever). ``error`` is a TemporaryError while waiting.
    """
    try:
        spec = parse_spec(dict(res.spec))
    except ValidationError:
        return Outcome()
    if not spec.delete_data_on_delete:
        return Outcome()
    where = f"{spec.output.claim_name}:{spec.output.prefix}"
    own_origin = (res.status.get("output") or {}).get("reusedFrom")
    if own_origin:
        return Outcome(events=[Event("Warning", "DataKept", f"The data at {where} was made by DatasetPrep "
                                     f"{own_origin} and only reused here; it is kept")])
    with translate_api_errors("listing DatasetPreps"):
        users = sorted(d["metadata"]["name"] for d in ctx.kube.list_datasetpreps(res.namespace)
                       if ((d.get("status") or {}).get("output") or {}).get("reusedFrom") == res.name
                       and d["metadata"].get("uid") != res.uid)
    if users:
        return Outcome(events=[Event("Warning", "DataKept", f"The data at {where} is kept: DatasetPrep "
                                     f"{', '.join(users)} still use{'s' if len(users) == 1 else ''} it")])
    name = builders.delete_data_job_name(res.name)
    owned = {builders.LABEL_OWNER_UID: res.uid}
    with translate_api_errors("listing this DatasetPrep's Jobs and pods"):
        runs = [j for j in ctx.kube.list_jobs(res.namespace, owned) if j["metadata"]["name"] != name]
        for job in runs:
            ctx.kube.delete_job(res.namespace, job["metadata"]["name"])
        busy = [p for p in ctx.kube.list_pods(res.namespace, owned)
                if (p["metadata"].get("labels") or {}).get(builders.LABEL_COMPONENT) != builders.DELETE_DATA_COMPONENT]
    if runs or busy:
        return Outcome(error=kopf.TemporaryError("waiting for the job pods to stop before deleting the data", delay=2))
    with translate_api_errors(f"reading PersistentVolumeClaim {spec.output.claim_name}"):
        claim = ctx.kube.get_pvc(res.namespace, spec.output.claim_name)
    if claim is None:
        return Outcome(events=[Event("Warning", "DataKept", f"Claim {spec.output.claim_name} is gone: "
                                     "no data to delete")])
    with translate_api_errors(f"reading Job {name}"):
        job = ctx.kube.get_job(res.namespace, name)
    if job is None:
        manifest = builders.build_job(spec, parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                                      config=ctx.config, delete_data=True)
        with translate_api_errors(f"creating Job {name}"):
            try:
                ctx.kube.create_job(res.namespace, manifest)
            except Exception as exc:  # 409: a retry of ours was first
                if getattr(exc, "status", None) != 409:
                    raise
        return Outcome(events=[Event("Normal", "DeletingData", f"Created Job {name} to delete the data at {where}")],
                       error=kopf.TemporaryError(f"Job {name} is deleting the data", delay=2))
    state = job_state(job)
    if state == "running":
        return Outcome(error=kopf.TemporaryError(f"Job {name} is deleting the data", delay=2))
    pods = _pods(ctx, res.namespace, job)
    if state == "failed":
        error = _job_error(res, ctx, job, pods) or "no reason given"
        event = Event("Warning", "DeleteDataFailed",
                      f"Job {name} could not delete the data at {where}: {error}; it is left there")
    else:
        try:
            report = json.loads(_last_report(pods) or "")
        except ValueError:
            report = None
        report = report if isinstance(report, dict) else {}
        files, size = report.get("deleted_files"), report.get("deleted_bytes")
        detail = f"{files} files, {size:,} bytes" if isinstance(files, int) and isinstance(size, int) else "done"
        event = Event("Normal", "DataDeleted", f"Deleted the data at {where} ({detail})")
    with translate_api_errors(f"deleting Job {name}"):  # after reading its pods (and maybe their logs)
        ctx.kube.delete_job(res.namespace, name)
    return Outcome(events=[event])


def job_state(job: Mapping[str, Any]) -> str:
    """``running``, ``succeeded`` or ``failed``, from the Job's terminal conditions."""
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "failed"
    return "running"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or ()
    return any(ref.get("uid") == uid for ref in refs) or (meta.get("labels") or {}).get(builders.LABEL_OWNER_UID) == uid


def _job_conflict(res: Resource, ctx: Context, name: str, events: list[Event]) -> Outcome:
    message = f"Job {name} exists and does not belong to this DatasetPrep; delete or rename it"
    return Outcome(status=builders.failed_status(res.status, reason="JobConflict", message=message,
                                                 generation=res.generation, now=ctx.now()),
                   events=events + [Event("Warning", "JobConflict", message)], error=kopf.PermanentError(message))


def _find_job(res: Resource, ctx: Context, seen: Seen, name: str) -> Mapping[str, Any] | None:
    """The Job as the watch last saw it, else as the API server has it (None: there is none)."""
    job = seen.job(res.namespace, name)
    if job is None:
        with translate_api_errors(f"reading Job {name}"):
            job = ctx.kube.get_job(res.namespace, name)
    return job


def _missing_claims(res: Resource, ctx: Context, spec: DatasetPrepSpec) -> list[str]:
    """Claims the Job would mount that do not exist (a pod would sit Pending with no word why)."""
    with translate_api_errors("checking the PersistentVolumeClaims"):
        return [m.claim for m in builders.claim_mounts(spec) if ctx.kube.get_pvc(res.namespace, m.claim) is None]


def _create_job(res: Resource, ctx: Context, manifest: dict[str, Any], *, keep: Collection[str],
                first_stage: bool) -> tuple[Mapping[str, Any], bool]:
    """Create one of the run's Jobs; for its first, remove unfinished Jobs of older specs beforehand.

    Returns:
        The Job, and whether this call created it (False: a 409 showed someone else was first).
    """
    kopf.adopt(manifest, owner=dict(res.body), nested="spec.template")
    name = manifest["metadata"]["name"]
    if first_stage:
        _delete_superseded_jobs(res, ctx, keep=keep, finished_too=False)
    with translate_api_errors(f"creating Job {name}"):
        try:
            job = ctx.kube.create_job(res.namespace, manifest)
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
            job = ctx.kube.get_job(res.namespace, name)
            if job is None:  # deleted between our create and our read: just try again
                raise kopf.TemporaryError(f"Job {name} vanished after a create conflict", delay=1) from exc
            return job, False  # someone (another replica, a retry) was first: the caller checks whose
    if first_stage:
        ctx.metrics.run_started()
    return job, True


def _delete_superseded_jobs(res: Resource, ctx: Context, *, keep: Collection[str], finished_too: bool) -> None:
    """Delete this resource's Jobs for older specs: unfinished ones, or all of them once switched over."""
    with translate_api_errors("listing older Jobs"):
        jobs = ctx.kube.list_jobs(res.namespace, {builders.LABEL_OWNER_UID: res.uid})
    for job in jobs:
        name = job["metadata"]["name"]
        if name in keep or (job_state(job) == "succeeded" and not finished_too):
            continue
        with translate_api_errors(f"deleting superseded Job {name}"):
            ctx.kube.delete_job(res.namespace, name)


# --------------------------------------------------------------------------- a run in progress


def _running(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: builders.RunJobs,
             job: Mapping[str, Any], *, shard_job: Mapping[str, Any] | None, events: list[Event]) -> Outcome:
    """Status while ``job`` (the only Job, the shards' or the merge) runs, with the pods' progress."""
    name = job["metadata"]["name"]
    shard_status = (shard_job or {}).get("status") or {}
    shards_done = shard_status.get("succeeded") or 0
    if jobs.merge is not None:
        shards_done = builders.count_indexes(shard_status.get("completedIndexes")) or shards_done
    reports = [r for r in map(builders.pod_progress, seen.pods(res.namespace, jobs.main)) if r is not None]
    progress = builders.aggregate_progress(reports, shards_done=shards_done, shards_total=spec.shards,
                                           pods_active=shard_status.get("active") or 0)
    message = None
    if name == jobs.merge:
        if spec.keep_shards:
            progress.update(shardsDone=spec.shards, summary="listing shards")
            message = f"Job {name} is checking {spec.shards} shard datasets and writing their blend list"
        else:
            progress.update(shardsDone=spec.shards, summary="merging")
            message = f"Job {name} is assembling the output of {spec.shards} shards"
    elif jobs.merge is not None:
        message = f"Job {name} is running ({shards_done}/{spec.shards} shards)"
    start = (shard_status.get("startTime") or ((job.get("status") or {}).get("startTime"))
             or (res.status.get("startTime") if res.status.get("jobName") in jobs.names else None))
    progress = _throttled(res, ctx, name, progress)
    return Outcome(status=builders.running_status(res.status, job=name, generation=res.generation, now=ctx.now(),
                                                  start_time=start, progress=progress, message=message),
                   events=events)


def _throttled(res: Resource, ctx: Context, job: str, progress: dict[str, Any]) -> Mapping[str, Any]:
    """``progress``, or the one already in status if only live figures changed within the interval.

    New states (the first figures, another shard done, another stage) are written at once.
    """
    current = res.status.get("progress") or {}
    now = ctx.clock()
    last = ctx.progress_written.get(res.uid)
    figures_only = (res.status.get("phase") == "Running" and res.status.get("jobName") == job
                    and "bytesTotal" in current and "bytesTotal" in progress
                    and current.get("shardsDone") == progress.get("shardsDone"))
    if figures_only and last is not None and now - last < ctx.progress_interval:
        return current
    if progress != current:
        ctx.progress_written[res.uid] = now
    return progress


# --------------------------------------------------------------------------- reuse


def _reusable_source(res: Resource, ctx: Context, seen: Seen,
                     key: str) -> tuple[Mapping[str, Any], builders.JobResult] | None:
    """Another Ready DatasetPrep of the namespace with this reuse key, read back fresh, and its result.

    Candidates that ran their own Job come before those that reuse one themselves.
    """
    candidates = [c for c in seen.reusable(res.namespace, key) if c.get("uid") != res.uid and c.get("name")]
    candidates.sort(key=lambda c: (bool(c.get("reusedFrom")), c["name"]))
    for cand in candidates:
        with translate_api_errors(f"reading DatasetPrep {cand['name']}"):
            body = ctx.kube.get_datasetprep(res.namespace, cand["name"])
        if body is None or body["metadata"].get("uid") == res.uid or builders.reusable_key(body) != key:
            continue  # gone, or changed since the watch saw it
        result = builders.reused_result(body)
        if result is not None and result.outputs:
            return body, result
    return None


def _reuse(res: Resource, ctx: Context, spec: DatasetPrepSpec, source: Mapping[str, Any],
           result: builders.JobResult) -> Outcome:
    """Point at ``source``'s output: the training ConfigMap, then Ready with reason ``Reused``; no Job."""
    origin = ((source.get("status") or {}).get("output") or {}).get("reusedFrom") or source["metadata"]["name"]
    cm_name, conflict = _publish(res, ctx, spec, result, keep=(), job=None)
    if conflict is not None:
        return conflict
    status = builders.succeeded_status(res.status, spec, result, job=None, config_map=cm_name,
                                       generation=res.generation, now=ctx.now(), completion_time=None,
                                       reused_from=origin)
    event = Event("Normal", "Reused", f"{status['message']}; ConfigMap {cm_name} written")
    return Outcome(status=status, events=[event])


# --------------------------------------------------------------------------- a run that ended


def _pods(ctx: Context, namespace: str, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    meta = job["metadata"]
    with translate_api_errors(f"listing the pods of Job {meta['name']}"):
        return ctx.kube.list_pods(namespace, {JOB_UID_LABEL: meta["uid"]})


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == builders.CONTAINER_NAME:
            return (cs.get("state") or {}).get("terminated") or {}
    return {}


def _finish_key(pod: Mapping[str, Any]) -> str:
    return _terminated(pod).get("finishedAt") or (pod.get("metadata") or {}).get("creationTimestamp") or ""


def _culprit_key(pod: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """Order failed pods by how much their failure says: the job's own error first, then a plain
    non-zero exit, then a pod killed by a signal (e.g. a shard stopped because another one failed)."""
    term = _terminated(pod)
    try:
        doc = json.loads(term.get("message") or "")
    except ValueError:
        doc = None
    own_error = isinstance(doc, dict) and doc.get("ok") is False
    return own_error, (term.get("exitCode") or 0) < 128, _finish_key(pod)


def _job_error(res: Resource, ctx: Context, job: Mapping[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """Why a failed Job failed: its most telling failed pod's own error (termination message, else
    log tail), else the Job's Failed condition."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    error = None
    if failed:
        pod = max(failed, key=_culprit_key)
        message = _terminated(pod).get("message")
        fallback = None
        if not (message or "").strip():
            fallback = ctx.kube.pod_log_tail(res.namespace, pod["metadata"]["name"], ctx.config.log_tail_lines)
        error = builders.parse_termination_message(message, fallback=fallback).error
    if not error:
        conds = [c for c in (job.get("status") or {}).get("conditions") or () if c.get("type") == "Failed"]
        error = "; ".join(filter(None, [conds[0].get("reason"), conds[0].get("message")])) if conds else None
    return error


def _last_report(pods: list[dict[str, Any]]) -> str | None:
    """The termination message of the Job's last succeeded pod (its result), if any."""
    done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
    return _terminated(max(done, key=_finish_key)).get("message") if done else None


def _job_failed(res: Resource, ctx: Context, job: Mapping[str, Any], name: str, events: list[Event]) -> Outcome:
    """The Job gave up: report the job's own error message (termination message, else log tail)."""
    error = _job_error(res, ctx, job, _pods(ctx, res.namespace, job))
    message = f"Job {name} failed: {error or 'no reason given'}"
    ctx.metrics.run_failed()
    return Outcome(
        status=builders.failed_status(res.status, reason="JobFailed", message=message,
                                      generation=res.generation, now=ctx.now(), job=name),
        events=events + [Event("Warning", "JobFailed", message)],
    )


def _job_succeeded(res: Resource, ctx: Context, spec: DatasetPrepSpec, job: Mapping[str, Any], name: str,
                   events: list[Event], *, keep: Collection[str]) -> Outcome:
    """The Job that publishes completed: read its report, publish the training ConfigMap, then declare Ready."""
    pods = _pods(ctx, res.namespace, job)
    if not any((p.get("status") or {}).get("phase") == "Succeeded" for p in pods):
        # The Job says Complete but its pods are gone (deleted by hand, or pod GC): the result is lost.
        result = builders.JobResult(ok=False, error="its pods are gone, so its result cannot be read")
    else:
        result = builders.parse_termination_message(_last_report(pods))
    if not result.ok:
        message = f"Job {name} completed but its result is unusable: {result.error}"
        ctx.metrics.run_failed()
        return Outcome(status=builders.failed_status(res.status, reason="ResultUnreadable", message=message,
                                                     generation=res.generation, now=ctx.now(), job=name),
                       events=events + [Event("Warning", "ResultUnreadable", message)])

    cm_name, conflict = _publish(res, ctx, spec, result, keep=keep, job=name)
    if conflict is not None:
        conflict.events[:0] = events
        return conflict
    completion = (job.get("status") or {}).get("completionTime")
    status = builders.succeeded_status(res.status, spec, result, job=name, config_map=cm_name,
                                       generation=res.generation, now=ctx.now(), completion_time=completion)
    ctx.metrics.run_succeeded(status["output"].get("tokens"))
    events.append(Event("Normal", "Succeeded", f"{status['message']}; ConfigMap {cm_name} written"))
    return Outcome(status=status, events=events)


def _publish(res: Resource, ctx: Context, spec: DatasetPrepSpec, result: builders.JobResult, *,
             keep: Collection[str], job: str | None) -> tuple[str, Outcome | None]:
    """Switch over to ``result``: write the training ConfigMap, drop a renamed old one and older Jobs.

    Returns:
        The ConfigMap's name, and a Stalled outcome if a foreign ConfigMap is in the way.
    """
    cm_name = builders.config_map_name(res.name, spec)
    conflict = _publish_config_map(res, ctx, cm_name, builders.training_config_data(spec, result))
    if conflict:
        return cm_name, Outcome(status=builders.failed_status(res.status, reason="ConfigMapConflict",
                                                              message=conflict, generation=res.generation,
                                                              now=ctx.now(), job=job),
                                events=[Event("Warning", "ConfigMapConflict", conflict)],
                                error=kopf.PermanentError(conflict))
    old_cm = res.status.get("configMapName")
    if old_cm and old_cm != cm_name:
        _delete_own_config_map(res, ctx, old_cm)
    _delete_superseded_jobs(res, ctx, keep=keep, finished_too=True)
    return cm_name, None


def _publish_config_map(res: Resource, ctx: Context, name: str, data: Mapping[str, str]) -> str | None:
    """Create or update the training ConfigMap; returns a message if a foreign one is in the way."""
    manifest = builders.build_config_map(name, res.namespace, res.uid, data)
    kopf.adopt(manifest, owner=dict(res.body))
    with translate_api_errors(f"writing ConfigMap {name}"):
        existing = ctx.kube.get_config_map(res.namespace, name)
        if existing is None:
            ctx.kube.create_config_map(res.namespace, manifest)
            return None
        if not _owned_by(existing, res.uid):
            return f"ConfigMap {name} exists and does not belong to this DatasetPrep; delete it or set " \
                   f"spec.trainingConfig.configMapName"
        if existing.get("data") == manifest["data"]:
            return None
        manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        ctx.kube.replace_config_map(res.namespace, manifest)
    return None


def _delete_own_config_map(res: Resource, ctx: Context, name: str) -> None:
    with translate_api_errors(f"deleting the previous ConfigMap {name}"):
        existing = ctx.kube.get_config_map(res.namespace, name)
        if existing is not None and _owned_by(existing, res.uid):
            ctx.kube.delete_config_map(res.namespace, name)


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``current`` into ``desired`` for the keys ``desired`` names.

    Objects are diffed key by key (a key that disappeared becomes None, which deletes it); lists and
    scalars are replaced whole. An empty result means nothing to write.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = status_changes(old, value)
            sub.update({k: None for k, v in old.items() if k not in value and v is not None})
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    return patch
