"""Faults of the control plane on the test bed's real node (issue 11): the operator runs as its own
process (``datasetprep operator``, so it can be SIGKILLed), its Job pods run our job image under the
kubelet, and the bytes on the volume are compared with Megatron-LM's (``shared/golden``).

* the operator SIGKILLed mid-run, then started again: it follows the same Job, never starts a second;
* kube-apiserver restarted mid-run, etcd restarted mid-run: Ready, golden bytes, one Job;
* the output PersistentVolumeClaim deleted mid-run: Stalled with a message naming it, nothing published;
* the namespace deleted mid-run: it goes away (no finalizer of ours holds it), the operator carries on;
* the spec changed twice within a second: one Job, for the final generation; the earlier ones are gone;
* job pods SIGKILLed at random points of their runs: a new pod resumes each, the bytes are Megatron-LM's (that
  it reuses the finished chunks is shown for shards in test_operator_shards_e2e.py: a single run's result
  does not count them).

Each test prints its figures (``FIGURE name=value``, also in the JUnit properties); ``-s`` shows them.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from bed import (GOLDEN_PREFIX, files_spec, job_pods, own_for_job_pods, same_bytes, terminated,
                 wait_for)
from datasetprep.merge import merge as merge_datasets
from paths import CORPUS_A

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Copies of corpus_a in the long input: long enough on the real node to hit the run with a fault.
COPIES = 4
#: Chunks of 0.25 MiB: a resumed pod has many finished chunks to reuse.
JOB_ENV = {"DATASETPREP_CHUNK_MIB": "0.25"}


def figure(record_property, name: str, value) -> None:
    """A measured figure of the test: printed and kept in the JUnit properties."""
    record_property(name, value)
    print(f"FIGURE {name}={value}")


class OperatorProcess:
    """``datasetprep operator`` serving one namespace, as a process of its own (it can be SIGKILLed)."""

    def __init__(self, namespace: str, env: dict[str, str], log: Path) -> None:
        self.namespace, self.env, self.log = namespace, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        exe = Path(sys.executable).with_name("datasetprep")
        with open(self.log, "ab") as out:
            out.write(f"--- started {time.strftime('%T')}\n".encode())
            out.flush()
            argv = [str(exe), "operator", "--namespace", self.namespace, "--liveness", "", "--metrics-port", "0"]
            if os.environ.get("FAULTS_KOPF_VERBOSE"):
                argv = [sys.executable, "-m", "kopf", "run", "--verbose", "--standalone", "--namespace", self.namespace,
                        "-m", "datasetprep_operator.handlers"]
            self.proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up handler, no last patch, as an OOM kill or a lost node would."""
        assert self.alive(), self.output()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def job_env(operator_env, job_image, monkeypatch) -> dict[str, str]:
    """The operator's environment: the bed's kubeconfig, our job image (imported into the node)."""
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps(JOB_ENV))
    return dict(os.environ)


@pytest.fixture
def operators(bed, job_env, tmp_path) -> Iterator[list[OperatorProcess]]:
    """``operators()`` starts one more operator process for the test's namespace (all log into one file). All
    are stopped at the end, and none may have logged a traceback."""
    started: list[OperatorProcess] = []
    log = tmp_path / "operator.log"

    def start() -> OperatorProcess:
        op = OperatorProcess(bed.ns, job_env, log).start()
        started.append(op)
        return op
    yield start
    for op in started:
        op.stop()
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in text, text[-6000:]


@pytest.fixture
def long_input(bed, tmp_path) -> Path:
    """``big.jsonl`` (corpus_a ``COPIES`` times) on the volume, owned by the job's uid, and the reference
    output: Megatron-LM's golden bytes for corpus_a, concatenated by the merge tool."""
    text = CORPUS_A.read_text(encoding="utf-8")
    (bed.data / "big.jsonl").write_text("\n".join([text] * COPIES) + "\n", encoding="utf-8")
    own_for_job_pods(bed.data)
    reference = tmp_path / "reference"
    merge_datasets([str(GOLDEN_PREFIX)] * COPIES, str(reference), True)
    return reference


def big_spec(prefix: str, **extra) -> dict:
    return files_spec(prefix, paths=["big.jsonl"], reuse="Never", **extra)


def chunks_done(bed, folder: str) -> int:
    """Finished chunks of the run writing into ``folder`` (on the volume, as the job marks them)."""
    return len(list((bed.data / folder).glob(".datasetprep-work-*/parts/*.done")))


def running_job(bed, name: str, folder: str, min_chunks: int = 1) -> str:
    """Wait until the DatasetPrep's Job has a Running pod that finished ``min_chunks`` chunks; its name."""
    job = bed.wait(lambda: (bed.get(name).get("status") or {}).get("jobName"), f"{name}'s Job")
    bed.wait(lambda: [p for p in job_pods(bed, job) if p.status.phase == "Running"], f"{job}'s pod running")
    bed.wait(lambda: chunks_done(bed, folder) >= min_chunks, f"{min_chunks} chunk(s) of {job} done", timeout=120)
    return job


def finished(job) -> bool:
    return any(c.status == "True" and c.type in ("Complete", "Failed") for c in (job.status.conditions or []))


def created_events(bed, name: str) -> list[str]:
    return [e.message for e in bed.events(name) if e.reason == "JobCreated"]


def assert_one_job_run(bed, name: str, uid: str, job: str) -> None:
    """Exactly one Job ever existed for the resource, and it ran one pod (no second start)."""
    (only,) = bed.jobs(uid)
    assert only.metadata.name == job
    assert len(created_events(bed, name)) == 1
    assert [p.status.phase for p in job_pods(bed, job)] == ["Succeeded"]


# --------------------------------------------------------------------------- (a) the operator SIGKILLed


def test_operator_sigkilled_mid_run_follows_the_same_job(bed, operators, long_input, record_property):
    op = operators()
    created = bed.create("killop", big_spec("killop/llama"))
    job = running_job(bed, "killop", "killop")
    op.kill()
    t_kill = time.monotonic()
    assert not finished(bed.job(job)), "the job finished before the operator was killed; make COPIES bigger"
    first_uid = bed.job(job).metadata.uid
    assert (bed.get("killop").get("status") or {}).get("phase") == "Running"
    operators()
    obj = bed.wait_ready("killop", timeout=300)
    figure(record_property, "operator_kill_to_ready_s", round(time.monotonic() - t_kill, 1))

    assert bed.job(job).metadata.uid == first_uid, "the restarted operator replaced the Job"
    assert_one_job_run(bed, "killop", created["metadata"]["uid"], job)
    assert obj["status"]["jobName"] == job and obj["status"]["output"]["documents"] == 526 * COPIES
    assert same_bytes(bed.data / "killop" / "llama_text_document", long_input)
    assert bed.config_map("killop-training") is not None


# --------------------------------------------------------------------------- (b, c) the control plane restarted


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restarted_mid_run(bed, kube_cluster, operators, long_input, component, record_property):
    op = operators()
    name = "api" if component == "kube-apiserver" else "etcd"
    created = bed.create(name, big_spec(f"{name}/llama"))
    job = running_job(bed, name, name)
    t0 = time.monotonic()
    (kube_cluster.restart_apiserver if component == "kube-apiserver" else kube_cluster.restart_etcd)()
    figure(record_property, f"{name}_restart_s", round(time.monotonic() - t0, 1))
    restarted_mid_run = not finished(bed.job(job))
    obj = bed.wait_ready(name, timeout=300)
    figure(record_property, f"{name}_restart_to_ready_s", round(time.monotonic() - t0, 1))
    assert op.alive(), op.output()[-4000:]

    assert_one_job_run(bed, name, created["metadata"]["uid"], job)
    assert obj["status"]["jobName"] == job and obj["status"]["output"]["documents"] == 526 * COPIES
    assert same_bytes(bed.data / name / "llama_text_document", long_input)
    assert bed.config_map(f"{name}-training") is not None
    assert restarted_mid_run, f"the job finished while {component} restarted; make COPIES bigger"


# --------------------------------------------------------------------------- (d) the output claim deleted


def test_output_claim_deleted_mid_run_stalls_and_publishes_nothing(bed, operators, long_input, record_property):
    operators()
    created = bed.create("noclaim", big_spec("noclaim/llama"))
    job = running_job(bed, "noclaim", "noclaim")
    t0 = time.monotonic()
    bed.core.delete_namespaced_persistent_volume_claim("data", bed.ns)
    obj, stalled = bed.wait_stalled("noclaim", timeout=300)
    figure(record_property, "claim_deleted_to_stalled_s", round(time.monotonic() - t0, 1))

    assert "PersistentVolumeClaim data" in stalled["message"] and "deleted" in stalled["message"], stalled
    assert stalled["reason"] == "ClaimDeleted"
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert "output" not in obj["status"] and bed.config_map("noclaim-training") is None  # nothing published
    assert obj["status"]["jobName"] == job
    assert "ClaimDeleted" in {e.reason for e in bed.events("noclaim")}
    # The operator deleted the finished Job, whose pod held the claim: the claim goes; nothing new starts.
    bed.wait(lambda: _claim_gone(bed, "data"), "the claim to be gone", timeout=120)
    figure(record_property, "claim_deleted_to_gone_s", round(time.monotonic() - t0, 1))
    time.sleep(5)
    assert bed.jobs(created["metadata"]["uid"]) == []
    assert bed.get("noclaim")["status"]["conditions"] == obj["status"]["conditions"]


def _claim_gone(bed, name: str) -> bool:
    try:
        bed.core.read_namespaced_persistent_volume_claim(name, bed.ns)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


# --------------------------------------------------------------------------- (e) the namespace deleted


def test_namespace_deleted_mid_run_goes_away_cleanly(bed, operators, long_input, record_property):
    op = operators()
    bed.create("plain", big_spec("plain/llama"))
    bed.create("wipe", big_spec("wipe/llama", deleteDataOnDelete=True))
    running_job(bed, "plain", "plain")
    running_job(bed, "wipe", "wipe", min_chunks=0)
    assert bed.get("wipe")["metadata"].get("finalizers"), "deleteDataOnDelete holds the resource with a finalizer"
    t0 = time.monotonic()
    bed.core.delete_namespace(bed.ns)

    def gone() -> bool:
        try:
            bed.core.read_namespace(bed.ns)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False
    wait_for(gone, f"namespace {bed.ns} to be gone", timeout=240, interval=0.5,
             detail=lambda: _namespace_detail(bed) + "\n--- operator log\n" + op.output()[-4000:])
    figure(record_property, "namespace_deleted_to_gone_s", round(time.monotonic() - t0, 1))
    time.sleep(3)  # the operator sees its namespace vanish
    assert op.alive(), op.output()[-4000:]
    assert op.stop() == 0, op.output()[-4000:]


def _namespace_detail(bed) -> str:
    try:
        ns = bed.core.read_namespace(bed.ns)
    except ApiException as exc:
        return f"namespace: {exc.status}"
    preps = bed.custom.list_namespaced_custom_object("datasetprep.io", "v1alpha1", bed.ns, "datasetpreps")["items"]
    return (f"namespace conditions: {[(c.type, c.status, c.message) for c in ns.status.conditions or []]}\n"
            f"datasetpreps: {[(d['metadata']['name'], d['metadata'].get('finalizers')) for d in preps]}")


# --------------------------------------------------------------------------- (f) two spec changes in a second


def test_spec_changed_twice_within_a_second_runs_only_the_last(bed, operators, long_input, record_property):
    operators()
    created = bed.create("flip", big_spec("v1/llama"))
    uid = created["metadata"]["uid"]
    first = running_job(bed, "flip", "v1", min_chunks=0)
    first_unfinished = not finished(bed.job(first))
    t0 = time.monotonic()
    bed.patch_spec("flip", {"output": {"prefix": "v2/llama"}})
    bed.patch_spec("flip", {"output": {"prefix": "v3/llama"}})
    figure(record_property, "two_patches_s", round(time.monotonic() - t0, 3))
    assert time.monotonic() - t0 < 1.0
    obj = bed.wait_ready("flip", timeout=300)
    figure(record_property, "spec_change_to_ready_s", round(time.monotonic() - t0, 1))

    status = obj["status"]
    assert obj["metadata"]["generation"] == 3 and status["observedGeneration"] == 3
    assert status["output"]["prefix"] == "/data/v3/llama_text_document"
    assert same_bytes(bed.data / "v3" / "llama_text_document", long_input)
    bed.wait(lambda: [j.metadata.name for j in bed.jobs(uid)] == [status["jobName"]],
             "only the final generation's Job left")
    assert status["jobName"] != first
    assert not [p for p in bed.core.list_namespaced_pod(bed.ns, label_selector=f"batch.kubernetes.io/job-name={first}")
                .items if p.status.phase in ("Pending", "Running")]
    assert "v3/llama_text_document" in bed.config_map("flip-training").data["config.yaml"]
    assert not (bed.data / "v2" / "llama_text_document.bin").exists()
    # The first Job is deleted at once; its pod may still write its (unpublished) files in its grace period.
    figure(record_property, "first_job_unfinished_at_the_change", first_unfinished)
    created_jobs = created_events(bed, "flip")
    figure(record_property, "jobs_created", len(created_jobs))
    assert any(status["jobName"] in m for m in created_jobs) and len(created_jobs) <= 3, created_jobs


# --------------------------------------------------------------------------- (g) job pods killed at random points


#: Runs at once, and SIGKILLs per run. The Job controller waits 10 s, 20 s, 40 s, ... before replacing a
#: failed pod (never reset within a Job), so kills are spread over several runs that wait side by side.
KILL_RUNS = int(os.environ.get("DATASETPREP_FAULTS_KILL_RUNS", "25"))
KILLS_PER_RUN = int(os.environ.get("DATASETPREP_FAULTS_KILLS_PER_RUN", "3"))


def test_job_pods_killed_at_random_points_resume_to_the_golden_bytes(bed, kube_cluster, operators, long_input,
                                                                     record_property):
    rng = random.Random(int(os.environ.get("DATASETPREP_FAULTS_SEED", "11")))
    operators()
    names = [f"k{i:02d}" for i in range(KILL_RUNS)]
    # The long input (COPIES x corpus_a): with the native engines a run of corpus_a alone ends before
    # this loop, which looks at all runs in turn, comes back to it.
    for name in names:
        bed.create(name, big_spec(f"{name}/llama", backoffLimit=KILLS_PER_RUN + 2))
    targets = {name: _kill_points(rng) for name in names}
    kills: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    t0 = time.monotonic()
    deadline = t0 + 600
    while any(targets.values()) and time.monotonic() < deadline:
        for name in names:
            if targets[name]:
                _maybe_kill(bed, kube_cluster, name, targets[name], kills[name], rng)
        time.sleep(0.1)
    for name in names:
        bed.wait_ready(name, timeout=max(60.0, deadline - time.monotonic()))
    total = 0
    for name in names:
        assert same_bytes(bed.data / name / "llama_text_document", long_input), name
        job = bed.get(name)["status"]["jobName"]
        pods = {p.metadata.name: p for p in job_pods(bed, job)}
        # A SIGKILL in the instant the job exits finds it done: that pod succeeds, and the kill does not count.
        hit = [pod for _, pod in kills[name] if pods[pod].status.phase != "Succeeded"]
        for pod in hit:  # every pod hit died of the SIGKILL ...
            assert pods[pod].status.phase == "Failed" and terminated(pods[pod])["exit_code"] == 137, pod
        (last,) = [p for p in pods.values() if p.status.phase == "Succeeded"]  # ... and a new pod finished the run
        assert json.loads(terminated(last)["message"])["ok"]
        assert len(pods) == len(hit) + 1, (name, kills[name])
        total += len(hit)
    figure(record_property, "job_pod_kills", total)
    figure(record_property, "kill_runs", KILL_RUNS)
    figure(record_property, "kills_runs_to_all_ready_s", round(time.monotonic() - t0, 1))
    # Some points fall after a run's last chunk (a resumed pod is quick): the count is what the figure says.
    assert total >= KILL_RUNS * KILLS_PER_RUN // 2, kills


def _kill_points(rng: random.Random) -> list[int]:
    """Chunks done (of the long input's 12 x COPIES at 0.25 MiB) at which to kill, ascending: 0 = while
    it starts."""
    return sorted(rng.randint(0, 8 * COPIES) for _ in range(KILLS_PER_RUN))


def _maybe_kill(bed, kube_cluster, name: str, points: list[int], done: list[tuple[int, str]],
                rng: random.Random) -> None:
    """Kill the run's running pod once it reached the next kill point (plus a random fraction of a chunk)."""
    status = bed.get(name).get("status") or {}
    job = status.get("jobName")
    if status.get("phase") == "Succeeded":  # it finished before the remaining points: they are past
        points.clear()
    if not job or not points:
        return
    running = [p for p in job_pods(bed, job) if p.status.phase == "Running" and not p.metadata.deletion_timestamp
               and any(cs.state and cs.state.running for cs in p.status.container_statuses or [])]
    if not running or running[0].metadata.name in {pod for _, pod in done}:
        return
    chunks = chunks_done(bed, name)
    if chunks < points[0]:
        return
    time.sleep(rng.random() * 0.3)
    try:
        kube_cluster.kill_pod(bed.ns, running[0].metadata.name)
    except RuntimeError:  # it finished in between: that point is past
        points.clear()
        return
    done.append((chunks, running[0].metadata.name))
    points.pop(0)
