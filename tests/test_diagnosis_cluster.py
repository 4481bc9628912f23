"""Why a run's pods do not start, on the test bed's real node (issue 16 item 1): the real operator, the real
Job controller, scheduler, kubelet and containerd -- no fake of what they say.

* a namespace without the job ServiceAccount: the Job controller cannot create the pod; the DatasetPrep is
  ``Stalled`` / ``PodsNotCreated`` within a minute, naming the ServiceAccount and the fix, and once the
  ServiceAccount exists the Job controller's own retry starts the run, which ends Ready with Megatron's bytes;
* a job image that is in no registry the node reaches (pull policy ``IfNotPresent``): ``ImagePullFailed``
  with the image and the fix;
* a pod no node fits: ``Unschedulable`` with the scheduler's own reason;
* the token Secret a pod mounts does not exist: ``PodConfigError`` naming the Secret (the kubelet reports it
  only as a ``FailedMount`` event of the pod, the container just waits in ``ContainerCreating``);
* a volume that does not mount, and nothing else said: ``PodPending`` once past the deadline, quoting the
  kubelet's event.

Each ends ``phase: Pending`` with ``Stalled=True`` (``Ready`` and ``Reconciling`` False), as
docs/troubleshooting.md says, and each message is one the page quotes (checked here against what the node
made the operator say). The seconds from the create to the verdict are printed on stderr.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

import docsmd
from bed import assert_golden, files_spec, running_operator
from datasetprep_operator import diagnosis
from paths import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: An image no registry the bed reaches has (the bed has no route out): what a typo in the tag gives.
MISSING_IMAGE = "ghcr.io/datasetprep/datasetprep-job:no-such-tag"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"


def _verdict(bed, name: str, reason: str, start: float, timeout: float = 120) -> tuple[dict, dict, float]:
    """The DatasetPrep once ``Stalled=True`` with ``reason`` (for its current generation), its Stalled condition
    and the seconds it took since ``start``."""
    obj, cond = bed.wait(lambda: _stalled(bed, name, reason), f"{name} Stalled/{reason}", timeout=timeout,
                         interval=0.5)
    return obj, cond, time.monotonic() - start


def _say(line: str) -> None:
    """A figure for the log (the operator's runner holds sys.stdout meanwhile)."""
    print(line, file=sys.__stderr__, flush=True)


def _stalled(bed, name: str, reason: str):
    obj, cond = bed.condition(name, "Stalled")
    return (obj, cond) if cond and cond["status"] == "True" and cond["reason"] == reason else None


def _ready(bed, name: str) -> dict | None:
    """The DatasetPrep once Ready for its current generation (Stalled on the way is what the test is about)."""
    obj, cond = bed.condition(name, "Ready")
    return obj if cond and cond["status"] == "True" else None


def _assert_blocked(obj: dict) -> None:
    """What troubleshooting.md says a blocked run shows: Pending, Stalled, neither Ready nor Reconciling."""
    status = obj["status"]
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert status["phase"] == "Pending", status
    assert conds == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}, conds


def _assert_documented(reason: str, message: str) -> None:
    """Every quote of the reason's row of troubleshooting.md (placeholders for the names) reads as a stretch of
    the message the node made the operator say."""
    quotes = documented(reason)
    assert len(quotes) >= 2, f"docs/troubleshooting.md quotes no message, or no cluster's words, for {reason}"
    wrong = {q: docsmd.unmatched_fragments(q, [message], share=0.9) for q in quotes}
    assert not any(wrong.values()), f"docs/troubleshooting.md quotes for {reason} what the node did not make " \
                                    f"the operator say:\n{message}\n{wrong}"


def documented(reason: str) -> list[str]:
    """The quotes of the row of ``reason`` in troubleshooting.md's "Pods that do not start" table: the message
    (first column) and what the cluster said (the second column's code spans of several words)."""
    text = TROUBLESHOOTING.read_text()
    section = text[text.index("## Pods that do not start"):]
    section = section[:section.index("\n## ")]
    for line in section.splitlines():
        cells = line.strip().strip("|").split("|")
        spans = [[m.group(2) for m in re.finditer(r"(`+)(.+?)\1", c)] for c in cells]
        if len(spans) >= 2 and spans[1][:1] == [reason]:
            return spans[0] + [q for q in spans[1][1:] if " " in q]
    return []


def test_a_namespace_without_the_job_service_account(bed, monkeypatch):
    monkeypatch.setenv("DATASETPREP_JOB_SERVICE_ACCOUNT", "datasetprep-job")
    with running_operator(bed.ns):
        start = time.monotonic()
        bed.create("nosa", files_spec("nosa_out"))
        obj, cond, took = _verdict(bed, "nosa", "PodsNotCreated", start)
        _say(f"nosa: Stalled/PodsNotCreated {took:.1f}s after the create")
        _assert_blocked(obj)
        assert 'serviceaccount "datasetprep-job" not found' in cond["message"]
        assert f"create the ServiceAccount datasetprep-job in namespace {bed.ns}" in cond["message"]
        assert "jobServiceAccount.namespaces" in cond["message"]
        assert took < 60, f"{took:.0f}s to say why"
        _assert_documented("PodsNotCreated", cond["message"])
        warnings = [e for e in bed.events("nosa") if e.reason == "PodsNotCreated"]
        assert warnings and warnings[0].type == "Warning" and warnings[0].message == cond["message"]

        # the fix the message gives, and nothing else: the Job controller retries, the run proceeds
        fixed = time.monotonic()
        bed.core.create_namespaced_service_account(bed.ns, {"metadata": {"name": "datasetprep-job"}})
        ready = bed.wait(lambda: _ready(bed, "nosa"), "nosa Ready once the ServiceAccount exists", timeout=300)
        _say(f"nosa: Ready {time.monotonic() - fixed:.1f}s after the ServiceAccount was created")
    assert {c["type"]: c["status"] for c in ready["status"]["conditions"]}["Stalled"] == "False"
    assert_golden(bed.data / "nosa_out_text_document")


def test_image_pull_scheduling_a_missing_secret_and_a_volume_that_does_not_mount(bed, monkeypatch, tmp_path):
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE_PULL_POLICY", "IfNotPresent")  # Never would not even try
    _unmountable_claim(bed, tmp_path / "not-there", "gone")
    cases = {
        "badimage": ("ImagePullFailed", files_spec("a", image=MISSING_IMAGE)),
        "toobig": ("Unschedulable", files_spec("b", resources={"requests": {"cpu": "64"}})),
        "nosecret": ("PodConfigError", files_spec("c", hfTokenSecretRef={"name": "hf-token"})),
        "nomount": ("PodPending", files_spec("d", output={"claimName": "gone", "prefix": "d"})),
    }
    with running_operator(bed.ns):
        start = time.monotonic()
        for name, (_, spec) in cases.items():
            bed.create(name, spec)
        seen = {name: _verdict(bed, name, reason, start) for name, (reason, _) in cases.items()}
        for name, (reason, _) in cases.items():
            _say(f"{name}: Stalled/{reason} {seen[name][2]:.1f}s after the create")
        time.sleep(diagnosis.RECHECK_SECONDS * 2)  # two more looks: the verdict holds, and says it once
        for name, (reason, _) in cases.items():
            obj, cond = bed.condition(name, "Stalled")
            assert cond["reason"] == reason and cond["message"] == seen[name][1]["message"], (name, cond)
            assert len([e for e in bed.events(name) if e.reason == reason]) == 1, bed.events(name)
    for name, (reason, _) in cases.items():
        obj, cond, took = seen[name]
        _assert_blocked(obj)
        _assert_documented(reason, cond["message"])
        limit = 60 if reason != "PodPending" else diagnosis.PENDING_DEADLINE_SECONDS + diagnosis.RECHECK_SECONDS
        assert took < limit, f"{name}: {took:.0f}s to say why"
    image = seen["badimage"][1]["message"]
    assert MISSING_IMAGE in image and ("ErrImagePull" in image or "ImagePullBackOff" in image)
    assert "spec.image" in image and "DATASETPREP_JOB_IMAGE" in image
    scheduling = seen["toobig"][1]["message"]
    assert "0/1 nodes are available" in scheduling and "Insufficient cpu" in scheduling
    assert "lower spec.resources" in scheduling
    secret = seen["nosecret"][1]["message"]
    assert 'secret "hf-token" not found' in secret and "spec.hfTokenSecretRef" in secret
    pending = seen["nomount"][1]["message"]
    assert "not-there" in pending and "kubectl describe pod" in pending


def _unmountable_claim(bed, missing: Path, name: str) -> None:
    """A claim bound to a hostPath volume whose folder does not exist (type Directory): the kubelet cannot
    mount it and says so only in the pod's events."""
    pv = f"{bed.ns}-{name}"
    bed.core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(missing), "type": "Directory"},
        "claimRef": {"namespace": bed.ns, "name": name}}})
    bed.cluster._pvs.setdefault(bed.ns, []).append(pv)  # deleted with the namespace, as the fixture's own
    bed.core.create_namespaced_persistent_volume_claim(bed.ns, {"metadata": {"name": name}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
        "resources": {"requests": {"storage": "1Gi"}}}})
    bed.wait(lambda: bed.core.read_namespaced_persistent_volume_claim(name, bed.ns).status.phase == "Bound",
             f"claim {name} Bound", timeout=60)
