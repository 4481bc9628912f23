"""kopf registration: the operator's entry points, and nothing else.

kopf loads this module (``kopf run -m datasetprep_operator.handlers``, or ``cli.run`` importing it).
kopf here is the watch machinery: it lists and watches, keeps indexes, and calls these functions;
every one only notes what it saw and hands over to ``runtime`` (which queues the DatasetPrep or
DatasetBlend and calls ``reconcile`` or ``reconcile_blend``). No change handler, timer or daemon is
registered, so kopf itself writes nothing on our objects -- no finalizer, no handler progress, no diff-base
annotation: every write is the runtime's own, conditional on the version it was decided on.

* ``startup``/``cleanup`` -- settings, API client, metrics, the work queue into ``memo``; released at exit.
* ``datasetprep_jobs``/``datasetprep_jobs_by_owner``/``datasetprep_pods`` -- in-memory indexes of
  our Jobs and their pods (the watches carry a label selector: only ours reach the operator); the
  pods' names and phases say whose logs hold their progress records.
* ``datasetprep_outputs`` -- Ready DatasetPreps by reuse key: where ``spec.reuse: IfIdentical`` finds
  an identical output to point at instead of launching a Job.
* ``datasetprep_phases`` -- DatasetPreps by phase, counted by the metrics.
* ``datasetprep_summaries`` -- every DatasetPrep (metadata, spec, status), read by the blends.
* ``datasetprep_event`` -- every event of a DatasetPrep (the first listing too: that is the resume
  after a restart) queues it.
* ``job_event``/``pod_event`` -- every event of one of our Jobs or pods queues its DatasetPrep: a
  run is followed by what happens to it, not by a timer (only its live progress, printed in the job
  pods' logs, is read again every few seconds while it runs).
* ``datasetblend_event`` -- every event of a DatasetBlend queues it, like a DatasetPrep's; a DatasetPrep's
  event also queues the blends that name it, and a files Job's or its pods' event their blend (see
  ``blendreconcile``).

kopf invokes these handlers only once every watched kind has delivered its first listing into the indexes
(kopf's own rule for operators with indexes): so a restarted operator's first look at each object finds
its Jobs and pods in the indexes, and asks the API server for none of them.
"""
from __future__ import annotations

from typing import Any

import kopf

from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.spec import GROUP, PLURAL, VERSION
from datasetprep_operator import runtime
from datasetprep_operator.naming import JOB_NAME_LABEL, LABEL_MANAGED_BY, LABEL_OWNER_UID, MANAGED_BY

OURS = {LABEL_MANAGED_BY: MANAGED_BY}


@kopf.index(GROUP, VERSION, PLURAL)
def datasetprep_phases(status: kopf.Status, **_: Any) -> dict[str, None]:
    return {runtime.phase_key(status): None}


@kopf.index(GROUP, VERSION, PLURAL)
def datasetprep_outputs(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return runtime.reusable_entry(body)


@kopf.index("batch", "v1", "jobs", labels=OURS)
def datasetprep_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): runtime.job_summary(body)}


@kopf.index("batch", "v1", "jobs", labels={**OURS, LABEL_OWNER_UID: kopf.PRESENT})
def datasetprep_jobs_by_owner(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[LABEL_OWNER_UID]): runtime.job_summary(body)}


@kopf.index("", "v1", "pods", labels={**OURS, JOB_NAME_LABEL: kopf.PRESENT})
def datasetprep_pods(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {runtime.job_key(body): runtime.pod_summary(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def datasetprep_summaries(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return runtime.prep_entry(namespace, name, body)


@kopf.on.startup()
async def startup(memo: kopf.Memo, settings: kopf.OperatorSettings, datasetprep_phases: kopf.Index,
                  datasetprep_jobs: kopf.Index, datasetprep_jobs_by_owner: kopf.Index, datasetprep_pods: kopf.Index,
                  datasetprep_outputs: kopf.Index, datasetprep_summaries: kopf.Index, **_: Any) -> None:
    indexes = runtime.Indexes(jobs=datasetprep_jobs, jobs_by_owner=datasetprep_jobs_by_owner, pods=datasetprep_pods,
                              reusable=datasetprep_outputs, preps=datasetprep_summaries)
    memo.runtime = await runtime.start(memo, settings, datasetprep_phases, indexes)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await runtime.stop(memo.get("runtime"))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def datasetprep_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.saw_datasetprep(event)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.saw_child(body)


@kopf.on.event("", "v1", "pods", labels={**OURS, JOB_NAME_LABEL: kopf.PRESENT})
async def pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.saw_child(body)


@kopf.on.event(GROUP, VERSION, BLEND_PLURAL)
async def datasetblend_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.saw_blend(event)
