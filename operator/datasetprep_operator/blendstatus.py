"""``status`` of a DatasetBlend, built through its model (:class:`~datasetprep.blendspec.DatasetBlendStatus`,
which also generates the CRD's status schema). Conditions follow kstatus, as for DatasetPreps
(:func:`datasetprep_operator.status.set_conditions`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from datasetprep.blending import ROUND_SHARE, BlendPlan
from datasetprep.blendspec import BlendComponentStatus, BlendFilesStatus, ClaimMount, DatasetBlendStatus
from datasetprep.contract import BlendWritten

from datasetprep_operator.status import set_conditions


def read_blend_status(raw: Mapping[str, Any] | None) -> DatasetBlendStatus:
    """The status as stored (unknown fields dropped); an unreadable one counts as empty."""
    try:
        return DatasetBlendStatus.read(dict(raw or {}))
    except ValidationError:
        return DatasetBlendStatus()


def figures(plan: BlendPlan) -> DatasetBlendStatus:
    """The blend's arithmetic, for status: each component's generation, tokens, share and epochs."""
    components = []
    for split, entries in plan.lists.items():
        for e in entries:
            d, fig = e.data, plan.figures[(split, e.data.name, e.data.text_key)]
            fields = dict(
                split=split, dataset_prep=d.name, text_key=d.text_key, generation=d.generation, claim_name=d.claim,
                prefix=e.pod_prefix or e.pod_blend_file, datasets=len(e.datasets) if e.datasets is not None else None,
                documents=d.documents, sequences=d.sequences, tokens=d.tokens, weight=e.component.weight,
                fraction=e.component.fraction, share=round(e.share, ROUND_SHARE), train_tokens=fig.train_tokens,
                epochs=fig.epochs, note=fig.note)
            components.append(BlendComponentStatus(**{k: v for k, v in fields.items() if v is not None}))
    datasets = sum(len(plan.datasets(s) or ()) for s in plan.lists) if plan.expanded else None
    return DatasetBlendStatus(
        component_count=plan.components(), tokens=plan.tokens(), datasets=datasets, components=components,
        claims=[ClaimMount(claim_name=c, mount_path=m) for c, m in plan.mounts.items()],
        notes=list(plan.notes) or None)


def files_status(claim: str, written: BlendWritten, version: str) -> BlendFilesStatus:
    return BlendFilesStatus(claim_name=claim, folder=written.blend_folder, data_args=written.data_args,
                            per_split_data_args=written.per_split_data_args, sequences=written.sequences,
                            digest=version, datasets=written.datasets)


def _with(current: DatasetBlendStatus, *, ready: bool, reconciling: bool, stalled: bool, reason: str, message: str,
          generation: int | None, now: str) -> DatasetBlendStatus:
    return DatasetBlendStatus(observed_generation=generation, message=message, conditions=set_conditions(
        current.conditions, ready=ready, reconciling=reconciling, stalled=stalled, reason=reason, message=message,
        generation=generation, now=now))


def stalled_status(current: DatasetBlendStatus, *, reason: str, message: str, generation: int | None,
                   now: str) -> DatasetBlendStatus:
    """Cannot go on without a change (to the blend or a component); the last ConfigMap stays."""
    return _with(current, ready=False, reconciling=False, stalled=True, reason=reason, message=message,
                 generation=generation, now=now)


def progressing_status(current: DatasetBlendStatus, *, reason: str, message: str, generation: int | None,
                       now: str) -> DatasetBlendStatus:
    """Waiting for components, or writing the files; the last ConfigMap stays meanwhile."""
    if current.config_map_name:
        message += f"; ConfigMap {current.config_map_name} keeps the previous blend meanwhile"
    return _with(current, ready=False, reconciling=True, stalled=False, reason=reason, message=message,
                 generation=generation, now=now)


def ready_status(current: DatasetBlendStatus, *, message: str, generation: int | None, now: str) -> DatasetBlendStatus:
    return _with(current, ready=True, reconciling=False, stalled=False, reason="Ready", message=message,
                 generation=generation, now=now)


def ready_message(plan: BlendPlan, written: BlendWritten, config_map: str) -> str:
    used = ", ".join(f"{e.data.name}@{e.data.generation}" for e in _unique(plan))
    return (f"{plan.components()} components, {plan.tokens():,} tokens, {written.datasets} datasets checked; "
            f"ConfigMap {config_map} (generations {used})")


def _unique(plan: BlendPlan) -> list[Any]:
    seen: dict[tuple[str, str], Any] = {}
    for entries in plan.lists.values():
        for e in entries:
            seen.setdefault((e.data.name, e.data.text_key), e)
    return list(seen.values())
