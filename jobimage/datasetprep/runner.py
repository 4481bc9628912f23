"""Run a DatasetPrep spec on one machine: the job pods and ``datasetprep run -f`` both come here.

The spec's paths are resolved on its :class:`~datasetprep.volumes.Volumes`; the Hub source and
tokenizer are fetched (with the :class:`~datasetprep.settings.Settings` made at the entry point); the
pipeline does the step the :class:`~datasetprep.contract.RunPlan` names.

Idempotence: the output's manifest records a *fingerprint* of the work
(:func:`datasetprep.hashes.work_fingerprint`). A run whose fingerprint matches a published output
reuses it without tokenizing anything; one that differs replaces it atomically at the end (in the
operator) or is refused without ``overwrite`` (locally).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import chunks, layout, ownership, pipeline, publish, readers, tokenization
from .chunks import InputStat
from .contract import Deleted, Manifest, OutputFile, Published, RunPlan, ShardDone, TokenizerInfo
from .errors import BinarizeError, InputError
from .hashes import work_fingerprint
from .limits import DEFAULT_MAX_DOCUMENT_BYTES
from .pipeline import Provenance, Request
from .settings import Settings
from .spec import DatasetPrepSpec
from .stats import Stats
from .volumes import HeldFolder, Volumes

Log = Callable[[str], None]
STREAM_BATCH_BYTES = 4 << 20


def resolve_tokenizer(spec: DatasetPrepSpec, vols: Volumes, token: str | None, settings: Settings,
                      log: Log) -> tuple[tokenization.TokenizerConfig, Path | None]:
    """The tokenizer's configuration, and its file (fetched from the Hub into the output claim's state)."""
    t = spec.tokenizer
    if t.type == "null":
        return tokenization.resolve_config("null", None, vocab_size=t.vocab_size, eod_id=t.eod_id), None
    if t.path is not None:
        what = "spec.tokenizer.path.path"
        path = vols.path(t.path.claim_name, t.path.path, what)
        if path.is_dir():  # a tokenizer folder: every file in it is read from the claim too
            for entry in sorted(path.iterdir()):
                vols.confine(t.path.claim_name, entry, what)
    else:
        from . import hub

        path, sha = hub.fetch_tokenizer(t.hub, vols.state("tokenizers"), token, hub=settings.hub)
        path = vols.confine(None, path, f"the fetched tokenizer of spec.tokenizer.hub ({t.hub.repo})")
        log(f"tokenizer {t.hub.repo}@{t.hub.revision} resolved to {sha}: {path}")
    cfg = tokenization.resolve_config(t.type, path, eod_id=t.eod_id, add_special_tokens=t.add_special_tokens)
    return cfg, path


def resolve_inputs(spec: DatasetPrepSpec, vols: Volumes, token: str | None, settings: Settings, log: Log,
                   content_hash: bool = True) -> tuple[Any, dict[str, Any], dict[str, InputStat]]:
    """Local data files (or, streaming, the resolved Hub dataset), the source's identity, and the
    files' identities taken before anything read them (the run holds them to those to its end).

    Every file, glob match included, is resolved and must lie on its claim (no link out of it).
    ``content_hash``: identify files on a volume by the sha256 of their bytes (one read of the whole
    input); shard pods skip it (each would read everything) and identify them by path, size and mtime.
    """
    s = spec.source
    if s.files is not None:
        what = "spec.source.files.paths"
        root = vols.root(s.files.claim_name, what)
        files = [vols.confine(s.files.claim_name, p, what) for p in readers.expand_inputs(s.files.paths, root)]
        snap = chunks.snapshot(files)
        ident: dict[str, Any] = {"files": [os.path.relpath(p, root) for p in files]}
        if content_hash:
            ident["sha256"] = pipeline.files_digest(files)
        else:
            ident["stat"] = [[snap[os.fspath(p)].size, snap[os.fspath(p)].mtime_ns] for p in files]
        return files, ident, snap
    from . import hub

    cache = vols.state("hub-cache")
    resolved = hub.resolve_dataset(s.hub, token, cache_dir=cache, hub=settings.hub)
    log(f"dataset {s.hub.repo} ({s.hub.subset or 'default'}/{s.hub.split}) at {s.hub.revision} "
        f"resolved to {resolved.sha}")
    identity = {"hub": s.hub.repo, "revision": resolved.sha, "subset": s.hub.subset, "split": s.hub.split,
                "data_files": s.hub.data_files, "files": [f.path for f in resolved.files]}
    if s.hub.streaming:
        return resolved, identity, {}  # read over the network while tokenizing; nothing downloaded
    what = f"the Hub cache of spec.source.hub ({s.hub.repo})"
    vols.confine(None, hub.dataset_cache_dir(cache, resolved), what)
    files = [vols.confine(None, p, what) for p in hub.download_dataset(resolved, cache, token, hub=settings.hub)]
    return files, identity, chunks.snapshot(files)


def _stream_batches(resolved: Any, token: str | None, keys: tuple[str, ...], settings: Settings,
                    batch_bytes: int = STREAM_BATCH_BYTES,
                    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> Iterator[tuple[list, int]]:
    """Group streamed records into batches of about ``batch_bytes`` of text."""
    from . import hub

    recs: list = []
    size = n = 0
    for row in hub.iter_streaming_records(resolved, token, columns=list(keys), hub=settings.hub,
                                          max_document_bytes=max_document_bytes):
        n += 1
        vals = []
        for k in keys:
            v = row.get(k)
            if not isinstance(v, (str, list)):
                raise InputError(f"streamed record {n}: field {k!r} is "
                                 f"{'missing' if k not in row else type(v).__name__}, expected a string")
            vals.append(v)
            size += len(v) if isinstance(v, str) else sum(map(len, v))
        recs.append(tuple(vals))
        if size >= batch_bytes:
            yield recs, size
            recs, size = [], 0
    if recs:
        yield recs, size


def run_spec(spec: DatasetPrepSpec, volumes: Mapping[str, str | Path], *, plan: RunPlan | None = None,
             settings: Settings | None = None, token: str | None = None, workers: int | None = None,
             overwrite: bool = False, progress: Callable[[Stats], None] | None = None,
             log: Log = lambda m: None, who: str = "datasetprep run") -> Published | ShardDone:
    """Do one step of the work (``plan``, default: all of it here); returns the job's result, paths
    relative to the output claim. See :class:`~datasetprep.contract.RunPlan` for the steps.

    ``settings`` are made by the entry point; a caller that passes none gets the environment's.
    ``who`` names this run to another one that finds the prefix busy.
    """
    plan = plan or RunPlan.local(spec)
    settings = settings or Settings.from_env()
    if plan.step == "delete":
        raise BinarizeError("the delete step is delete_output's, not run_spec's")
    vols = Volumes(spec, volumes)
    prefix = vols.output_prefix
    if spec.source.hub is not None or spec.tokenizer.hub is not None:
        from . import hub

        # fail fast on gated/missing repos before anything heavy (works offline from the cache)
        hub.preflight(spec, token, cache_dir=vols.state("hub-cache"), tokenizer_dir=vols.state("tokenizers"),
                      hub=settings.hub)
    tok_cfg, tok_path = resolve_tokenizer(spec, vols, token, settings, log)
    # Shard pods, and every step of a kept-shards run, identify files on a volume by path, size and
    # mtime: a content hash would read the whole input once more.
    inputs, identity, snap = resolve_inputs(spec, vols, token, settings, log,
                                            content_hash=plan.step != "shard" and not plan.keep_shards)
    fingerprint = work_fingerprint(identity, tok_cfg.fingerprint(), spec)
    with _held_output(vols, prefix, create=True) as held, held.messages():
        log = held.showing(log)
        at = held.path / prefix.name  # the prefix in the held folder: nothing below it can be redirected
        req = Request(
            inputs=inputs if isinstance(inputs, list) else [], output_prefix=os.fspath(at), tokenizer=tok_cfg,
            keys=tuple(spec.source.text_keys), append_eod=spec.append_eod, workers=workers or spec.workers,
            overwrite=True, progress=progress, input_sha256=identity.get("sha256"), chunk_bytes=settings.chunk_bytes,
            max_document_bytes=spec.max_document_bytes,
            provenance=Provenance(fingerprint=fingerprint, source=identity,
                                  tokenizer_file=os.path.relpath(tok_path, vols.output_root) if tok_path else None),
            root=vols.output_root, claim=vols.output_claim, held=held, input_snapshot=snap,
            resume_check=settings.resume_check, lock_wait=settings.lock_wait, who=who, log=log,
        )
        with pipeline.holding(req, shared=plan.step == "shard"):  # a cut publish is finished before we look
            existing = _reusable(at, fingerprint, overwrite, plan, log)
            done = existing if existing is not None else _work(req, plan, inputs, spec, token, settings)
        held.check(then="what the run wrote is in the folder it held, not at spec.output.prefix")
    if isinstance(done, ShardDone):
        _log_shard(done, prefix, log)
        return done.model_copy(update={"fingerprint": fingerprint})
    return _result(done, prefix, vols.output_root, tok_path, reused=existing is not None)


def _work(req: Request, plan: RunPlan, inputs: Any, spec: DatasetPrepSpec, token: str | None,
          settings: Settings) -> Manifest | ShardDone:
    """The step ``plan`` names, on local files or (``inputs`` a resolved Hub dataset) streamed."""
    if isinstance(inputs, list):
        return pipeline.execute(req, plan)
    if plan.step != "all" or plan.shards > 1:
        raise BinarizeError("source.hub.streaming cannot be sharded: set shards: 1, or streaming: false")
    return pipeline.run_stream(req, _stream_batches(inputs, token, req.keys, settings,
                                                    max_document_bytes=spec.max_document_bytes),
                               bytes_hint=getattr(inputs, "total_bytes", 0) or 0)


def _held_output(vols: Volumes, prefix: Path, *, create: bool) -> HeldFolder:
    """The output folder, held for the run (made first with ``create``)."""
    try:
        return vols.hold_output(create=create)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            raise
        raise BinarizeError(f"cannot {'create' if create else 'open'} output folder {prefix.parent}: "
                            f"{e.strerror}") from None


def _reusable(prefix: Path, fingerprint: str, overwrite: bool, plan: RunPlan, log: Log) -> Manifest | None:
    """The published output, when it is this very work and intact (the caller holds the prefix);
    an output of other work is refused unless ``overwrite``."""
    if plan.step == "shard":
        return None
    existing = layout.read_manifest(layout.manifest_path(prefix))
    if existing and existing.fingerprint == fingerprint and layout.outputs_intact(prefix, existing):
        log(f"output {prefix} is up to date (fingerprint {fingerprint[:12]}): reused, nothing to do")
        layout.remove_stale_work_dirs(prefix, None)  # e.g. of a run killed right after its publish
        return existing
    if existing and not overwrite:
        raise BinarizeError(
            f"{layout.manifest_path(prefix)} exists and was made from different inputs or settings; "
            "choose another output prefix, or pass --overwrite to replace it"
        )
    return None


def _log_shard(done: ShardDone, prefix: Path, log: Log) -> None:
    if done.already_published:
        log(f"shard {done.shard}/{done.shards}: already published by an earlier attempt, nothing to do")
        return
    published = f", published as {prefix}_shard{done.shard:05d}_*" if done.published else ""
    log(f"shard {done.shard}/{done.shards}: {done.chunks} chunks ({done.chunks_reused} reused from "
        f"an earlier attempt), {done.documents:,} documents{published}")


def delete_output(spec: DatasetPrepSpec, volumes: Mapping[str, str | Path], log: Log = lambda m: None, *,
                  lock_wait: float = 0.0, who: str = "datasetprep job (delete data)") -> Deleted:
    """Delete this spec's published dataset and unfinished work (``spec.deleteDataOnDelete``): only
    files our own manifests list that still resolve inside the output claim (the output folder is
    confined first: a link planted in ``output.prefix`` since the run refuses the clean-up)."""
    vols = Volumes(spec, volumes)
    prefix = vols.output_prefix
    try:
        held = _held_output(vols, prefix, create=False)
    except FileNotFoundError:
        log(f"{prefix.parent} does not exist: nothing to delete")
        return Deleted(deleted_files=0, deleted_bytes=0)
    with held, held.messages():
        log = held.showing(log)
        at = held.path / prefix.name
        with ownership.PrefixLock(held.path, prefix.name, wait=lock_wait, who=who, log=log):
            held.check(then="nothing was deleted")
            publish.recover(at, log)
            files, size = layout.remove_output(at, spec.source.text_keys, root=vols.output_root, log=log)
        held.check(then=f"what was deleted ({files} files) was in the folder the run held, nothing elsewhere")
    log(f"deleted {files} files ({size:,} bytes) of {prefix}")
    return Deleted(deleted_files=files, deleted_bytes=size)


def _result(manifest: Manifest, prefix: Path, out_root: Path, tok_path: Path | None, reused: bool) -> Published:
    """The job's result for a published ``manifest``: paths relative to the output claim."""
    rel_tok = None
    if tok_path is not None:
        try:
            rel_tok = os.path.relpath(tok_path, out_root)
        except ValueError:
            rel_tok = os.fspath(tok_path)

    def rel(name: str) -> str:
        return os.path.relpath(prefix.parent / name, out_root)

    outputs = []
    for o in manifest.outputs:
        counts = {"key": o.key, "prefix": rel(o.prefix), "documents": o.documents, "sequences": o.sequences,
                  "tokens": o.tokens, "dtype": o.dtype}
        if manifest.layout == "shards":
            # shard i is ``{prefix}_shard{i:05d}_{key}_document``; an empty one has weight 0 and is
            # left out of the blend list
            shards = o.shards or []
            outputs.append(OutputFile(**counts, blend_file=rel(o.blend_file or ""), shards=len(shards),
                                      blend_weights=tuple(s.tokens if s.sequences else 0 for s in shards)))
        else:
            outputs.append(OutputFile(**counts, bin_sha256=o.bin_sha256, idx_sha256=o.idx_sha256))
    tok = manifest.tokenizer
    return Published(
        reused=reused, fingerprint=manifest.fingerprint, resolved_revision=(manifest.source or {}).get("revision"),
        outputs=tuple(outputs),
        tokenizer=TokenizerInfo(type=tok.type, path=rel_tok, vocab_size=tok.vocab_size, eod_id=tok.eod_id,
                                fingerprint=tok.fingerprint))
