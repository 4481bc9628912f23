"""Level-triggered decisions for one DatasetPrep.

:func:`reconcile` looks at the resource, its spec and its status, at the Jobs of the current run and
their pods (as the watches saw them), and returns what the status should become, the events and
metrics that this *transition* carries, and when to look again. It is safe to run any number of
times, from any starting point, on a body of any age:

* **Effects belong to transitions.** Every event and metric of an :class:`Outcome` follows from the
  difference between the status it was decided on and the status it decides (a run started, a run
  published, a run failed, an attempt failed, a claim missing). The runtime writes that status with
  the ``resourceVersion`` the decision was made on (optimistic concurrency) and applies the effects
  only when the write wins; a 409 means the decision was made on a stale body, so it is made again
  on a fresh one -- which finds the transition already done and carries no effect.
* **What is done before the write is idempotent**: the Job for a run is named ``<name>-<run hash>``
  and adopted if it exists, never recreated (a 409 on create is read back and its owner checked);
  the training ConfigMap is written only if its data differs; superseded Jobs are deleted by name.
* ``spec.shards > 1`` runs in two stages: that Job is an Indexed Job with one pod per shard, and once
  it is Complete a merge Job ``<name>-<run hash>-merge`` assembles and publishes the output.
* ``spec.reuse: IfIdentical``: before a run's first Job is created, another Ready DatasetPrep of the
  namespace with the same reuse key (:func:`datasetprep.hashes.reuse_key`) is looked for; if there is
  one, its output is pointed at and no Job is launched.
* A spec change, or a new value of the ``datasetprep.io/retry`` annotation, starts a new run; the
  previous output and ConfigMap stay as they are until the new run succeeds. Unfinished Jobs of older
  runs are deleted at once, finished ones after the switch.
* An invalid spec, a failed Job or a foreign object in the way is final for that run (``Stalled``):
  a spec change or a retry starts over. Pods that cannot start (:mod:`.diagnosis`) stall the run
  only while the cause lasts.
"""
from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from datasetprep.contract import Failed, JobResult, Published
from datasetprep.hashes import reuse_key
from datasetprep.spec import DatasetPrepSpec, DatasetPrepStatus, ProgressStatus, format_validation_error, parse_spec

from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.diagnosis import (POD_EVENT_READS, RECHECK_SECONDS, create_trouble, job_needs_events,
                                            next_look, pod_trouble, pods_needing_events)
from datasetprep_operator.jobs import CONTAINER_NAME, RunJobs, build_job, claim_mounts
from datasetprep_operator.jobstate import (attempt_failure, culprit, failure_reason, has_succeeded_pod, job_state,
                                           killed_by_the_node, last_result, owned_by, said_its_own_error, terminated)
from datasetprep_operator.kube import Kube, Stale, translate_api_errors
from datasetprep_operator.naming import ANNOTATION_RETRY, JOB_UID_LABEL, LABEL_OWNER_UID, config_map_name
from datasetprep_operator.podprogress import ProgressLogs
from datasetprep_operator.results import read_result, reused_result
from datasetprep_operator.status import (aggregate_progress, blocked_status, count_indexes, failed_status,
                                         observed_status, read_status, ready_output_key, running_status,
                                         status_changes, succeeded_status, waiting_status)
from datasetprep_operator.trainingconfig import build_config_map, training_config_data

CLAIM_RETRY_SECONDS = 10
#: Live progress figures (bytes, tokens, rate, ETA) are read from the pods' logs and written at most this
#: often per resource.
PROGRESS_INTERVAL_SECONDS = 5.0
#: A Job this operator created is taken from its create answer this long while the watch has not seen it.
CREATED_TRUST_SECONDS = 60.0
#: Progress milestones logged at INFO (percent of the input done).
MILESTONES = (25, 50, 75)


def utcnow() -> str:
    """RFC 3339 timestamp, as Kubernetes writes them."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_hint(name: str) -> str:
    """How to start the same spec again once the cause is fixed (named in Stalled messages)."""
    return (f"then retry: kubectl annotate datasetprep {name} {ANNOTATION_RETRY}=\"$(date +%s)\" --overwrite")


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the DatasetPrep (and log at INFO)."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    """What one reconciliation decided.

    ``desired`` is the status as a step decided it (only the fields it sets); :func:`reconcile` turns
    it into ``status``, the merge patch against what is stored (empty: nothing to write). ``events``,
    ``counts`` and ``logs`` are the transition's effects: applied once the status write wins.
    ``error``: a ``kopf.TemporaryError`` (look again after its delay) or ``kopf.PermanentError``
    (nothing to retry until the resource changes). ``requeue``: seconds until the next look, if one is
    due without any event (a grace period, a throttled progress write).
    """

    desired: DatasetPrepStatus = dataclasses.field(default_factory=DatasetPrepStatus)
    events: list[Event] = dataclasses.field(default_factory=list)
    error: Exception | None = None
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    counts: list[tuple[str, int | None]] = dataclasses.field(default_factory=list)
    """Metrics to count: ``("run_started"|"run_succeeded"|"run_failed", tokens or None)``."""
    logs: list[str] = dataclasses.field(default_factory=list)
    """Decisions worth a log line that are not events (progress milestones, a stall cleared)."""
    requeue: float | None = None
    cleanup: str | None = None
    """A Job to delete once the write this outcome asks for has won (the clean-up Job, after its report)."""


@dataclasses.dataclass
class Context:
    """Everything a reconciliation needs besides the resource."""

    kube: Kube
    config: OperatorConfig
    now: Callable[[], str] = utcnow
    clock: Callable[[], float] = time.monotonic
    """Seconds, for throttling the progress reads."""
    wall: Callable[[], float] = time.time
    """Seconds since the epoch, for the age of Jobs and pods."""
    progress_interval: float = PROGRESS_INTERVAL_SECONDS
    progress_read: dict[str, float] = dataclasses.field(default_factory=dict)
    """When the pods' logs were last read for live progress, by resource uid (running resources only)."""
    progress_logs: ProgressLogs = dataclasses.field(default_factory=lambda: ProgressLogs(CONTAINER_NAME))
    """The newest progress record of each job pod, by resource uid (running resources only)."""
    created_jobs: dict[tuple[str, str], tuple[float, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    """Jobs this operator created (when, and the API server's answer), by ``(namespace, name)``, until the
    Job watch has seen them: the status write that records a new run comes back through the watch
    before the Job does, and needs no GET to find it."""

    def forget_progress(self, uid: str) -> None:
        """Drop what is kept of a resource's live progress (its run is over, or the resource is gone)."""
        self.progress_read.pop(uid, None)
        self.progress_logs.forget(uid)


@dataclasses.dataclass(frozen=True)
class Resource:
    """The DatasetPrep as one reconciliation sees it."""

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
    def retry(self) -> str | None:
        """The ``datasetprep.io/retry`` annotation's value, if set (and not blank)."""
        value = (self.meta.get("annotations") or {}).get(ANNOTATION_RETRY)
        return value.strip() or None if isinstance(value, str) else None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def raw_status(self) -> Mapping[str, Any]:
        """The status as stored (camelCase JSON)."""
        return self.body.get("status") or {}

    @property
    def status(self) -> DatasetPrepStatus:
        """The status through its model."""
        return read_status(self.raw_status)


@dataclasses.dataclass(frozen=True)
class Seen:
    """What the operator's watches last saw (kopf indexes).

    A Job found here saves a GET; absence proves nothing (a watch may lag), so a Job the status names
    is read back. A reusable DatasetPrep found here is read back before it is trusted.

    Attributes:
        job: our Jobs by ``(namespace, name)``.
        jobs_of: our Jobs of one DatasetPrep, by ``(namespace, owner uid)``.
        pods: their pods by ``(namespace, job name)``.
        reusable: Ready DatasetPreps by ``(namespace, reuse key)``, as ``{"name", "uid", "reusedFrom"}``.
    """

    job: Callable[[str, str], "Mapping[str, Any] | None"] = lambda namespace, name: None
    jobs_of: "Callable[[str, str], list[Mapping[str, Any]]] | None" = None
    pods: Callable[[str, str], "list[Mapping[str, Any]]"] = lambda namespace, job: []
    reusable: Callable[[str, str], "list[Mapping[str, Any]]"] = lambda namespace, key: []


def reconcile(res: Resource, ctx: Context, *, seen: Seen | None = None) -> Outcome:
    """Bring one DatasetPrep one step closer to its spec; see the module docstring.

    Args:
        res: the resource as last seen (by the watch, or as our own last write returned it).
        ctx: API access, settings and the clocks.
        seen: the watched Jobs, pods and reusable outputs.
    """
    outcome = _reconcile(res, ctx, seen or Seen())
    if outcome.desired.phase != "Running":
        ctx.forget_progress(res.uid)
    outcome.status = status_changes(res.raw_status, outcome.desired.to_patch())
    return outcome


def _reconcile(res: Resource, ctx: Context, seen: Seen) -> Outcome:
    status = res.status
    try:
        spec = parse_spec(dict(res.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        return Outcome(failed_status(status, reason="InvalidSpec", message=message, generation=res.generation,
                                     now=ctx.now()),
                       events=[Event("Warning", "InvalidSpec", message)] if status.message != message else [],
                       error=kopf.PermanentError(f"invalid spec: {message}"))
    jobs = RunJobs.for_spec(res.name, spec, res.retry)
    if status.job_name in jobs.names and status.phase in ("Succeeded", "Failed"):
        return Outcome(observed_status(status, generation=res.generation))
    key = reuse_key(spec)
    if _reused_for_this_run(res, status, key):
        return Outcome()
    outcome = _run(res, ctx, seen, spec, jobs, key)
    outcome.desired.reuse_key = key
    outcome.desired.observed_retry = res.retry
    return outcome


def _reused_for_this_run(res: Resource, status: DatasetPrepStatus, key: str) -> bool:
    """This generation (and retry) already points at another resource's output (a change looks again)."""
    return (status.phase == "Succeeded" and status.observed_generation == res.generation
            and status.reuse_key == key and status.observed_retry == res.retry
            and bool(status.output and status.output.reused_from))


def _run(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: RunJobs, key: str) -> Outcome:
    """Find (or start) the current run's Jobs and report on them; or reuse an identical output."""
    job = _find_job(res, ctx, seen, jobs.main)
    if job is None:
        merge = _find_job(res, ctx, seen, jobs.merge) if jobs.merge else None
        if merge is not None:  # the shards' Job is gone (deleted by hand) but stage 2 runs: follow it
            return _follow(res, ctx, seen, spec, jobs, merge, jobs.merge, shard_job=None)
        started = _start(res, ctx, seen, spec, jobs, key)
        if isinstance(started, Outcome):
            return started
        job = started
    if jobs.merge is None or job_state(job) != "succeeded" or not owned_by(job, res.uid):
        return _follow(res, ctx, seen, spec, jobs, job, jobs.main, shard_job=job)
    # Every shard is done: stage 2 assembles and publishes.
    merge = _find_job(res, ctx, seen, jobs.merge)
    if merge is None:
        manifest = build_job(spec, jobs.plans[1], parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                             config=ctx.config, retry=res.retry)
        merge, _ = create_adopted_job(res, ctx, manifest)
    return _follow(res, ctx, seen, spec, jobs, merge, jobs.merge, shard_job=job)


def _start(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: RunJobs,
           key: str) -> Outcome | Mapping[str, Any]:
    """No Job yet: reuse an identical output, wait for a missing claim, or create the run's first Job."""
    if spec.reuse == "IfIdentical":
        found = _reusable_source(res, ctx, seen, key)
        if found is not None:
            return _reuse(res, ctx, seen, spec, *found)
    missing = _missing_claims(res, ctx, spec)
    if missing:
        message = (f"PersistentVolumeClaim {', '.join(missing)} not found in namespace {res.namespace}; "
                   f"the Job starts once it exists")
        status = res.status
        return Outcome(waiting_status(status, reason="WaitingForClaim", message=message, generation=res.generation,
                                      now=ctx.now()),
                       events=[Event("Warning", "WaitingForClaim", message)] if status.message != message else [],
                       error=kopf.TemporaryError(message, delay=CLAIM_RETRY_SECONDS))
    _delete_superseded_jobs(res, ctx, seen, keep=jobs.names, finished_too=False)
    _still_newest(res, ctx)
    manifest = build_job(spec, jobs.plans[0], parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                         config=ctx.config, retry=res.retry)
    job, _ = create_adopted_job(res, ctx, manifest)
    return job


def _still_newest(res: Resource, ctx: Context) -> None:
    """A run's first Job is created only for the stored generation. The body this look decides on can be
    older: a spec changed twice within a moment reaches the watch as two versions, and the look at the
    first may come after the second is stored. Its status write would lose (409), but a Job created
    before that write would run, and a short run can publish before its deletion takes effect. One read
    per new run.

    Raises:
        Stale: the stored object has another generation, or is gone (decide again on a fresh read).
    """
    with translate_api_errors(f"reading DatasetPrep {res.name}"):
        stored = ctx.kube.get_datasetprep(res.namespace, res.name)
    if stored is None or (stored.get("metadata") or {}).get("generation") != res.generation:
        raise Stale()


def _follow(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: RunJobs, job: Mapping[str, Any],
            name: str, *, shard_job: Mapping[str, Any] | None) -> Outcome:
    """Report on one of the run's Jobs: still running, failed, or (the one that publishes) succeeded."""
    if not owned_by(job, res.uid):
        return _job_conflict(res, ctx, name)
    state = job_state(job)
    if state == "running":
        outcome = _running(res, ctx, seen, spec, jobs, job, shard_job=shard_job)
    elif state == "failed":
        outcome = _job_failed(res, ctx, seen, job, name)
    else:
        outcome = _job_succeeded(res, ctx, seen, spec, job, name, keep=jobs.names)
    outcome.events[:0] = _stage_events(res.status, jobs, spec, name)
    if res.status.job_name not in jobs.names:
        outcome.counts.insert(0, ("run_started", None))
    return outcome


def _stage_events(status: DatasetPrepStatus, jobs: RunJobs, spec: DatasetPrepSpec, following: str) -> list[Event]:
    """The events of entering the run (its first Job) and its merge stage, once each: the status it
    is decided on does not name that Job yet."""
    events = []
    if status.job_name not in jobs.names:
        what = f"Indexed Job {jobs.main} ({spec.shards} shards)" if jobs.merge else f"Job {jobs.main}"
        events.append(Event("Normal", "JobCreated", f"Created {what}"))
    if following == jobs.merge and status.job_name != jobs.merge:
        events.append(Event("Normal", "MergeJobCreated", (
            f"All {spec.shards} shards of Job {jobs.main} are done; created Job {jobs.merge} to "
            + ("check the shard datasets and write their blend list" if spec.keep_shards
               else "assemble and publish the output"))))
    return events


def _job_conflict(res: Resource, ctx: Context, name: str) -> Outcome:
    message = (f"Job {name} exists and does not belong to this DatasetPrep; delete or rename it, "
               f"{retry_hint(res.name)}")
    events = [Event("Warning", "JobConflict", message)] if res.status.message != message else []
    return Outcome(failed_status(res.status, reason="JobConflict", message=message, generation=res.generation,
                                 now=ctx.now()),
                   events=events, error=kopf.PermanentError(message))


def _find_job(res: Resource, ctx: Context, seen: Seen, name: str) -> Mapping[str, Any] | None:
    return find_job(ctx, seen.job(res.namespace, name), res.namespace, name, named=res.status.job_name == name)


def find_job(ctx: Context, watched: Mapping[str, Any] | None, namespace: str, name: str, *,
             named: bool) -> Mapping[str, Any] | None:
    """The Job as the watch last saw it (``watched``), or as this operator created it a moment ago; else,
    if the status names it (``named``: the watch may lag, or it was deleted by hand), as the API server has
    it. None: there is none -- a Job the status does not name yet is created (a 409 reads it back), so a
    look that finds the watch up to date costs no request."""
    job = watched
    if job is not None:
        ctx.created_jobs.pop((namespace, name), None)  # the watch has caught up with our create
    else:
        created = ctx.created_jobs.get((namespace, name))
        if created is not None and ctx.clock() - created[0] < CREATED_TRUST_SECONDS:
            job = created[1]
    if job is None and named:
        with translate_api_errors(f"reading Job {name}"):
            job = ctx.kube.get_job(namespace, name)
    return job


def _missing_claims(res: Resource, ctx: Context, spec: DatasetPrepSpec) -> list[str]:
    """Claims the Job would mount that do not exist (a pod would sit Pending with no word why)."""
    with translate_api_errors("checking the PersistentVolumeClaims"):
        return [m.claim for m in claim_mounts(spec) if ctx.kube.get_pvc(res.namespace, m.claim) is None]


def create_adopted_job(res: Resource, ctx: Context, manifest: dict[str, Any], *,
                       owned: bool = True) -> tuple[Mapping[str, Any], bool]:
    """Create a Job (adopted by the resource unless ``owned`` is False); a 409 is read back.

    Returns:
        The Job, and whether this call created it (False: someone -- another replica, a retry -- was
        first; the caller checks whose it is).
    """
    if owned:
        kopf.adopt(manifest, owner=dict(res.body), nested="spec.template")
    name = manifest["metadata"]["name"]
    with translate_api_errors(f"creating Job {name}"):
        try:
            job, created = ctx.kube.create_job(res.namespace, manifest), True
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
            job, created = ctx.kube.get_job(res.namespace, name), False
            if job is None:  # deleted between our create and our read: just try again
                raise kopf.TemporaryError(f"Job {name} vanished after a create conflict", delay=1) from exc
    now = ctx.clock()
    for old in [k for k, (when, _) in list(ctx.created_jobs.items()) if now - when > CREATED_TRUST_SECONDS]:
        ctx.created_jobs.pop(old, None)
    ctx.created_jobs[(res.namespace, name)] = (now, job)
    return job, created


def _owned_jobs(res: Resource, ctx: Context, seen: Seen) -> list[Mapping[str, Any]]:
    """This resource's Jobs: from the Job index (else listed), plus the ones this operator created a
    moment ago that the watch has not delivered yet -- a spec changed twice in a second must not leave
    the middle generation's Job running because the index lagged behind our own create."""
    if seen.jobs_of is not None:
        jobs = list(seen.jobs_of(res.namespace, res.uid))
    else:
        with translate_api_errors("listing older Jobs"):
            jobs = ctx.kube.list_jobs(res.namespace, {LABEL_OWNER_UID: res.uid})
    known = {job["metadata"]["name"] for job in jobs}
    now = ctx.clock()
    for (namespace, name), (when, job) in list(ctx.created_jobs.items()):
        if (namespace == res.namespace and name not in known and now - when < CREATED_TRUST_SECONDS
                and ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_OWNER_UID) == res.uid):
            jobs.append(job)
    return jobs


def _delete_superseded_jobs(res: Resource, ctx: Context, seen: Seen, *, keep: Collection[str],
                            finished_too: bool) -> None:
    """Delete this resource's Jobs of older runs: unfinished ones, or all of them once switched over."""
    for job in _owned_jobs(res, ctx, seen):
        name = job["metadata"]["name"]
        if name in keep or (job_state(job) == "succeeded" and not finished_too):
            continue
        with translate_api_errors(f"deleting superseded Job {name}"):
            ctx.kube.delete_job(res.namespace, name)
        ctx.created_jobs.pop((res.namespace, name), None)


# --------------------------------------------------------------------------- a run in progress


def watched_pods(pods: Callable[[str, str], "list[Mapping[str, Any]]"], namespace: str,
                 job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The watched pods of this very Job (a Job of the same name deleted and recreated has other ones)."""
    uid = (job.get("metadata") or {}).get("uid")
    return [p for p in pods(namespace, job["metadata"]["name"])
            if ((p.get("metadata") or {}).get("labels") or {}).get(JOB_UID_LABEL) in (None, uid)]


def ended_pods(ctx: Context, watched: list[Mapping[str, Any]], namespace: str, job: Mapping[str, Any], *,
               succeeded: bool) -> list[Mapping[str, Any]]:
    """The pods of a Job that ended, from the pod watch when it shows how it ended (a succeeded pod; for a
    failed Job, a failed pod to blame), else listed (the pod watch has not caught up, or the pods are gone)."""
    if has_succeeded_pod(watched) if succeeded else culprit(watched) is not None:
        return watched
    return job_pods(ctx, namespace, job)


def _running(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, jobs: RunJobs,
             job: Mapping[str, Any], *, shard_job: Mapping[str, Any] | None) -> Outcome:
    """Status while ``job`` (the only Job, the shards' or the merge) runs: its pods' progress, its
    attempt, or why its pods cannot start."""
    name = job["metadata"]["name"]
    status = res.status
    pods = watched_pods(seen.pods, res.namespace, job)
    start = ((shard_job or {}).get("status") or {}).get("startTime") or (job.get("status") or {}).get("startTime") \
        or (status.start_time if status.job_name in jobs.names else None)
    attempt, last_failure = attempt_failure(job, pods)
    events: list[Event] = []
    if attempt > 1 and (status.job_name != name or (status.attempt or 1) < attempt):
        events.append(Event("Warning", "AttemptFailed", f"Job {name}: attempt {attempt - 1} failed"
                            + (f": {last_failure}" if last_failure else "") + f"; attempt {attempt} follows"))
    trouble = _trouble(res, ctx, job, pods)
    if trouble is not None:
        message = f"{trouble.message} (Job {name})" if name not in trouble.message else trouble.message
        desired = blocked_status(status, job=name, reason=trouble.reason, message=message,
                                 generation=res.generation, now=ctx.now(), start_time=start,
                                 attempt=attempt, last_failure=last_failure)
        if status.message != message:
            events.append(Event("Warning", trouble.reason, message))
        return Outcome(desired, events=events, requeue=RECHECK_SECONDS)
    shard_status = (shard_job or {}).get("status") or {}
    shards_done = shard_status.get("succeeded") or 0
    if jobs.merge is not None:
        shards_done = count_indexes(shard_status.get("completedIndexes")) or shards_done
    progress, wait = _live_progress(res, ctx, spec, jobs, name, pods, shards_done=shards_done,
                                    pods_active=shard_status.get("active") or 0)
    message = None
    if name == jobs.merge:
        summary = "listing shards" if spec.keep_shards else "merging"
        progress = progress.model_copy(update={"shards_done": spec.shards, "summary": summary})
        message = (f"Job {name} is checking {spec.shards} shard datasets and writing their blend list"
                   if spec.keep_shards else f"Job {name} is assembling the output of {spec.shards} shards")
    elif jobs.merge is not None:
        message = f"Job {name} is running ({shards_done}/{spec.shards} shards)"
    desired = running_status(status, job=name, generation=res.generation, now=ctx.now(), start_time=start,
                             progress=progress, message=message, attempt=attempt,
                             last_failure=last_failure)
    logs = _milestones(status, progress, name) if name == jobs.main else []
    if status.phase == "Pending" and status.job_name == name:
        logs.append(f"the pods of Job {name} started: the run is no longer blocked")
    look = next_look(job, pods, now=ctx.wall())
    requeue = min((t for t in (wait, look) if t is not None), default=None)
    return Outcome(desired, events=events, logs=logs, requeue=requeue)


def _trouble(res: Resource, ctx: Context, job: Mapping[str, Any], pods: list[Mapping[str, Any]]):
    """Why the Job's pods cannot start, if they cannot (reading events only where the watched state says
    nothing: the Job's when it has no pod, a few stuck pods' when they wait without a reason)."""
    now = ctx.wall()
    image = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", [{}])[0].get("image") \
        or ctx.config.job_image
    pod_events: dict[str, list[dict[str, Any]]] = {}
    for pod in pods_needing_events(pods, now=now)[:POD_EVENT_READS]:
        meta = pod.get("metadata") or {}
        if meta.get("uid"):
            with translate_api_errors(f"reading the events of pod {meta.get('name')}"):
                pod_events[meta.get("name")] = ctx.kube.list_events(res.namespace, meta["uid"])
    trouble = pod_trouble(pods, now=now, image=image, events=pod_events)
    if trouble is None and job_needs_events(job, pods, now=now):
        with translate_api_errors(f"reading the events of Job {job['metadata']['name']}"):
            events = ctx.kube.list_events(res.namespace, job["metadata"]["uid"])
        trouble = create_trouble(job, events, service_account=ctx.config.job_service_account,
                                 namespace=res.namespace, now=now)
    return trouble


def _milestones(status: DatasetPrepStatus, progress: ProgressStatus, job: str) -> list[str]:
    """A log line for each milestone the run's progress passed since the status was written."""
    before = (status.progress.percent if status.progress and status.job_name == job else None) or 0
    after = progress.percent or 0
    tokens = f" ({progress.tokens:,} tokens so far)" if progress.tokens else ""
    return [f"Job {job} is {m}% done{tokens}" for m in MILESTONES if before < m <= after]


def _live_progress(res: Resource, ctx: Context, spec: DatasetPrepSpec, jobs: RunJobs, job: str,
                   pods: list[Mapping[str, Any]], *, shards_done: int,
                   pods_active: int) -> tuple[ProgressStatus, float | None]:
    """``status.progress`` while ``job`` runs, from its pods' own records in their logs, and the seconds
    until the logs are due to be read again (None: the merge stage, which reads none).

    The logs are read only when a status write is due: at every look for a new state (another stage,
    another shard done, no figures yet), else at most every ``ctx.progress_interval`` seconds; in
    between, the progress already in status stands. A log line is no watch event, so the returned
    seconds are the run's next look (``Outcome.requeue``): the figures then go out through the same
    conditional status write as every other decision. The merge stage reads no logs (the shards are done).
    """
    status = res.status
    current = status.progress or ProgressStatus()
    now = ctx.clock()
    last = ctx.progress_read.get(res.uid)
    same_state = (status.phase == "Running" and status.job_name == job and current.shards_done == shards_done
                  and current.bytes_total is not None)
    if same_state and last is not None and now - last < ctx.progress_interval:
        return current, (None if job == jobs.merge else ctx.progress_interval - (now - last))
    records = [] if job == jobs.merge else ctx.progress_logs.read(ctx.kube, res.namespace, res.uid, pods)
    ctx.progress_read[res.uid] = now
    progress = aggregate_progress(records, shards_done=shards_done, shards_total=spec.shards, pods_active=pods_active)
    return progress, (None if job == jobs.merge else ctx.progress_interval)


# --------------------------------------------------------------------------- reuse


def _reusable_source(res: Resource, ctx: Context, seen: Seen,
                     key: str) -> tuple[Mapping[str, Any], Published] | None:
    """Another Ready DatasetPrep of the namespace with this reuse key, read back fresh, and its result.

    Candidates that ran their own Job come before those that reuse one themselves.
    """
    candidates = [c for c in seen.reusable(res.namespace, key) if c.get("uid") != res.uid and c.get("name")]
    candidates.sort(key=lambda c: (bool(c.get("reusedFrom")), c["name"]))
    for cand in candidates:
        with translate_api_errors(f"reading DatasetPrep {cand['name']}"):
            body = ctx.kube.get_datasetprep(res.namespace, cand["name"])
        if body is None or body["metadata"].get("uid") == res.uid or ready_output_key(body) != key:
            continue  # gone, or changed since the watch saw it
        result = reused_result(body)
        if result is not None:
            return body, result
    return None


def _reuse(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, source: Mapping[str, Any],
           result: Published) -> Outcome:
    """Point at ``source``'s output: the training ConfigMap, then Ready with reason ``Reused``; no Job."""
    source_output = read_status(source.get("status")).output
    origin = (source_output.reused_from if source_output else None) or source["metadata"]["name"]
    cm_name, conflict = _publish(res, ctx, seen, spec, result, keep=(), job=None)
    if conflict is not None:
        return conflict
    status = succeeded_status(res.status, spec, result, job=None, config_map=cm_name, generation=res.generation,
                              now=ctx.now(), completion_time=None, reused_from=origin)
    return Outcome(status, events=[Event("Normal", "Reused", f"{status.message}; ConfigMap {cm_name} written")])


# --------------------------------------------------------------------------- a run that ended


def job_pods(ctx: Context, namespace: str, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Job's pods, as the API server has them."""
    meta = job["metadata"]
    with translate_api_errors(f"listing the pods of Job {meta['name']}"):
        return ctx.kube.list_pods(namespace, {JOB_UID_LABEL: meta["uid"]})


def job_error(res: Resource, ctx: Context, job: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> str | None:
    """Why a failed Job failed: the node's reason if it stopped the most telling failed pod (memory,
    eviction, the init container) -- or any pod, when that one said nothing of its own --, else that
    pod's own error (termination message, else log tail), else the Job's Failed condition."""
    pod = culprit(pods)
    error = None
    killed = killed_by_the_node(pod) if pod is not None else None
    if killed is None and not (pod is not None and said_its_own_error(pod)):
        killed = next(filter(None, map(killed_by_the_node, pods)), None)
    if killed is not None:
        return killed
    if pod is not None:
        message = terminated(pod).get("message")
        fallback = None
        if not (message or "").strip():
            fallback = ctx.kube.pod_log_tail(res.namespace, pod["metadata"]["name"], ctx.config.log_tail_lines)
        result = read_result(message, fallback=fallback)
        error = result.error if isinstance(result, Failed) else None
    return error or failure_reason(job)


def _job_failed(res: Resource, ctx: Context, seen: Seen, job: Mapping[str, Any], name: str) -> Outcome:
    """The Job gave up: report the job's own error message (termination message, else log tail)."""
    pods = ended_pods(ctx, watched_pods(seen.pods, res.namespace, job), res.namespace, job, succeeded=False)
    error = job_error(res, ctx, job, pods)
    message = f"Job {name} failed: {error or 'no reason given'}; fix the cause, {retry_hint(res.name)}"
    return Outcome(failed_status(res.status, reason="JobFailed", message=message, generation=res.generation,
                                 now=ctx.now(), job=name),
                   events=[Event("Warning", "JobFailed", message)], counts=[("run_failed", None)])


def _job_succeeded(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, job: Mapping[str, Any],
                   name: str, *, keep: Collection[str]) -> Outcome:
    """The Job that publishes completed: read its report, publish the training ConfigMap, then declare Ready."""
    pods = ended_pods(ctx, watched_pods(seen.pods, res.namespace, job), res.namespace, job, succeeded=True)
    result: JobResult
    if has_succeeded_pod(pods):
        result = last_result(pods)
    else:  # the Job says Complete but its pods are gone (deleted by hand, or pod GC): the result is lost
        result = Failed(error="its pods are gone, so its result cannot be read")
    if not isinstance(result, Published):
        error = result.error if isinstance(result, Failed) else f"it reported {type(result).__name__}, not a dataset"
        message = f"Job {name} completed but its result is unusable: {error}; {retry_hint(res.name)}"
        return Outcome(failed_status(res.status, reason="ResultUnreadable", message=message,
                                     generation=res.generation, now=ctx.now(), job=name),
                       events=[Event("Warning", "ResultUnreadable", message)], counts=[("run_failed", None)])

    lost = _claim_lost(res, ctx, spec, name)
    if lost is not None:
        return lost
    cm_name, conflict = _publish(res, ctx, seen, spec, result, keep=keep, job=name)
    if conflict is not None:
        return conflict
    completion = (job.get("status") or {}).get("completionTime")
    status = succeeded_status(res.status, spec, result, job=name, config_map=cm_name, generation=res.generation,
                              now=ctx.now(), completion_time=completion)
    tokens = status.output.tokens if status.output else None
    return Outcome(status, events=[Event("Normal", "Succeeded", f"{status.message}; ConfigMap {cm_name} written")],
                   counts=[("run_succeeded", tokens)])


def _claim_lost(res: Resource, ctx: Context, spec: DatasetPrepSpec, job: str) -> Outcome | None:
    """Stalled if the output claim was deleted during the run: the files go with its volume, and a
    ConfigMap pointing at them would send training to a claim that is no more. (A claim in use is only
    marked for deletion -- the pod keeps it -- so the run itself finishes first.) The Job is deleted, so
    that its pod no longer holds the claim."""
    claim = spec.output.claim_name
    with translate_api_errors(f"reading PersistentVolumeClaim {claim}"):
        pvc = ctx.kube.get_pvc(res.namespace, claim)
    if pvc is not None and not pvc["metadata"].get("deletionTimestamp"):
        return None
    message = (f"PersistentVolumeClaim {claim} was deleted while Job {job} ran; its output goes with the volume, "
               "so nothing was published. Recreate the claim, then change the spec (or recreate the DatasetPrep) "
               "to run again")
    with translate_api_errors(f"deleting Job {job}"):  # its finished pod would hold the claim in Terminating
        ctx.kube.delete_job(res.namespace, job)
    return Outcome(failed_status(res.status, reason="ClaimDeleted", message=message, generation=res.generation,
                                 now=ctx.now(), job=job),
                   events=[Event("Warning", "ClaimDeleted", message)], counts=[("run_failed", None)])


def _publish(res: Resource, ctx: Context, seen: Seen, spec: DatasetPrepSpec, result: Published, *,
             keep: Collection[str], job: str | None) -> tuple[str, Outcome | None]:
    """Switch over to ``result``: write the training ConfigMap, drop a renamed old one and older Jobs.

    Returns:
        The ConfigMap's name, and a Stalled outcome if a foreign ConfigMap is in the way.
    """
    cm_name = config_map_name(res.name, spec)
    conflict = publish_config_map(res, ctx, cm_name, training_config_data(spec, result))
    if conflict:
        conflict = f"{conflict}; {retry_hint(res.name)}"
        events = [Event("Warning", "ConfigMapConflict", conflict)] if res.status.message != conflict else []
        return cm_name, Outcome(failed_status(res.status, reason="ConfigMapConflict", message=conflict,
                                              generation=res.generation, now=ctx.now(), job=job),
                                events=events, error=kopf.PermanentError(conflict))
    old_cm = res.status.config_map_name
    if old_cm and old_cm != cm_name:
        delete_own_config_map(res, ctx, old_cm)
    _delete_superseded_jobs(res, ctx, seen, keep=keep, finished_too=True)
    return cm_name, None


def publish_config_map(res: Resource, ctx: Context, name: str, data: Mapping[str, str]) -> str | None:
    """Create or update the training ConfigMap (of a DatasetPrep or a DatasetBlend); returns a message if
    a foreign one is in the way.

    Created first (one request when there is none, the usual case); only a 409 reads the one there.
    """
    manifest = build_config_map(name, res.namespace, res.uid, data)
    kopf.adopt(manifest, owner=dict(res.body))
    with translate_api_errors(f"writing ConfigMap {name}"):
        try:
            ctx.kube.create_config_map(res.namespace, manifest)
            return None
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
        existing = ctx.kube.get_config_map(res.namespace, name)
        if existing is None:
            raise kopf.TemporaryError(f"ConfigMap {name} vanished after a create conflict", delay=1)
        if not owned_by(existing, res.uid):
            return f"ConfigMap {name} exists and does not belong to this {res.body.get('kind') or 'DatasetPrep'}; " \
                   f"delete it or set spec.trainingConfig.configMapName"
        if existing.get("data") == manifest["data"]:
            return None
        manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        ctx.kube.replace_config_map(res.namespace, manifest)
    return None


def delete_own_config_map(res: Resource, ctx: Context, name: str) -> None:
    with translate_api_errors(f"deleting the previous ConfigMap {name}"):
        existing = ctx.kube.get_config_map(res.namespace, name)
        if existing is not None and owned_by(existing, res.uid):
            ctx.kube.delete_config_map(res.namespace, name)
