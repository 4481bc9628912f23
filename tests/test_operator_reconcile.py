"""Edge cases of the reconciler that a healthy cluster rarely shows, with an in-memory API fake.

The real behaviour (CRD validation, Jobs, pods, garbage collection, restarts) is proven against the
API server in test_operator_e2e.py; this file covers the branches that are hard to provoke there:
races on create, foreign objects in the way, results that cannot be read, an invalid spec that
slipped past the CRD, and idempotence (a second pass writes nothing).
"""
from __future__ import annotations

import copy
import json

import kopf
import pytest

from datasetprep.contract import ProgressRecord, RunPlan
from datasetprep.spec import parse_spec
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.jobs import build_job
from datasetprep_operator.reconcile import PROGRESS_INTERVAL_SECONDS, Seen
from datasetprep_operator.runtime import Stale
from fakeapi import World, cond
from specs import RESULT, SPEC


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
    # A restarted operator whose Job watch lags reads the Job the status names (one GET), creates nothing.
    w.restart()
    w.run(seen=Seen())
    assert w.kube.calls == [f"get_job {w.job_name}"]


def test_create_race_lost_to_another_replica_is_not_a_second_start():
    """Two operators decide on the same body: both find the Job (one creates it, the other's create
    answers 409 and is adopted), only the first status write wins; the loser re-reads and finds the run
    recorded: one JobCreated event, one run started."""
    w = World()
    stale = copy.deepcopy(w.body)
    manifest = build_job(parse_spec(SPEC), RunPlan(step="all"), parent="wiki", namespace="ml", parent_uid="uid-1",
                         config=OperatorConfig())
    kopf.adopt(manifest, owner=w.body)
    w.run()  # the other replica
    w.restart()  # this one, with nothing in memory, still holding the body from before
    with pytest.raises(Stale):
        w.run(body=stale)
    assert w.run().events == []  # decided again on the fresh body: nothing to do
    assert w.reasons() == ["JobCreated"] and w.metrics.started == 1 and len(w.kube.jobs) == 1
    assert w.kube.writes("patch_status") == ["patch_status wiki", "patch_status wiki -> 409"]


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


def test_output_claim_deleted_during_the_run_is_not_published():
    """The pod held the claim to the end (only marked for deletion); its files go with the volume."""
    w = World()
    w.run()
    w.kube.claims.clear()
    w.finish(message=json.dumps(RESULT))
    outcome = w.run()
    assert outcome.error is None and w.body["status"]["phase"] == "Failed"
    stalled = cond(w, "Stalled")
    assert stalled["reason"] == "ClaimDeleted" and "PersistentVolumeClaim data was deleted" in stalled["message"]
    assert w.kube.config_maps == {} and "output" not in w.body["status"]
    assert [e.reason for e in outcome.events] == ["ClaimDeleted"] and w.metrics.succeeded == 0
    assert w.kube.jobs == {}  # its pod no longer holds the claim


def test_failed_job_without_pods_reports_the_job_condition():
    w = World()
    w.run()
    w.finish(ok=False)
    w.run()
    assert "BackoffLimitExceeded" in cond(w, "Stalled")["message"]
    assert w.metrics.failed == 1


def failed_by_the_node(w: World, pod: dict) -> dict:
    """The run's Job failed with this one pod; returns the Stalled condition."""
    w.run()
    w.finish(ok=False)
    w.kube.pods = [pod]
    w.run()
    assert w.body["status"]["phase"] == "Failed"
    return cond(w, "Stalled")


def test_a_pod_killed_for_memory_says_which_limit_and_how_to_raise_it():
    w = World()
    stalled = failed_by_the_node(w, {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "datasetprep", "resources": {"limits": {"memory": "512Mi"}}}]}, "status": {
        "phase": "Failed", "containerStatuses": [{"name": "datasetprep", "state": {"terminated": {
            "exitCode": 137, "reason": "OOMKilled", "message": "loading the tokenizer", "finishedAt": "T2"}}}]}})
    assert stalled["reason"] == "JobFailed"
    assert "killed for using more memory than its limit (limits.memory: 512Mi)" in stalled["message"]
    assert "raise spec.resources.limits.memory" in stalled["message"]


@pytest.mark.parametrize("kubelet, fix", [
    ("Pod ephemeral local storage usage exceeds the total limit of containers 4Gi. ",
     'raise spec.resources.limits["ephemeral-storage"]'),
    ('Usage of EmptyDir volume "tmp" exceeds the limit "2Gi". ', "raise spec.resources.tmpSizeLimit"),
])
def test_an_evicted_pod_says_which_limit_and_how_to_raise_it(kubelet, fix):
    stalled = failed_by_the_node(World(), {"metadata": {"name": "p"}, "status": {
        "phase": "Failed", "reason": "Evicted", "message": kubelet, "containerStatuses": [
            {"name": "datasetprep", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}})
    assert f"evicted by the kubelet ({kubelet.strip()})" in stalled["message"] and fix in stalled["message"]


def test_a_failed_volume_init_container_is_reported():
    stalled = failed_by_the_node(World(), {"metadata": {"name": "p"}, "status": {
        "phase": "Failed", "initContainerStatuses": [{"name": "prepare-output", "state": {"terminated": {
            "exitCode": 1, "message": "chown: changing ownership of '/data': Operation not permitted\n"}}}],
        "containerStatuses": [{"name": "datasetprep", "state": {"waiting": {"reason": "PodInitializing"}}}]}})
    assert "init container prepare-output" in stalled["message"]
    assert "Operation not permitted" in stalled["message"] and "spec.securityContext" in stalled["message"]


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


def test_spec_changed_twice_before_the_watch_delivers_the_middle_job_deletes_it():
    """Two spec changes a few milliseconds apart: the second look comes before the Job watch has
    delivered the Job the first look created. That Job must still go (it would run to its publish)."""
    w = World()
    w.run()
    first = w.job_name
    lagging = {name: copy.deepcopy(job) for name, job in w.kube.jobs.items()}  # the index stops here
    seen = Seen(job=lambda ns, name: copy.deepcopy(lagging.get(name)),
                jobs_of=lambda ns, owner: [copy.deepcopy(j) for j in lagging.values()],
                pods=lambda ns, job: [])
    w.change_spec(appendEod=False)
    w.run(seen=seen)
    middle = w.job_name
    assert middle != first and middle in w.kube.jobs and first not in w.kube.jobs
    w.change_spec(workers=3)
    w.run(seen=seen)
    assert w.job_name not in (first, middle)
    assert list(w.kube.jobs) == [w.job_name], "the middle generation's Job was left running"


def test_changes_that_need_no_new_run_only_bump_the_generation():
    w = World()
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.run()
    w.kube.calls.clear()
    w.change_spec(deleteDataOnDelete=True)
    outcome = w.run()
    # The finalizer comes with the flag (and only with it); otherwise only observedGeneration moves.
    assert outcome.status["observedGeneration"] == 2
    assert w.kube.calls == ["patch_finalizers wiki", "patch_status wiki"]
    assert w.body["metadata"]["finalizers"] == ["datasetprep.io/finalizer"]
    assert all(c["observedGeneration"] == 2 for c in w.body["status"]["conditions"])
    w.change_spec(deleteDataOnDelete=False)
    w.run()
    assert w.body["metadata"]["finalizers"] == []


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
    record = ProgressRecord(bytes_done=25, bytes_total=100, documents=1, tokens=10, tokens_per_second=5, time=1)
    pod = {"metadata": {"name": "wiki-pod"}, "status": {"phase": "Running"}}
    w.kube.logs["wiki-pod"] = f"progress: 25% ...\n{record.to_log_line()}\nsome other line\n"
    watched = w.watched()
    outcome = w.run(seen=Seen(job=watched.job, pods=lambda ns, job: [pod] if job == w.job_name else []))
    assert w.kube.log_reads == ["wiki-pod"]
    assert outcome.requeue == pytest.approx(PROGRESS_INTERVAL_SECONDS)  # no event says a log grew: look again
    progress = w.body["status"]["progress"]
    assert progress["summary"] == "25%" and progress["tokens"] == 10 and w.body["status"]["startTime"] == "T0"
