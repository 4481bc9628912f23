"""Sharded runs (Indexed Job + merge Job), kept shards, reuse of an identical output and live
progress, through the reconciler with the in-memory API fake (the same on the test bed:
test_operator_shards_e2e.py)."""
from __future__ import annotations

import copy
import json


from datasetprep.contract import ProgressRecord
from datasetprep.spec import parse_spec
from datasetprep_operator.reconcile import Seen
from datasetprep_operator.results import read_result
from datasetprep_operator.status import ready_output_key
from datasetprep_operator.trainingconfig import training_config_data
from fakeapi import World, complete, cond, names, pod, ready_source, reusing
from specs import KEPT_RESULT, RESULT, SPEC, sharded


def test_sharded_run_is_two_stages_and_restart_safe():
    w = World(sharded())
    jobs = names(w)
    first = w.run()
    assert [e.reason for e in first.events] == ["JobCreated"] and "3 shards" in first.events[0].message
    assert list(w.kube.jobs) == [jobs.main] and w.kube.jobs[jobs.main]["spec"]["completionMode"] == "Indexed"
    assert w.body["status"]["jobName"] == jobs.main and w.body["status"]["reuseKey"]
    w.kube.jobs[jobs.main]["status"] = {"active": 2, "succeeded": 1, "completedIndexes": "1"}
    w.run()
    assert w.body["status"]["progress"]["shardsDone"] == 1 and w.body["status"]["progress"]["shardsTotal"] == 3

    complete(w, jobs.main)
    second = w.run()
    assert [e.reason for e in second.events] == ["MergeJobCreated"]
    assert set(w.kube.jobs) == {jobs.main, jobs.merge}
    merge_job = w.kube.jobs[jobs.merge]
    merge_env = {e["name"]: e for e in merge_job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(merge_env["DATASETPREP_RUN"]["value"])["step"] == "merge"
    assert merge_job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    status = w.body["status"]
    assert status["phase"] == "Running" and status["jobName"] == jobs.merge
    assert status["progress"]["summary"] == "merging" and status["progress"]["shardsDone"] == 3
    assert w.metrics.started == 1

    # A restarted operator (nothing watched) finds both stages and creates nothing.
    w.kube.calls.clear()
    assert w.run().events == [] and not [c for c in w.kube.calls if c.startswith("create")]
    # The stage-1 Job deleted by hand: the merge Job carries on.
    del w.kube.jobs[jobs.main]
    w.run()
    assert list(w.kube.jobs) == [jobs.merge] and w.body["status"]["phase"] == "Running"

    complete(w, jobs.merge, pods=[pod("Succeeded", json.dumps(RESULT), 0, "T3")])
    w.run()
    assert w.body["status"]["phase"] == "Succeeded" and cond(w, "Ready")["reason"] == "Succeeded"
    assert '"/data/llama_dataset_text_document"' in w.kube.config_maps["wiki-training"]["data"]["config.yaml"]
    assert w.body["status"]["output"]["tokenizer"] == {"type": "sentencepiece", "path": "/data/tokenizer.model",
                                                       "vocabSize": 8000, "eodId": 2, "fingerprint": "t" * 64}
    w.kube.calls.clear()
    assert w.run().status == {} and w.kube.calls == []


def test_a_failed_shard_stalls_with_its_own_error_not_a_stopped_siblings():
    w = World(sharded())
    jobs = names(w)
    w.run()
    culprit = pod("Failed", json.dumps({"ok": False, "error": "corpus.jsonl:7: malformed JSON"}), 1, "T1")
    sibling = pod("Failed", "progress: 40% ... (log tail)", 143, "T2")  # stopped when the Job failed
    complete(w, jobs.main, ok=False, pods=[culprit, sibling])
    w.run()
    stalled = cond(w, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "JobFailed"
    assert stalled["message"].startswith(f"Job {jobs.main} failed: corpus.jsonl:7: malformed JSON; fix the cause, "
                                         "then retry: kubectl annotate datasetprep wiki datasetprep.io/retry=")
    assert jobs.merge not in w.kube.jobs


def test_a_failed_merge_stalls():
    w = World(sharded())
    jobs = names(w)
    w.run()
    complete(w, jobs.main)
    w.run()
    error = json.dumps({"ok": False, "error": "chunk 3 of 9 is not done"})
    complete(w, jobs.merge, ok=False, pods=[pod("Failed", error, 1, "T3")])
    w.run()
    assert cond(w, "Stalled")["message"].startswith(f"Job {jobs.merge} failed: chunk 3 of 9 is not done; ")
    assert w.body["status"]["phase"] == "Failed" and w.body["status"]["jobName"] == jobs.merge


def test_live_progress_is_written_at_most_every_five_seconds():
    w = World()
    clock = [100.0]
    w.ctx.clock = lambda: clock[0]
    w.run()
    job = w.kube.jobs[w.job_name]
    job["status"] = {"active": 1}
    pods = [{"metadata": {"name": "pod-0"}, "status": {"phase": "Running"}}]

    def tick(done: int, seconds: float) -> dict:
        clock[0] += seconds
        record = ProgressRecord(bytes_done=done, bytes_total=100, tokens=done, tokens_per_second=1, time=clock[0])
        w.kube.logs["pod-0"] = record.to_log_line() + "\n"
        return w.run(seen=Seen(job=w.watched().job, pods=lambda ns, name: pods)).status

    w.kube.log_reads.clear()
    assert tick(10, 1)["progress"]["percent"] == 10  # the first figures: at once
    assert tick(20, 2) == {}  # 2 s later: held back, and the log is not read
    assert tick(30, 2) == {}  # 4 s
    assert w.kube.log_reads == ["pod-0"]
    assert tick(40, 1.5)["progress"]["percent"] == 40  # 5.5 s
    job["status"] = {"active": 0, "succeeded": 1}
    pods[0]["status"]["phase"] = "Succeeded"
    assert tick(40, 0.5)["progress"]["shardsDone"] == 1  # a new state: at once
    assert w.kube.log_reads == ["pod-0"] * 3
    tick(40, 6)
    assert w.kube.log_reads == ["pod-0"] * 3  # a finished pod's log is read once


def test_an_identical_ready_output_is_reused_without_a_job():
    source = ready_source(SPEC)
    mine = {**SPEC, "output": {"claimName": "data", "prefix": "mine", "mountPath": "/mnt/data"}}
    w = World(mine)
    seen = reusing(w, source)
    outcome = w.run(seen=seen)
    assert outcome.error is None and w.kube.jobs == {}
    assert [e.reason for e in outcome.events] == ["Reused"] and "DatasetPrep first" in outcome.events[0].message
    status = w.body["status"]
    assert status["phase"] == "Succeeded" and cond(w, "Ready")["reason"] == "Reused"
    assert "jobName" not in status and status["reuseKey"] == source["status"]["reuseKey"]
    out = status["output"]
    assert out["reused"] is True and out["reusedFrom"] == "first"
    assert out["prefix"] == "/mnt/data/llama_dataset_text_document"  # the source's file, at my mount path
    assert out["fingerprint"] == source["status"]["output"]["fingerprint"] and out["tokens"] == 30
    data = w.kube.config_maps["wiki-training"]["data"]
    assert '"/mnt/data/llama_dataset_text_document"' in data["config.yaml"]
    assert '"/mnt/data/tokenizer.model"' in data["config.yaml"]
    # Done is done: a resync reads nothing; a reused output is itself a candidate for others.
    w.kube.calls.clear()
    assert w.run(seen=seen).status == {} and w.kube.calls == []
    assert ready_output_key(w.body) == source["status"]["reuseKey"]


def test_reuse_never_or_a_stale_candidate_launches_a_job():
    source = ready_source(SPEC)
    w = World({**SPEC, "reuse": "Never"})
    w.run(seen=reusing(w, source))
    assert len(w.kube.jobs) == 1 and w.body["status"]["phase"] == "Running"

    stale = copy.deepcopy(source)
    stale["metadata"]["generation"] = 2  # its spec changed since the watch saw it Ready
    w = World()
    seen = reusing(w, source)
    real_get = w.kube.get_datasetprep
    w.kube.get_datasetprep = lambda ns, name: stale if name == source["metadata"]["name"] else real_get(ns, name)
    w.run(seen=seen)
    assert len(w.kube.jobs) == 1 and w.body["status"]["phase"] == "Running"


def test_kept_shards_run_lists_them_and_is_reusable():
    w = World(sharded(keepShards=True))
    jobs = names(w)
    w.run()
    complete(w, jobs.main)
    second = w.run()
    assert "write their blend list" in second.events[0].message
    assert w.body["status"]["progress"]["summary"] == "listing shards"
    complete(w, jobs.merge, pods=[pod("Succeeded", json.dumps(KEPT_RESULT), 0, "T3")])
    w.run()
    status = w.body["status"]
    assert status["phase"] == "Succeeded" and "3 shard datasets listed in" in status["message"]
    out = status["output"]
    assert out["layout"] == "Shards" and "prefix" not in out
    assert out["blendFile"] == "/data/llama_dataset_text_document.blend.txt"
    assert out["files"] == [{"key": "text", "documents": 3, "sequences": 3, "tokens": 30, "dtype": "uint16",
                             "blendFile": "/data/llama_dataset_text_document.blend.txt", "shards": 3,
                             "shardTokens": [12, 0, 18]}]
    cm = w.kube.config_maps["wiki-training"]["data"]
    assert cm == training_config_data(parse_spec(sharded(keepShards=True)), read_result(json.dumps(KEPT_RESULT)))

    # another resource with the same kept-shards spec points at it, at its own mount path
    source = w.body
    source["metadata"].update(name="first", uid="uid-0")
    assert ready_output_key(source) == source["status"]["reuseKey"]
    mine = sharded(keepShards=True, output={"claimName": "data", "prefix": "mine", "mountPath": "/mnt/data"})
    w2 = World(mine)
    w2.run(seen=reusing(w2, source))
    assert w2.kube.jobs == {} and w2.body["status"]["output"]["reusedFrom"] == "first"
    assert w2.body["status"]["output"]["blendFile"] == "/mnt/data/llama_dataset_text_document.blend.txt"
    data = w2.kube.config_maps["wiki-training"]["data"]
    assert "--data-args-path /mnt/data/llama_dataset_text_document.blend.txt" in data["megatron-args.txt"]
    assert "/mnt/data/llama_dataset_shard00002_text_document" in data["nemo2-data.yaml"]
    # ... but one that wants a merged dataset does not
    w3 = World({**SPEC, "output": {"claimName": "data", "prefix": "x"}})
    w3.run(seen=reusing(w3, source))
    assert len(w3.kube.jobs) == 1
