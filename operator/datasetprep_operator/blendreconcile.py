"""Level-triggered reconciliation of one DatasetBlend.

:func:`reconcile_blend` runs whenever the blend, one of its components, its files Job or that Job's pods change
(the runtime's work queue, as for DatasetPreps; on a restart, once per blend), and is safe to run any number of
times, on a body of any age: its events belong to transitions of the status it decides (the runtime writes that
status conditionally on the ``resourceVersion`` it was decided on, and posts the events only when it wins):

1. The spec is validated (the CRD's CEL rules refuse the same). Invalid: ``Stalled``, for good.
2. Every component is looked up (the operator's DatasetPrep index, else a GET): missing, Stalled, or
   without the text key -- ``Stalled``, naming them; not Ready yet (a first run, or a re-run after its spec
   changed) -- ``Reconciling``, and the ConfigMap keeps the previous blend meanwhile.
3. The components must share one tokenizer, dtype and EOD setting (:func:`datasetprep.blending.differences`)
   and have paths Megatron-LM can read from a file: else ``Stalled``, naming who differs in what.
4. The plan (:func:`datasetprep.blending.plan`) names a version of the blend files (a content address).
   A version already published for this generation: nothing to do. Else its Job
   ``<name>-files-<version>`` is found or created; while it runs, ``Reconciling``; if it fails (a dataset
   missing or not what its DatasetPrep says), ``Stalled`` with its message; once it succeeded, the training
   ConfigMap is written from its report, older files Jobs go, and the blend is ``Ready``.

A component repeated more than ``maxEpochs`` times by the budget gets a Warning event (once per change) and
a note in status.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from datasetprep import blending
from datasetprep.blending import BlendPlan, ComponentData
from datasetprep.blendspec import DatasetBlendSpec, DatasetBlendStatus, parse_blend_spec
from datasetprep.contract import BlendOrder, BlendWritten
from datasetprep.spec import format_validation_error

from datasetprep_operator import blendconfig
from datasetprep_operator.blendinputs import Problem, component_data
from datasetprep_operator.blendjobs import COMPONENT as FILES_COMPONENT, build_files_job, files_job_name
from datasetprep_operator.blendstatus import (figures, files_status, progressing_status, read_blend_status,
                                              ready_message, ready_status, stalled_status)
from datasetprep_operator.jobstate import has_succeeded_pod, job_state, last_result, owned_by
from datasetprep_operator.kube import translate_api_errors
from datasetprep_operator.naming import LABEL_COMPONENT, LABEL_OWNER_UID, config_map_name
from datasetprep_operator.reconcile import (Context, Event, Resource, create_adopted_job, delete_own_config_map,
                                           ended_pods, find_job, job_error, publish_config_map, watched_pods)
from datasetprep_operator.status import status_changes


@dataclasses.dataclass
class BlendOutcome:
    """What one reconciliation of a blend decided (``status``: the merge patch against what is stored)."""

    desired: DatasetBlendStatus = dataclasses.field(default_factory=DatasetBlendStatus)
    events: list[Event] = dataclasses.field(default_factory=list)
    error: Exception | None = None
    status: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BlendSeen:
    """What the operator's watches last saw: DatasetPreps (summaries) and our Jobs by (namespace, name), our
    Jobs by (namespace, owner uid), their pods by (namespace, Job name). A DatasetPrep or pod that is absent is
    asked for (a watch may lag); a files Job is asked for only when the status names it (else it is created,
    and a 409 reads it back). ``jobs_of`` None: the older files Jobs are listed."""

    prep: Callable[[str, str], "Mapping[str, Any] | None"] = lambda namespace, name: None
    job: Callable[[str, str], "Mapping[str, Any] | None"] = lambda namespace, name: None
    jobs_of: "Callable[[str, str], list[Mapping[str, Any]]] | None" = None
    pods: Callable[[str, str], "list[Mapping[str, Any]]"] = lambda namespace, job: []


def reconcile_blend(res: Resource, ctx: Context, seen: BlendSeen | None = None) -> BlendOutcome:
    """Bring one DatasetBlend one step closer to its spec and its components; see the module docstring.
    (The runtime's work queue looks at each blend in one thread at a time.)"""
    outcome = _reconcile(res, ctx, seen or BlendSeen())
    outcome.status = status_changes(res.raw_status, outcome.desired.to_patch())
    return outcome


def _reconcile(res: Resource, ctx: Context, seen: BlendSeen) -> BlendOutcome:
    current = read_blend_status(res.raw_status)
    try:
        spec = parse_blend_spec(dict(res.spec))
    except ValidationError as exc:
        message = format_validation_error(exc)
        # raised once per message: the timer looks every few seconds and must not log the same failure each time
        error = kopf.PermanentError(f"invalid spec: {message}") if current.message != message else None
        return _stalled(res, ctx, current, "InvalidSpec", message, error=error)
    data, problems = _components(res, ctx, seen, spec)
    blocking = [p for p in problems if p.verdict == "stalled"]
    if blocking:
        return _stalled(res, ctx, current, "ComponentNotUsable", "; ".join(p.message for p in blocking))
    if problems:
        message = "waiting for " + "; ".join(p.message for p in problems)
        return BlendOutcome(progressing_status(current, reason="WaitingForComponents", message=message,
                                               generation=res.generation, now=ctx.now()))
    unique = list({(d.name, d.text_key): d for d in data.values()}.values())
    diffs = blending.differences(unique)
    spaced = blending.whitespace_paths([p for d in unique for p in (d.prefix, d.blend_file) if p])
    if spaced:
        diffs.append(f"paths with whitespace, which Megatron-LM's data-args files cannot hold: {', '.join(spaced)}")
    if diffs:
        return _stalled(res, ctx, current, "IncompatibleComponents", "these components cannot be blended: "
                        + "; ".join(diffs))
    claim = blendconfig.files_claim(spec, unique[0].claim)
    plan = blending.plan(spec, {key: data[key] for key in data}, files_claim=claim)
    folder = blendconfig.files_folder(spec, res.name, plan.mounts, claim)
    keep = [current.files.digest] if current.files and current.files.digest else []
    order = blendconfig.order(plan, folder, keep, root=plan.mounts[claim], owner=res.uid, generation=res.generation)
    outcome = _files(res, ctx, seen, spec, plan, order, current, claim)
    return _with_figures(outcome, plan, current)


def _components(res: Resource, ctx: Context, seen: BlendSeen, spec: DatasetBlendSpec
                ) -> tuple[dict[tuple[str, str | None], ComponentData], list[Problem]]:
    data: dict[tuple[str, str | None], ComponentData] = {}
    problems: list[Problem] = []
    for _, comp in spec.all_components():
        if comp.key in data or any(p.component == comp.label for p in problems):
            continue
        body = seen.prep(res.namespace, comp.dataset_prep)
        if body is None:
            with translate_api_errors(f"reading DatasetPrep {comp.dataset_prep}"):
                body = ctx.kube.get_datasetprep(res.namespace, comp.dataset_prep)
        found = component_data(comp, body)
        if isinstance(found, Problem):
            problems.append(found)
        else:
            data[comp.key] = found
    return data, problems


def _stalled(res: Resource, ctx: Context, current: DatasetBlendStatus, reason: str, message: str,
             error: Exception | None = None) -> BlendOutcome:
    """Stalled, with a Warning event when the message is new (the timer looks again every few seconds)."""
    events = [Event("Warning", reason, message)] if current.message != message else []
    return BlendOutcome(stalled_status(current, reason=reason, message=message, generation=res.generation,
                                       now=ctx.now()), events=events, error=error)


def _with_figures(outcome: BlendOutcome, plan: BlendPlan, current: DatasetBlendStatus) -> BlendOutcome:
    """The blend's arithmetic in status -- of the blend the ConfigMap holds: shown once it is published (or while
    there is none yet), so status names the generations the training pods get. New notes are Warning events."""
    published = outcome.desired.files is not None or current.config_map_name is None
    unchanged = outcome.desired.observed_generation is not None and outcome.desired.conditions is None
    if published or unchanged:
        shown = figures(plan)
        for field in ("component_count", "tokens", "datasets", "components", "claims", "notes"):
            setattr(outcome.desired, field, getattr(shown, field))
    for note in plan.notes:
        if note not in (current.notes or ()):
            outcome.events.append(Event("Warning", "RepeatedData" if "repeated" in note else "BlendNote", note))
    return outcome


# --------------------------------------------------------------------------- the files Job and the ConfigMap


def _files(res: Resource, ctx: Context, seen: BlendSeen, spec: DatasetBlendSpec, plan: BlendPlan, order: BlendOrder,
           current: DatasetBlendStatus, claim: str) -> BlendOutcome:
    cm_name = config_map_name(res.name, spec)  # type: ignore[arg-type]  # the same field on both kinds
    gen, now = res.generation, ctx.now()
    if (current.files and current.files.digest == order.version and current.config_map_name == cm_name
            and current.observed_generation == gen and _ready(current)):
        return BlendOutcome(DatasetBlendStatus(observed_generation=gen))
    name = files_job_name(res.name, order.version)
    job = find_job(ctx, seen.job(res.namespace, name), res.namespace, name, named=current.files_job == name)
    created = False
    if job is None:
        manifest = build_files_job(order, blend=res.name, namespace=res.namespace, blend_uid=res.uid,
                                   mounts=plan.mounts, files_claim=claim, config=ctx.config, image=spec.image)
        job, created = create_adopted_job(res, ctx, manifest)
    events: list[Event] = []
    if created or current.files_job != name:  # once: the status that names this Job is written with the event
        events.append(Event("Normal", "FilesJobCreated", f"Created Job {name} to check the datasets and write "
                            f"the blend files into {order.folder}/{order.version}"))
    if not owned_by(job, res.uid):
        return _stalled(res, ctx, current, "JobConflict", f"Job {name} exists and does not belong to this "
                        "DatasetBlend; delete or rename it")
    state = job_state(job)
    if state == "running":
        outcome = BlendOutcome(progressing_status(current, reason="WritingFiles", message=f"Job {name} is checking "
                                                  f"the datasets and writing the blend files", generation=gen,
                                                  now=now), events=events)
        outcome.desired.files_job = name
        return outcome
    pods = ended_pods(ctx, watched_pods(seen.pods, res.namespace, job), res.namespace, job,
                      succeeded=state == "succeeded")
    if state == "failed":
        error = job_error(res, ctx, job, pods) or "no reason given"
        outcome = _stalled(res, ctx, current, "FilesJobFailed", f"Job {name} failed: {error}")
        outcome.events[:0] = events
        outcome.desired.files_job = name
        return outcome
    result = last_result(pods) if has_succeeded_pod(pods) else None
    if not isinstance(result, BlendWritten):
        return _stalled(res, ctx, current, "ResultUnreadable", f"Job {name} completed but its report is unusable; "
                        f"delete the Job to write the files again")
    expected = blendconfig.expected_listing(plan)
    if expected is not None and hashlib.sha256(expected.encode()).hexdigest() != result.listing_sha256:
        return _stalled(res, ctx, current, "FilesDiffer", f"the blend list Job {name} wrote differs from the one "
                        "the components' status describes (a kept-shards list changed?); delete the Job to redo it")
    conflict = publish_config_map(res, ctx, cm_name, blendconfig.config_data(plan, result))
    if conflict:
        return _stalled(res, ctx, current, "ConfigMapConflict", conflict)
    if current.config_map_name and current.config_map_name != cm_name:
        delete_own_config_map(res, ctx, current.config_map_name)
    _delete_older_files_jobs(res, ctx, seen, keep=name)
    message = ready_message(plan, result, cm_name)
    first = current.config_map_name is None
    events.append(Event("Normal", "BlendReady" if first else "BlendUpdated", message))
    desired = ready_status(current, message=message, generation=gen, now=now)
    desired.files = files_status(claim, result, order.version)
    desired.files_job = name
    desired.config_map_name = cm_name
    return BlendOutcome(desired, events=events)


def _ready(status: DatasetBlendStatus) -> bool:
    ready = next((c for c in status.conditions or () if c.type == "Ready"), None)
    return ready is not None and ready.status == "True" and ready.observed_generation == status.observed_generation


def _delete_older_files_jobs(res: Resource, ctx: Context, seen: BlendSeen, *, keep: str) -> None:
    if seen.jobs_of is not None:
        jobs = [j for j in seen.jobs_of(res.namespace, res.uid)
                if ((j.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT) == FILES_COMPONENT]
    else:
        with translate_api_errors("listing older files Jobs"):
            jobs = ctx.kube.list_jobs(res.namespace, {LABEL_OWNER_UID: res.uid, LABEL_COMPONENT: FILES_COMPONENT})
    for job in jobs:
        if job["metadata"]["name"] != keep:
            with translate_api_errors(f"deleting older files Job {job['metadata']['name']}"):
                ctx.kube.delete_job(res.namespace, job["metadata"]["name"])

