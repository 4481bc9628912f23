"""Every content hash of datasetprep, in one place: what enters each, and why.

Four hashes name four different things; each leaves out what must not make a difference to it.

========================  =========================================  ==========================================
hash                      names                                      a change of ... makes a new one
========================  =========================================  ==========================================
:func:`spec_hash`         the run: Job ``<name>-<hash>`` (8 hex)     any spec field that is not at its default,
                                                                     except ``deleteDataOnDelete``; a new
                                                                     value of the ``datasetprep.io/retry``
                                                                     annotation (a retry of the same spec)
:func:`reuse_key`         the bytes a spec produces, before it       source, text keys, tokenizer spec, EOD,
                          runs: ``status.reuseKey`` (32 hex); equal  output claim, kept-shards layout, format
                          keys: one resource points at the other's   version -- not prefix, mount path, workers,
                          output instead of running a Job            shards (merged), resources, image
:func:`work_fingerprint`  the bytes a run produced, once its         resolved source identity (Hub commit and
                          inputs are resolved: the manifest's        files, or the files' content/stat),
                          ``fingerprint``; equal: a rerun reuses     tokenizer *file* fingerprint, keys, EOD,
                          the published output                       kept-shards layout, format version
:func:`chunk_plan_key`    the work folder of one chunk plan          input paths, sizes and mtimes, tokenizer
                          (``.datasetprep-work-<name>-<key>``);      fingerprint, keys, EOD, level, format
                          equal: a restarted pod resumes its         version, the chunk plan -- not workers or
                          finished chunks                            shards (the plan does not depend on them)
========================  =========================================  ==========================================

The reuse key is decided from the spec alone (the operator has no access to the data); the work
fingerprint is its counterpart after the job resolved the inputs (a Hub branch to a commit, files
to their bytes). Bump :data:`FORMAT_VERSION` whenever the bytes written for the same input could
change: every hash but the Job name changes with it, so no old output is reused or resumed.

Standard library and the spec model only: the operator imports this module.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .spec import DatasetPrepSpec

FORMAT_VERSION = 1
"""The version of the bytes datasetprep writes for a given input (bump when they could change)."""
SPEC_HASH_LEN = 8
REUSE_KEY_LEN = 32
CHUNK_PLAN_KEY_LEN = 16

#: Spec fields that do not change what the Job does, so changing them does not start a new run.
_NOT_IN_SPEC_HASH = frozenset({"deleteDataOnDelete"})


def _sha256_canonical(doc: Any) -> str:
    """sha256 of compact, key-sorted, ASCII JSON."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def spec_hash(spec: DatasetPrepSpec, retry: str | None = None) -> str:
    """Short content hash of the run: everything in the spec that shapes the Job, and the retry (the
    Job name's suffix).

    Fields left at their defaults are left out, so a newer spec model that adds an optional field
    (or a manifest that spells a default out) does not relaunch finished work.

    Args:
        retry: the value of the resource's ``datasetprep.io/retry`` annotation, if it has one: each new
            value names a new run of the same spec (a resource without it keeps its Job name).
    """
    wire = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    doc = {k: v for k, v in wire.items() if k not in _NOT_IN_SPEC_HASH}
    if retry is not None:
        doc = {"spec": doc, "retry": retry}  # no spec field is named so: never equal to a plain spec's doc
    return _sha256_canonical(doc)[:SPEC_HASH_LEN]


def reuse_key(spec: DatasetPrepSpec) -> str:
    """Content address of what a spec produces: equal keys mean byte-identical data on the same claim.

    It covers the source (Hub repo, revision, subset, split and data files; or the files' claim and
    paths), the text keys, the tokenizer spec, ``appendEod``, the output claim and the format version --
    not the output prefix, the mount path, workers, shards or resources, which change where or how
    fast, not what. With ``keepShards`` the layout (N shard datasets and a blend list) is part of it:
    such an output is never handed to a resource that expects one merged dataset, or back. A Hub
    revision is taken as written (a branch is not resolved here) and files on a volume are trusted not
    to have changed; ``spec.reuse: Never`` opts out.
    """
    out_claim = spec.output.claim_name
    src = spec.source
    source: dict[str, Any] = {}  # exactly one of the two (the spec model checks)
    if src.hub is not None:
        source = {"hub": {"repo": src.hub.repo, "revision": src.hub.revision, "subset": src.hub.subset,
                          "split": src.hub.split, "dataFiles": src.hub.data_files}}
    if src.files is not None:
        source = {"files": {"claimName": src.files.claim_name or out_claim, "paths": list(src.files.paths)}}
    tok = spec.tokenizer.model_dump(by_alias=True, mode="json")
    if spec.tokenizer.path is not None:
        tok["path"]["claimName"] = spec.tokenizer.path.claim_name or out_claim
    doc = {"formatVersion": FORMAT_VERSION, "source": source, "textKeys": list(src.text_keys), "tokenizer": tok,
           "appendEod": spec.append_eod, "claimName": out_claim}
    if spec.keep_shards:  # the same tokens as N shard datasets and a blend list: other files to point at
        doc["keepShards"] = spec.shards
    return _sha256_canonical(doc)[:REUSE_KEY_LEN]


def work_fingerprint(source_identity: Mapping[str, Any], tokenizer_fingerprint: str, spec: DatasetPrepSpec) -> str:
    """The content address of a run once its inputs are resolved: same fingerprint, same bytes.

    Args:
        source_identity: the resolved source: a Hub repo's commit sha, subset, split and file list,
            or files on a volume by path and content sha256 (or size and mtime, see the runner).
        tokenizer_fingerprint: the tokenizer configuration's fingerprint (its files' content).
    """
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": dict(source_identity),
        "keys": list(spec.source.text_keys),
        "tokenizer": tokenizer_fingerprint,
        "append_eod": spec.append_eod,
    }
    if spec.keep_shards:  # same tokens, other files: a blend of N shard datasets
        doc["layout"] = {"keep_shards": spec.shards}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def chunk_plan_key(files: Iterable[str | os.PathLike], *, tokenizer_fingerprint: str, keys: Sequence[str],
                   append_eod: bool, level: str, chunks: Iterable[str]) -> str:
    """Names the work folder: same inputs (path, size, mtime), tokenizer, options and chunk plan, same
    folder, so a rerun after a crash resumes; anything else starts clean.

    Args:
        chunks: each chunk of the plan as a string (``Chunk.describe()`` with its stride and phase).
    """
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.realpath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps({"tok": tokenizer_fingerprint, "keys": list(keys), "eod": append_eod, "level": level,
                         "format": FORMAT_VERSION, "plan": list(chunks)}).encode())
    return h.hexdigest()[:CHUNK_PLAN_KEY_LEN]
