"""``deleteDataOnDelete`` through the runtime's deletion steps, with the in-memory API fake (on the
test bed: test_operator_e2e.py)."""
from __future__ import annotations

import copy
import json

import pytest

from datasetprep_operator.deletion import delete_data
from datasetprep_operator.naming import LABEL_COMPONENT
from datasetprep_operator.reconcile import Outcome, Resource
from datasetprep_operator.runtime import FINALIZER, Stale
from fakeapi import World
from specs import RESULT, SPEC


def deleting(w: World) -> None:
    """The user deletes the resource: the API server sets deletionTimestamp (finalizers hold it)."""
    w.body["metadata"]["deletionTimestamp"] = "T9"
    w.kube.touch(*w.key)


def cleanup_pod(phase: str, result: dict) -> dict:
    term = {"exitCode": 0 if phase == "Succeeded" else 1, "message": json.dumps(result), "finishedAt": "T3"}
    return {"metadata": {"name": "c", "labels": {LABEL_COMPONENT: "delete-data"}},
            "status": {"phase": phase, "containerStatuses": [{"name": "datasetprep", "state": {"terminated": term}}]}}


def test_delete_data_flow_and_when_the_data_is_kept():
    w = World({**SPEC, "deleteDataOnDelete": True, "hfTokenSecretRef": {"name": "hf"}})
    w.run()
    assert w.body["metadata"]["finalizers"] == [FINALIZER]  # only because the data is to be deleted
    w.finish(message=json.dumps(RESULT))
    w.run()
    assert w.body["status"]["phase"] == "Succeeded"
    w.kube.pods = []  # the run's pods are gone
    deleting(w)

    # 1. the finished run Job is deleted first; 2. then the clean-up Job is created, without the token
    w.run()
    assert w.job_name not in w.kube.jobs and w.reasons()[-1] == "Succeeded"
    w.run()
    assert w.reasons()[-1] == "DeletingData"
    cleanup = w.kube.jobs["wiki-delete-data"]
    c = cleanup["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["DATASETPREP_RUN"] == '{"keepShards":false,"shards":1,"step":"delete"}'
    assert "HF_TOKEN" not in {e["name"] for e in c["env"]}
    assert cleanup["metadata"]["labels"][LABEL_COMPONENT] == "delete-data"
    assert "ownerReferences" not in cleanup["metadata"]  # it must outlive nothing: deleted when done
    assert cleanup["spec"]["ttlSecondsAfterFinished"] > 0  # ... or by Kubernetes, should we stop in between
    w.run()  # still running: wait, create nothing more, say nothing more
    assert w.reasons().count("DeletingData") == 1
    cleanup["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    w.kube.pods = [cleanup_pod("Succeeded", {"ok": True, "deleted_files": 3, "deleted_bytes": 1234})]

    # Two looks at the same (stale) body: the first one's finalizer write wins, the second's loses,
    # so "DataDeleted" is posted once; the clean-up Job goes after the finalizer.
    stale = copy.deepcopy(w.body)
    w.run()
    assert w.body["metadata"]["finalizers"] == [] and "wiki-delete-data" not in w.kube.jobs
    with pytest.raises(Stale):
        w.run(body=stale)
    assert w.reasons().count("DataDeleted") == 1
    assert "3 files, 1,234 bytes" in w.kube.events[-1]["message"]


def test_the_data_is_kept_when_it_is_not_this_resources_to_delete():
    w = World({**SPEC, "deleteDataOnDelete": True})
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    w.kube.pods = []

    def step():
        return delete_data(Resource(copy.deepcopy(w.body)), w.ctx)

    # kept: another DatasetPrep points at this output
    user = {"metadata": {"name": "other", "namespace": "ml", "uid": "uid-2"},
            "status": {"output": {"reusedFrom": "wiki"}}}
    w.kube.add_datasetprep(user)
    kept = step()
    assert kept.error is None and [e.reason for e in kept.events] == ["DataKept"]
    assert "DatasetPrep other still uses it" in kept.events[0].message and w.job_name in w.kube.jobs
    # kept: this one only reused another's output
    w.body["status"]["output"]["reusedFrom"] = "maker"
    assert "made by DatasetPrep maker" in step().events[0].message
    # nothing at all without the flag
    w.body["spec"]["deleteDataOnDelete"] = False
    assert step() == Outcome()


def test_delete_data_failure_is_reported_and_does_not_hold_the_resource():
    w = World({**SPEC, "deleteDataOnDelete": True})
    w.run()
    w.kube.jobs.clear()
    w.kube.pods = []
    deleting(w)
    w.run()
    w.kube.jobs["wiki-delete-data"]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    w.kube.pods = [cleanup_pod("Failed", {"ok": False, "error": "cannot write to /data: read-only"})]
    w.run()
    assert w.reasons()[-1] == "DeleteDataFailed" and w.body["metadata"]["finalizers"] == []
    assert "cannot write to /data: read-only; it is left there" in w.kube.events[-1]["message"]


def test_no_finalizer_means_nothing_to_do_on_deletion():
    w = World()
    w.run()
    assert not w.body["metadata"].get("finalizers")  # nothing holds a plain resource: no operator needed
    deleting(w)
    w.kube.calls.clear()
    assert w.run() == Outcome() and w.kube.calls == []
