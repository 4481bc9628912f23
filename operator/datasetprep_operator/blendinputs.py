"""What a DatasetBlend takes from each component: a DatasetPrep's body turned into the facts the blend
arithmetic needs (:class:`~datasetprep.blending.ComponentData`), or the reason it cannot be used yet.

Pure functions over the JSON the API server returns (or the operator's watch keeps). Paths in a
DatasetPrep's status are as *its* training pods mount its claim (``spec.output.mountPath``); they are
turned back into paths on the claim here, so the blend can mount every claim where it chooses.
"""
from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from datasetprep.blending import ComponentData, TokenizerFacts
from datasetprep.blendspec import BlendComponent
from datasetprep.spec import DatasetPrepStatus, OutputFileStatus, parse_spec

from datasetprep_operator.status import condition, read_status

Verdict = Literal["waiting", "stalled"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a component cannot be blended now: ``waiting`` (it is being made; the blend follows by itself) or
    ``stalled`` (someone must act: create it, fix it, name a text key)."""

    component: str
    verdict: Verdict
    message: str


def summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator's DatasetPrep index keeps of each one for the blends: metadata, spec and the status
    without kopf's bookkeeping and live progress."""
    meta = body.get("metadata") or {}
    status = {k: v for k, v in (body.get("status") or {}).items() if k not in ("kopf", "progress")}
    return {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation")},
            "spec": dict(body.get("spec") or {}), "status": status}


def component_data(comp: BlendComponent, body: Mapping[str, Any] | None) -> ComponentData | Problem:
    """The blend's view of one component, from its DatasetPrep (None: there is none)."""
    name = comp.label
    if body is None:
        return Problem(name, "stalled", f"DatasetPrep {comp.dataset_prep} does not exist in this namespace")
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError:
        return Problem(name, "stalled", f"DatasetPrep {comp.dataset_prep} has an invalid spec")
    keys = list(spec.source.text_keys)
    key = comp.text_key or (keys[0] if len(keys) == 1 else None)
    if key is None:
        return Problem(name, "stalled", f"DatasetPrep {comp.dataset_prep} has the text keys {', '.join(keys)}: "
                       f"name one with textKey")
    if key not in keys:
        return Problem(name, "stalled", f"DatasetPrep {comp.dataset_prep} has no text key {key!r} "
                       f"(it has {', '.join(keys)})")
    status = read_status(body.get("status"))
    generation = (body.get("metadata") or {}).get("generation")
    verdict = _readiness(comp.dataset_prep, status, generation)
    if verdict is not None:
        return dataclasses.replace(verdict, component=name)
    output = status.output
    assert output is not None  # _readiness checked
    entry = next((f for f in output.files or () if f.key == key), None)
    if entry is None or entry.tokens is None or (not entry.prefix and not entry.blend_file):
        return Problem(name, "stalled", f"DatasetPrep {comp.dataset_prep}'s status does not describe its "
                       f"{key!r} output (made by an older operator?): change its spec to run it again")
    return _data(comp.dataset_prep, key, generation, spec.output.mount_path, spec.append_eod, output, entry,
                 claim=output.claim_name or spec.output.claim_name)


def _readiness(name: str, status: DatasetPrepStatus, generation: int | None) -> Problem | None:
    """None when the DatasetPrep is Ready for its current generation with an output to blend."""
    ready = condition(status, "Ready")
    stalled = condition(status, "Stalled")
    current = status.observed_generation == generation
    if current and stalled is not None and stalled.status == "True":
        return Problem(name, "stalled", f"DatasetPrep {name} is Stalled: {stalled.message}")
    if not (current and ready is not None and ready.status == "True" and ready.observed_generation == generation
            and status.output is not None):
        doing = f"{status.phase or 'not started'}" + (f", {status.progress.summary}" if status.progress
                                                      and status.progress.summary else "")
        return Problem(name, "waiting", f"DatasetPrep {name} is not Ready for generation {generation} ({doing})")
    return None


def _data(name: str, key: str, generation: int | None, mount: str, append_eod: bool, output: Any,
          entry: OutputFileStatus, *, claim: str) -> ComponentData:
    def on_claim(path: str) -> str:
        return posixpath.relpath(path, mount)

    tok = output.tokenizer
    tokenizer = TokenizerFacts(type=tok.type, vocab_size=tok.vocab_size, eod_id=tok.eod_id,
                               fingerprint=tok.fingerprint, path=on_claim(tok.path) if tok.path else None) \
        if tok else TokenizerFacts()
    common = dict(name=name, text_key=key, generation=generation, claim=claim, tokens=entry.tokens,
                  documents=entry.documents, sequences=entry.sequences, dtype=entry.dtype or output.dtype,
                  tokenizer=tokenizer, append_eod=append_eod, mount_path=mount)
    if entry.blend_file:
        return ComponentData(**common, blend_file=on_claim(entry.blend_file),
                             shard_tokens=tuple(entry.shard_tokens) if entry.shard_tokens is not None else None)
    return ComponentData(**common, prefix=on_claim(entry.prefix))
