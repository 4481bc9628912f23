"""Scale-out: sharded runs (Indexed Job + merge Job), resume after a killed shard, reuse, live progress.

The cluster tests run the real operator (kopf.testing.KopfRunner) against the real API server test
bed, whose pod runner executes the real ``datasetprep job`` pods as local processes; the bytes on the
volume are compared with Megatron-LM's own (``shared/golden``). The fast tests above them check the
builders and the reconciler's branches with the in-memory fake of test_operator_reconcile.py.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from datasetprep import pipeline, tokenization
from datasetprep.merge import merge as merge_datasets
from datasetprep.spec import parse_spec
from datasetprep_operator import builders
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.reconcile import Seen
from paths import CORPUS_A, GOLDEN, SP_MODEL
from test_operator_e2e import (  # noqa: F401  (bed, crd and operator_env are fixtures)
    Bed, bed, crd, files_spec, grant_progress_reporting, operator_env, running_operator)
from test_operator_reconcile import RESULT, SPEC, World, cond

GOLDEN_PREFIX = GOLDEN / "a_spbpe_eod_text_document"
GOLDEN_META = json.loads(GOLDEN_PREFIX.with_suffix(".json").read_text())
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


# =========================================================================== without a cluster


def sharded(**extra: Any) -> dict:
    return {**SPEC, "shards": 3, **extra}


def names(world: World) -> builders.RunJobs:
    return builders.RunJobs.for_spec("wiki", parse_spec(world.body["spec"]))


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


def test_indexed_job_and_merge_job_manifests():
    spec = parse_spec(sharded(parallelism=2, backoffLimit=4))
    config = OperatorConfig(job_env=(("DATASETPREP_CHUNK_MIB", "0.5"), ("HF_HOME", "/cache")))
    shards = builders.build_job(spec, parent="wiki", namespace="ml", parent_uid="u", config=config, indexed=True)
    merge_job = builders.build_job(spec, parent="wiki", namespace="ml", parent_uid="u", config=config, merge=True)
    assert shards["spec"]["completionMode"] == "Indexed" and shards["spec"]["completions"] == 3
    assert shards["spec"]["parallelism"] == 2 and shards["spec"]["backoffLimitPerIndex"] == 4
    assert shards["spec"]["maxFailedIndexes"] == 0
    assert shards["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert merge_job["metadata"]["name"] == shards["metadata"]["name"] + "-merge"
    assert merge_job["spec"]["completions"] == 1 and "completionMode" not in merge_job["spec"]
    assert merge_job["spec"]["backoffLimit"] == 4
    (c1,), (c2,) = shards["spec"]["template"]["spec"]["containers"], merge_job["spec"]["template"]["spec"]["containers"]
    assert c1["command"] == ["datasetprep", "job"] and c2["command"] == ["datasetprep", "job", "--merge"]
    assert c1["env"] == c2["env"] and c1["volumeMounts"] == c2["volumeMounts"]
    env = {e["name"]: e for e in c1["env"]}
    assert env["DATASETPREP_CHUNK_MIB"] == {"name": "DATASETPREP_CHUNK_MIB", "value": "0.5"}
    assert env["HF_HOME"]["value"] == "/cache" and [e["name"] for e in c1["env"]].count("HF_HOME") == 1
    assert merge_job["metadata"]["labels"][builders.LABEL_COMPONENT] == "merge"
    with pytest.raises(ValueError):
        builders.build_job(spec, parent="wiki", namespace="ml", parent_uid="u", config=config, indexed=True,
                           merge=True)


@pytest.mark.parametrize("parent", ["x" * 63, "a" * 50 + "-" + "b" * 12, "wiki"])
def test_merge_job_name_fits_and_keeps_the_digest(parent):
    name = builders.merge_job_name(parent, "0123abcd")
    assert len(name) <= 63 and name.endswith("-0123abcd-merge") and not name.startswith("-")


def test_job_env_setting():
    env = {"DATASETPREP_JOB_ENV": '{"HTTPS_PROXY": "http://p:3128", "DATASETPREP_CHUNK_MIB": 0.1}'}
    assert OperatorConfig.from_env(env).job_env == (("DATASETPREP_CHUNK_MIB", "0.1"), ("HTTPS_PROXY", "http://p:3128"))
    assert OperatorConfig.from_env({}).job_env == ()
    for bad, needle in [("[]", "JSON object"), ("{", "JSON object"), ('{"DATASETPREP_SPEC": "x"}', "cannot be"),
                        ('{"A": {"b": 1}}', "must be a string"), ('{"1 A": "x"}', "not a valid")]:
        with pytest.raises(ValueError, match=needle):
            OperatorConfig.from_env({"DATASETPREP_JOB_ENV": bad})


def test_reuse_key_is_what_the_bytes_depend_on():
    base = parse_spec(SPEC)
    key = builders.reuse_key(base)
    same = [
        {**SPEC, "output": {"claimName": "data", "prefix": "elsewhere", "mountPath": "/mnt"}},
        {**SPEC, "shards": 4, "workers": 8, "backoffLimit": 0, "reuse": "Never", "image": "x:1"},
        {**SPEC, "source": {"files": {"claimName": "data", "paths": ["corpus.jsonl"]}, "textKeys": ["text"]}},
        {**SPEC, "tokenizer": {**SPEC["tokenizer"], "path": {"claimName": "data", "path": "tokenizer.model"}}},
    ]
    for raw in same:
        assert builders.reuse_key(parse_spec(raw)) == key, raw
    different = [
        {**SPEC, "appendEod": False},
        {**SPEC, "source": {"files": {"paths": ["other.jsonl"]}}},
        {**SPEC, "source": {"files": {"claimName": "raw", "paths": ["corpus.jsonl"]}}},
        {**SPEC, "source": {"files": {"paths": ["corpus.jsonl"]}, "textKeys": ["content"]}},
        {**SPEC, "tokenizer": {**SPEC["tokenizer"], "eodId": 3}},
        {**SPEC, "output": {"claimName": "other", "prefix": "llama_dataset"}},
    ]
    keys = {builders.reuse_key(parse_spec(raw)) for raw in different}
    assert key not in keys and len(keys) == len(different)
    hub = {**SPEC, "source": {"hub": {"repo": "wikitext", "subset": "a"}}}
    assert builders.reuse_key(parse_spec(hub)) != builders.reuse_key(
        parse_spec({**hub, "source": {"hub": {"repo": "wikitext", "subset": "a", "revision": "v2"}}}))


def test_count_indexes():
    assert [builders.count_indexes(x) for x in (None, "", "3", "0,2-4", "0-9", "bad,1")] == [0, 0, 1, 4, 10, 1]


def test_progress_assumes_unreported_shards_are_like_the_reported_ones():
    reports = [{"bytesDone": 50, "bytesTotal": 100, "tokens": 10, "tokensPerSecond": 1, "shard": i, "time": 1}
               for i in range(2)]
    p = builders.aggregate_progress(reports, shards_done=0, shards_total=4, pods_active=2)
    assert (p["bytesDone"], p["bytesTotal"], p["percent"], p["summary"]) == (100, 400, 25, "25%")


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
    assert merge_job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--merge"
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
                                                       "vocabSize": 8000, "eodId": 2}
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
    assert stalled["message"] == f"Job {jobs.main} failed: corpus.jsonl:7: malformed JSON"
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
    assert cond(w, "Stalled")["message"] == f"Job {jobs.merge} failed: chunk 3 of 9 is not done"
    assert w.body["status"]["phase"] == "Failed" and w.body["status"]["jobName"] == jobs.merge


def test_live_progress_is_written_at_most_every_five_seconds():
    w = World()
    clock = [100.0]
    w.ctx.clock = lambda: clock[0]
    w.run()
    job = w.kube.jobs[w.job_name]
    job["status"] = {"active": 1}
    reports = []

    def tick(done: int, seconds: float) -> dict:
        clock[0] += seconds
        reports[:] = [{"bytesDone": done, "bytesTotal": 100, "tokens": done, "tokensPerSecond": 1, "shard": None,
                       "time": clock[0]}]
        pods = [{"metadata": {"annotations": {builders.PROGRESS_ANNOTATION: json.dumps(r)}}} for r in reports]
        return w.run(seen=Seen(pods=lambda ns, name: pods)).status

    assert tick(10, 1)["progress"]["percent"] == 10  # the first figures: at once
    assert tick(20, 2) == {}  # 2 s later: held back
    assert tick(30, 2) == {}  # 4 s
    assert tick(40, 1.5)["progress"]["percent"] == 40  # 5.5 s
    job["status"] = {"active": 0, "succeeded": 1}
    assert tick(40, 0.5)["progress"]["shardsDone"] == 1  # a new state: at once


def ready_source(spec: dict, name: str = "first", uid: str = "uid-0") -> dict:
    """A DatasetPrep that ran its Job and is Ready, as the API server would return it."""
    w = World(spec)
    w.body["metadata"].update(name=name, uid=uid)
    w.run()
    job = builders.job_name(name, builders.spec_hash(parse_spec(spec)))
    w.kube.jobs[job]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    w.kube.pods = [pod("Succeeded", json.dumps(RESULT), 0, "T2")]
    w.run()
    assert builders.reusable_key(w.body)
    return w.body


def reusing(world: World, source: dict) -> Seen:
    world.kube.get_datasetprep = lambda ns, name: copy.deepcopy(source) if name == source["metadata"]["name"] else None
    entry = {"name": source["metadata"]["name"], "uid": source["metadata"]["uid"], "reusedFrom": None}
    return Seen(reusable=lambda ns, key: [entry] if key == source["status"]["reuseKey"] else [])


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
    assert builders.reusable_key(w.body) == source["status"]["reuseKey"]


def test_reuse_never_or_a_stale_candidate_launches_a_job():
    source = ready_source(SPEC)
    w = World({**SPEC, "reuse": "Never"})
    w.run(seen=reusing(w, source))
    assert len(w.kube.jobs) == 1 and w.body["status"]["phase"] == "Running"

    stale = copy.deepcopy(source)
    stale["metadata"]["generation"] = 2  # its spec changed since the watch saw it Ready
    w = World()
    seen = reusing(w, source)
    w.kube.get_datasetprep = lambda ns, name: stale
    w.run(seen=seen)
    assert len(w.kube.jobs) == 1 and w.body["status"]["phase"] == "Running"


KEPT_RESULT = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 3, "sequences": 3,
                 "tokens": 30, "dtype": "uint16", "blend_file": "llama_dataset_text_document.blend.txt",
                 "shards": 3, "blend_weights": [12, 0, 18]}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2},
    "fingerprint": "f", "resolved_revision": None,
}


def kept_config(result: dict, **spec_extra) -> dict[str, str]:
    spec = parse_spec(sharded(keepShards=True, **spec_extra))
    return builders.training_config_data(spec, builders.parse_termination_message(json.dumps(result)))


def test_kept_shards_config_names_the_blend():
    import yaml

    data = kept_config(KEPT_RESULT)
    shard0, shard2 = "/data/llama_dataset_shard00000_text_document", "/data/llama_dataset_shard00002_text_document"
    # Megatron-LM reads the list from the file on the volume, whatever the number of shards
    assert data["megatron-args.txt"] == ("--data-args-path /data/llama_dataset_text_document.blend.txt "
                                         "--tokenizer-type SentencePieceTokenizer "
                                         "--tokenizer-model /data/tokenizer.model\n")
    # NeMo takes the blend inline: weight (tokens), prefix, ...; the empty shard 1 is left out
    assert yaml.safe_load(data["config.yaml"])["training"]["data"] == {
        "dataset_path": [12, shard0, 18, shard2], "data_args_path": "/data/llama_dataset_text_document.blend.txt",
        "tokenizer_path": "/data/tokenizer.model"}
    assert yaml.safe_load(data["nemo2-data.yaml"])["paths"] == ["12", shard0, "18", shard2]
    # the names are the engine's own
    assert shard2 == "/data/" + pipeline.shard_prefix("llama_dataset", 2) + "_text_document"

    # weights the job had no room for: the file is named instead of a list
    no_weights = copy.deepcopy(KEPT_RESULT)
    del no_weights["outputs"][0]["blend_weights"]
    data = kept_config(no_weights)
    assert "dataset_path" not in yaml.safe_load(data["config.yaml"])["training"]["data"]
    nemo = yaml.safe_load(data["nemo2-data.yaml"])
    assert "paths" not in nemo and "/data/llama_dataset_text_document.blend.txt" in data["nemo2-data.yaml"]
    assert data["megatron-args.txt"].startswith("--data-args-path /data/llama_dataset_text_document.blend.txt ")
    # malformed weights (not one per shard) are not trusted either
    bad = copy.deepcopy(KEPT_RESULT)
    bad["outputs"][0]["blend_weights"] = [1, 2]
    assert "dataset_path" not in yaml.safe_load(kept_config(bad)["config.yaml"])["training"]["data"]


def test_kept_shards_are_part_of_the_reuse_key():
    merged = builders.reuse_key(parse_spec(sharded()))
    assert builders.reuse_key(parse_spec(SPEC)) == merged  # shards alone change nothing
    kept3 = builders.reuse_key(parse_spec(sharded(keepShards=True)))
    kept4 = builders.reuse_key(parse_spec({**sharded(keepShards=True), "shards": 4}))
    assert len({merged, kept3, kept4}) == 3


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
    assert cm == kept_config(KEPT_RESULT)

    # another resource with the same kept-shards spec points at it, at its own mount path
    source = w.body
    source["metadata"].update(name="first", uid="uid-0")
    assert builders.reusable_key(source) == source["status"]["reuseKey"]
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


# =========================================================================== on the test bed


def terminated(pod) -> dict:
    """The job container's terminated state of a pod (V1Pod), as a dict."""
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            return cs.state.terminated.to_dict()
    return {}


def job_pods(bed: Bed, job: str) -> list:
    return bed.core.list_namespaced_pod(bed.ns, label_selector=f"batch.kubernetes.io/job-name={job}").items


def same_bytes(prefix: Path, reference: Path) -> bool:
    return all(Path(f"{prefix}{ext}").read_bytes() == Path(f"{reference}{ext}").read_bytes()
               for ext in (".bin", ".idx"))


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
    jobs = {j.metadata.labels[builders.LABEL_COMPONENT]: j for j in bed.jobs(created["metadata"]["uid"])}
    shards, merge_job = jobs["job"], jobs["merge"]
    assert (shards.spec.completion_mode, shards.spec.completions, shards.spec.parallelism) == ("Indexed", 3, 3)
    assert (shards.spec.backoff_limit_per_index, shards.spec.max_failed_indexes) == (2, 0)
    assert merge_job.metadata.name == f"{shards.metadata.name}-merge" == status["jobName"]
    assert merge_job.spec.template.spec.containers[0].command == ["datasetprep", "job", "--merge"]
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
    jobs = {j.metadata.labels[builders.LABEL_COMPONENT]: j for j in bed.jobs(created["metadata"]["uid"])}
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


def shard_pod_copies(tmp: Path, seconds: float = 9.0) -> int:
    """How many copies of corpus_a make each of 3 one-worker shard pods tokenize for ``seconds`` at
    least, even with a core each: long enough that its second progress report (5 s after its first)
    finds it halfway. Measured with one in-process worker; 12 (about 37 MB) at the least."""
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    t0 = time.monotonic()
    pipeline.run(pipeline.Request(inputs=[CORPUS_A], output_prefix=str(tmp / "calibrate"), tokenizer=cfg,
                                  append_eod=True, workers=1))
    per_copy = time.monotonic() - t0
    return max(12, math.ceil(3 * seconds / per_copy))


@pytest.mark.cluster
def test_a_killed_shard_resumes_without_redoing_its_chunks_and_progress_is_live(bed, kube_cluster, monkeypatch,
                                                                                tmp_path):
    copies = shard_pod_copies(tmp_path)
    text = CORPUS_A.read_text(encoding="utf-8")
    (bed.data / "big.jsonl").write_text("\n".join([text] * copies) + "\n", encoding="utf-8")
    size = (bed.data / "big.jsonl").stat().st_size
    grant_progress_reporting(bed)
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
                doc = json.loads((p.metadata.annotations or {}).get(builders.PROGRESS_ANNOTATION) or "{}")
                if p.status.phase == "Running" and 2 <= doc.get("chunksDone", 0) <= doc.get("chunksTotal", 0) - 4:
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
    reference = Path(bed.data.parent) / "reference"
    merge_datasets([str(GOLDEN_PREFIX)] * copies, str(reference), True)
    assert same_bytes(bed.data / "big" / "llama_text_document", reference)
    assert obj["status"]["output"]["documents"] == 526 * copies

    # Live progress while it ran: percent, summary and the shards done, over all three pods.
    running = [p for p in snapshots if "bytesTotal" in p and p.get("summary") not in ("100%", "merging")]
    assert running, snapshots
    assert any(0 < p["percent"] < 100 and p["summary"] == f"{p['percent']}%" for p in running), running
    assert size in {p["bytesTotal"] for p in running}  # exact once every shard has reported
    assert all(p["shardsTotal"] == 3 for p in running)
    assert any(0 < p["shardsDone"] < 3 for p in running), running
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
