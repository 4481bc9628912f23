"""An in-memory stand-in for the few API calls of ``datasetprep_operator.kube.Kube``, and a World
around one DatasetPrep, for the reconciler's edge cases (test_operator_reconcile*.py,
test_operator_deletion.py, test_operator_exactly_once.py). The real behaviour is proven against the
API server (``*_e2e.py``).

The fake keeps what matters for exactly-once: every stored DatasetPrep has a ``resourceVersion`` that
moves on each write, and a write made at an older one fails with 409, as the API server's
optimistic concurrency does. A World runs the operator's own runtime (:class:`Runtime.step`: decide,
conditional write, effects), with a watch that is up to date unless a test passes a lagging one.
"""
from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from datasetprep.hashes import spec_hash
from datasetprep.spec import parse_spec
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.jobs import RunJobs
from datasetprep_operator.naming import LABEL_OWNER_UID, job_name
from datasetprep_operator.reconcile import Context, Outcome, Seen
from datasetprep_operator.runtime import Runtime, pod_summary
from datasetprep_operator.status import ready_output_key
from specs import RESULT, SPEC


def conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


def merge(current: dict, patch: dict) -> dict:
    """JSON merge patch, as the API server applies it."""
    out = copy.deepcopy(current)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    """DatasetPreps, Jobs, pods, ConfigMaps and events in dicts, with the calls recorded."""

    def __init__(self) -> None:
        self.datasetpreps: dict[tuple[str, str], dict] = {}
        self.datasetblends: dict[tuple[str, str], dict] = {}
        self.jobs: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.config_maps: dict[str, dict] = {}
        self.events: list[dict] = []
        self.job_events: list[dict] = []  # what list_events returns (e.g. the Job controller's FailedCreate)
        self.calls: list[str] = []
        self.steal_create = None  # a Job someone else creates just before ours
        self.claims = {"data"}
        self.logs: dict[str, str] = {}  # pod name -> its log
        self.log_reads: list[str] = []
        self._versions = itertools.count(1)

    # -- DatasetPreps, with resourceVersion preconditions
    def add_datasetprep(self, body: dict) -> dict:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.datasetpreps[(body["metadata"]["namespace"], body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    def touch(self, namespace: str, name: str) -> None:
        """Someone else changed the object (a new resourceVersion)."""
        self.datasetpreps[(namespace, name)]["metadata"]["resourceVersion"] = str(next(self._versions))

    def get_datasetprep(self, namespace, name):
        self.calls.append(f"get_datasetprep {name}")
        return copy.deepcopy(self.datasetpreps.get((namespace, name)))

    def list_datasetpreps(self, namespace):
        self.calls.append("list_datasetpreps")
        return [copy.deepcopy(b) for (ns, _), b in self.datasetpreps.items() if ns == namespace]

    def _conditional(self, namespace, name, resource_version, patch, store=None):
        store = self.datasetpreps if store is None else store
        stored = store.get((namespace, name))
        if stored is None:
            raise ApiException(status=404, reason="Not Found")
        if stored["metadata"]["resourceVersion"] != resource_version:
            self.calls[-1] += " -> 409"
            raise conflict()
        new = merge(stored, patch)
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        store[(namespace, name)] = new
        return copy.deepcopy(new)

    def patch_datasetprep_status(self, namespace, name, resource_version, status):
        self.calls.append(f"patch_status {name}")
        return self._conditional(namespace, name, resource_version, {"status": status})

    def patch_datasetprep_finalizers(self, namespace, name, resource_version, finalizers):
        self.calls.append(f"patch_finalizers {name}")
        return self._conditional(namespace, name, resource_version, {"metadata": {"finalizers": finalizers}})

    # -- DatasetBlends, the same way
    def add_datasetblend(self, body: dict) -> dict:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.datasetblends[(body["metadata"]["namespace"], body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    def patch_datasetblend_status(self, namespace, name, resource_version, status):
        self.calls.append(f"patch_blend_status {name}")
        return self._conditional(namespace, name, resource_version, {"status": status}, self.datasetblends)

    def patch_datasetblend_finalizers(self, namespace, name, resource_version, finalizers):
        self.calls.append(f"patch_blend_finalizers {name}")
        return self._conditional(namespace, name, resource_version, {"metadata": {"finalizers": finalizers}},
                                 self.datasetblends)

    def post_event(self, obj, type_, reason, message):
        self.calls.append(f"post_event {reason}")
        self.events.append({"name": obj["metadata"]["name"], "type": type_, "reason": reason, "message": message})

    def list_events(self, namespace, uid):
        self.calls.append("list_events")
        return copy.deepcopy(self.job_events)

    # -- children
    def get_pvc(self, namespace, name):
        self.calls.append(f"get_pvc {name}")
        return {"metadata": {"name": name}} if name in self.claims else None

    def get_job(self, namespace, name):
        self.calls.append(f"get_job {name}")
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, namespace, body):
        self.calls.append(f"create_job {body['metadata']['name']}")
        if self.steal_create is not None:
            self.jobs[body["metadata"]["name"]] = self.steal_create
            raise conflict()
        if body["metadata"]["name"] in self.jobs:
            raise conflict()
        job = copy.deepcopy(body)
        job["metadata"]["uid"] = f"job-uid-{len(self.jobs)}"
        job["status"] = {}
        self.jobs[job["metadata"]["name"]] = job
        return copy.deepcopy(job)

    def list_jobs(self, namespace, selector):
        self.calls.append("list_jobs")
        return [copy.deepcopy(j) for j in self.jobs.values()
                if all(j["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]

    def delete_job(self, namespace, name):
        self.calls.append(f"delete_job {name}")
        self.jobs.pop(name, None)

    def list_pods(self, namespace, selector):
        self.calls.append("list_pods")
        return copy.deepcopy(self.pods)

    def pod_log_tail(self, namespace, name, lines, *, limit_bytes=None, container=None):
        self.log_reads.append(name)
        return self.logs.get(name)

    def get_config_map(self, namespace, name):
        self.calls.append(f"get_config_map {name}")
        return copy.deepcopy(self.config_maps.get(name))

    def create_config_map(self, namespace, body):
        self.calls.append(f"create_config_map {body['metadata']['name']}")
        if body["metadata"]["name"] in self.config_maps:
            self.calls[-1] += " -> 409"
            raise conflict()
        cm = copy.deepcopy(body)
        cm["metadata"]["resourceVersion"] = "1"
        self.config_maps[body["metadata"]["name"]] = cm
        return cm

    def replace_config_map(self, namespace, body):
        self.calls.append(f"replace_config_map {body['metadata']['name']}")
        self.config_maps[body["metadata"]["name"]] = copy.deepcopy(body)
        return body

    def delete_config_map(self, namespace, name):
        self.calls.append(f"delete_config_map {name}")
        self.config_maps.pop(name, None)

    def writes(self, prefix: str = "", *, refused: bool = True) -> list[str]:
        """The recorded calls that change something (optionally only those starting with ``prefix``;
        ``refused=False``: only those that were not refused with a 409)."""
        verbs = ("create_", "patch_", "replace_", "delete_", "post_")
        return [c for c in self.calls if c.startswith(verbs) and c.startswith(prefix)
                and (refused or not c.endswith("-> 409"))]


class Tally:
    def __init__(self) -> None:
        self.started = self.succeeded = self.failed = self.errors = 0
        self.tokens = 0

    def run_started(self):
        self.started += 1

    def run_succeeded(self, tokens):
        self.succeeded += 1
        self.tokens += tokens or 0

    def run_failed(self):
        self.failed += 1

    def reconcile_error(self):
        self.errors += 1


class World:
    """One DatasetPrep, the fake API, and the operator's runtime deciding and writing."""

    def __init__(self, spec: dict | None = None, *, name: str = "wiki", uid: str = "uid-1") -> None:
        self.kube = FakeKube()
        self.metrics = Tally()
        self.clock = [1_000_000.0]
        self.restart()
        self.key = ("ml", name)
        self.kube.add_datasetprep({
            "apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep",
            "metadata": {"name": name, "namespace": "ml", "uid": uid, "generation": 1},
            "spec": copy.deepcopy(spec or SPEC), "status": {},
        })

    def restart(self) -> None:
        """A new operator process (nothing in memory)."""
        self.ctx = Context(kube=self.kube, config=OperatorConfig(), now=lambda: "T", wall=lambda: self.clock[0])
        self.runtime = Runtime(self.ctx.config, self.metrics, self.kube, ctx=self.ctx)

    @property
    def body(self) -> dict:
        """The DatasetPrep as stored (tests may change it in place, like another client would)."""
        return self.kube.datasetpreps[self.key]

    def watched(self) -> Seen:
        """What an up-to-date watch sees: the fake's Jobs, and its pods as the pod index keeps them."""
        uid = self.body["metadata"]["uid"]
        return Seen(job=lambda ns, name: copy.deepcopy(self.kube.jobs.get(name)),
                    jobs_of=lambda ns, owner: [copy.deepcopy(j) for j in self.kube.jobs.values()
                                               if j["metadata"].get("labels", {}).get(LABEL_OWNER_UID) == owner == uid],
                    pods=lambda ns, job: [pod_summary(p) for p in self.kube.pods])

    def run(self, seen: Seen | None = None, body: dict | None = None) -> Outcome:
        """One look by the runtime at ``body`` (default: the stored one, as a caught-up watch delivers it)."""
        return self.runtime.step(copy.deepcopy(body if body is not None else self.body), seen=seen or self.watched())

    def change_spec(self, **changes) -> None:
        self.body["spec"].update(changes)
        self.body["metadata"]["generation"] += 1
        self.kube.touch(*self.key)

    def annotate(self, **annotations) -> None:
        self.body["metadata"].setdefault("annotations", {}).update(annotations)
        self.kube.touch(*self.key)

    @property
    def job_name(self) -> str:
        retry = (self.body["metadata"].get("annotations") or {}).get("datasetprep.io/retry")
        return job_name(self.key[1], spec_hash(parse_spec(self.body["spec"]), retry))

    def reasons(self) -> list[str]:
        """The reasons of the events posted so far, in order."""
        return [e["reason"] for e in self.kube.events]

    def finish(self, ok: bool = True, message: str | None = None) -> None:
        job = self.kube.jobs[self.job_name]
        job["status"] = {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True",
                                         "reason": "BackoffLimitExceeded", "message": "Job has reached the limit"}],
                         "completionTime": "T2"}
        if message is not None:
            term = {"exitCode": 0 if ok else 1, "message": message, "finishedAt": "T2"}
            self.kube.pods = [{"metadata": {"name": "p"}, "status": {
                "phase": "Succeeded" if ok else "Failed",
                "containerStatuses": [{"name": "datasetprep", "state": {"terminated": term}}]}}]


def cond(world: World, type_: str) -> dict:
    return {c["type"]: c for c in world.body["status"]["conditions"]}[type_]


def names(world: World) -> RunJobs:
    return RunJobs.for_spec(world.key[1], parse_spec(world.body["spec"]))


def complete(world: World, name: str, *, ok: bool = True, pods: list[dict] | None = None) -> None:
    world.kube.jobs[name]["status"] = {
        "conditions": [{"type": "Complete" if ok else "Failed", "status": "True",
                        "reason": "FailedIndexes", "message": "Job has failed indexes"}],
        "completionTime": "T2", "succeeded": 3 if ok else 2, "completedIndexes": "0-2" if ok else "0-1"}
    if pods is not None:
        world.kube.pods = pods


def pod(phase: str, message: str | None, exit_code: int, finished: str) -> dict:
    term = {"exitCode": exit_code, "message": message, "finishedAt": finished}
    return {"metadata": {"name": f"p-{finished}"}, "status": {
        "phase": phase, "containerStatuses": [{"name": "datasetprep", "state": {"terminated": term}}]}}


def ready_source(spec: dict, name: str = "first", uid: str = "uid-0") -> dict:
    """A DatasetPrep that ran its Job and is Ready, as the API server would return it."""
    w = World(spec, name=name, uid=uid)
    w.run()
    job = job_name(name, spec_hash(parse_spec(spec)))
    w.kube.jobs[job]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    w.kube.pods = [pod("Succeeded", json.dumps(RESULT), 0, "T2")]
    w.run()
    assert ready_output_key(w.body)
    return copy.deepcopy(w.body)


def reusing(world: World, source: dict) -> Seen:
    """``source`` stored next to the world's resource, and a watch that offers it for reuse."""
    world.kube.datasetpreps[("ml", source["metadata"]["name"])] = copy.deepcopy(source)
    entry = {"name": source["metadata"]["name"], "uid": source["metadata"]["uid"], "reusedFrom": None}
    watched = world.watched()
    return Seen(job=watched.job, jobs_of=watched.jobs_of, pods=watched.pods,
                reusable=lambda ns, key: [entry] if key == source["status"]["reuseKey"] else [])
