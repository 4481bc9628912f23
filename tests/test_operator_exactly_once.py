"""Every effect of the control plane once per transition, whatever bodies the watch delivers (issue 17).

The runtime is fed what a lagging watch or a second replica would hand it: bodies from *before*
a transition, again and again. Each such look must either see that its write loses (409, the fake
API's resourceVersion check, as the API server's) and decide again on the fresh body, or -- through
the runtime's own cache -- never decide on the stale body at all. Either way: one event, one status
write of the transition, one ConfigMap write, metrics equal to the truth. The same under real
latency: test_operator_exactly_once_e2e.py (a slow API server).
"""
from __future__ import annotations

import asyncio
import copy
import json
import threading
import time

import pytest

from datasetprep_operator.runtime import Stale
from datasetprep_operator.workqueue import WorkQueue
from fakeapi import World, cond, ready_source, reusing
from specs import RESULT, SPEC


def replay(w: World, stale: dict, times: int = 3) -> None:
    """A lagging watch hands the runtime ``stale`` again: every look loses its write and decides again."""
    for _ in range(times):
        with pytest.raises(Stale):
            w.run(body=stale)
        w.run()  # what the runtime does after a 409: re-read, decide again


def test_a_finished_run_is_published_once_however_often_a_stale_body_comes_back():
    w = World()
    w.run()
    before = copy.deepcopy(w.body)  # Running: what the watch still shows after the Succeeded write
    w.finish(message=json.dumps(RESULT))
    w.run()
    assert w.body["status"]["phase"] == "Succeeded"
    replay(w, before)
    assert w.reasons() == ["JobCreated", "Succeeded"]
    assert (w.metrics.started, w.metrics.succeeded, w.metrics.tokens, w.metrics.failed) == (1, 1, 30, 0)
    # One ConfigMap write (a stale look's create is refused, and the data it reads back is the same)
    # and two status writes (Running, then Succeeded): the replays changed nothing.
    assert w.kube.writes("create_config_map", refused=False) == ["create_config_map wiki-training"]
    assert w.kube.writes("replace_config_map") == []
    assert len(w.kube.writes("patch_status", refused=False)) == 2


def test_the_runtime_never_decides_on_a_body_older_than_its_own_write():
    """The cache keeps the newest body it knows: a watch event older than our write is not used."""
    w = World()
    w.runtime.bodies.note(w.body)
    key = w.key
    w.runtime.indexes.seen = w.watched  # an up-to-date Job/pod watch
    w.runtime.sync(key)
    before = copy.deepcopy(w.body)
    w.finish(message=json.dumps(RESULT))
    w.runtime.sync(key)
    assert w.body["status"]["phase"] == "Succeeded"
    w.kube.calls.clear()
    for _ in range(3):
        w.runtime.bodies.note(before)  # the watch delivers the Running body late
        w.runtime.sync(key)
    assert w.kube.calls == []  # not even a 409: the stale body never reached a decision
    assert w.reasons() == ["JobCreated", "Succeeded"] and w.metrics.succeeded == 1


def test_a_failed_run_is_reported_once():
    w = World()
    w.run()
    before = copy.deepcopy(w.body)
    w.finish(ok=False, message=json.dumps({"ok": False, "error": "bad.jsonl:2: malformed JSON"}))
    w.run()
    replay(w, before)
    assert w.reasons() == ["JobCreated", "JobFailed"] and w.metrics.failed == 1
    assert "retry: kubectl annotate datasetprep wiki datasetprep.io/retry=" in cond(w, "Stalled")["message"]


def test_reuse_is_reported_once_when_create_and_resync_both_look():
    """Two looks at the new resource's first body (what kopf's create handler and timer both did)."""
    source = ready_source(SPEC)
    w = World({**SPEC, "output": {"claimName": "data", "prefix": "mine"}})
    seen = reusing(w, source)
    first = copy.deepcopy(w.body)
    w.run(seen=seen)
    with pytest.raises(Stale):
        w.run(body=first, seen=seen)
    w.run(seen=seen)
    assert w.reasons() == ["Reused"] and w.kube.jobs == {}
    assert w.kube.writes("create_config_map", refused=False) == ["create_config_map wiki-training"]


def test_a_missing_claim_is_said_once_per_wait():
    w = World()
    w.kube.claims = set()
    first = copy.deepcopy(w.body)
    w.run()
    with pytest.raises(Stale):
        w.run(body=first)
    for _ in range(3):
        w.run()  # the retries while the claim is missing
    assert w.reasons() == ["WaitingForClaim"]
    w.kube.claims = {"data"}
    w.run()
    assert w.reasons() == ["WaitingForClaim", "JobCreated"]


def test_a_retry_annotation_starts_one_new_run_of_the_same_spec():
    w = World()
    w.run()
    w.finish(ok=False, message=json.dumps({"ok": False, "error": "tokenizer.model: no such file"}))
    w.run()
    failed_job = w.job_name
    assert w.body["status"]["phase"] == "Failed"
    w.kube.pods = []
    w.annotate(**{"datasetprep.io/retry": "1"})
    before = copy.deepcopy(w.body)
    w.run()
    assert w.job_name != failed_job and list(w.kube.jobs) == [w.job_name]  # the failed Job made room
    assert w.body["status"]["jobName"] == w.job_name and w.body["status"]["observedRetry"] == "1"
    assert cond(w, "Stalled")["status"] == "False" and w.body["status"]["phase"] == "Running"
    replay(w, before)
    assert w.reasons() == ["JobCreated", "JobFailed", "JobCreated"] and w.metrics.started == 2
    # The same value again changes nothing: a restarted operator finds the run's Job by the value.
    w.restart()
    w.run()
    assert len(w.kube.jobs) == 1 and w.reasons().count("JobCreated") == 2
    w.finish(message=json.dumps(RESULT))
    w.run()
    assert w.body["status"]["phase"] == "Succeeded" and list(w.kube.jobs) == [w.job_name]


def test_an_attempt_that_failed_is_shown_and_said_once():
    w = World()
    w.run()
    job = w.kube.jobs[w.job_name]
    job["status"] = {"active": 1, "failed": 1}
    w.kube.pods = [{"metadata": {"name": "p-1"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "datasetprep", "state": {"terminated": {"exitCode": 1, "finishedAt": "T1", "message": json.dumps(
            {"ok": False, "error": "the Hub is unreachable", "kind": "transient"})}}}]}}]
    before = copy.deepcopy(w.body)
    w.run()
    status = w.body["status"]
    assert status["attempt"] == 2 and status["lastFailure"] == "the Hub is unreachable"
    assert "(attempt 2; the last one failed: the Hub is unreachable)" in status["message"]
    replay(w, before)
    assert w.reasons() == ["JobCreated", "AttemptFailed"]


def test_the_work_queue_works_on_a_key_once_at_a_time_and_again_after_a_late_add():
    """Adds while a key waits merge into one look; an add while it is worked on gives one more look,
    after; two keys run side by side; a delayed add comes back by itself."""
    calls: list[str] = []
    running: set[str] = set()
    overlap = threading.Event()
    release = threading.Event()

    def work(key):
        if key in running:
            overlap.set()
        running.add(key)
        calls.append(key)
        if key == "a" and calls.count("a") == 1:
            release.wait(5)
        running.discard(key)
        return 0.05 if key == "b" and calls.count("b") == 1 else None

    async def scenario():
        queue = WorkQueue(work, concurrency=4)
        queue.add("a")
        queue.add("a")  # merged with the waiting one
        await asyncio.sleep(0.1)
        queue.add("a")  # "a" is being worked on: one more look afterwards
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.1)
        release.set()
        deadline = time.monotonic() + 5
        while (calls.count("a") < 2 or calls.count("b") < 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await queue.stop()

    asyncio.run(scenario())
    assert calls.count("a") == 2 and calls.count("b") == 2 and not overlap.is_set()


def test_a_failed_look_is_retried_with_backoff():
    calls: list[float] = []

    def work(key):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("boom")
        return None

    async def scenario():
        queue = WorkQueue(work, concurrency=1)
        queue.add("k")
        deadline = time.monotonic() + 8
        while len(calls) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await queue.stop()

    asyncio.run(scenario())
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 1.9  # 1 s, then 2 s


def test_an_attempt_the_node_killed_says_which_limit_once():
    """An attempt killed for memory (as the pod index keeps it: the summary holds the limit) names the
    limit and how to raise it, in status and in the one AttemptFailed event."""
    w = World()
    w.run()
    w.kube.jobs[w.job_name]["status"] = {"active": 1, "failed": 1}
    w.kube.pods = [{"metadata": {"name": "p-1"}, "spec": {"containers": [
        {"name": "datasetprep", "resources": {"limits": {"memory": "512Mi", "cpu": "2"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "datasetprep", "state": {"terminated": {
            "exitCode": 137, "reason": "OOMKilled", "finishedAt": "T1"}}}]}}]
    before = copy.deepcopy(w.body)
    w.run()
    failure = w.body["status"]["lastFailure"]
    assert "more memory than its limit (limits.memory: 512Mi)" in failure and "spec.resources.limits.memory" in failure
    replay(w, before)
    assert w.reasons() == ["JobCreated", "AttemptFailed"]


def test_the_runtime_keeps_each_body_without_its_managed_fields():
    """The newest body of every DatasetPrep stays in memory; the API server's field bookkeeping is over half
    of it and read by nothing (bench_load.py --ready-at-rest: RSS per Ready resource)."""
    from datasetprep_operator.runtime import Bodies

    body = {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep", "spec": {"a": 1}, "status": {"b": 2},
            "metadata": {"name": "x", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 1,
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]}}
    bodies = Bodies()
    bodies.note(body)
    kept = bodies.get(("ns", "x"))
    assert "managedFields" not in kept["metadata"]
    assert kept == {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "managedFields"}}
    assert body["metadata"]["managedFields"], "the watch's own body is not changed"


def test_an_object_deleted_before_its_status_write_ends_the_look_quietly(caplog):
    """The namespace (or the DatasetPrep) is deleted while a look is deciding: the status write gets
    404. That is the end of this object, not an error: the look stops (no retry, no traceback, no
    event), as the fresh read the runtime makes after a lost write finds nothing."""
    w = World()
    key = w.key
    w.run()
    w.finish(message=json.dumps(RESULT))
    w.runtime.bodies.note(w.body)
    seen = w.watched()
    w.runtime.indexes.seen = lambda: seen
    del w.kube.datasetpreps[key]  # deleted after the watch delivered it
    events = len(w.kube.events)
    with caplog.at_level("DEBUG"):
        assert w.runtime.sync(key) is None
    assert w.kube.calls[-2:] == ["patch_status wiki", "get_datasetprep wiki"]
    assert len(w.kube.events) == events and w.metrics.errors == 0 and w.metrics.succeeded == 0
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING") or r.exc_info]


def test_a_look_at_an_older_generation_starts_no_job():
    """The spec changed twice within a moment and the look at the middle version comes after the last
    is stored: that look starts no Job (a short run could publish before its deletion took effect);
    the runtime decides again on the stored version and starts only its Job."""
    w = World()
    key = w.key
    w.change_spec(appendEod=False)
    middle = copy.deepcopy(w.body)
    w.change_spec(workers=3)
    with pytest.raises(Stale):
        w.run(body=middle)
    assert w.kube.jobs == {} and w.kube.events == []
    w.runtime.bodies.note(middle)  # what the watch handed over
    seen = w.watched()
    w.runtime.indexes.seen = lambda: seen
    w.runtime.sync(key)
    assert len(w.kube.jobs) == 1 and w.body["status"]["observedGeneration"] == 3
    assert w.reasons() == ["JobCreated"] and w.metrics.errors == 0
