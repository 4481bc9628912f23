"""Faults a node brings, on the test bed's real node, in the middle of a run of our job image:

* the running job pod is deleted at once (grace 0, as a failed node or a forced delete): the Job makes a
  new pod, which resumes from the chunks the first one recorded, and the bytes are Megatron-LM's;
* the kubelet, or containerd, restarts: the container keeps running, the same pod finishes;
* the job container goes over its memory limit: the kernel kills it, the DatasetPrep stalls naming
  the limit to raise.
"""
from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from bed import (assert_golden_copies, assert_real_job_pods, copies_lasting, files_spec, job_pods, progress_in_log,
                 running_operator, running_pods, write_big_input)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def start_long_run(bed, tmp_path, monkeypatch, name: str, seconds: float) -> tuple[int, str, object]:
    """A one-worker run of about ``seconds``, small chunks; returns (copies, Job name, its running pod)."""
    copies = copies_lasting(tmp_path, seconds)
    write_big_input(bed, copies)
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps({"DATASETPREP_CHUNK_MIB": "0.5"}))
    bed.create(name, files_spec(f"{name}/llama", paths=["big.jsonl"], workers=1))
    job = bed.wait(lambda: (bed.get(name).get("status") or {}).get("jobName"), "a Job")
    (pod,) = bed.wait(lambda: running_pods(bed, job), "the job pod to run", timeout=120)
    return copies, job, pod


def readable_progress(bed, pod: str) -> dict | None:
    """The newest progress record in the pod's log; None while the log cannot be read."""
    try:
        return progress_in_log(bed, pod) or None
    except ApiException as exc:
        if exc.status in (404, 500, 502, 503):
            return None
        raise


def test_a_deleted_job_pod_is_replaced_and_resumes_from_its_chunks(bed, tmp_path, monkeypatch):
    with running_operator(bed.ns):
        copies, job, pod = start_long_run(bed, tmp_path, monkeypatch, "deleted", 60)
        first = bed.wait(lambda: (doc := progress_in_log(bed, pod.metadata.name)).get("chunksDone", 0) >= 3 and doc,
                         "three chunks done", timeout=120, interval=0.5)
        assert first["chunksDone"] < first["chunksTotal"] - 3, "the run is nearly over; make the input bigger"
        # At once (grace 0), as a node that fails or an OOM kill would: with the default 30 s of grace the
        # pod keeps working (PID 1 ignores SIGTERM) and may well finish the run before it goes.
        bed.core.delete_namespaced_pod(pod.metadata.name, bed.ns, grace_period_seconds=0)
        obj = bed.wait_ready("deleted", timeout=300)
    pods = assert_real_job_pods(bed, job)
    assert pod.metadata.name not in {p.metadata.name for p in pods if p.status.phase == "Succeeded"}
    (replacement,) = [p for p in pods if p.status.phase == "Succeeded"]
    # The new pod's first report already counts the recorded chunks as done, and the dataset's manifest
    # says how many it took over instead of redoing them.
    log = bed.cluster.pod_log(bed.ns, replacement.metadata.name)
    records = [json.loads(line.split(" ", 1)[1]) for line in log.splitlines() if line.startswith("datasetprep-progress ")]
    assert records and records[0]["chunksDone"] >= first["chunksDone"], (records[:1], first, log[-3000:])
    manifest = json.loads((bed.data / "deleted" / "llama.manifest.json").read_text())
    assert first["chunksDone"] <= manifest["stats"]["chunks_reused"] < manifest["stats"]["chunks"], manifest["stats"]
    assert obj["status"]["output"]["documents"] == 526 * copies
    assert_golden_copies(bed.data / "deleted" / "llama_text_document", copies, tmp_path)


@pytest.mark.parametrize("component", ["kubelet", "containerd"])
def test_a_node_component_restarting_mid_run_leaves_the_job_running(bed, kube_cluster, tmp_path, monkeypatch,
                                                                     component):
    with running_operator(bed.ns):
        copies, job, pod = start_long_run(bed, tmp_path, monkeypatch, f"restart-{component}", 30)
        bed.wait(lambda: progress_in_log(bed, pod.metadata.name).get("chunksDone", 0) >= 2, "two chunks done",
                 timeout=120, interval=0.5)
        before = pod.status.container_statuses[0].container_id
        (kube_cluster.restart_kubelet if component == "kubelet" else kube_cluster.restart_containerd)()
        # the log, through the restarted component, shows the run going on
        # (a kubelet just restarted answers 404 for the pod's log until it has synced the pod again)
        mid = bed.wait(lambda: readable_progress(bed, pod.metadata.name), "a progress line after the restart",
                       timeout=60, interval=0.5)
        assert mid["chunksDone"] < mid["chunksTotal"], "the run ended before the restart; make the input bigger"
        obj = bed.wait_ready(f"restart-{component}", timeout=300)
    (after,) = assert_real_job_pods(bed, job)  # one pod: nothing was restarted or replaced
    cs = after.status.container_statuses[0]
    assert after.metadata.name == pod.metadata.name and cs.container_id == before and cs.restart_count == 0
    assert obj["status"]["output"]["documents"] == 526 * copies
    assert_golden_copies(bed.data / f"restart-{component}" / "llama_text_document", copies, tmp_path)
    assert job_pods(bed, job)[0].status.phase == "Succeeded"


def test_a_job_pod_over_its_memory_limit_stalls_naming_the_limit_to_raise(bed):
    """The kernel kills the job container at its memory limit (the cgroup the kubelet set from
    spec.resources); the DatasetPrep stalls with the node's reason and the value to raise, not with a
    log tail."""
    with running_operator(bed.ns):
        bed.create("small", files_spec("small/llama", backoffLimit=0, resources={"limits": {"memory": "40Mi"}}))
        obj, stalled = bed.wait_stalled("small", timeout=180)
    (pod,) = job_pods(bed, obj["status"]["jobName"])
    state = pod.status.container_statuses[0].state.terminated
    assert state is not None and state.reason == "OOMKilled", pod.status
    assert pod.spec.containers[0].resources.limits["memory"] == "40Mi"
    assert pod.spec.containers[0].resources.requests["memory"] == "40Mi"  # lowered to the limit, else refused
    message = stalled["message"]
    assert "killed for using more memory than its limit (limits.memory: 40Mi)" in message, message
    assert "spec.resources.limits.memory" in message, message
