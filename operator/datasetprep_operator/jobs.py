"""The Job manifests of a run: pure functions from the spec and a :class:`~datasetprep.contract.RunPlan`.

Nothing here talks to the API server: the reconciler adopts and submits what :func:`build_job`
returns, and the unit tests check the exact manifests without a cluster. What the job container
gets -- its environment, its volumes -- is :class:`~datasetprep.contract.JobInputs`, the contract
with ``datasetprep job``.
"""
from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from datasetprep.contract import (ENV_HF_HOME, ENV_HF_TOKEN_FILE, EXIT_PERMANENT, HF_HOME, HF_TOKEN_DIR, HF_TOKEN_FILE,
                                  TERMINATION_MESSAGE_PATH, JobInputs, RunPlan)
from datasetprep.hashes import spec_hash
from datasetprep.naming import STATE_DIR
from datasetprep.spec import DatasetPrepSpec

from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.naming import (ANNOTATION_OWNER_NAME, LABEL_COMPONENT, child_labels, delete_data_job_name,
                                         job_name, merge_job_name)
from datasetprep_operator.resources import job_resources

CONTAINER_NAME = "datasetprep"
COMMAND = ["datasetprep", "job"]
RUN_AS_ID = 65532
CLAIMS_ROOT = "/mnt/claims"
TMP_DIR = "/tmp"
TOKEN_VOLUME = "hf-token"
VOLUME_INIT_NAME = "prepare-output"
#: File mode of the mounted token: readable by its owner only (the kubelet adds group read for fsGroup).
TOKEN_FILE_MODE = 0o400
#: ``app.kubernetes.io/component`` of each step's Job (and its pods).
COMPONENT = {"all": "job", "shard": "job", "merge": "merge", "delete": "delete-data"}
DELETE_DATA_COMPONENT = COMPONENT["delete"]
#: A finished clean-up Job is deleted by the operator once it has read its report; should the operator
#: stop in between, Kubernetes' TTL controller removes it after this many seconds.
DELETE_DATA_TTL_SECONDS = 3600


def name_of(parent: str, spec: DatasetPrepSpec, plan: RunPlan, retry: str | None = None) -> str:
    """The Job that runs ``plan``: ``<parent>-<run hash>`` (``-merge`` for the merge), or
    ``<parent>-delete-data``. ``retry``: the resource's ``datasetprep.io/retry`` value, if any."""
    if plan.step == "delete":
        return delete_data_job_name(parent)
    digest = spec_hash(spec, retry)
    return merge_job_name(parent, digest) if plan.step == "merge" else job_name(parent, digest)


@dataclasses.dataclass(frozen=True)
class RunJobs:
    """The Jobs of one run and their plans: ``main`` (the only one, or the Indexed shard Job) and
    ``merge`` (sharded runs only)."""

    main: str
    merge: str | None
    plans: tuple[RunPlan, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.main,) if self.merge is None else (self.main, self.merge)

    @classmethod
    def for_spec(cls, parent: str, spec: DatasetPrepSpec, retry: str | None = None) -> "RunJobs":
        plans = RunPlan.stages(spec)
        names = [name_of(parent, spec, p, retry) for p in plans]
        return cls(names[0], names[1] if len(names) > 1 else None, plans)


# --------------------------------------------------------------------------- volumes


@dataclasses.dataclass(frozen=True)
class ClaimMount:
    """One PersistentVolumeClaim the job pod mounts."""

    claim: str
    volume: str
    mount_path: str
    read_only: bool


def claim_mounts(spec: DatasetPrepSpec) -> list[ClaimMount]:
    """Every claim the spec references: the output claim (read-write) first, then inputs (read-only)."""
    out = spec.output.claim_name
    mounts = [ClaimMount(out, "output", spec.output.mount_path, False)]
    inputs: list[str] = []
    if spec.source.files is not None:
        inputs.append(spec.source.files.claim_name or out)
    if spec.tokenizer.path is not None:
        inputs.append(spec.tokenizer.path.claim_name or out)
    for i, claim in enumerate(sorted(set(inputs) - {out})):
        mounts.append(ClaimMount(claim, f"claim-{i}", posixpath.join(CLAIMS_ROOT, claim), True))
    return mounts


def plan_mounts(spec: DatasetPrepSpec, plan: RunPlan) -> list[ClaimMount]:
    """What a step's pod mounts: every claim; the clean-up only the output claim (input claims may be
    gone by then, and are not touched)."""
    mounts = claim_mounts(spec)
    return mounts[:1] if plan.step == "delete" else mounts


# --------------------------------------------------------------------------- the Job


def job_env(inputs: JobInputs, *, token: bool, extra: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The job container's environment: the contract (``inputs``), ``HF_HOME``, the path of the token
    file (when ``token`` and the spec names a Secret; see :func:`token_volume`), then ``extra``.

    The token itself is never in the environment (``/proc/<pid>/environ``, crash reports). ``extra``
    (the operator's ``DATASETPREP_JOB_ENV``) adds plain variables; one named like a default that is
    not part of the contract (``HF_HOME``) replaces it.
    """
    env: list[dict[str, Any]] = [{"name": n, "value": v} for n, v in inputs.env()]
    env.append({"name": ENV_HF_HOME, "value": HF_HOME})
    if token and inputs.spec.hf_token_secret_ref is not None:
        env.append({"name": ENV_HF_TOKEN_FILE, "value": HF_TOKEN_FILE})
    names = {name for name, _ in extra}
    return [e for e in env if e["name"] not in names] + [{"name": n, "value": v} for n, v in extra]


def token_volume(spec: DatasetPrepSpec) -> dict[str, Any]:
    """The Secret ``spec.hfTokenSecretRef`` as a volume holding only its key, as the file ``token``
    (mode 0400; group-readable for the pod's ``fsGroup``, which the kubelet applies to it)."""
    ref = spec.hf_token_secret_ref
    assert ref is not None
    return {"name": TOKEN_VOLUME, "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "token"}],
                                             "defaultMode": TOKEN_FILE_MODE}}


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the job container runs as: ``spec.securityContext``, else 65532 (the image's ``nonroot``)."""

    uid: int = RUN_AS_ID
    gid: int = RUN_AS_ID
    groups: tuple[int, ...] = ()

    @classmethod
    def of(cls, spec: DatasetPrepSpec) -> "Identity":
        sc = spec.security_context
        if sc is None:
            return cls()
        return cls(uid=sc.run_as_user or RUN_AS_ID, gid=sc.run_as_group or RUN_AS_ID,
                   groups=tuple(sc.supplemental_groups or ()))


def restricted_security_context(identity: Identity = Identity()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts that satisfy the ``restricted`` Pod Security Standard.

    ``fsGroup`` is the job's gid: volumes that honour it (most block and CSI volumes, Secrets) become
    group-writable for the job; NFS and hostPath ignore it (``spec.securityContext``, or the chart's
    ``jobVolumeInit``, is the answer there).
    """
    pod: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": identity.uid,
        "runAsGroup": identity.gid,
        "fsGroup": identity.gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if identity.groups:
        pod["supplementalGroups"] = list(identity.groups)
    container = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def output_folders(spec: DatasetPrepSpec, plan: RunPlan) -> list[str]:
    """The folders (in the pod) a step writes to, besides ``/tmp``: the folder of the output prefix,
    and for Hub sources and tokenizers the state folder ``.datasetprep`` at the claim's root."""
    root = spec.output.mount_path
    folders = [posixpath.normpath(posixpath.join(root, posixpath.dirname(spec.output.prefix)))]
    if plan.step != "delete" and (spec.source.hub is not None or spec.tokenizer.hub is not None):
        folders.append(posixpath.join(root, STATE_DIR))
    return folders


def volume_init_container(spec: DatasetPrepSpec, plan: RunPlan, config: OperatorConfig,
                          identity: Identity) -> dict[str, Any]:
    """The opt-in init container (``DATASETPREP_JOB_VOLUME_INIT``) that makes a root-owned output volume
    usable: as root, it creates the folders the job writes to and chowns each (not recursively) to the
    job's uid/gid. Nothing else: only the output claim is mounted, the root filesystem is read-only,
    every capability but CHOWN and DAC_OVERRIDE is dropped, and the image is the operator's job image,
    never the DatasetPrep's ``spec.image``. Root, even with these bounds, is outside the ``restricted``
    Pod Security Standard: the namespace needs ``baseline``."""
    script = 'set -eu; for d in "$@"; do mkdir -p -- "$d"; chown -- "$OWNER" "$d"; done'
    return {
        "name": VOLUME_INIT_NAME,
        "image": config.job_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["/bin/sh", "-c", script, VOLUME_INIT_NAME, *output_folders(spec, plan)],
        "env": [{"name": "OWNER", "value": f"{identity.uid}:{identity.gid}"}],
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "output", "mountPath": spec.output.mount_path}],
    }


def pod_failure_policy() -> dict[str, Any]:
    """Fail the Job at once when its pod says the error is permanent (a retry would fail the same way);
    a pod evicted or preempted (``DisruptionTarget``) does not count against the retries; every other
    failure (exit 1, out of memory, a signal) uses them."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                                              "values": [EXIT_PERMANENT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def job_pod_spec(config: OperatorConfig, *, image: str, env: list[dict[str, Any]], volumes: list[dict[str, Any]],
                 volume_mounts: list[dict[str, Any]], resources: Mapping[str, Any] | None,
                 identity: Identity = Identity()) -> dict[str, Any]:
    """The pod of every Job the operator runs (a DatasetPrep's steps, a DatasetBlend's files): one
    ``datasetprep job`` container from ``image``, the ``restricted`` security contexts of ``identity``,
    the job service account without API credentials, never restarted in place (the Job retries)."""
    pod_sc, container_sc = restricted_security_context(identity)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(COMMAND),
        "env": env,
        "securityContext": container_sc,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": volume_mounts,
    }
    if resources:
        container["resources"] = resources
    return {
        "restartPolicy": "Never",
        "serviceAccountName": config.job_service_account,
        # No API credentials: the job talks to nobody but the Hub; its progress goes to its log, which
        # the operator reads (docs/security.md).
        "automountServiceAccountToken": False,
        "securityContext": pod_sc,
        "containers": [container],
        "volumes": volumes,
    }


def build_job(spec: DatasetPrepSpec, plan: RunPlan, *, parent: str, namespace: str, parent_uid: str,
              config: OperatorConfig, retry: str | None = None) -> dict[str, Any]:
    """The Job that runs ``datasetprep job`` for one step of one spec version.

    Args:
        spec: the validated spec.
        plan: the step (:meth:`RunPlan.stages` or :meth:`RunPlan.cleanup`). A ``shard`` step is an
            Indexed Job with ``spec.shards`` completions, each pod tokenizing one slice
            (``JOB_COMPLETION_INDEX``), ``spec.backoffLimit`` retries per index and no failed index
            tolerated. The ``delete`` step (``<parent>-delete-data``) mounts only the output claim and
            gets no HF token (nothing is downloaded; its Secret may be gone already).
        parent: name of the DatasetPrep (the Job is ``<parent>-<spec hash>``).
        namespace: its namespace.
        parent_uid: its uid, for the labels that find the children again.
        config: operator settings (default image, service account, pull policy, extra env).
        retry: the resource's ``datasetprep.io/retry`` value, if any (it enters the run's name).

    Returns:
        The manifest, without owner references (the caller adopts it).
    """
    digest = spec_hash(spec, retry)
    labels = child_labels(parent_uid, digest) | {LABEL_COMPONENT: COMPONENT[plan.step]}
    mounts = plan_mounts(spec, plan)
    inputs = JobInputs(spec=spec, plan=plan, volumes={m.claim: m.mount_path for m in mounts}, name=parent,
                       namespace=namespace)
    identity = Identity.of(spec)
    token = plan.step != "delete" and spec.hf_token_secret_ref is not None
    resources, tmp_size = job_resources(config.job_resources, spec.resources)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size} if tmp_size else {}}]
    volumes += [{"name": m.volume, "persistentVolumeClaim": {"claimName": m.claim, "readOnly": m.read_only}}
                for m in mounts]
    volume_mounts = [{"name": m.volume, "mountPath": m.mount_path, "readOnly": m.read_only} for m in mounts]
    volume_mounts.append({"name": "tmp", "mountPath": TMP_DIR})
    if token:
        volumes.append(token_volume(spec))
        volume_mounts.append({"name": TOKEN_VOLUME, "mountPath": HF_TOKEN_DIR, "readOnly": True})
    pod_spec = job_pod_spec(config, image=spec.image or config.job_image,
                            env=job_env(inputs, token=token, extra=config.job_env), volumes=volumes,
                            volume_mounts=volume_mounts, resources=resources, identity=identity)
    if config.job_volume_init:
        pod_spec["initContainers"] = [volume_init_container(spec, plan, config, identity)]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if plan.step == "delete":
        job_spec["ttlSecondsAfterFinished"] = DELETE_DATA_TTL_SECONDS
    if plan.step == "shard":
        job_spec.update({
            "completionMode": "Indexed",
            "completions": plan.shards,
            "parallelism": spec.parallelism or plan.shards,
            "backoffLimitPerIndex": spec.backoff_limit,
            "maxFailedIndexes": 0,  # one shard out of retries fails the run at once: its output is needed
        })
        del job_spec["backoffLimit"]  # with per-index limits the global one only caps total failures
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name_of(parent, spec, plan, retry),
            "namespace": namespace,
            "labels": labels,
            "annotations": {ANNOTATION_OWNER_NAME: parent},
        },
        "spec": job_spec,
    }
