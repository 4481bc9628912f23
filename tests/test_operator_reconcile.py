"""Edge cases of the reconciler that a healthy cluster rarely shows, with an in-memory API fake.

The real behaviour (CRD validation, Jobs, pods, garbage collection, restarts) is proven against the
API server in test_operator_e2e.py; this file covers the branches that are hard to provoke there:
races on create, foreign objects in the way, results that cannot be read, an invalid spec that
slipped past the CRD, and idempotence (a second pass writes nothing).
"""
from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from datasetprep.spec import parse_spec
from datasetprep_operator import builders
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.reconcile import Context, Outcome, Resource, Seen, reconcile, status_changes

SPEC = {
    "source": {"files": {"paths": ["corpus.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
}
RESULT = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 3, "sequences": 3,
                 "tokens": 30, "dtype": "uint16", "bin_sha256": "b", "idx_sha256": "i"}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2},
    "fingerprint": "f", "resolved_revision": None,
}


def conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


class FakeKube:
    """Jobs, pods and ConfigMaps in dicts, with the calls recorded."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.config_maps: dict[str, dict] = {}
        self.calls: list[str] = []
        self.steal_create = None  # a Job someone else creates just before ours
        self.claims = {"data"}

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

    def pod_log_tail(self, namespace, name, lines):
        return None

    def get_config_map(self, namespace, name):
        self.calls.append(f"get_config_map {name}")
        return copy.deepcopy(self.config_maps.get(name))

    def create_config_map(self, namespace, body):
        self.calls.append(f"create_config_map {body['metadata']['name']}")
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


class Tally:
    def __init__(self) -> None:
        self.started = self.succeeded = self.failed = 0
        self.tokens = 0

    def run_started(self):
        self.started += 1

    def run_succeeded(self, tokens):
        self.succeeded += 1
        self.tokens += tokens or 0

    def run_failed(self):
        self.failed += 1


class World:
    """One DatasetPrep, the fake API and the status as kopf would have merged it."""

    def __init__(self, spec: dict | None = None) -> None:
        self.kube = FakeKube()
        self.metrics = Tally()
        self.ctx = Context(kube=self.kube, config=OperatorConfig(), metrics=self.metrics, now=lambda: "T")
        self.body: dict[str, Any] = {
            "apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep",
            "metadata": {"name": "wiki", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": copy.deepcopy(spec or SPEC), "status": {},
        }

    def run(self, seen: Seen | None = None):
        outcome = reconcile(Resource(copy.deepcopy(self.body)), self.ctx, seen=seen)
        self.body["status"] = merge(self.body["status"], outcome.status)
        return outcome

    def change_spec(self, **changes) -> None:
        self.body["spec"].update(changes)
        self.body["metadata"]["generation"] += 1

    @property
    def job_name(self) -> str:
        return builders.job_name("wiki", builders.spec_hash(parse_spec(self.body["spec"])))

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


def cond(world: World, type_: str) -> dict:
    return {c["type"]: c for c in world.body["status"]["conditions"]}[type_]


# --------------------------------------------------------------------------- tests


def test_create_then_nothing_to_do():
    w = World()
    first = w.run()
    assert first.error is None
    assert [e.reason for e in first.events] == ["JobCreated"]
    (job,) = w.kube.jobs.values()
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"  # adopted
    assert w.body["status"]["phase"] == "Running" and w.body["status"]["jobName"] == w.job_name
    assert cond(w, "Ready")["status"] == "False" and cond(w, "Reconciling")["status"] == "True"
    assert w.metrics.started == 1

    w.kube.calls.clear()
    again = w.run()
    assert again.status == {} and again.events == [] and again.error is None  # idempotent: nothing to write
    assert not [c for c in w.kube.calls if c.startswith("create")]


def test_a_missing_claim_waits_instead_of_starting_a_pod_that_cannot_run():
    w = World()
    w.kube.claims = set()
    outcome = w.run()
    assert isinstance(outcome.error, kopf.TemporaryError)
    assert [e.reason for e in outcome.events] == ["WaitingForClaim"]
    assert w.body["status"]["phase"] == "Pending" and w.kube.jobs == {}
    assert cond(w, "Reconciling")["reason"] == "WaitingForClaim" and cond(w, "Stalled")["status"] == "False"
    assert "PersistentVolumeClaim data not found" in w.body["status"]["message"]
    assert w.run().events == []  # said once, not on every retry
    w.kube.claims = {"data"}
    assert w.run().error is None and w.body["status"]["phase"] == "Running"


def test_a_watched_job_saves_the_get():
    w = World()
    w.run()
    w.kube.calls.clear()
    w.run(seen=Seen(job=lambda ns, name: w.kube.jobs.get(name)))
    assert w.kube.calls == []


def test_create_race_lost_to_ourselves_is_not_a_second_start():
    w = World()
    manifest = builders.build_job(parse_spec(SPEC), parent="wiki", namespace="ml", parent_uid="uid-1",
                                  config=OperatorConfig())
    kopf.adopt(manifest, owner=w.body)
    w.kube.steal_create = manifest | {"status": {}}
    outcome = w.run()
    assert outcome.error is None and outcome.events == []
    assert w.metrics.started == 0
    assert w.body["status"]["phase"] == "Running"


def test_foreign_job_in_the_way_stalls():
    w = World()
    w.kube.steal_create = {"metadata": {"name": w.job_name, "labels": {}, "ownerReferences": []}, "status": {}}
    outcome = w.run()
    assert isinstance(outcome.error, kopf.PermanentError)
    assert cond(w, "Stalled")["reason"] == "JobConflict"
    assert w.body["status"]["phase"] == "Failed"


def test_invalid_spec_that_slipped_past_the_crd():
    w = World({**SPEC, "shards": 1, "parallelism": 5})
    outcome = w.run()
    assert isinstance(outcome.error, kopf.PermanentError)
    stalled = cond(w, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "parallelism (5) cannot exceed shards (1)" in stalled["message"]
    assert w.kube.jobs == {}


def test_success_publishes_then_declares_ready():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT))
    outcome = w.run()
    assert outcome.error is None
    status = w.body["status"]
    assert status["phase"] == "Succeeded" and status["completionTime"] == "T2"
    assert cond(w, "Ready")["status"] == "True"
    cm = w.kube.config_maps["wiki-training"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert '"/data/llama_dataset_text_document"' in cm["data"]["config.yaml"]
    assert (w.metrics.succeeded, w.metrics.tokens) == (1, 30)
    assert "Succeeded" in [e.reason for e in outcome.events]
    w.kube.calls.clear()
    assert w.run().status == {} and w.kube.calls == []  # done is done: no API calls


def test_unreadable_result_is_not_published():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT)[:100])  # cut
    w.run()
    assert w.body["status"]["phase"] == "Failed"
    assert cond(w, "Stalled")["reason"] == "ResultUnreadable"
    assert w.kube.config_maps == {}


def test_failed_job_without_pods_reports_the_job_condition():
    w = World()
    w.run()
    w.finish(ok=False)
    w.run()
    assert "BackoffLimitExceeded" in cond(w, "Stalled")["message"]
    assert w.metrics.failed == 1


def test_foreign_config_map_is_not_overwritten():
    w = World()
    w.kube.config_maps["wiki-training"] = {"metadata": {"name": "wiki-training", "resourceVersion": "7"},
                                           "data": {"mine": "yes"}}
    w.run()
    w.finish(message=json.dumps(RESULT))
    outcome = w.run()
    assert isinstance(outcome.error, kopf.PermanentError)
    assert cond(w, "Stalled")["reason"] == "ConfigMapConflict"
    assert w.kube.config_maps["wiki-training"]["data"] == {"mine": "yes"}


def test_spec_change_keeps_the_published_run_until_the_new_one_succeeds():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    old_job = w.body["status"]["jobName"]

    w.change_spec(appendEod=False)
    w.run()
    assert w.body["status"]["jobName"] != old_job and w.body["status"]["phase"] == "Running"
    assert old_job in w.kube.jobs  # finished: kept until the switch
    assert w.body["status"]["output"]["tokens"] == 30  # the published facts stay
    assert cond(w, "Ready")["observedGeneration"] == 2

    # Another change while the second run is unfinished: that run is abandoned at once.
    second = w.job_name
    w.change_spec(workers=3)
    w.run()
    assert second not in w.kube.jobs and old_job in w.kube.jobs

    result = copy.deepcopy(RESULT)
    result["outputs"][0]["tokens"] = 27
    w.finish(message=json.dumps(result))
    w.run()
    assert list(w.kube.jobs) == [w.job_name]  # superseded Jobs go once the new output is published
    assert w.body["status"]["output"]["tokens"] == 27 and w.body["status"]["observedGeneration"] == 3


def test_changes_that_need_no_new_run_only_bump_the_generation():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    w.kube.calls.clear()
    w.change_spec(deleteDataOnDelete=True)
    outcome = w.run()
    assert outcome.status["observedGeneration"] == 2 and w.kube.calls == []
    assert all(c["observedGeneration"] == 2 for c in w.body["status"]["conditions"])


def test_renamed_config_map_replaces_the_old_one():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    w.change_spec(trainingConfig={"configMapName": "llama-data"})
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    assert set(w.kube.config_maps) == {"llama-data"}
    assert w.body["status"]["configMapName"] == "llama-data"


def test_progress_comes_from_the_watched_pods():
    w = World()
    w.run()
    w.kube.jobs[w.job_name]["status"] = {"active": 1, "startTime": "T0"}
    report = {"bytesDone": 25, "bytesTotal": 100, "documents": 1, "tokens": 10, "tokensPerSecond": 5, "shard": None,
              "time": 1}
    pod = {"metadata": {"annotations": {builders.PROGRESS_ANNOTATION: json.dumps(report)}}}
    w.run(seen=Seen(pods=lambda ns, job: [pod] if job == w.job_name else []))
    progress = w.body["status"]["progress"]
    assert progress["summary"] == "25%" and progress["tokens"] == 10 and w.body["status"]["startTime"] == "T0"


@pytest.mark.parametrize("current,desired,patch", [
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1}, {"a": None}, {"a": None}),
    ({}, {"a": None}, {}),
    ({"p": {"x": 1, "eta": 5}}, {"p": {"x": 2}}, {"p": {"x": 2, "eta": None}}),
    ({"c": [1]}, {"c": [1, 2]}, {"c": [1, 2]}),
])
def test_status_changes(current, desired, patch):
    assert status_changes(current, desired) == patch


# --------------------------------------------------------------------------- deleteDataOnDelete


def test_delete_data_flow_and_when_the_data_is_kept():
    from datasetprep_operator.reconcile import delete_data

    w = World({**SPEC, "deleteDataOnDelete": True, "hfTokenSecretRef": {"name": "hf"}})
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    assert w.body["status"]["phase"] == "Succeeded"
    w.kube.list_datasetpreps = lambda ns: [w.body]
    w.kube.pods = []  # the run's pods are gone

    def step():
        return delete_data(Resource(copy.deepcopy(w.body)), w.ctx)

    # 1. the finished run Job is deleted first; 2. then the clean-up Job is created, without the token
    first = step()
    assert isinstance(first.error, kopf.TemporaryError) and w.job_name not in w.kube.jobs
    second = step()
    assert [e.reason for e in second.events] == ["DeletingData"] and isinstance(second.error, kopf.TemporaryError)
    cleanup = w.kube.jobs["wiki-delete-data"]
    c = cleanup["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["datasetprep", "job", "--delete-data"]
    assert "HF_TOKEN" not in {e["name"] for e in c["env"]}
    assert cleanup["metadata"]["labels"][builders.LABEL_COMPONENT] == "delete-data"
    assert "ownerReferences" not in cleanup["metadata"]  # it must outlive nothing: deleted when done
    assert isinstance(step().error, kopf.TemporaryError)  # still running: wait, create nothing more
    cleanup["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    term = {"exitCode": 0, "message": json.dumps({"ok": True, "deleted_files": 3, "deleted_bytes": 1234}),
            "finishedAt": "T3"}
    w.kube.pods = [{"metadata": {"name": "c", "labels": {builders.LABEL_COMPONENT: "delete-data"}},
                    "status": {"phase": "Succeeded",
                               "containerStatuses": [{"name": "datasetprep", "state": {"terminated": term}}]}}]
    done = step()
    assert done.error is None and [e.reason for e in done.events] == ["DataDeleted"]
    assert "3 files, 1,234 bytes" in done.events[0].message and "wiki-delete-data" not in w.kube.jobs

    # kept: another DatasetPrep points at this output
    user = {"metadata": {"name": "other", "uid": "uid-2"}, "status": {"output": {"reusedFrom": "wiki"}}}
    w.kube.list_datasetpreps = lambda ns: [w.body, user]
    kept = step()
    assert kept.error is None and [e.reason for e in kept.events] == ["DataKept"]
    assert "DatasetPrep other still uses it" in kept.events[0].message and not w.kube.jobs
    # kept: this one only reused another's output
    w.body["status"]["output"]["reusedFrom"] = "maker"
    assert "made by DatasetPrep maker" in step().events[0].message
    # nothing at all without the flag
    w.body["spec"]["deleteDataOnDelete"] = False
    assert step() == Outcome()


def test_delete_data_failure_is_reported_and_does_not_hold_the_resource():
    from datasetprep_operator.reconcile import delete_data

    w = World({**SPEC, "deleteDataOnDelete": True})
    w.kube.list_datasetpreps = lambda ns: []
    res = lambda: Resource(copy.deepcopy(w.body))  # noqa: E731
    delete_data(res(), w.ctx)
    w.kube.jobs["wiki-delete-data"]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    term = {"exitCode": 1, "message": json.dumps({"ok": False, "error": "cannot write to /data: read-only"}),
            "finishedAt": "T3"}
    w.kube.pods = [{"metadata": {"name": "c", "labels": {builders.LABEL_COMPONENT: "delete-data"}},
                    "status": {"phase": "Failed",
                               "containerStatuses": [{"name": "datasetprep", "state": {"terminated": term}}]}}]
    out = delete_data(res(), w.ctx)
    assert out.error is None and [e.reason for e in out.events] == ["DeleteDataFailed"]
    assert "cannot write to /data: read-only; it is left there" in out.events[0].message
