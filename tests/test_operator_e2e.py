"""The real operator (kopf.testing.KopfRunner) against the test bed: real API server, real node.

Each test gets a fresh namespace with a hostPath-backed PVC; the Job's pods run our job image
(built from jobimage/Dockerfile, imported into the node's containerd) under the kubelet, as uid
65532 with a read-only root and no API credentials, so what lands on the volume is the real output,
compared byte for byte with Megatron-LM's (``shared/golden``).
"""
from __future__ import annotations

import json
import shutil
import threading
import urllib.request

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from bed import (GOLDEN_PREFIX, JOB_UID, assert_golden, assert_real_job_pods, files_spec, free_port,
                 install_kopf_peering, running_operator, running_pods)
from datasetprep.hashes import spec_hash
from datasetprep.spec import GROUP, PLURAL, VERSION
from datasetprep_operator.jobs import DELETE_DATA_COMPONENT
from datasetprep_operator.naming import LABEL_COMPONENT, LABEL_OWNER_UID, delete_data_job_name, job_name
from paths import CORPUS_A, SP_MODEL

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_prepares_publishes_and_cleans_up(bed, monkeypatch):
    """The whole life: Job -> golden output -> training ConfigMap -> Ready -> deletion keeps the data."""
    port = free_port()
    monkeypatch.setenv("DATASETPREP_METRICS_PORT", str(port))
    # The job pods must pass the `restricted` Pod Security Standard: the API server enforces it here.
    bed.core.patch_namespace(bed.ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    with pytest.raises(ApiException) as refused:  # the enforcement is real: a plain pod is refused
        bed.core.create_namespaced_pod(bed.ns, {"metadata": {"name": "plain"}, "spec": {
            "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}})
    assert refused.value.status == 403 and "restricted" in refused.value.body

    with running_operator(bed.ns):
        created = bed.create("wiki", files_spec("llama_dataset"))
        obj = bed.wait_ready("wiki")

        def counted():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            return text if 'datasetprep_resources{phase="Succeeded"} 1.0' in text else None
        metrics = bed.wait(counted, "the phase gauge to count the success", timeout=30)

    status = obj["status"]
    uid = created["metadata"]["uid"]
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == 1
    assert_golden(bed.data / "llama_dataset_text_document")

    # The Job: one, named from the parent and the spec, owned by the DatasetPrep, finished; its pod ran
    # our job image in containerd, as uid 65532 (the owner of what it wrote).
    (job,) = bed.jobs(uid)
    assert_real_job_pods(bed, job.metadata.name)
    assert (bed.data / "llama_dataset_text_document.bin").stat().st_uid == JOB_UID
    assert job.metadata.name == status["jobName"] and job.metadata.name.startswith("wiki-")
    (ref,) = job.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("DatasetPrep", "wiki", uid, True)
    assert job.spec.template.spec.security_context.run_as_non_root is True

    # The output facts, from the job's own report.
    out = status["output"]
    assert out["prefix"] == "/data/llama_dataset_text_document" and out["claimName"] == "data"
    assert (out["documents"], out["sequences"], out["tokens"], out["dtype"]) == (526, 522, 821228, "uint16")
    meta = json.loads(GOLDEN_PREFIX.with_suffix(".json").read_text())
    assert out["files"][0]["binSha256"] == meta["sha256"]["bin"]
    assert out["files"][0]["idxSha256"] == meta["sha256"]["idx"]
    assert status["progress"]["summary"] == "100%"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["reason"] == "Succeeded" and "821,228 tokens" in conds["Ready"]["message"]
    assert conds["Reconciling"]["status"] == "False" and conds["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conds.values())

    # The training ConfigMap, in the guide's shape.
    cm = bed.config_map("wiki-training")
    assert cm is not None and status["configMapName"] == "wiki-training"
    assert cm.data["config.yaml"] == ('training:\n  data:\n    dataset_path: "/data/llama_dataset_text_document"\n'
                                      '    tokenizer_path: "/data/tokenizer.model"\n')
    assert cm.data["megatron-args.txt"].startswith("--data-path /data/llama_dataset_text_document "
                                                   "--tokenizer-type SentencePieceTokenizer")
    assert yaml.safe_load(cm.data["nemo2-data.yaml"])["paths"] == ["/data/llama_dataset_text_document"]
    assert (cm.data["claimName"], cm.data["mountPath"]) == ("data", "/data")
    assert [r.uid for r in cm.metadata.owner_references] == [uid]

    reasons = {e.reason for e in bed.events("wiki")}
    assert {"JobCreated", "Succeeded"} <= reasons, reasons
    assert "datasetprep_runs_started_total 1.0" in metrics
    assert "datasetprep_runs_succeeded_total 1.0" in metrics
    assert "datasetprep_tokens_produced_total 821228.0" in metrics

    # Deletion: the garbage collector removes the Job and the ConfigMap; the data stays.
    bed.delete("wiki")
    bed.wait(lambda: not bed.jobs(uid) and bed.config_map("wiki-training") is None, "Job and ConfigMap collected")
    assert_golden(bed.data / "llama_dataset_text_document")


def test_delete_data_on_delete(bed):
    """``deleteDataOnDelete``: the finalizer holds the resource while a clean-up Job deletes its
    dataset; an output that another DatasetPrep reuses is kept."""
    with running_operator(bed.ns):
        created = bed.create("doomed", files_spec("doomed/ds", deleteDataOnDelete=True, shards=2, keepShards=True))
        bed.wait_ready("doomed")
        assert bed.get("doomed")["metadata"].get("finalizers"), "a finalizer holds it while the data is deleted"
        bed.create("keeper", files_spec("keeper/ds", deleteDataOnDelete=True, reuse="Never"))
        bed.wait_ready("keeper")
        bed.create("user", files_spec("user/ds"))  # same reuse key as keeper: points at its files
        assert bed.wait_ready("user")["status"]["output"]["reusedFrom"] == "keeper"
        (bed.data / "doomed" / "unrelated.txt").write_text("not ours")
        assert sorted(p.name for p in (bed.data / "doomed").iterdir() if not p.name.startswith(".")) == [
            "ds.manifest.json", "ds_shard00000.manifest.json", "ds_shard00000_text_document.bin",
            "ds_shard00000_text_document.idx", "ds_shard00001.manifest.json", "ds_shard00001_text_document.bin",
            "ds_shard00001_text_document.idx", "ds_text_document.blend.txt", "unrelated.txt"]

        bed.delete("doomed")
        bed.wait(lambda: not bed.custom.list_namespaced_custom_object(
            GROUP, VERSION, bed.ns, PLURAL, field_selector="metadata.name=doomed")["items"],
            "the DatasetPrep to be gone", timeout=120)
        assert sorted(p.name for p in (bed.data / "doomed").iterdir()) == ["unrelated.txt"]
        assert (bed.data / "corpus_a.jsonl").exists() and (bed.data / "tokenizer.model").exists()
        bed.wait(lambda: not bed.jobs(created["metadata"]["uid"]), "its Jobs gone (the clean-up one too)")
        reasons = [e.reason for e in bed.events("doomed")]
        assert "DeletingData" in reasons and "DataDeleted" in reasons, reasons

        bed.delete("keeper")  # "user" still points at keeper's files: they stay
        bed.wait(lambda: "DataKept" in {e.reason for e in bed.events("keeper")}, "DataKept event")
        assert_golden(bed.data / "keeper" / "ds_text_document")
        kept = next(e for e in bed.events("keeper") if e.reason == "DataKept")
        assert "DatasetPrep user still uses it" in kept.message


def test_delete_data_mid_run_stops_the_pods_first(bed):
    """The clean-up Job is made only once no run pod is left: a watcher lists the Jobs, then the pods,
    every 0.2 s, and fails if one look sees the clean-up Job and, after it, a run pod still there."""
    text = CORPUS_A.read_text(encoding="utf-8")
    (bed.data / "big.jsonl").write_text("\n".join([text] * 6) + "\n", encoding="utf-8")
    overlaps: list[list[str]] = []
    stop = threading.Event()

    def watch(uid: str) -> None:
        owned = f"{LABEL_OWNER_UID}={uid}"
        while not stop.is_set():
            cleanup = [j for j in bed.batch.list_namespaced_job(bed.ns, label_selector=owned).items
                       if j.metadata.name == delete_data_job_name("midway")]
            run_pods = [p.metadata.name for p in bed.core.list_namespaced_pod(bed.ns, label_selector=owned).items
                        if (p.metadata.labels or {}).get(LABEL_COMPONENT) != DELETE_DATA_COMPONENT]
            if cleanup and run_pods:
                overlaps.append(run_pods)
            stop.wait(0.2)

    with running_operator(bed.ns):
        created = bed.create("midway", files_spec("midway/ds", paths=["big.jsonl"], deleteDataOnDelete=True))
        job_name = bed.wait(lambda: (bed.get("midway").get("status") or {}).get("jobName"), "a Job")
        bed.wait(lambda: [p for p in bed.core.list_namespaced_pod(
            bed.ns, label_selector=f"batch.kubernetes.io/job-name={job_name}").items if p.status.phase == "Running"],
            "the job pod to run")
        bed.wait(lambda: list((bed.data / "midway").glob(".datasetprep-work-*/parts/*.done")), "a chunk done",
                 timeout=60)
        watcher = threading.Thread(target=watch, args=(created["metadata"]["uid"],), daemon=True)
        watcher.start()
        try:
            bed.delete("midway")
            bed.wait(lambda: not bed.custom.list_namespaced_custom_object(
                GROUP, VERSION, bed.ns, PLURAL, field_selector="metadata.name=midway")["items"],
                "the DatasetPrep to be gone", timeout=120)
        finally:
            stop.set()
            watcher.join(timeout=30)
        assert not overlaps, f"the clean-up Job existed while run pods were still there: {overlaps[0]}"
        assert list((bed.data / "midway").iterdir()) == []  # the work folder went with it
        # The clean-up Job is deleted (in the background) once the finalizer is off: its pod goes soon after.
        bed.wait(lambda: not bed.core.list_namespaced_pod(
            bed.ns, label_selector=f"{LABEL_OWNER_UID}={created['metadata']['uid']}").items,
            "every pod of the DatasetPrep (the clean-up one too) to be gone", timeout=60)
        assert "DataDeleted" in {e.reason for e in bed.events("midway")}


def test_failing_job_stalls_with_the_jobs_own_message(bed):
    (bed.data / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with running_operator(bed.ns):
        bed.create("bad", files_spec("bad_out", paths=["bad.jsonl"], backoffLimit=0))
        obj, stalled = bed.wait_stalled("bad")
    assert obj["status"]["phase"] == "Failed"
    assert stalled["reason"] == "JobFailed"
    assert "bad.jsonl:2: malformed JSON" in stalled["message"], stalled["message"]
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Reconciling"]["status"] == "False"
    assert bed.config_map("bad-training") is None  # nothing is published for a failed run
    assert "JobFailed" in {e.reason for e in bed.events("bad")}


def test_restarted_operator_adopts_the_running_job(bed):
    """Stop the operator while the Job runs; a new one finishes the work without a second Job."""
    copies = 6  # ~18 MB: long enough to restart the operator while the job still runs
    text = CORPUS_A.read_text(encoding="utf-8")
    (bed.data / "big.jsonl").write_text("\n".join([text] * copies) + "\n", encoding="utf-8")

    with running_operator(bed.ns):
        created = bed.create("slow", files_spec("slow_out", paths=["big.jsonl"]))
        job_name = bed.wait(lambda: (bed.get("slow").get("status") or {}).get("jobName"), "a Job")
        bed.wait(lambda: running_pods(bed, job_name), "the job pod to run")
        # Live progress: the job prints it, the operator reads the pod's log into status.progress.
        progress = bed.wait(lambda: ((bed.get("slow").get("status") or {}).get("progress") or {}).get("bytesTotal")
                            and bed.get("slow")["status"]["progress"], "progress in status", timeout=60)
        assert progress["summary"].endswith("%") and progress["bytesTotal"] > 15_000_000
    uid = created["metadata"]["uid"]
    first = bed.job(job_name)
    still_running = not any(c.status == "True" for c in (first.status.conditions or []))

    with running_operator(bed.ns):
        obj = bed.wait_ready("slow", timeout=300)
    (job,) = bed.jobs(uid)
    assert job.metadata.uid == first.metadata.uid, "the restarted operator created a second Job"
    assert obj["status"]["jobName"] == job_name
    assert obj["status"]["output"]["documents"] == 526 * copies
    assert still_running, "the job finished before the operator was restarted; make the input bigger"


def test_spec_change_switches_over_only_when_the_new_output_is_ready(bed):
    with running_operator(bed.ns):
        created = bed.create("wiki", files_spec("v1/llama"))
        first = bed.wait_ready("wiki")
        uid = created["metadata"]["uid"]
        old_job = first["status"]["jobName"]
        assert "v1/llama_text_document" in bed.config_map("wiki-training").data["config.yaml"]

        bed.patch_spec("wiki", {"output": {"prefix": "v2/llama"}})
        seen_running = False

        def new_run_observed():
            nonlocal seen_running
            # Read in the reverse of the operator's order (ConfigMap, then old Job deleted, then
            # status), so that each later read can only be newer than the earlier ones.
            old_job_exists = bed.job(old_job) is not None
            cm = bed.config_map("wiki-training")
            obj = bed.get("wiki")
            status = obj.get("status") or {}
            if status.get("jobName") not in (None, old_job) and status.get("phase") == "Running":
                # The new run is not done: the ConfigMap points at the old output, unless the
                # operator switched it in the instant between publishing and its status patch --
                # then the new output must already be complete. The old Job goes only after that.
                seen_running = True
                switched = "v2/llama_text_document" in cm.data["config.yaml"]
                if switched:
                    assert_golden(bed.data / "v2" / "llama_text_document")
                else:
                    assert "v1/llama_text_document" in cm.data["config.yaml"]
                    assert old_job_exists  # the finished old Job stays until the switch
                assert status["output"]["prefix"] == "/data/v1/llama_text_document"
                assert (bed.data / "v1" / "llama_text_document.bin").exists()
            _, ready = bed.condition("wiki", "Ready")
            return ready and ready["status"] == "True"

        bed.wait(new_run_observed, "generation 2 Ready", timeout=180)
        second = bed.get("wiki")

    assert seen_running, "never saw the new run in progress"
    status = second["status"]
    assert status["observedGeneration"] == 2 and status["jobName"] != old_job
    assert_golden(bed.data / "v2" / "llama_text_document")
    assert_golden(bed.data / "v1" / "llama_text_document")  # the old data is kept
    assert "v2/llama_text_document" in bed.config_map("wiki-training").data["config.yaml"]
    assert status["output"]["prefix"] == "/data/v2/llama_text_document"
    bed.wait(lambda: [j.metadata.name for j in bed.jobs(uid)] == [status["jobName"]], "the old Job deleted")


def test_waits_for_a_claim_that_does_not_exist_yet(bed, tmp_path):
    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(CORPUS_A, later / "corpus_a.jsonl")
    shutil.copy(SP_MODEL, later / "tokenizer.model")
    spec = files_spec("llama_dataset")
    spec["output"]["claimName"] = "later"
    later.chmod(0o755)
    with running_operator(bed.ns):
        bed.create("early", spec)
        obj = bed.wait(lambda: (o := bed.get("early")).get("status", {}).get("phase") == "Pending" and o,
                       "Pending for the claim")
        conds = {c["type"]: c for c in obj["status"]["conditions"]}
        assert conds["Reconciling"]["reason"] == "WaitingForClaim" and conds["Stalled"]["status"] == "False"
        assert "PersistentVolumeClaim later not found" in obj["status"]["message"]
        assert bed.jobs(obj["metadata"]["uid"]) == []
        bed.cluster.create_hostpath_pvc(bed.ns, later, name="later", access_modes=("ReadWriteMany",),
                                        owner=(JOB_UID, JOB_UID))
        bed.wait_ready("early")
    assert_golden(later / "llama_dataset_text_document")


def test_a_foreign_job_in_the_way_stalls_instead_of_being_adopted(bed):
    from datasetprep.spec import parse_spec

    spec = files_spec("llama_dataset")
    name = job_name("taken", spec_hash(parse_spec(spec)))
    bed.batch.create_namespaced_job(bed.ns, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "x", "image": "busybox", "command": ["true"]}]}}}})
    with running_operator(bed.ns):
        bed.create("taken", spec)
        obj, stalled = bed.wait_stalled("taken")
    assert stalled["reason"] == "JobConflict" and name in stalled["message"]
    assert obj["status"]["phase"] == "Failed"
    assert bed.job(name).metadata.owner_references is None  # left alone


def test_two_peered_replicas_start_one_job(bed):
    install_kopf_peering(bed, "datasetprep")
    with running_operator(bed.ns, "--peering", "datasetprep", "--priority", "10"):
        with running_operator(bed.ns, "--peering", "datasetprep", "--priority", "20"):
            created = bed.create("pair", files_spec("llama_dataset"))
            bed.wait_ready("pair")
    assert len(bed.jobs(created["metadata"]["uid"])) == 1
    assert [e.reason for e in bed.events("pair")].count("JobCreated") == 1
    assert_golden(bed.data / "llama_dataset_text_document")
