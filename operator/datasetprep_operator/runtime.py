"""The operator's runtime: what the watches saw, a work queue of DatasetPreps and DatasetBlends, and the
one routine that turns a reconciler's decision into writes and effects, each exactly once.

``handlers.py`` registers kopf entry points that only *note* things: a DatasetPrep's or DatasetBlend's
event stores its body and adds its key to the :class:`~.workqueue.WorkQueue` (a DatasetPrep's also adds
the blends that name it); a Job's or pod's event (our own objects only: the watches carry a label
selector) adds its owner's key. The queue works on each key in one thread at a time; for a DatasetPrep
:meth:`Runtime.sync` then:

1. takes the newest body known (the watch's, or the one our own last write returned, whichever is
   newer: a watch event may lag behind our write);
2. while the resource is being deleted and carries our finalizer: one step of the data clean-up
   (:mod:`.deletion`); the finalizer comes off with a conditional write;
3. keeps the finalizer on exactly the resources that ask for their data to be deleted;
4. asks :func:`.reconcile.reconcile` for the decision; writes the status it decides with the
   ``resourceVersion`` it was decided on (a 409 means it was decided on a stale body: re-read,
   decide again); and applies the transition's effects -- events, metrics, log lines -- only after
   that write won. So whatever the API latency, each transition is written once and each event and
   metric happens once per transition.

A DatasetBlend goes the same way (:meth:`Runtime.step_blend`: :func:`.blendreconcile.reconcile_blend`, the
conditional status write, then its events); it carries no finalizer.

Nothing lives only in memory: a restarted operator rebuilds all this from the watches' first
listing. The per-operator state lives in kopf's ``memo`` as a :class:`Runtime`, never in module
globals, so several operators can run in one process (as the tests do).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from datasetprep.blendspec import parse_blend_spec
from datasetprep.spec import parse_spec
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.blendinputs import summary as prep_summary
from datasetprep_operator.blendjobs import COMPONENT as FILES_COMPONENT
from datasetprep_operator.blendreconcile import BlendSeen, reconcile_blend
from datasetprep_operator.deletion import delete_data
from datasetprep_operator.kube import Kube, Stale, api_client_from_environment, api_reason, translate_api_errors
from datasetprep_operator.metrics import PHASES, Metrics
from datasetprep_operator.naming import ANNOTATION_OWNER_NAME, JOB_NAME_LABEL, LABEL_COMPONENT, LABEL_OWNER_UID
from datasetprep_operator.reconcile import Context, Event, Outcome, Resource, Seen, reconcile
from datasetprep_operator.status import read_status, ready_output_key
from datasetprep_operator.workqueue import WorkQueue

FINALIZER = "datasetprep.io/finalizer"
"""Only on DatasetPreps with ``spec.deleteDataOnDelete`` (their data is deleted before they go)."""
KOPF_FINALIZER = "kopf.datasetprep.io/finalizer"
"""The finalizer older operator versions had kopf put on DatasetBlends (for their kopf timer). No kopf handler
needs one now; the runtime removes it from a blend when it sees it (:meth:`Runtime.step_blend`)."""
KOPF_SETTINGS_FINALIZER = "kopf.datasetprep.io/none"
"""The name kopf is told its finalizer has. kopf would add it for change handlers, timers or daemons (none is
registered: it adds nothing) and strips it, with a write of its own, from any object where no handler needs it;
so it is a name nobody puts anywhere: not :data:`FINALIZER` (older versions let kopf manage that one; the runtime
does now), not :data:`KOPF_FINALIZER` (the runtime removes that one, conditionally, like all its writes)."""
#: Attempts at one decision when the status write keeps losing to newer changes (409).
MAX_CONFLICTS = 5

logger = logging.getLogger("datasetprep_operator")

Key = tuple[str, str]  # (namespace, name) of a DatasetPrep


@dataclasses.dataclass(frozen=True)
class BlendKey:
    """(namespace, name) of a DatasetBlend: the work queue's key for it (never equal to a DatasetPrep's)."""

    namespace: str
    name: str


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` without ``metadata.managedFields``: the API server's field-ownership bookkeeping,
    which nothing here reads, is over half of a Ready DatasetPrep kept in memory (14 of 26 KiB; with 1,000
    resources, 14 MiB of the operator's RSS: bench/RESULTS.md)."""
    kept = copy.deepcopy({k: v for k, v in body.items() if k != "metadata"})
    kept["metadata"] = copy.deepcopy({k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"})
    return kept


def newer(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """``b`` is at least as new as ``a`` (same object): by resourceVersion where both are numbers
    (etcd's revisions), else ``b`` wins -- a wrong guess only costs a 409 and a re-read."""
    if a is None:
        return True
    ra, rb = (x.get("metadata", {}).get("resourceVersion") or "" for x in (a, b))
    if ra.isdigit() and rb.isdigit():
        return int(rb) >= int(ra)
    return True


class Bodies:
    """The newest body of each object of one kind this operator knows, by key; and keys by uid."""

    def __init__(self, make_key: Callable[[str, str], Hashable] = lambda namespace, name: (namespace, name)) -> None:
        self._make_key = make_key
        self._bodies: dict[Any, dict[str, Any]] = {}
        self._keys: dict[str, Any] = {}

    def key(self, body: Mapping[str, Any]) -> Any:
        meta = body["metadata"]
        return self._make_key(meta["namespace"], meta["name"])

    def note(self, body: Mapping[str, Any]) -> Any:
        """Keep ``body`` (from a watch event or a write's response) unless a newer one is known."""
        key = self.key(body)
        current = self._bodies.get(key)
        if current is not None and current["metadata"].get("uid") != body["metadata"].get("uid"):
            current = None  # deleted and created again under the same name
        if newer(current, body):
            self._bodies[key] = without_managed_fields(body)
            self._keys[body["metadata"]["uid"]] = key
        return key

    def forget(self, body: Mapping[str, Any]) -> Any:
        key = self.key(body)
        current = self._bodies.get(key)
        if current is not None and current["metadata"].get("uid") == body["metadata"].get("uid"):
            del self._bodies[key]
        self._keys.pop(body["metadata"].get("uid"), None)
        return key

    def get(self, key: Hashable) -> dict[str, Any] | None:
        body = self._bodies.get(key)
        return copy.deepcopy(body) if body is not None else None

    def key_of(self, uid: str | None) -> Any:
        return self._keys.get(uid) if uid else None

    def __len__(self) -> int:
        return len(self._bodies)


@dataclasses.dataclass
class Indexes:
    """kopf's watch-fed indexes, read from the worker threads (copies, retried if the loop changes them)."""

    jobs: Mapping[Any, Any] | None = None
    jobs_by_owner: Mapping[Any, Any] | None = None
    pods: Mapping[Any, Any] | None = None
    reusable: Mapping[Any, Any] | None = None
    preps: Mapping[Any, Any] | None = None
    """Every DatasetPrep's summary by (namespace, name), for the blends."""

    @staticmethod
    def _values(index: Mapping[Any, Any] | None, key: Any) -> list[Any]:
        for _ in range(5):
            try:
                return list((index or {}).get(key, ()))
            except RuntimeError:  # the event loop changed the store while we copied it
                continue
        return []

    def seen(self) -> Seen:
        return Seen(job=lambda ns, name: next(iter(self._values(self.jobs, (ns, name))), None), jobs_of=lambda ns, uid: self._values(self.jobs_by_owner, (ns, uid)),
                    pods=lambda ns, job_name: self._values(self.pods, (ns, job_name)),
                    reusable=lambda ns, key: self._values(self.reusable, (ns, key)))


class Runtime:
    """What one running operator keeps: settings, API client, metrics, bodies, indexes and the queue."""

    def __init__(self, config: OperatorConfig, metrics: Metrics, kube: Kube, *, indexes: Indexes | None = None,
                 ctx: Context | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.kube = kube
        self.ctx = ctx or Context(kube=kube, config=config)
        self.indexes = indexes or Indexes()
        self.bodies = Bodies()
        self.blends = Bodies(BlendKey)
        self.components: dict[BlendKey, frozenset[str]] = {}
        """The DatasetPreps each DatasetBlend names: a change of one of them queues the blends that name it."""
        self.queue: WorkQueue | None = None
        self.listed = False
        """The first watch event came: kopf calls the handlers only once every watched kind's first listing is
        in the indexes, so from now on a look finds each resource's Jobs and pods there."""

    # -- what the watches saw (called from kopf's event handlers, in the event loop)
    def _first_event(self) -> None:
        if not self.listed:
            self.listed = True
            jobs, pods = (sum(len(store) for store in list((index or {}).values()))
                          for index in (self.indexes.jobs, self.indexes.pods))
            logger.info(f"The watches' first listings are in: {jobs} Jobs and {pods} pods of ours indexed; "
                        "looking at every DatasetPrep and DatasetBlend")

    def saw_datasetprep(self, event: Mapping[str, Any]) -> None:
        self._first_event()
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        if not meta.get("uid"):
            return
        if event.get("type") == "DELETED":
            key = self.bodies.forget(body)
            if self.queue is not None:
                self.queue.forget(key)
            self.ctx.forget_progress(meta["uid"])
        else:
            self._add(self.bodies.note(body))
        for blend, names in list(self.components.items()):
            if blend.namespace == meta.get("namespace") and meta.get("name") in names:
                self._add(blend)

    def saw_blend(self, event: Mapping[str, Any]) -> None:
        self._first_event()
        body = event.get("object") or {}
        if not (body.get("metadata") or {}).get("uid"):
            return
        if event.get("type") == "DELETED":
            key = self.blends.forget(body)
            self.components.pop(key, None)
            if self.queue is not None:
                self.queue.forget(key)
            return
        key = self.blends.note(body)
        self.components[key] = _component_names(self.blends.get(key) or body)
        self._add(key)

    def saw_child(self, body: Mapping[str, Any]) -> None:
        """A Job or pod of ours changed: look at its DatasetPrep or DatasetBlend."""
        self._first_event()
        meta = body.get("metadata") or {}
        uid = (meta.get("labels") or {}).get(LABEL_OWNER_UID)
        key = self.bodies.key_of(uid) or self.blends.key_of(uid)
        owner = (meta.get("annotations") or {}).get(ANNOTATION_OWNER_NAME)
        if key is None and owner:
            blend = (meta.get("labels") or {}).get(LABEL_COMPONENT) == FILES_COMPONENT
            key = BlendKey(meta.get("namespace"), owner) if blend else (meta.get("namespace"), owner)
        if key is not None:
            self._add(key)

    def _add(self, key: Hashable, delay: float | None = None) -> None:
        if self.queue is not None:
            self.queue.add(key, delay)

    # -- the unit of work (a worker thread)
    def sync(self, key: Hashable) -> float | None:
        """Look at one DatasetPrep or DatasetBlend: decide, write, apply the effects. Returns seconds until it
        wants another look without an event (None: none needed); raises on unexpected errors (retried)."""
        if isinstance(key, BlendKey):
            return self.sync_blend(key)
        body = self.bodies.get(key)
        for _ in range(MAX_CONFLICTS):
            if body is None:
                return None
            try:
                return next_look(self.step(body))
            except kopf.TemporaryError as exc:  # an API call failed: look again later
                self.metrics.reconcile_error()
                log(body, logging.INFO, f"will look again in {exc.delay or 5:.0f}s: {exc}")
                return float(exc.delay or 5)
            except Stale:
                namespace, name = key  # type: ignore[misc]
                with translate_api_errors(f"reading DatasetPrep {name}"):
                    body = self.kube.get_datasetprep(namespace, name)
                if body is not None:
                    self.bodies.note(body)
        return 1.0

    def step(self, body: Mapping[str, Any], seen: Seen | None = None) -> Outcome:
        """One decision on ``body`` and, if it wins its conditional write, its effects.

        Raises:
            Stale: ``body`` is not the stored version any more (decide again on a fresh one).
            kopf.TemporaryError: an API call failed.
        """
        res = Resource(body)
        meta = res.meta
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            return self._deleting(res, finalizers) if FINALIZER in finalizers else Outcome()
        want = _wants_finalizer(res)
        if want != (FINALIZER in finalizers):
            changed = finalizers + [FINALIZER] if want else [f for f in finalizers if f != FINALIZER]
            res = Resource(self._write(res, lambda rv: self.kube.patch_datasetprep_finalizers(
                res.namespace, res.name, rv, changed)))
        outcome = self._decide(res, lambda: reconcile(res, self.ctx, seen=seen or self.indexes.seen()),
                               lambda rv, status: self.kube.patch_datasetprep_status(res.namespace, res.name, rv,
                                                                                     status), self.bodies)
        self._apply(res, outcome)
        if outcome.error is not None and not isinstance(outcome.error, kopf.TemporaryError):
            log(res.body, logging.DEBUG, f"{outcome.error}")
        return outcome

    def _decide(self, res: Resource, decide: Callable[[], Any],
                write_status: Callable[[str, dict[str, Any]], dict[str, Any]], store: Bodies) -> Any:
        """``decide()`` on ``res``, and the status it decides written conditionally (:meth:`_write`:
        ``write_status(resourceVersion, status)``). An outcome with effects but no status change is a bug: said in
        the log, its effects dropped.

        Returns:
            The outcome (an :class:`Outcome` or a ``BlendOutcome``), its effects not applied yet.
        """
        try:
            outcome = decide()
        except (kopf.TemporaryError, Stale):
            raise
        except Exception:
            self.metrics.reconcile_error()
            raise
        if outcome.status:
            self._write(res, lambda rv: write_status(rv, outcome.status), store=store)
        elif outcome.events or getattr(outcome, "counts", None):
            log(res.body, logging.WARNING, f"effects without a status change dropped: "
                f"{[e.reason for e in outcome.events]} {getattr(outcome, 'counts', [])}")
            outcome.events = []
            if hasattr(outcome, "counts"):
                outcome.counts = []
        return outcome

    def _write(self, res: Resource, write: Callable[[str], dict[str, Any]], *,
               store: Bodies | None = None) -> dict[str, Any]:
        """One conditional write (at the body's resourceVersion); the new body is kept (in ``store``, the
        DatasetPreps' by default). Raises :class:`Stale` on a 409, and on a 404: the object was deleted since
        it was read (its namespace too, perhaps); the caller's fresh read finds it gone and stops there."""
        with translate_api_errors(f"updating {res.body.get('kind') or 'DatasetPrep'} {res.name}"):
            try:
                new = write(res.meta["resourceVersion"])
            except ApiException as exc:
                if exc.status in (404, 409):
                    raise Stale() from exc
                raise
        (store or self.bodies).note(new)
        return new

    def _apply(self, res: Resource, outcome: Outcome) -> None:
        """The transition's effects, after its write won: events (logged too), metrics, log lines."""
        for event in outcome.events:
            self.post(res.body, event)
        for name, value in outcome.counts:
            if name == "run_started":
                self.metrics.run_started()
            elif name == "run_succeeded":
                self.metrics.run_succeeded(value)
            elif name == "run_failed":
                self.metrics.run_failed()
        for line in outcome.logs:
            log(res.body, logging.INFO, line)

    def post(self, body: Mapping[str, Any], event: Event) -> None:
        """Post one event about ``body`` and log it; a failed post is logged, never retried as a whole."""
        log(body, logging.WARNING if event.type == "Warning" else logging.INFO, f"{event.reason}: {event.message}")
        try:
            self.kube.post_event(body, event.type, event.reason, event.message)
        except Exception as exc:  # noqa: BLE001 - the decision stands; the event is best effort
            detail = api_reason(exc) if isinstance(exc, ApiException) else exc
            log(body, logging.WARNING, f"could not post the {event.reason} event: {detail}")

    def _deleting(self, res: Resource, finalizers: list[str]) -> Outcome:
        """One step of ``deleteDataOnDelete``; the finalizer comes off when it is done.

        A step starts Jobs that must run once (the clean-up), so it is taken only on the stored
        version of the object (one GET: deletions are rare); a stale body is :class:`Stale`.
        """
        with translate_api_errors(f"reading DatasetPrep {res.name}"):
            fresh = self.kube.get_datasetprep(res.namespace, res.name)
        if fresh is None or fresh["metadata"].get("resourceVersion") != res.meta.get("resourceVersion"):
            raise Stale()
        outcome = delete_data(res, self.ctx)
        if isinstance(outcome.error, kopf.TemporaryError):
            for event in outcome.events:  # a step that started something (the clean-up Job)
                self.post(res.body, event)
            return outcome
        if outcome.error is not None:
            raise outcome.error
        self._write(res, lambda rv: self.kube.patch_datasetprep_finalizers(
            res.namespace, res.name, rv, [f for f in finalizers if f != FINALIZER]))
        for event in outcome.events:
            self.post(res.body, event)
        if outcome.cleanup:
            with translate_api_errors(f"deleting Job {outcome.cleanup}"):
                self.kube.delete_job(res.namespace, outcome.cleanup)
        return outcome

    # -- DatasetBlends
    def sync_blend(self, key: BlendKey) -> float | None:
        """Look at one DatasetBlend (as :meth:`sync`). A 409 needs no re-read: the newer version it
        stands for reaches the blend's watch, and that event queues the blend again."""
        body = self.blends.get(key)
        if body is None:
            return None
        try:
            return self.step_blend(body)
        except kopf.TemporaryError as exc:
            self.metrics.reconcile_error()
            log(body, logging.INFO, f"will look again in {exc.delay or 5:.0f}s: {exc}")
            return float(exc.delay or 5)
        except Stale:
            return None

    def step_blend(self, body: Mapping[str, Any]) -> float | None:
        """One decision on a DatasetBlend and, if its conditional status write wins, its events. A blend
        carries no finalizer (deleting it deletes nothing but what its owner references take along): the one
        older operator versions had kopf put on it is removed on sight, so a blend deleted while no operator
        runs is not held.

        Returns:
            Seconds until the next look without an event (a temporary error), else None.
        """
        res = Resource(body)
        finalizers = list(res.meta.get("finalizers") or [])
        if KOPF_FINALIZER in finalizers:
            res = Resource(self._write(res, lambda rv: self.kube.patch_datasetblend_finalizers(
                res.namespace, res.name, rv, [f for f in finalizers if f != KOPF_FINALIZER]), store=self.blends))
            log(res.body, logging.INFO, f"removed the finalizer {KOPF_FINALIZER} an older operator version put on it "
                "(a DatasetBlend needs none)")
        if res.meta.get("deletionTimestamp"):
            return None
        outcome = self._decide(res, lambda: reconcile_blend(res, self.ctx, self.blend_seen()),
                               lambda rv, status: self.kube.patch_datasetblend_status(res.namespace, res.name, rv,
                                                                                      status), self.blends)
        for event in outcome.events:
            self.post(res.body, event)
        if isinstance(outcome.error, kopf.TemporaryError):
            return float(outcome.error.delay or 5)
        if outcome.error is not None and outcome.status:  # a new permanent error (not the one already shown)
            self.metrics.reconcile_error()
            log(res.body, logging.DEBUG, f"{outcome.error}")
        return None

    def blend_seen(self) -> BlendSeen:
        """What the blends read: the DatasetPreps as this operator last knows them (the watch's or our own
        write's answer, whichever is newer), and the watched Jobs and pods."""
        seen = self.indexes.seen()

        def prep(namespace: str, name: str) -> Mapping[str, Any] | None:
            body = self.bodies.get((namespace, name))  # may be newer than the index: our own write's answer
            if body is not None:
                return prep_summary(body)
            return next(iter(Indexes._values(self.indexes.preps, (namespace, name))), None)

        return BlendSeen(prep=prep, job=seen.job, jobs_of=seen.jobs_of, pods=seen.pods)


def _component_names(body: Mapping[str, Any]) -> frozenset[str]:
    """The DatasetPreps a DatasetBlend names (none if its spec is invalid: it is Stalled until it changes)."""
    try:
        return frozenset(c.dataset_prep for _, c in parse_blend_spec(dict(body.get("spec") or {})).all_components())
    except ValidationError:
        return frozenset()


def _wants_finalizer(res: Resource) -> bool:
    """Only a resource whose data is to be deleted with it carries the finalizer."""
    try:
        return parse_spec(dict(res.spec)).delete_data_on_delete
    except ValidationError:
        return False


def next_look(outcome: Outcome) -> float | None:
    """Seconds until an outcome wants another look without an event (None: none)."""
    if isinstance(outcome.error, kopf.TemporaryError):
        return float(outcome.error.delay or 5)
    return outcome.requeue  # a permanent error: nothing changes until the resource does


def log(body: Mapping[str, Any], level: int, message: str) -> None:
    """One log line about a DatasetPrep: ``namespace/name: message``, with the object reference for the
    JSON format (``--log-format json``)."""
    meta = body.get("metadata") or {}
    ref = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta.get("name"),
           "uid": meta.get("uid"), "namespace": meta.get("namespace")}
    logger.log(level, f"{meta.get('namespace')}/{meta.get('name')}: {message}", extra={"k8s_ref": ref})


# --------------------------------------------------------------------------- what the indexes keep


def job_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the Job indexes keep of each of our Jobs: its state, owner, creation time and image."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    containers = (((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}])
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "annotations", "ownerReferences",
                                              "creationTimestamp")},
        "spec": {"completions": spec.get("completions"),
                 "template": {"spec": {"containers": [{"image": containers[0].get("image")}]}}},
        "status": dict(body.get("status") or {}),
    }


def pod_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the pod index keeps of each job pod: enough to know whose log to read for progress (job pods
    have no API credentials: their progress is in their logs, see :mod:`.podprogress`), their result or
    error, the job container's memory limit (named when the node killed it for memory), and why it
    does not start (see :mod:`.diagnosis`)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        return [{k: cs.get(k) for k in ("name", "state", "restartCount")} for cs in status.get(key) or []]

    return {
        "metadata": {"name": meta.get("name"), "creationTimestamp": meta.get("creationTimestamp"),
                     "deletionTimestamp": meta.get("deletionTimestamp"), "uid": meta.get("uid"),
                     "labels": dict(meta.get("labels") or {})},
        "spec": {"containers": [{"name": c.get("name"), "resources": {"limits": {
                     k: v for k, v in ((c.get("resources") or {}).get("limits") or {}).items() if k == "memory"}}}
                                for c in (body.get("spec") or {}).get("containers") or []]},
        "status": {"phase": status.get("phase"), "reason": status.get("reason"), "message": status.get("message"),
                   "conditions": [c for c in status.get("conditions") or []
                                  if c.get("type") in ("PodScheduled", "DisruptionTarget")],
                   "containerStatuses": containers("containerStatuses"),
                   "initContainerStatuses": containers("initContainerStatuses")},
    }


def job_key(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """A pod's index key: ``(namespace, job name)``."""
    meta = body.get("metadata") or {}
    job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
    return (meta.get("namespace"), job) if job else None


def reusable_entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    """The reuse index's entry for a DatasetPrep: ``{(namespace, reuse key): summary}`` while it is
    Ready with an output others may point at, else nothing (which drops an earlier entry)."""
    key = ready_output_key(body)
    if key is None:
        return {}
    meta = body.get("metadata") or {}
    output = read_status(body.get("status")).output
    return {(meta.get("namespace"), key): {"name": meta.get("name"), "uid": meta.get("uid"),
                                           "reusedFrom": output.reused_from if output else None}}


def prep_entry(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    """The DatasetPrep index's entry, read by the blends: ``{(namespace, name): summary}``."""
    return {(namespace, name): prep_summary(body)}


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


# --------------------------------------------------------------------------- start and stop


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf settings for this operator (called from the startup handler, before any watch starts)."""
    from datasetprep_operator.naming import LABEL_MANAGED_BY, MANAGED_BY

    # Our Jobs and pods only, filtered by the API server: the operator's cost does not grow with the
    # cluster's other workloads (a training cluster has thousands of pods).
    ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.watching.label_selectors["batch", "jobs"] = ours
    settings.watching.label_selectors["", "pods"] = ours
    # kopf writes nothing on our objects: status is ours (conditional writes), no handler progress, no
    # diff-base annotation (no change handler, timer or daemon is registered), no finalizer of its own. kopf
    # removes "its" finalizer from any object where no handler needs one, so it must not be one we use.
    settings.persistence.finalizer = KOPF_SETTINGS_FINALIZER
    # Namespaced with exact names: no namespace discovery (it needs cluster-wide `list namespaces`,
    # which the chart's namespaced RBAC does not grant: kopf would retry 403s for minutes). It also keeps
    # a deleted namespace served to the end: kopf's namespace watch drops a namespace as soon as it is
    # marked terminating, before its objects go, and their finalizers would then hold it forever
    # (tests/test_control_faults_e2e.py::test_namespace_deleted_mid_run_goes_away_cleanly).
    if config.namespaces_are_exact:
        settings.scanning.disabled = True
    settings.posting.enabled = False  # the events we post go through the runtime (counted, logged)
    # Watches end server-side every ~10 min and are re-established; a silent connection is dropped.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 120


class _QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler 'job_event' succeeded." line: the watch handlers run on every event of
    every object (they only queue work), so the line would drown the decisions in the log."""

    NAMES = ("'datasetprep_event'", "'datasetblend_event'", "'job_event'", "'pod_event'")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Handler ") and message.endswith(" succeeded.")
                    and any(name in message for name in self.NAMES))


QUIET_WATCH_HANDLERS = _QuietWatchHandlers()


async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, phases: Mapping[str, Any],
                indexes: Indexes) -> Runtime:
    """Build the per-operator state and start its workers; ``memo.config`` (set by ``cli.run``) wins
    over the environment.

    Args:
        phases: kopf's index of DatasetPreps by phase, read by the metrics at scrape time.
        indexes: kopf's Job, pod and reuse indexes.
    """
    try:
        config = memo.get("config") or OperatorConfig.from_env()
    except ValueError as exc:  # a misconfiguration does not fix itself: stop instead of retrying
        raise kopf.PermanentError(f"invalid operator settings: {exc}") from exc
    configure_settings(settings, config)
    logging.getLogger("kopf.objects").addFilter(QUIET_WATCH_HANDLERS)  # the same object: added once
    metrics = Metrics()
    metrics.count_phases_from(phase_counts(phases))
    if config.metrics_port:
        metrics.serve(config.metrics_port)
        logger.info(f"Serving Prometheus metrics on port {config.metrics_port}")
    kube = Kube(api_client_from_environment(pool_size=config.workers + 4))
    runtime = Runtime(config, metrics, kube, indexes=indexes)
    runtime.queue = WorkQueue(runtime.sync, concurrency=config.workers)
    logger.info(f"datasetprep operator ready: {config.scope_text}, {config.workers} workers")
    return runtime


async def stop(runtime: Runtime | None) -> None:
    """Release what :func:`start` took (workers, the metrics port, the API connection pool)."""
    if runtime is None:
        return
    if runtime.queue is not None:
        await runtime.queue.stop()
    runtime.metrics.stop()
    runtime.kube.api.close()
