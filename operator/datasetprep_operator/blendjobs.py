"""The Job that writes a DatasetBlend's files onto the volume: a pure manifest builder.

One Job per version of the blend, ``<blend>-files-<version>``, from the job image with the same restricted
security context as the DatasetPrep Jobs. It mounts every claim of the blend where the training pods will
(so what it checks is what training reads): the files claim read-write, the others read-only. It needs no
API access (no service account token) and no Secret; its work order is ``DATASETPREP_BLEND``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datasetprep.contract import ENV_BLEND, BlendOrder

from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.jobs import TMP_DIR, job_pod_spec, pod_failure_policy
from datasetprep_operator.naming import ANNOTATION_OWNER_NAME, LABEL_COMPONENT, child_labels, job_name
from datasetprep_operator.resources import job_resources

COMPONENT = "blend-files"
BACKOFF_LIMIT = 1
#: Keep finished files Jobs (and their pods' termination messages) this long, then let Kubernetes delete them.
TTL_SECONDS = 24 * 3600


def files_job_name(blend: str, version: str) -> str:
    """``<blend>-files-<first 8 of the version>``."""
    return job_name(blend, f"files-{version[:8]}")


def build_files_job(order: BlendOrder, *, blend: str, namespace: str, blend_uid: str, mounts: Mapping[str, str],
                    files_claim: str, config: OperatorConfig, image: str | None = None) -> dict[str, Any]:
    """The files Job's manifest, without owner references (the caller adopts it).

    Args:
        mounts: claim -> mount path, as the training pods mount them.
        files_claim: the one claim mounted read-write.
    """
    labels = child_labels(blend_uid, order.version[:8]) | {LABEL_COMPONENT: COMPONENT}
    resources, tmp_size = job_resources(config.job_resources, None)  # the operator's bounds (jobResources)
    volumes = [{"name": f"claim-{i}", "claim": claim, "path": path} for i, (claim, path) in enumerate(mounts.items())]
    pod_spec = job_pod_spec(
        config, image=image or config.job_image, env=[{"name": ENV_BLEND, "value": order.to_json()}],
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size} if tmp_size else {}}] + [
            {"name": v["name"], "persistentVolumeClaim": {"claimName": v["claim"], "readOnly": v["claim"] != files_claim}}
            for v in volumes],
        volume_mounts=[{"name": v["name"], "mountPath": v["path"], "readOnly": v["claim"] != files_claim}
                       for v in volumes] + [{"name": "tmp", "mountPath": TMP_DIR}],
        resources=resources)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": files_job_name(blend, order.version), "namespace": namespace, "labels": labels,
                     "annotations": {ANNOTATION_OWNER_NAME: blend}},
        "spec": {"backoffLimit": BACKOFF_LIMIT, "completions": 1, "parallelism": 1,
                 "podFailurePolicy": pod_failure_policy(),  # a missing file is not retried
                 "ttlSecondsAfterFinished": TTL_SECONDS,
                 "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec}},
    }
