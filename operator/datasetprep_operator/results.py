"""The job's results as the operator reads them: from a termination message, or rebuilt from the
status of a Ready DatasetPrep whose output is reused. The format itself is :mod:`datasetprep.contract`."""
from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from datasetprep.contract import (Failed, JobResult, OutputFile, Published, TokenizerInfo, UnreadableResult,
                                  decode_result)
from datasetprep.naming import BLEND_SUFFIX
from datasetprep.spec import DatasetPrepStatus, OutputFileStatus, OutputTokenizerStatus, parse_spec

STATUS_MESSAGE_MAX = 1024
"""Characters of a job's error (or log tail) quoted in status and events."""


def read_result(message: str | None, *, fallback: str | None = None) -> JobResult:
    """Read the job's termination message defensively.

    Success is only ever taken from a well-formed result (:func:`datasetprep.contract.decode_result`).
    Anything else (a log tail that ``FallbackToLogsOnError`` put there, a message cut at Kubernetes'
    4 KiB limit, nothing at all) is a failure whose error is the best text there is.

    Args:
        message: ``state.terminated.message`` of the job container, if any.
        fallback: text to report when the message says nothing usable (e.g. a log tail).
    """
    text = (message or "").strip()
    if text.startswith("{"):
        try:
            result = decode_result(text)
        except UnreadableResult as exc:
            if exc.success:
                return Failed(error=f"the job reported success with an unreadable result: {exc}", kind="internal")
        else:
            if not isinstance(result, Failed):
                return result
            if result.error.strip():
                return result.model_copy(update={"error": _clip(result.error.strip())})
    if text:
        return Failed(error=_clip(text, tail=True))
    if fallback and fallback.strip():
        return Failed(error=_clip(fallback.strip(), tail=True))
    return Failed(error="the job left no termination message and no log")


def _clip(text: str, *, tail: bool = False) -> str:
    """Keep status messages short: the end of a log tail, the start of an error."""
    if len(text) <= STATUS_MESSAGE_MAX:
        return text
    return "..." + text[-(STATUS_MESSAGE_MAX - 3):] if tail else text[: STATUS_MESSAGE_MAX - 3] + "..."


def reused_result(source: Mapping[str, Any]) -> Published | None:
    """What the job of a Ready DatasetPrep reported, rebuilt from its status (for reusing its output).

    Paths in ``status.output`` are as that resource's training pods mount the claim; they are turned
    back into paths on the volume, so the reusing resource's own ``output.mountPath`` applies to them.
    None when the status is not complete enough to point at.
    """
    try:
        spec = parse_spec(dict(source.get("spec") or {}))
        status = DatasetPrepStatus.read(source.get("status"))
    except ValidationError:
        return None
    output = status.output
    if output is None or not output.files:
        return None
    mount = spec.output.mount_path

    def on_volume(path: str) -> str:
        return posixpath.relpath(path, mount)

    def entry(f: OutputFileStatus) -> OutputFile:
        counts = {"key": f.key, "documents": f.documents, "sequences": f.sequences, "tokens": f.tokens,
                  "dtype": f.dtype}
        if f.blend_file:  # kept shards: the prefix is a name, not a file
            blend = on_volume(f.blend_file)
            return OutputFile(prefix=blend.removesuffix(BLEND_SUFFIX), blend_file=blend, shards=f.shards,
                              blend_weights=f.shard_tokens, **counts)
        return OutputFile(prefix=on_volume(f.prefix), bin_sha256=f.bin_sha256, idx_sha256=f.idx_sha256, **counts)

    tok = output.tokenizer or OutputTokenizerStatus()
    try:
        return Published(
            outputs=tuple(entry(f) for f in output.files), reused=True,
            tokenizer=TokenizerInfo(type=tok.type, path=on_volume(tok.path) if tok.path else None,
                                    vocab_size=tok.vocab_size, eod_id=tok.eod_id, fingerprint=tok.fingerprint),
            fingerprint=output.fingerprint, resolved_revision=status.resolved_revision)
    except (ValidationError, TypeError, ValueError):  # e.g. a merged file without a prefix
        return None
