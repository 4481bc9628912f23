"""``status`` of a DatasetPrep, built and read through its model (:class:`~datasetprep.spec.DatasetPrepStatus`,
which also generates the CRD's status schema): a misspelt field is an error here, not a field the API
server silently prunes.

The builders return a *partial* status: the fields a step decides, and only those (``to_patch``
keeps exactly the fields that were set; one set to None is deleted). :func:`status_changes` turns it
into the JSON merge patch against what is stored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from datasetprep.contract import ProgressRecord, Published
from datasetprep.spec import (Condition, DatasetPrepSpec, DatasetPrepStatus, OutputFileStatus, OutputStatus,
                              OutputTokenizerStatus, ProgressStatus)

from datasetprep_operator.trainingconfig import dataset_prefix, pod_path


def read_status(raw: Mapping[str, Any] | None) -> DatasetPrepStatus:
    """The status as stored, through its model (unknown fields dropped). A status the model cannot
    read (edited by hand) counts as empty: every decision is re-derived from the Jobs."""
    try:
        return DatasetPrepStatus.read(dict(raw or {}))
    except ValidationError:
        return DatasetPrepStatus()


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``current`` into ``desired`` for the keys ``desired`` names.

    Objects are diffed key by key (a key that disappeared becomes None, which deletes it); lists and
    scalars are replaced whole. An empty result means nothing to write.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = status_changes(old, value)
            sub.update({k: None for k, v in old.items() if k not in value and v is not None})
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    return patch


# --------------------------------------------------------------------------- the output


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that have a value (the others stay unset, so they are not written)."""
    return {k: v for k, v in fields.items() if v is not None}


def _sum(values: Iterable[int | None]) -> int | None:
    items = list(values)
    return None if any(v is None for v in items) else sum(items)  # type: ignore[arg-type]


def output_status(spec: DatasetPrepSpec, result: Published, *, reused_from: str | None = None) -> OutputStatus:
    """``status.output`` for a successful run; paths as the training pods mount the claim.

    Args:
        reused_from: the DatasetPrep whose output this is, when no Job ran (``spec.reuse``).
    """
    first = result.outputs[0]
    files = [OutputFileStatus(**_given(
        key=f.key, prefix=None if f.kept_shards else pod_path(spec, f.prefix), documents=f.documents,
        sequences=f.sequences, tokens=f.tokens, dtype=f.dtype, bin_sha256=f.bin_sha256, idx_sha256=f.idx_sha256,
        blend_file=pod_path(spec, f.blend_file) if f.blend_file else None, shards=f.shards,
        shard_tokens=list(f.blend_weights) if f.blend_weights is not None else None)) for f in result.outputs]
    tok = result.tokenizer
    tokenizer = _given(type=tok.type, vocab_size=tok.vocab_size, eod_id=tok.eod_id, fingerprint=tok.fingerprint,
                       path=pod_path(spec, tok.path) if tok.path else None)
    return OutputStatus(**_given(
        layout="Shards" if first.kept_shards else "Merged",
        prefix=None if first.kept_shards else dataset_prefix(spec, result),
        blend_file=pod_path(spec, first.blend_file) if first.blend_file else None,
        claim_name=spec.output.claim_name, documents=first.documents,
        sequences=_sum(f.sequences for f in result.outputs), tokens=_sum(f.tokens for f in result.outputs),
        dtype=first.dtype, files=files, fingerprint=result.fingerprint, reused=result.reused, reused_from=reused_from,
        tokenizer=OutputTokenizerStatus(**tokenizer) if tokenizer else None))


def ready_output_key(body: Mapping[str, Any]) -> str | None:
    """The reuse key under which a DatasetPrep offers its output to others, else None.

    It offers it while it is Ready for its current generation (``Succeeded``, conditions and
    ``observedGeneration`` current) and recorded its key with an output the training ConfigMap can be
    rebuilt from (files and tokenizer facts, which older operator versions did not record). Compare
    :func:`datasetprep.hashes.reuse_key`, the key a spec *would* produce.
    """
    generation = (body.get("metadata") or {}).get("generation")
    status = read_status(body.get("status"))
    if status.phase != "Succeeded" or status.observed_generation != generation:
        return None
    ready = condition(status, "Ready")
    if ready is None or ready.status != "True" or ready.observed_generation != generation:
        return None
    output = status.output
    if output is None or not (output.files and output.tokenizer and (output.prefix or output.blend_file)):
        return None
    return status.reuse_key or None


def success_message(result: Published) -> str:
    """One line for the Ready condition and the event."""
    first = result.outputs[0]
    tokens = _sum(f.tokens for f in result.outputs)
    files = ", ".join(f"{f.shards} shard datasets listed in {f.blend_file}" if f.kept_shards
                      else f"{f.prefix}.bin/.idx" for f in result.outputs)
    docs = "?" if first.documents is None else f"{first.documents:,}"
    toks = "?" if tokens is None else f"{tokens:,}"
    return f"{docs} documents, {toks} tokens written to {files}"


# --------------------------------------------------------------------------- conditions


def condition(status: DatasetPrepStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions or () if c.type == type_), None)


def set_condition(conditions: Sequence[Condition] | None, type_: str, status: str, reason: str, message: str, *,
                  generation: int | None, now: str) -> list[Condition]:
    """A copy of ``conditions`` with one condition set.

    ``lastTransitionTime`` moves only when the condition's status changes, as the Kubernetes API
    conventions ask; reason, message and observedGeneration always follow the latest observation.
    """
    result = list(conditions or ())
    fields = {"status": status, "reason": reason, "message": message, "observed_generation": generation}
    for i, cond in enumerate(result):
        if cond.type == type_:
            moved = {"last_transition_time": now} if cond.status != status else {}
            result[i] = cond.model_copy(update=fields | moved)
            return result
    result.append(Condition(type=type_, **fields, last_transition_time=now))  # type: ignore[arg-type]
    return result


def set_conditions(conditions: Sequence[Condition] | None, *, ready: bool, reconciling: bool, stalled: bool,
                   reason: str, message: str, generation: int | None, now: str) -> list[Condition]:
    """Set Ready, Reconciling and Stalled together (kstatus: abnormal-true polarity for the last two)."""
    result = list(conditions or ())
    for type_, value in (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled)):
        result = set_condition(result, type_, "True" if value else "False", reason, message,
                               generation=generation, now=now)
    return result


# --------------------------------------------------------------------------- progress


def aggregate_progress(reports: Iterable[ProgressRecord], *, shards_done: int, shards_total: int,
                       pods_active: int) -> ProgressStatus:
    """``status.progress`` from the job pods' own records (latest per shard) and the Job's counts.

    A shard restarted after a failure reports again under the same index; its newest report wins,
    and it counts the chunks its predecessor finished as done. Shards that have not reported yet
    (``parallelism`` < ``shards``, or pods still starting) are assumed as big as the average reported
    one: the plan cuts the input into slices of equal chunk counts.
    """
    latest: dict[int | None, ProgressRecord] = {}
    for r in reports:
        if r.shard not in latest or r.time >= latest[r.shard].time:
            latest[r.shard] = r
    counts = {"shards_done": shards_done, "shards_total": shards_total}
    total = sum(r.bytes_total for r in latest.values())
    done = sum(r.bytes_done for r in latest.values())
    if total > 0 and shards_total > 1 and len(latest) < shards_total:
        total += (shards_total - len(latest)) * total // len(latest)
    if total > 0:
        percent = min(100, (100 * done) // total)
        tokens = sum(r.tokens for r in latest.values())
        rate = sum(r.tokens_per_second for r in latest.values())
        eta = None
        if rate > 0 and tokens > 0 and done > 0:
            eta = int((total - done) / (rate * done / tokens))
        return ProgressStatus(**counts, **_given(
            percent=percent, summary=f"{percent}%", bytes_done=done, bytes_total=total, tokens=tokens,
            documents=sum(r.documents for r in latest.values()), tokens_per_second=rate, eta_seconds=eta))
    if shards_done:
        return ProgressStatus(**counts, percent=(100 * shards_done) // max(shards_total, 1),
                              summary=f"{shards_done}/{shards_total} shards")
    return ProgressStatus(**counts, summary="running" if pods_active else "starting")


def count_indexes(completed: str | None) -> int:
    """How many indexes an Indexed Job's ``status.completedIndexes`` (e.g. ``"0,2-4"``) names."""
    count = 0
    for part in (completed or "").split(","):
        first, _, last = part.strip().partition("-")
        try:
            count += int(last or first) - int(first) + 1 if first else 0
        except ValueError:
            continue
    return count


# --------------------------------------------------------------------------- the status of each phase


def running_status(current: DatasetPrepStatus, *, job: str, generation: int | None, now: str,
                   start_time: str | None, progress: ProgressStatus | None = None,
                   message: str | None = None, attempt: int | None = None,
                   last_failure: str | None = None) -> DatasetPrepStatus:
    """Status while the Job for the current generation runs (the published output stays as it was).

    Args:
        attempt: which attempt of the Job's pods runs (shown from the second on, with ``last_failure``,
            why the one before failed).
    """
    previous = current.output
    message = message or f"Job {job} is running"
    if attempt is not None and attempt > 1:
        why = last_failure if not last_failure or len(last_failure) <= 300 else last_failure[:297] + "..."
        message += f" (attempt {attempt}" + (f"; the last one failed: {why})" if why else ")")
    if previous is not None and previous.prefix:
        message += f"; the training ConfigMap still points at {previous.prefix}"
    return DatasetPrepStatus(
        phase="Running", observed_generation=generation, job_name=job, start_time=start_time or now,
        completion_time=None, message=message, attempt=attempt, last_failure=last_failure,
        progress=progress if progress is not None else ProgressStatus(summary="starting"),
        conditions=set_conditions(current.conditions, ready=False, reconciling=True, stalled=False,
                                  reason="Running", message=message, generation=generation, now=now))


def blocked_status(current: DatasetPrepStatus, *, job: str, reason: str, message: str, generation: int | None,
                   now: str, start_time: str | None, attempt: int | None = None,
                   last_failure: str | None = None) -> DatasetPrepStatus:
    """Status while the run's pods cannot start (no pod created, image pull, scheduling, ...): ``Pending``
    with ``Stalled=True`` and the cause and fix as message; it goes back to running once the cause is gone."""
    return DatasetPrepStatus(
        phase="Pending", observed_generation=generation, job_name=job, start_time=start_time or now,
        completion_time=None, message=message, attempt=attempt, last_failure=last_failure,
        progress=ProgressStatus(summary="blocked"),
        conditions=set_conditions(current.conditions, ready=False, reconciling=False, stalled=True,
                                  reason=reason, message=message, generation=generation, now=now))


def waiting_status(current: DatasetPrepStatus, *, reason: str, message: str, generation: int | None,
                   now: str) -> DatasetPrepStatus:
    """Status while the run cannot start yet for a reason outside the spec (e.g. a claim to be created)."""
    return DatasetPrepStatus(
        phase="Pending", observed_generation=generation, message=message, progress=ProgressStatus(summary="waiting"),
        attempt=None, last_failure=None,
        conditions=set_conditions(current.conditions, ready=False, reconciling=True, stalled=False,
                                  reason=reason, message=message, generation=generation, now=now))


def succeeded_status(current: DatasetPrepStatus, spec: DatasetPrepSpec, result: Published, *, job: str | None,
                     config_map: str, generation: int | None, now: str, completion_time: str | None,
                     reused_from: str | None = None) -> DatasetPrepStatus:
    """Status once the output is complete and the training ConfigMap written.

    Args:
        job: the Job whose pod reported ``result`` (None when no Job ran).
        reused_from: the DatasetPrep whose identical output this one points at instead of running a Job
            (``spec.reuse: IfIdentical``); the Ready reason is then ``Reused``.
    """
    message = success_message(result)
    reason = "Succeeded"
    if reused_from is not None:
        message = f"Reused the output of DatasetPrep {reused_from} (no Job launched): {message}"
        reason = "Reused"
    return DatasetPrepStatus(
        phase="Succeeded", observed_generation=generation, job_name=job, config_map_name=config_map,
        completion_time=completion_time or now, resolved_revision=result.resolved_revision, message=message,
        output=output_status(spec, result, reused_from=reused_from), attempt=None, last_failure=None,
        progress=ProgressStatus(summary="reused" if reused_from is not None else "100%", percent=100,
                                documents=result.outputs[0].documents, tokens=_sum(f.tokens for f in result.outputs),
                                shards_done=spec.shards, shards_total=spec.shards),
        conditions=set_conditions(current.conditions, ready=True, reconciling=False, stalled=False,
                                  reason=reason, message=message, generation=generation, now=now))


def failed_status(current: DatasetPrepStatus, *, reason: str, message: str, generation: int | None, now: str,
                  job: str | None = None) -> DatasetPrepStatus:
    """Status when the run for this generation cannot succeed without a change to the spec."""
    status = DatasetPrepStatus(
        phase="Failed", observed_generation=generation, message=message, progress=ProgressStatus(summary="failed"),
        conditions=set_conditions(current.conditions, ready=False, reconciling=False, stalled=True,
                                  reason=reason, message=message, generation=generation, now=now))
    if job is not None:
        status.job_name = job
        status.completion_time = now
    return status


def observed_status(current: DatasetPrepStatus, *, generation: int | None) -> DatasetPrepStatus:
    """Bump observedGeneration (status and conditions) when a change needed no new run."""
    if current.observed_generation == generation:
        return DatasetPrepStatus()
    return DatasetPrepStatus(observed_generation=generation, conditions=[
        c.model_copy(update={"observed_generation": generation}) for c in current.conditions or ()])
