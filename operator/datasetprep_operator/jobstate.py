"""What a Job and its pods say: its state, its owner, the result or the error its pods left.

Pure functions over the JSON the API server returns (the pods are listed by the caller).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from datasetprep.contract import Failed, JobResult, UnreadableResult, decode_result

from datasetprep_operator.jobs import CONTAINER_NAME
from datasetprep_operator.naming import LABEL_OWNER_UID
from datasetprep_operator.results import read_result

JobState = Literal["running", "succeeded", "failed"]


def job_state(job: Mapping[str, Any]) -> JobState:
    """``running``, ``succeeded`` or ``failed``, from the Job's terminal conditions."""
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "failed"
    return "running"


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """``obj`` belongs to the DatasetPrep ``uid`` (owner reference, or our owner label)."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or ()
    return any(ref.get("uid") == uid for ref in refs) or (meta.get("labels") or {}).get(LABEL_OWNER_UID) == uid


def terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The job container's ``state.terminated`` (empty while it runs)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == CONTAINER_NAME:
            return (cs.get("state") or {}).get("terminated") or {}
    return {}


def _phase(pod: Mapping[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _finish_key(pod: Mapping[str, Any]) -> str:
    return terminated(pod).get("finishedAt") or (pod.get("metadata") or {}).get("creationTimestamp") or ""


def said_its_own_error(pod: Mapping[str, Any]) -> bool:
    """The job in the pod wrote its own Failed result (not a log tail, not nothing)."""
    try:
        return isinstance(decode_result(terminated(pod).get("message") or ""), Failed)
    except UnreadableResult:
        return False


def _culprit_key(pod: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """Order failed pods by how much their failure says: the job's own error first, then a plain
    non-zero exit, then a pod killed by a signal (e.g. a shard stopped because another one failed)."""
    return said_its_own_error(pod), (terminated(pod).get("exitCode") or 0) < 128, _finish_key(pod)


def culprit(pods: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The failed pod whose failure says most, if any failed."""
    failed = [p for p in pods if _phase(p) == "Failed"]
    return max(failed, key=_culprit_key) if failed else None


def killed_by_the_node(pod: Mapping[str, Any]) -> str | None:
    """Why the node stopped a job pod, as a message that says which limit and how to raise it: killed for
    memory (``OOMKilled``), evicted (e.g. for ephemeral storage), or its ``prepare-output`` init container
    failed. None when the pod failed on its own.
    """
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        said = (status.get("message") or "").strip()
        fix = ("raise spec.resources.tmpSizeLimit (the size of /tmp; default: the chart value jobTmpSizeLimit)"
               if "EmptyDir" in said or "emptyDir" in said else
               'raise spec.resources.limits["ephemeral-storage"] (default: the chart value '
               'jobResources.limits.ephemeral-storage)' if "ephemeral" in said else
               "see the node's conditions (kubectl describe node) or give the job more resources")
        return f"the job pod was evicted by the kubelet ({said or 'no reason given'}): {fix}"
    term = terminated(pod)
    if term.get("reason") == "OOMKilled":
        containers = (pod.get("spec") or {}).get("containers") or ()
        limit = next((((c.get("resources") or {}).get("limits") or {}).get("memory")
                      for c in containers if c.get("name") == CONTAINER_NAME), None)
        return (f"the job container was killed for using more memory than its limit (limits.memory: "
                f"{limit or 'none set'}): raise spec.resources.limits.memory (default: the chart value "
                f"jobResources.limits.memory), or lower spec.workers (each worker holds a tokenizer)")
    for cs in status.get("initContainerStatuses") or ():
        init = (cs.get("state") or {}).get("terminated") or {}
        if init and init.get("exitCode"):
            said = (init.get("message") or init.get("reason") or "").strip()
            return (f"the init container {cs.get('name')} (chart value jobVolumeInit) could not prepare the output "
                    f"folder (exit code {init.get('exitCode')}): {said[-500:]}; on NFS with root squashing root "
                    f"cannot chown: set spec.securityContext to the export's owner or group instead")
    return None


def failure_reason(job: Mapping[str, Any]) -> str | None:
    """The Job's own ``Failed`` condition (reason; message), e.g. ``BackoffLimitExceeded``."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or () if c.get("type") == "Failed"]
    return "; ".join(filter(None, [conds[0].get("reason"), conds[0].get("message")])) if conds else None


def has_succeeded_pod(pods: list[Mapping[str, Any]]) -> bool:
    return any(_phase(p) == "Succeeded" for p in pods)


def attempt_failure(job: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> tuple[int, str | None]:
    """Which attempt of the Job runs (1 + its failed pods) and why the newest failed pod failed.

    The Job controller counts failed pods in ``status.failed`` (all indexes of an Indexed Job); the
    reason comes from the pods the caller has: the job's own error (termination message), else why the
    node stopped it (:func:`killed_by_the_node`: memory, eviction, the init container, with the fix),
    else how it ended (an exit code).
    """
    failed = (job.get("status") or {}).get("failed") or 0
    gone = [p for p in pods if _phase(p) == "Failed"]
    if not gone:
        return failed + 1, None
    pod = max(gone, key=_finish_key)
    term = terminated(pod)
    result = read_result(term.get("message")) if (term.get("message") or "").strip() else None
    if isinstance(result, Failed):
        why = result.error
    elif (killed := killed_by_the_node(pod)) is not None:
        why = killed
    elif term:
        why = f"{term.get('reason') or 'exited'} (exit code {term.get('exitCode')})"
    else:
        status = pod.get("status") or {}
        why = "; ".join(filter(None, [status.get("reason"), status.get("message")])) or "the pod failed"
    return max(failed, len(gone)) + 1, why


def last_result(pods: list[Mapping[str, Any]]) -> JobResult:
    """What the Job's last succeeded pod reported in its termination message."""
    done = [p for p in pods if _phase(p) == "Succeeded"]
    return read_result(terminated(max(done, key=_finish_key)).get("message") if done else None)
