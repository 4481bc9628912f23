"""Names and labels of a DatasetPrep's children: its Jobs, its training ConfigMap.

Names follow from the resource and its spec, never from a counter or the clock, so a restarted
operator finds what an earlier one created (the hashes behind them: :mod:`datasetprep.hashes`).
"""
from __future__ import annotations

from datasetprep.spec import DatasetPrepSpec

# Labels and annotations put on every child object.
LABEL_OWNER_UID = "datasetprep.io/owner-uid"
LABEL_SPEC_HASH = "datasetprep.io/spec-hash"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
ANNOTATION_OWNER_NAME = "datasetprep.io/owner-name"
#: Set on a DatasetPrep by its user: each new value starts a new run of the same spec (it enters the
#: run's name, :func:`datasetprep.hashes.spec_hash`). Any value will do, e.g. the date.
ANNOTATION_RETRY = "datasetprep.io/retry"
MANAGED_BY = "datasetprep-operator"
#: Labels Kubernetes' Job controller puts on the pods of a Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"

MAX_NAME = 63
MERGE_SUFFIX = "-merge"
DELETE_DATA_SUFFIX = "delete-data"


def job_name(parent: str, digest: str) -> str:
    """``<parent>-<digest>``, the parent part cut so the whole fits a 63-character label value."""
    head = parent[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"


def merge_job_name(parent: str, digest: str) -> str:
    """``<parent>-<digest>-merge``: the second stage of a sharded run, the digest kept whole."""
    return job_name(parent, digest + MERGE_SUFFIX)


def delete_data_job_name(parent: str) -> str:
    """``<parent>-delete-data``: the clean-up Job of ``spec.deleteDataOnDelete``."""
    return job_name(parent, DELETE_DATA_SUFFIX)


def config_map_name(parent: str, spec: DatasetPrepSpec) -> str:
    """The training ConfigMap's name: ``spec.trainingConfig.configMapName`` or ``<parent>-training``."""
    return spec.training_config.config_map_name or f"{parent}-training"


def child_labels(parent_uid: str, digest: str | None = None) -> dict[str, str]:
    """Labels that find a DatasetPrep's children (by owner uid: names may exceed label limits)."""
    labels = {LABEL_NAME: "datasetprep", LABEL_MANAGED_BY: MANAGED_BY, LABEL_OWNER_UID: parent_uid}
    if digest is not None:
        labels[LABEL_SPEC_HASH] = digest
    return labels
