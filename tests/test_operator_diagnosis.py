"""Why a run's pods do not start: the verdicts of diagnosis.py on what the watches see (pure). The same
verdicts on the real node, from what its Job controller, scheduler and kubelet say:
tests/test_diagnosis_cluster.py."""
from __future__ import annotations

from datasetprep_operator.diagnosis import (CREATE_GRACE_SECONDS, PENDING_DEADLINE_SECONDS, RECHECK_SECONDS,
                                            SILENT_NO_POD_SECONDS, TROUBLE_GRACE_SECONDS, create_trouble,
                                            job_needs_events, next_look, parse_time, pod_trouble, pods_needing_events)

NOW = parse_time("2026-01-01T00:10:00Z")


def at(seconds_ago: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending(age: float, *, waiting: dict | None = None, scheduled: dict | None = None) -> dict:
    status: dict = {"phase": "Pending", "conditions": [scheduled] if scheduled else []}
    if waiting:
        status["containerStatuses"] = [{"name": "datasetprep", "state": {"waiting": waiting}}]
    return {"metadata": {"name": "wiki-1-abc", "creationTimestamp": at(age)}, "status": status}


def test_image_pull_errors_name_the_image_and_the_fix():
    pod = pending(30, waiting={"reason": "ImagePullBackOff", "message": 'Back-off pulling image "reg/x:1"'})
    trouble = pod_trouble([pod], now=NOW, image="reg/x:1")
    assert trouble.reason == "ImagePullFailed"
    assert "reg/x:1" in trouble.message and "spec.image" in trouble.message and "DATASETPREP_JOB_IMAGE" in trouble.message
    # ... not in the first seconds (a registry hiccup), and not once the pod runs
    assert pod_trouble([pending(TROUBLE_GRACE_SECONDS - 5, waiting={"reason": "ErrImagePull"})], now=NOW,
                       image="x") is None
    assert pod_trouble([pod | {"status": {"phase": "Running"}}], now=NOW, image="x") is None


def test_unschedulable_and_config_errors_and_plain_pending():
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu."}
    trouble = pod_trouble([pending(20, scheduled=cond)], now=NOW, image="x")
    assert trouble.reason == "Unschedulable" and "Insufficient cpu" in trouble.message
    assert "spec.resources" in trouble.message
    secret = pending(20, waiting={"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'})
    trouble = pod_trouble([secret], now=NOW, image="x")
    assert trouble.reason == "PodConfigError" and 'secret "hf-token" not found' in trouble.message
    assert pod_trouble([pending(PENDING_DEADLINE_SECONDS - 1)], now=NOW, image="x") is None
    trouble = pod_trouble([pending(PENDING_DEADLINE_SECONDS + 1)], now=NOW, image="x")
    assert trouble.reason == "PodPending" and "kubectl describe pod wiki-1-abc" in trouble.message


def test_a_job_without_pods_is_explained_by_its_events():
    job = {"metadata": {"name": "wiki-1", "creationTimestamp": at(CREATE_GRACE_SECONDS + 1)}, "status": {}}
    assert job_needs_events(job, [], now=NOW)
    assert not job_needs_events(job | {"status": {"active": 1}}, [], now=NOW)
    young = {"metadata": {"name": "wiki-1", "creationTimestamp": at(1)}, "status": {}}
    assert not job_needs_events(young, [], now=NOW) and next_look(young, [], now=NOW) == CREATE_GRACE_SECONDS - 1
    events = [
        {"reason": "FailedCreate", "lastTimestamp": at(20), "message": "old"},
        {"reason": "FailedCreate", "lastTimestamp": at(5), "message": 'Error creating: pods "wiki-1-x" is forbidden: '
         'error looking up service account ml/datasetprep-job: serviceaccount "datasetprep-job" not found'},
        {"reason": "SuccessfulCreate", "lastTimestamp": at(30), "message": "x"},
    ]
    trouble = create_trouble(job, events, service_account="datasetprep-job", namespace="ml", now=NOW)
    assert trouble.reason == "PodsNotCreated"
    assert 'serviceaccount "datasetprep-job" not found' in trouble.message
    assert "create the ServiceAccount datasetprep-job in namespace ml" in trouble.message
    assert "jobServiceAccount.namespaces" in trouble.message
    quota = [{"reason": "FailedCreate", "message": 'pods "x" is forbidden: exceeded quota: q, requested: pods=1'}]
    assert "ResourceQuota" in create_trouble(job, quota, service_account="sa", namespace="ml", now=NOW).message
    # no event says why: a busy Job controller, not trouble, until SILENT_NO_POD_SECONDS
    assert create_trouble(job, [], service_account="sa", namespace="ml", now=NOW) is None
    old = {"metadata": {"name": "wiki-1", "creationTimestamp": at(SILENT_NO_POD_SECONDS + 1)}, "status": {}}
    silent = create_trouble(old, [], service_account="sa", namespace="ml", now=NOW)
    assert "no event says why" in silent.message and "kubectl describe job wiki-1" in silent.message


def _mount_warning(message: str, seconds_ago: float = 2) -> dict:
    return {"type": "Warning", "reason": "FailedMount", "lastTimestamp": at(seconds_ago), "message": message}


def test_a_pod_waiting_without_a_reason_is_explained_by_its_events():
    creating = pending(TROUBLE_GRACE_SECONDS + 1, waiting={"reason": "ContainerCreating"})
    assert pods_needing_events([creating], now=NOW) == [creating]
    assert pods_needing_events([pending(TROUBLE_GRACE_SECONDS - 1)], now=NOW) == []  # too young to ask
    pulling = pending(30, waiting={"reason": "ErrImagePull"})
    assert pods_needing_events([pulling], now=NOW) == []  # its status says why
    # the token Secret a pod mounts is missing: the kubelet says so only in a FailedMount event
    events = {"wiki-1-abc": [
        {"type": "Normal", "reason": "Scheduled", "lastTimestamp": at(20), "message": "assigned"},
        _mount_warning('MountVolume.SetUp failed for volume "hf-token" : secret "hf-token" not found')]}
    trouble = pod_trouble([creating], now=NOW, image="x", events=events)
    assert trouble.reason == "PodConfigError"
    said = 'FailedMount: MountVolume.SetUp failed for volume "hf-token" : secret "hf-token" not found'
    assert said in trouble.message
    assert "spec.hfTokenSecretRef" in trouble.message
    # another warning: said once the pod is past the deadline, in words that do not change with the clock
    other = {"wiki-1-abc": [_mount_warning("hostPath type check failed: /x is not a directory")]}
    assert pod_trouble([creating], now=NOW, image="x", events=other) is None
    late = [pending(PENDING_DEADLINE_SECONDS + 1, waiting={"reason": "ContainerCreating"})]
    trouble = pod_trouble(late, now=NOW, image="x", events=other)
    assert trouble.reason == "PodPending"
    assert "the kubelet says FailedMount: hostPath type check failed: /x is not a directory" in trouble.message
    later = [pending(PENDING_DEADLINE_SECONDS + 100, waiting={"reason": "ContainerCreating"})]
    assert pod_trouble(later, now=NOW, image="x", events=other).message == trouble.message


def test_an_image_pull_reads_the_same_between_attempts_and_in_back_off():
    error = 'failed to pull and unpack image "reg/x:1": failed to resolve reference "reg/x:1": not found'
    pulling = pod_trouble([pending(30, waiting={"reason": "ErrImagePull", "message": error})], now=NOW, image="reg/x:1")
    backoff = pod_trouble([pending(30, waiting={"reason": "ImagePullBackOff",
                                                "message": f'Back-off pulling image "reg/x:1": ErrImagePull: {error}'})],
                          now=NOW, image="reg/x:1")
    assert pulling == backoff and f"(ErrImagePull: {error})" in pulling.message


def test_a_pod_pulling_a_big_image_is_not_stuck():
    late = [pending(PENDING_DEADLINE_SECONDS + 60, waiting={"reason": "ContainerCreating"})]
    pulling = {"wiki-1-abc": [{"type": "Normal", "reason": "Scheduled", "lastTimestamp": at(100), "message": "x"},
                              {"type": "Normal", "reason": "Pulling", "lastTimestamp": at(99), "message": "Pulling"}]}
    assert pod_trouble(late, now=NOW, image="x", events=pulling) is None
    pulled = {"wiki-1-abc": pulling["wiki-1-abc"] + [
        {"type": "Normal", "reason": "Pulled", "lastTimestamp": at(50), "message": "Successfully pulled"}]}
    assert pod_trouble(late, now=NOW, image="x", events=pulled).reason == "PodPending"


def test_the_pending_deadline_counts_from_the_scheduling():
    """A pod that waited its turn for a node (Unschedulable on a full cluster) is not late once scheduled."""
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(5)}
    pod = pending(PENDING_DEADLINE_SECONDS + 200, waiting={"reason": "ContainerCreating"}, scheduled=scheduled)
    assert pod_trouble([pod], now=NOW, image="x") is None
    assert next_look({"metadata": {}}, [pod], now=NOW) == RECHECK_SECONDS
    scheduled["lastTransitionTime"] = at(PENDING_DEADLINE_SECONDS + 1)
    assert pod_trouble([pod], now=NOW, image="x").reason == "PodPending"
