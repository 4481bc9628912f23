"""kopf registration: the operator's entry points, and nothing else.

kopf loads this module (``kopf run -m datasetprep_operator.handlers``, or ``cli.run`` importing it);
every function only unpacks kopf's kwargs and calls into ``runtime`` (which calls ``reconcile``).

* ``startup``/``cleanup`` -- settings, API client and metrics into ``memo``; released at exit.
* ``datasetprep_jobs``/``datasetprep_pods`` -- in-memory indexes of our Jobs and their pods, fed
  by watches: the timer reads Job state and the pods' progress reports from them instead of
  polling the API server.
* ``datasetprep_outputs`` -- Ready DatasetPreps by reuse key: where ``spec.reuse: IfIdentical`` finds
  an identical output to point at instead of launching a Job.
* ``reconcile_datasetprep`` -- on create, on resume (operator start) and on spec change.
* ``delete_datasetprep`` -- only for resources with ``spec.deleteDataOnDelete`` (only they get kopf's
  finalizer): stops the run and deletes the dataset before the resource goes.
* ``watch_run`` -- every few seconds while a run is unfinished: notices a Job finishing (and starts
  the merge Job of a sharded run), folds the pods' progress into status.
* ``datasetprep_phases`` -- an index of DatasetPreps by phase, counted by the metrics.
"""
from __future__ import annotations

from typing import Any

import kopf

from datasetprep.spec import GROUP, PLURAL, VERSION
from datasetprep_operator import builders, reconcile, runtime

#: Seconds between looks at an unfinished run. The look reads the watch-fed Job index, so it costs
#: no API call until the Job is over.
POLL_SECONDS = 2.0


@kopf.index(GROUP, VERSION, PLURAL)
def datasetprep_phases(status: kopf.Status, **_: Any) -> dict[str, None]:
    return {runtime.phase_key(status): None}


@kopf.index(GROUP, VERSION, PLURAL)
def datasetprep_outputs(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return runtime.reusable_entry(body)


@kopf.on.startup()
def startup(memo: kopf.Memo, settings: kopf.OperatorSettings, logger: Any, datasetprep_phases: kopf.Index,
            **_: Any) -> None:
    memo.runtime = runtime.start(memo, settings, logger, datasetprep_phases)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime.stop(memo.get("runtime"))


@kopf.index("batch", "v1", "jobs", labels={builders.LABEL_MANAGED_BY: builders.MANAGED_BY})
def datasetprep_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): runtime.job_summary(body)}


@kopf.index("", "v1", "pods", labels={builders.LABEL_MANAGED_BY: builders.MANAGED_BY,
                                      reconcile.JOB_NAME_LABEL: kopf.PRESENT})
def datasetprep_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[reconcile.JOB_NAME_LABEL]): runtime.pod_summary(body)}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_datasetprep(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, datasetprep_jobs: kopf.Index,
                          datasetprep_pods: kopf.Index, datasetprep_outputs: kopf.Index, **_: Any) -> None:
    runtime.handle(memo.runtime, body, patch, datasetprep_jobs, datasetprep_pods, datasetprep_outputs)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, **_: bool(spec.get("deleteDataOnDelete")))
def delete_datasetprep(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime.handle_delete(memo.runtime, body)


@kopf.timer(GROUP, VERSION, PLURAL, interval=POLL_SECONDS,
            when=lambda status, **_: reconcile.needs_watching(status))
def watch_run(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, datasetprep_jobs: kopf.Index,
              datasetprep_pods: kopf.Index, datasetprep_outputs: kopf.Index, **_: Any) -> None:
    runtime.handle(memo.runtime, body, patch, datasetprep_jobs, datasetprep_pods, datasetprep_outputs)

