"""The operator's status, pure (no API): built and read through DatasetPrepStatus, conditions,
live progress, the merge patch."""
from __future__ import annotations

import copy
import json

import pytest

from datasetprep.contract import ProgressRecord
from datasetprep.spec import DatasetPrepStatus, parse_spec
from datasetprep_operator.results import read_result
from datasetprep_operator.status import (aggregate_progress, count_indexes, failed_status, observed_status,
                                         output_status, running_status, status_changes,
                                         succeeded_status)
from specs import HUB_SPEC, SUCCESS

NOW1, NOW2, NOW3 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def by_type(conditions) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def test_condition_transitions():
    running_model = running_status(DatasetPrepStatus(), job="wiki-1", generation=1, now=NOW1, start_time=None)
    running = running_model.to_patch()
    c = by_type(running["conditions"])
    assert running["phase"] == "Running" and running["jobName"] == "wiki-1" and running["startTime"] == NOW1
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Running")
    assert c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
    assert all(x["observedGeneration"] == 1 and x["lastTransitionTime"] == NOW1 for x in c.values())

    result = read_result(json.dumps(SUCCESS))
    done_model = succeeded_status(running_model, parse_spec(HUB_SPEC), result, job="wiki-1",
                                  config_map="wiki-training", generation=1, now=NOW2, completion_time=None)
    done = done_model.to_patch()
    c = by_type(done["conditions"])
    assert done["phase"] == "Succeeded" and done["completionTime"] == NOW2 and done["configMapName"] == "wiki-training"
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "Succeeded")
    assert "526 documents, 821,228 tokens" in c["Ready"]["message"]
    assert c["Reconciling"]["status"] == "False" and c["Stalled"]["status"] == "False"
    assert c["Ready"]["lastTransitionTime"] == NOW2
    assert c["Stalled"]["lastTransitionTime"] == NOW1  # unchanged status keeps its transition time
    assert done["output"]["prefix"] == "/data/llama_dataset_text_document"
    assert done["output"]["tokens"] == 821228 and done["output"]["files"][0]["binSha256"] == "b" * 64

    # A spec change: generation 2 runs, Ready goes False, the published output stays in status.
    rerun_model = running_status(done_model, job="wiki-2", generation=2, now=NOW3, start_time=None)
    rerun = rerun_model.to_patch()
    assert "output" not in rerun  # a merge patch: the old output is left alone
    assert "/data/llama_dataset_text_document" in rerun["message"]
    c = by_type(rerun["conditions"])
    assert c["Ready"]["status"] == "False" and c["Ready"]["observedGeneration"] == 2

    failed = failed_status(rerun_model, reason="JobFailed", message="Job wiki-2 failed: bad line", generation=2,
                           now=NOW3, job="wiki-2").to_patch()
    c = by_type(failed["conditions"])
    assert failed["phase"] == "Failed"
    assert (c["Stalled"]["status"], c["Stalled"]["reason"], c["Stalled"]["message"]) == \
        ("True", "JobFailed", "Job wiki-2 failed: bad line")
    assert c["Ready"]["status"] == "False" and c["Reconciling"]["status"] == "False"


def test_progress_from_the_pods_reports():
    reports = [ProgressRecord.model_validate(r) for r in [
        {"bytesDone": 10, "bytesTotal": 100, "documents": 5, "tokens": 50, "tokensPerSecond": 10, "shard": 0, "time": 1},
        {"bytesDone": 40, "bytesTotal": 100, "documents": 20, "tokens": 200, "tokensPerSecond": 20, "shard": 0,
         "time": 2},  # the newer report of the same shard wins
        {"bytesDone": 100, "bytesTotal": 100, "documents": 30, "tokens": 400, "tokensPerSecond": 0, "shard": 1,
         "time": 2},
    ]]
    p = aggregate_progress(reports, shards_done=1, shards_total=2, pods_active=1).to_patch()
    assert p["percent"] == 70 and p["summary"] == "70%"
    assert (p["bytesDone"], p["bytesTotal"], p["documents"], p["tokens"]) == (140, 200, 50, 600)
    assert p["tokensPerSecond"] == 20 and p["shardsDone"] == 1 and p["shardsTotal"] == 2
    assert p["etaSeconds"] == int(60 / (20 * 140 / 600))
    assert aggregate_progress([], shards_done=0, shards_total=1, pods_active=0).to_patch()["summary"] == "starting"
    assert aggregate_progress([], shards_done=0, shards_total=1, pods_active=1).to_patch()["summary"] == "running"
    assert aggregate_progress([], shards_done=2, shards_total=4, pods_active=1).to_patch()["summary"] == "2/4 shards"


def test_observed_status_bumps_generation_only_when_needed():
    running = running_status(DatasetPrepStatus(), job="j", generation=1, now=NOW1, start_time=None)
    assert observed_status(running, generation=1).to_patch() == {}
    bumped = observed_status(running, generation=3).to_patch()
    assert bumped["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in bumped["conditions"]} == {3}


def test_results_with_several_keys_sum_tokens():
    result = copy.deepcopy(SUCCESS)
    result["outputs"].append(dict(result["outputs"][0], key="code", prefix="llama_dataset_code_document", tokens=10,
                                  sequences=5))
    r = read_result(json.dumps(result))
    out = output_status(parse_spec(HUB_SPEC), r).to_patch()
    assert out["tokens"] == 821238 and out["sequences"] == 527 and len(out["files"]) == 2
    assert out["prefix"] == "/data/llama_dataset_text_document"  # the first key is the dataset


def test_count_indexes():
    assert [count_indexes(x) for x in (None, "", "3", "0,2-4", "0-9", "bad,1")] == [0, 0, 1, 4, 10, 1]


def test_progress_assumes_unreported_shards_are_like_the_reported_ones():
    reports = [ProgressRecord(bytes_done=50, bytes_total=100, tokens=10, tokens_per_second=1, shard=i, time=1)
               for i in range(2)]
    p = aggregate_progress(reports, shards_done=0, shards_total=4, pods_active=2).to_patch()
    assert (p["bytesDone"], p["bytesTotal"], p["percent"], p["summary"]) == (100, 400, 25, "25%")


@pytest.mark.parametrize("current,desired,patch", [
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1}, {"a": None}, {"a": None}),
    ({}, {"a": None}, {}),
    ({"p": {"x": 1, "eta": 5}}, {"p": {"x": 2}}, {"p": {"x": 2, "eta": None}}),
    ({"c": [1]}, {"c": [1, 2]}, {"c": [1, 2]}),
])
def test_status_changes(current, desired, patch):
    assert status_changes(current, desired) == patch
