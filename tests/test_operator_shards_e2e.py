"""Scale-out on the test bed: sharded runs (Indexed Job + merge Job), kept shards, resume after a
killed shard, reuse, live progress -- the real operator (kopf.testing.KopfRunner) against the real API
server and node: the Job pods run our job image under the kubelet; the bytes on the volume are
compared with Megatron-LM's own (``shared/golden``)."""
from __future__ import annotations

import json
import time

import pytest

from bed import (GOLDEN_META, GOLDEN_PREFIX, INDEX_LABEL, assert_golden_copies, assert_real_job_pods, copies_lasting,
                 files_spec, job_pods, progress_in_log, running_operator, same_bytes, terminated, write_big_input)
from datasetprep.merge import merge as merge_datasets
from datasetprep_operator.naming import LABEL_COMPONENT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.cluster
def test_three_shards_write_the_same_bytes_as_one_pod_and_as_megatron(bed, monkeypatch):
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps({"DATASETPREP_CHUNK_MIB": "0.1"}))  # 17 chunks, not 3
    with running_operator(bed.ns):
        bed.create("one", files_spec("one/llama", reuse="Never"))
        created = bed.create("three", files_spec("three/llama", shards=3, reuse="Never"))
        obj = bed.wait_ready("three")
        one = bed.wait_ready("one")
    status = obj["status"]
    assert same_bytes(bed.data / "three" / "llama_text_document", GOLDEN_PREFIX)
    assert same_bytes(bed.data / "one" / "llama_text_document", GOLDEN_PREFIX)
    assert status["output"]["files"] == [dict(f, prefix=f["prefix"].replace("/one/", "/three/"))
                                         for f in one["status"]["output"]["files"]]
    assert status["output"]["files"][0]["binSha256"] == GOLDEN_META["sha256"]["bin"]
    assert (status["output"]["documents"], status["output"]["tokens"]) == (526, 821228)

    # Two Jobs: the Indexed one (3 pods, one slice each) and the merge, both ours.
    jobs = {j.metadata.labels[LABEL_COMPONENT]: j for j in bed.jobs(created["metadata"]["uid"])}
    shards, merge_job = jobs["job"], jobs["merge"]
    assert (shards.spec.completion_mode, shards.spec.completions, shards.spec.parallelism) == ("Indexed", 3, 3)
    assert (shards.spec.backoff_limit_per_index, shards.spec.max_failed_indexes) == (2, 0)
    assert merge_job.metadata.name == f"{shards.metadata.name}-merge" == status["jobName"]
    merge_env = {e.name: e.value for e in merge_job.spec.template.spec.containers[0].env}
    assert json.loads(merge_env["DATASETPREP_RUN"]) == {"step": "merge", "shards": 3, "keepShards": False}
    assert all(j.metadata.owner_references[0].uid == created["metadata"]["uid"] for j in (shards, merge_job))
    env = {e.name: e.value for e in shards.spec.template.spec.containers[0].env}
    assert env["DATASETPREP_CHUNK_MIB"] == "0.1"
    reports = sorted((json.loads(terminated(p)["message"]) for p in job_pods(bed, shards.metadata.name)),
                     key=lambda r: r["shard"])
    assert [(r["ok"], r["shard"], r["shards"], r["chunks_reused"]) for r in reports] == [
        (True, i, 3, 0) for i in range(3)]
    assert sum(r["chunks"] for r in reports) >= 10 and sum(r["documents"] for r in reports) == 526

    assert status["progress"]["shardsDone"] == status["progress"]["shardsTotal"] == 3
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["reason"] == "Succeeded" and conds["Ready"]["status"] == "True"
    cm = bed.config_map("three-training")
    assert cm.data["config.yaml"] == ('training:\n  data:\n    dataset_path: "/data/three/llama_text_document"\n'
                                      '    tokenizer_path: "/data/tokenizer.model"\n')
    assert {"JobCreated", "MergeJobCreated", "Succeeded"} <= {e.reason for e in bed.events("three")}


@pytest.mark.cluster
def test_kept_shards_are_published_by_their_pods_and_listed_in_the_config(bed, monkeypatch, tmp_path):
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps({"DATASETPREP_CHUNK_MIB": "0.1"}))
    with running_operator(bed.ns):
        created = bed.create("kept", files_spec("kept/llama", shards=3, keepShards=True, reuse="Never"))
        obj = bed.wait_ready("kept")
    status = obj["status"]
    out_dir = bed.data / "kept"
    shard_prefixes = [out_dir / f"llama_shard{i:05d}_text_document" for i in range(3)]
    # Each shard pod published its own dataset; nothing was merged.
    assert not (out_dir / "llama_text_document.bin").exists()
    jobs = {j.metadata.labels[LABEL_COMPONENT]: j for j in bed.jobs(created["metadata"]["uid"])}
    reports = sorted((json.loads(terminated(p)["message"]) for p in job_pods(bed, jobs["job"].metadata.name)),
                     key=lambda r: r["shard"])
    assert [(r["ok"], r["shard"], r.get("published")) for r in reports] == [(True, i, True) for i in range(3)]
    # The shards hold Megatron-LM's tokens in order: merged, they are its bytes.
    merge_datasets([str(p) for p in shard_prefixes], str(tmp_path / "remerged_text_document"))
    assert same_bytes(tmp_path / "remerged_text_document", GOLDEN_PREFIX)

    # The blend list on the volume, as Megatron-LM's --data-args-path reads it, with the pods' paths.
    words = (out_dir / "llama_text_document.blend.txt").read_text().split()
    assert words[1::2] == [f"/data/kept/llama_shard{i:05d}_text_document" for i in range(3)]
    assert sum(map(int, words[0::2])) == 821228
    out = status["output"]
    assert out["layout"] == "Shards" and out["blendFile"] == "/data/kept/llama_text_document.blend.txt"
    assert out["files"][0]["shardTokens"] == [int(w) for w in words[0::2]]
    assert (out["documents"], out["tokens"]) == (526, 821228)
    cm = bed.config_map("kept-training")
    assert cm.data["megatron-args.txt"].startswith("--data-args-path /data/kept/llama_text_document.blend.txt ")
    nemo_paths = __import__("yaml").safe_load(cm.data["nemo2-data.yaml"])["paths"]
    assert nemo_paths == words
    assert {"JobCreated", "MergeJobCreated", "Succeeded"} <= {e.reason for e in bed.events("kept")}


@pytest.mark.cluster
def test_a_killed_shard_resumes_without_redoing_its_chunks_and_progress_is_live(bed, kube_cluster, monkeypatch,
                                                                                tmp_path):
    # Each of 3 one-worker shard pods tokenizes for 9 s at least, even with a core each: long enough
    # that its second progress record (5 s after its first) finds it halfway. 12 copies (37 MB) at least.
    copies = copies_lasting(tmp_path, 3 * 9.0, minimum=12)
    size = write_big_input(bed, copies).stat().st_size
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps({"DATASETPREP_CHUNK_MIB": "0.25"}))
    snapshots: list[dict] = []

    def progress() -> dict:
        p = (bed.get("big").get("status") or {}).get("progress") or {}
        if p and (not snapshots or snapshots[-1] != p):
            snapshots.append(p)
        return p

    with running_operator(bed.ns):
        bed.create("big", files_spec("big/llama", paths=["big.jsonl"], shards=3, workers=1))
        job = bed.wait(lambda: (bed.get("big").get("status") or {}).get("jobName"), "the shard Job")

        def victim():
            progress()
            for p in job_pods(bed, job):
                if p.status.phase != "Running":
                    continue
                doc = progress_in_log(bed, p.metadata.name)  # what the pod printed last
                if 2 <= doc.get("chunksDone", 0) <= doc.get("chunksTotal", 0) - 4:
                    return p, doc
            return None
        pod, last = bed.wait(victim, "a shard pod halfway", timeout=120)
        index = pod.metadata.labels[INDEX_LABEL]
        kube_cluster.kill_pod(bed.ns, pod.metadata.name)

        def ready():
            progress()
            obj, cond_ = bed.condition("big", "Ready")
            return obj if cond_ and cond_["status"] == "True" else None
        obj = bed.wait(ready, "big Ready", timeout=240, interval=0.5)

    # The killed pod failed with SIGKILL; the Job made a new pod for its index, which resumed.
    pods = [p for p in job_pods(bed, job) if p.metadata.labels[INDEX_LABEL] == index]
    killed = next(p for p in pods if p.metadata.name == pod.metadata.name)
    assert killed.status.phase == "Failed" and terminated(killed)["exit_code"] == 137
    (replacement,) = [p for p in pods if p.metadata.name != pod.metadata.name]
    assert replacement.status.phase == "Succeeded"
    report = json.loads(terminated(replacement)["message"])
    assert report["ok"] and report["shard"] == int(index)
    assert report["chunks_reused"] >= max(2, last["chunksDone"]), (report, last)  # not redone from zero
    assert report["chunks_reused"] < report["chunks"]
    shard_job = bed.job(job)
    assert shard_job.status.failed == 1 and shard_job.status.succeeded == 3

    # The bytes: Megatron-LM's output for corpus_a, `copies` times over (its merge tool's concatenation).
    assert_golden_copies(bed.data / "big" / "llama_text_document", copies, tmp_path)
    assert_real_job_pods(bed, job)
    assert obj["status"]["output"]["documents"] == 526 * copies

    # Live progress while it ran: percent, summary and the shards done, over all three pods.
    running = [p for p in snapshots if "bytesTotal" in p and p.get("summary") not in ("100%", "merging")]
    assert running, snapshots
    assert any(0 < p["percent"] < 100 and p["summary"] == f"{p['percent']}%" for p in running), running
    assert size in {p["bytesTotal"] for p in running}  # exact once every shard has reported
    assert all(p["shardsTotal"] == 3 for p in running)
    assert any(0 < p["shardsDone"] < 3 for p in running), [(p.get("shardsDone"), p.get("summary"), p.get("bytesTotal")) for p in snapshots]
    assert any(p.get("tokensPerSecond", 0) > 0 and "etaSeconds" in p for p in running), running
    assert obj["status"]["progress"]["summary"] == "100%"


@pytest.mark.cluster
def test_an_identical_dataset_is_reused_without_a_job(bed):
    with running_operator(bed.ns):
        first = bed.create("first", files_spec("shared/llama"))
        a = bed.wait_ready("first")
        second = bed.create("second", files_spec("other/llama", trainingConfig={"configMapName": "second-data"}))

        def reused():
            assert bed.jobs(second["metadata"]["uid"]) == [], "a Job was launched for an identical dataset"
            obj, ready = bed.condition("second", "Ready")
            return obj if ready and ready["status"] == "True" else None
        b = bed.wait(reused, "second Ready", timeout=60)
        third = bed.create("third", files_spec("never/llama", reuse="Never"))
        c = bed.wait_ready("third")
        time.sleep(1)  # anything late would show now
        assert bed.jobs(second["metadata"]["uid"]) == []

    out_a, out_b = a["status"]["output"], b["status"]["output"]
    assert b["status"]["reuseKey"] == a["status"]["reuseKey"] == c["status"]["reuseKey"]
    conds = {x["type"]: x for x in b["status"]["conditions"]}
    assert conds["Ready"]["reason"] == "Reused" and "DatasetPrep first" in conds["Ready"]["message"]
    assert out_b["reused"] is True and out_b["reusedFrom"] == "first"
    assert out_b["prefix"] == out_a["prefix"] == "/data/shared/llama_text_document"
    assert out_b["fingerprint"] == out_a["fingerprint"] and out_b["files"] == out_a["files"]
    assert "jobName" not in b["status"]
    assert not (bed.data / "other").exists()  # nothing was written for it
    cm = bed.config_map("second-data")
    assert cm.data == bed.config_map("first-training").data
    assert [r.uid for r in cm.metadata.owner_references] == [second["metadata"]["uid"]]
    reasons = [e.reason for e in bed.events("second")]
    assert "Reused" in reasons and "JobCreated" not in reasons

    # reuse: Never runs its own Job, although an identical output is Ready.
    assert len(bed.jobs(third["metadata"]["uid"])) == 1
    assert {x["type"]: x for x in c["status"]["conditions"]}["Ready"]["reason"] == "Succeeded"
    assert c["status"]["output"].get("reusedFrom") is None
    assert same_bytes(bed.data / "never" / "llama_text_document", GOLDEN_PREFIX)
    assert bed.jobs(first["metadata"]["uid"])  # the source's own Job
