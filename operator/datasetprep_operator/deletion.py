"""``spec.deleteDataOnDelete``: delete a DatasetPrep's dataset before the resource goes.

Called by the runtime while a resource with the operator's finalizer is being deleted (only
``deleteDataOnDelete`` resources carry it). Every call moves one step and says, with a
TemporaryError, when to look again. When it says done (no error), the runtime removes the finalizer
-- conditionally, so two looks cannot both finish -- and only then posts the final event and deletes
the clean-up Job (``Outcome.cleanup``); a clean-up Job left behind by a crash in between is removed
by its ``ttlSecondsAfterFinished``.
"""
from __future__ import annotations

import kopf
from pydantic import ValidationError

from datasetprep.contract import Deleted, RunPlan
from datasetprep.spec import parse_spec

from datasetprep_operator.jobs import DELETE_DATA_COMPONENT, build_job, name_of
from datasetprep_operator.jobstate import job_state, last_result
from datasetprep_operator.kube import translate_api_errors
from datasetprep_operator.naming import LABEL_COMPONENT, LABEL_OWNER_UID
from datasetprep_operator.reconcile import Context, Event, Outcome, Resource, create_adopted_job, job_error, job_pods
from datasetprep_operator.status import read_status


def delete_data(res: Resource, ctx: Context) -> Outcome:
    """The DatasetPrep is being deleted: delete its dataset first.

    Its run Jobs are stopped (and their pods gone) before a clean-up Job ``<name>-delete-data``
    deletes the files its manifests list. The data is kept, with a Warning event, when it is not this
    resource's to delete: another DatasetPrep points at it (``reusedFrom``), or this one itself only
    reused another's output. A clean-up that fails is reported and the deletion goes on (a
    finalizer must not hold the resource forever). ``error`` is a TemporaryError while waiting.
    """
    try:
        spec = parse_spec(dict(res.spec))
    except ValidationError:
        return Outcome()
    if not spec.delete_data_on_delete:
        return Outcome()
    where = f"{spec.output.claim_name}:{spec.output.prefix}"
    kept = _kept_because(res, ctx, where)
    if kept is not None:
        return Outcome(events=[Event("Warning", "DataKept", kept)])
    plan = RunPlan.cleanup()
    name = name_of(res.name, spec, plan)
    owned = {LABEL_OWNER_UID: res.uid}
    with translate_api_errors("listing this DatasetPrep's Jobs and pods"):
        runs = [j for j in ctx.kube.list_jobs(res.namespace, owned) if j["metadata"]["name"] != name]
        for job in runs:
            ctx.kube.delete_job(res.namespace, job["metadata"]["name"])
        busy = [p for p in ctx.kube.list_pods(res.namespace, owned)
                if (p["metadata"].get("labels") or {}).get(LABEL_COMPONENT) != DELETE_DATA_COMPONENT]
    if runs or busy:
        return Outcome(error=kopf.TemporaryError("waiting for the job pods to stop before deleting the data", delay=2))
    with translate_api_errors(f"reading PersistentVolumeClaim {spec.output.claim_name}"):
        claim = ctx.kube.get_pvc(res.namespace, spec.output.claim_name)
    if claim is None:
        return Outcome(events=[Event("Warning", "DataKept", f"Claim {spec.output.claim_name} is gone: "
                                     "no data to delete")])
    with translate_api_errors(f"reading Job {name}"):
        job = ctx.kube.get_job(res.namespace, name)
    if job is None:  # no owner reference: it must run while its owner is going away; deleted when done
        manifest = build_job(spec, plan, parent=res.name, namespace=res.namespace, parent_uid=res.uid,
                             config=ctx.config)
        _, created = create_adopted_job(res, ctx, manifest, owned=False)
        events = [Event("Normal", "DeletingData", f"Created Job {name} to delete the data at {where}")] if created else []
        return Outcome(events=events, error=kopf.TemporaryError(f"Job {name} is deleting the data", delay=2))
    state = job_state(job)
    if state == "running":
        return Outcome(error=kopf.TemporaryError(f"Job {name} is deleting the data", delay=2))
    pods = job_pods(ctx, res.namespace, job)
    if state == "failed":
        error = job_error(res, ctx, job, pods) or "no reason given"
        event = Event("Warning", "DeleteDataFailed",
                      f"Job {name} could not delete the data at {where}: {error}; it is left there")
    else:
        report = last_result(pods)
        detail = (f"{report.deleted_files} files, {report.deleted_bytes:,} bytes" if isinstance(report, Deleted)
                  else "done")
        event = Event("Normal", "DataDeleted", f"Deleted the data at {where} ({detail})")
    return Outcome(events=[event], cleanup=name)  # the Job goes once the finalizer is off (its report read)


def _kept_because(res: Resource, ctx: Context, where: str) -> str | None:
    """Why the data is not this resource's to delete, if it is not."""
    output = res.status.output
    if output is not None and output.reused_from:
        return f"The data at {where} was made by DatasetPrep {output.reused_from} and only reused here; it is kept"
    with translate_api_errors("listing DatasetPreps"):
        users = sorted(d["metadata"]["name"] for d in ctx.kube.list_datasetpreps(res.namespace)
                       if _reused_from(d) == res.name and d["metadata"].get("uid") != res.uid)
    if users:
        return (f"The data at {where} is kept: DatasetPrep {', '.join(users)} "
                f"still use{'s' if len(users) == 1 else ''} it")
    return None


def _reused_from(body: dict) -> str | None:
    output = read_status(body.get("status")).output
    return output.reused_from if output else None
