"""Shared volumes whose folder belongs to root, as NFS exports and hostPath volumes are: the pod's
``fsGroup`` does not apply to them, so the job pods (uid 65532) cannot write there by default. On the
test bed's real node:

* by default the run stalls with the job's own message: the folder, its owner and mode, the job's
  uid/gid and the fixes -- no traceback;
* a group-writable export works with ``spec.securityContext.supplementalGroups`` (restricted PSS);
* a root-owned 0755 export works with the chart's opt-in ``jobVolumeInit`` (a root init container that
  creates and chowns the output folder; the namespace needs the ``baseline`` PSS).
"""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bed import JOB_UID, assert_golden, assert_real_job_pods, files_spec, golden_claim, job_pods, running_operator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def export(bed, tmp_path: Path, name: str, owner: tuple[int, int], mode: int) -> Path:
    """A claim ``name`` on a folder owned by ``owner`` with ``mode``, holding the golden inputs."""
    return golden_claim(bed.cluster, bed.ns, tmp_path / name, name=name, owner=owner, mode=mode)


def on(claim: str, prefix: str, **extra) -> dict:
    spec = files_spec(prefix, **extra)
    spec["output"]["claimName"] = claim
    return spec


def pss(bed, level: str) -> None:
    bed.core.patch_namespace(bed.ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}})


def test_a_root_owned_volume_stalls_with_the_folder_its_owner_the_uid_and_the_fix(bed, tmp_path):
    folder = export(bed, tmp_path, "rootowned", (0, 0), 0o755)
    with running_operator(bed.ns):
        bed.create("denied", on("rootowned", "out/llama", backoffLimit=0))
        obj, stalled = bed.wait_stalled("denied", timeout=180)
    message = stalled["message"]
    assert stalled["reason"] == "JobFailed" and obj["status"]["phase"] == "Failed"
    assert "cannot write to /data/out (spec.output.prefix, claim rootowned)" in message, message
    assert "/data is owned by uid 0 gid 0 with mode 0755" in message, message
    assert f"the job runs as uid {JOB_UID} gid {JOB_UID}" in message, message
    assert "spec.securityContext" in message and "jobVolumeInit.enabled=true" in message, message
    (pod,) = job_pods(bed, obj["status"]["jobName"])
    log = bed.cluster.pod_log(bed.ns, pod.metadata.name)
    assert "Traceback" not in log and "cannot write to /data/out" in log
    assert sorted(p.name for p in folder.iterdir()) == ["corpus_a.jsonl", "tokenizer.model"]  # nothing written


def test_a_group_writable_export_works_with_supplemental_groups(bed, tmp_path):
    folder = export(bed, tmp_path, "groupexport", (0, 4242), 0o775)
    pss(bed, "restricted")  # no root anywhere: the restricted Pod Security Standard holds
    with running_operator(bed.ns):
        bed.create("grouped", on("groupexport", "out/llama", securityContext={"supplementalGroups": [4242]}))
        obj = bed.wait_ready("grouped", timeout=180)
    assert_golden(folder / "out" / "llama_text_document")
    written = (folder / "out" / "llama_text_document.bin").stat()
    assert written.st_uid == JOB_UID
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (0, 0o775)  # the export is as it was
    (pod,) = assert_real_job_pods(bed, obj["status"]["jobName"])
    assert pod.spec.security_context.supplemental_groups == [4242]


def test_the_volume_init_container_makes_a_root_owned_volume_usable(bed, tmp_path, monkeypatch):
    folder = export(bed, tmp_path, "rootexport", (0, 0), 0o755)
    monkeypatch.setenv("DATASETPREP_JOB_VOLUME_INIT", "true")
    pss(bed, "baseline")  # the init container runs as root: allowed by baseline, refused by restricted
    with running_operator(bed.ns):
        bed.create("prepared", on("rootexport", "out/llama"))
        obj = bed.wait_ready("prepared", timeout=180)
    assert_golden(folder / "out" / "llama_text_document")
    out = (folder / "out").stat()
    assert (out.st_uid, out.st_gid) == (JOB_UID, JOB_UID)  # only the output folder was handed over
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (0, 0o755)
    (pod,) = assert_real_job_pods(bed, obj["status"]["jobName"])
    (init,) = pod.status.init_container_statuses
    assert init.name == "prepare-output" and init.state.terminated.exit_code == 0
    assert pod.spec.init_containers[0].security_context.capabilities.add == ["CHOWN", "DAC_OVERRIDE"]


def test_the_volume_init_container_is_refused_where_restricted_is_enforced(bed, tmp_path, monkeypatch):
    """The opt-in is visible to the cluster's policy: in a namespace that enforces `restricted`, the API
    server refuses its pods (the Job controller's FailedCreate event names the violation)."""
    export(bed, tmp_path, "rootexport", (0, 0), 0o755)
    monkeypatch.setenv("DATASETPREP_JOB_VOLUME_INIT", "true")
    pss(bed, "restricted")
    with running_operator(bed.ns):
        bed.create("refused", on("rootexport", "out/llama"))
        job = bed.wait(lambda: (bed.get("refused").get("status") or {}).get("jobName"), "a Job")

        def refused_event():
            return [e for e in bed.core.list_namespaced_event(bed.ns, field_selector=f"involvedObject.name={job}").items
                    if e.reason == "FailedCreate" and "restricted" in (e.message or "")]
        (event,) = bed.wait(refused_event, "the Job controller's FailedCreate", timeout=60)[:1]
    assert "runAsNonRoot" in event.message or "runAsUser" in event.message, event.message
