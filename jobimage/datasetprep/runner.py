"""Run a DatasetPrep spec on one machine: the job pods and ``datasetprep run -f`` both come here.

Volumes are a mapping claim name → local folder (in a pod: the mount paths; locally: folders the
user names with ``--volume claim=DIR``, default the current folder for every claim).

Idempotence: the output's manifest records a *fingerprint* of the work (source identity, tokenizer
fingerprint, keys, EOD, format version).  A run whose fingerprint matches a published output
reuses it without tokenizing anything; one that differs replaces it atomically at the end (in the
operator) or is refused without ``overwrite`` (locally).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from . import pipeline, readers, tokenization
from .pipeline import BinarizeError, Request
from .spec import DatasetPrepSpec

STATE_DIR = ".datasetprep"


def _volume(volumes: dict[str, Path], claim: str | None, default: str, what: str) -> Path:
    name = claim or default
    if name not in volumes:
        raise BinarizeError(f"{what} uses claim {name!r}, which is not mounted (mounted: {', '.join(volumes) or 'none'})")
    return Path(volumes[name])


def work_fingerprint(source_identity: dict, tok_cfg: tokenization.TokenizerConfig, spec: DatasetPrepSpec) -> str:
    """The content address of a run: same fingerprint ⇒ same bytes."""
    doc = {
        "format_version": pipeline.FORMAT_VERSION,
        "source": source_identity,
        "keys": list(spec.source.text_keys),
        "tokenizer": tok_cfg.fingerprint(),
        "append_eod": spec.append_eod,
    }
    if spec.keep_shards:  # same tokens, other files: a blend of N shard datasets
        doc["layout"] = {"keep_shards": spec.shards}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def resolve_tokenizer(spec: DatasetPrepSpec, volumes: dict[str, Path], token: str | None,
                      log: Callable[[str], None]) -> tuple[tokenization.TokenizerConfig, Path | None]:
    t = spec.tokenizer
    out_root = Path(volumes[spec.output.claim_name])
    if t.type == "null":
        return tokenization.resolve_config("null", None, vocab_size=t.vocab_size, eod_id=t.eod_id), None
    if t.path is not None:
        root = _volume(volumes, t.path.claim_name, spec.output.claim_name, "tokenizer.path")
        path = root / t.path.path
    else:
        from . import hub

        dest = out_root / STATE_DIR / "tokenizers"
        path, sha = hub.fetch_tokenizer(t.hub, dest, token)
        path = Path(path)
        log(f"tokenizer {t.hub.repo}@{t.hub.revision} resolved to {sha}: {path}")
    cfg = tokenization.resolve_config(t.type, path, eod_id=t.eod_id, add_special_tokens=t.add_special_tokens)
    return cfg, Path(path)


def resolve_inputs(spec: DatasetPrepSpec, volumes: dict[str, Path], token: str | None,
                   log: Callable[[str], None], content_hash: bool = True) -> tuple[list[Path], dict]:
    """Local data files and the source's identity.  ``content_hash``: identify files on a volume by
    the sha256 of their bytes (one read of the whole input); shard pods skip it (each would read
    everything) and identify them by path, size and mtime."""
    s = spec.source
    out_root = Path(volumes[spec.output.claim_name])
    if s.files is not None:
        root = _volume(volumes, s.files.claim_name, spec.output.claim_name, "source.files")
        files = readers.expand_inputs(s.files.paths, root)
        ident = {"files": [os.path.relpath(p, root) for p in files]}
        if content_hash:
            ident["sha256"] = pipeline.files_digest(files)
        else:
            ident["stat"] = [[p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        return files, ident
    from . import hub

    resolved = hub.resolve_dataset(s.hub, token, cache_dir=out_root / STATE_DIR / "hub-cache")
    log(f"dataset {s.hub.repo} ({s.hub.subset or 'default'}/{s.hub.split}) at {s.hub.revision} "
        f"resolved to {resolved.sha}")
    identity = {"hub": s.hub.repo, "revision": resolved.sha, "subset": s.hub.subset, "split": s.hub.split,
                "data_files": s.hub.data_files, "files": [f.path for f in resolved.files]}
    if s.hub.streaming:
        return resolved, identity  # read over the network while tokenizing; nothing downloaded
    files = hub.download_dataset(resolved, out_root / STATE_DIR / "hub-cache", token)
    return files, identity


def _stream_batches(resolved, token, keys: tuple[str, ...], batch_bytes: int = 4 << 20):
    """Group streamed records into batches of about ``batch_bytes`` of text."""
    from . import hub
    from .readers import InputError

    recs, size, n = [], 0, 0
    for row in hub.iter_streaming_records(resolved, token, columns=list(keys)):
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


def read_manifest(prefix: Path) -> dict | None:
    return pipeline.read_json(pipeline.manifest_path(os.fspath(prefix)))


def outputs_intact(prefix: Path, manifest: dict) -> bool:
    """The published files still match the manifest's sizes (a cheap check before reuse)."""
    outputs = manifest.get("outputs") or []
    if manifest.get("layout") == "shards":
        return bool(outputs) and all(
            (prefix.parent / o.get("blend_file", "")).is_file()
            and pipeline.files_intact(prefix.parent, o.get("shards") or [])
            for o in outputs)
    return bool(outputs) and pipeline.files_intact(prefix.parent, outputs)


def run_spec(spec: DatasetPrepSpec, volumes: dict[str, Path], *, token: str | None = None,
             workers: int | None = None, overwrite: bool = False, progress=None,
             log: Callable[[str], None] = lambda m: None, mode: str = "all", shard_index: int | None = None) -> dict:
    """Do the job; returns a result dict (the manifest plus ``reused``/paths facts).

    ``mode``: ``all`` (plan, tokenize, assemble, publish), ``shard`` (tokenize slice ``shard_index``
    of ``spec.shards``; with ``keepShards`` publish it as its own dataset, else publish nothing) or
    ``merge`` (after every shard: assemble and publish, or with ``keepShards`` write the blend list).
    """
    volumes = {k: Path(v) for k, v in volumes.items()}
    out_root = _volume(volumes, spec.output.claim_name, spec.output.claim_name, "output")
    prefix = out_root / spec.output.prefix
    if spec.source.hub is not None or spec.tokenizer.hub is not None:
        from . import hub

        # fail fast on gated/missing repos before anything heavy (works offline from the cache)
        hub.preflight(spec, token, cache_dir=out_root / STATE_DIR / "hub-cache",
                      tokenizer_dir=out_root / STATE_DIR / "tokenizers")
    tok_cfg, tok_path = resolve_tokenizer(spec, volumes, token, log)
    keep = spec.shards if spec.keep_shards else 0
    # Shard pods, and every step of a kept-shards run, identify files on a volume by path, size and
    # mtime: a content hash would read the whole input once more.
    inputs, identity = resolve_inputs(spec, volumes, token, log, content_hash=mode != "shard" and not keep)
    fingerprint = work_fingerprint(identity, tok_cfg, spec)
    existing = read_manifest(prefix) if mode != "shard" else None
    if existing and existing.get("fingerprint") == fingerprint and outputs_intact(prefix, existing):
        log(f"output {prefix} is up to date (fingerprint {fingerprint[:12]}): reused, nothing to do")
        return _result(existing, prefix, out_root, tok_path, reused=True)
    if existing and not overwrite:
        raise BinarizeError(
            f"{pipeline.manifest_path(os.fspath(prefix))} exists and was made from different inputs or settings; "
            "choose another output prefix, or pass --overwrite to replace it"
        )
    chunk_mib = os.environ.get("DATASETPREP_CHUNK_MIB")  # advanced: work-unit size (checkpoint granularity)
    req = Request(
        chunk_bytes=int(float(chunk_mib) * 2**20) if chunk_mib else None,
        inputs=inputs if isinstance(inputs, list) else [], output_prefix=os.fspath(prefix), tokenizer=tok_cfg, keys=tuple(spec.source.text_keys),
        append_eod=spec.append_eod, workers=workers or spec.workers, overwrite=True, progress=progress,
        input_sha256=identity.get("sha256"), keep_shards=keep,
        manifest_extra={"fingerprint": fingerprint, "source": identity,
                        "tokenizer_file": os.path.relpath(tok_path, out_root) if tok_path else None},
    )
    if not isinstance(inputs, list):  # Hub streaming
        if mode != "all" or spec.shards > 1:
            raise BinarizeError("source.hub.streaming cannot be sharded: set shards: 1, or streaming: false")
        manifest = pipeline.run_stream(req, _stream_batches(inputs, token, tuple(spec.source.text_keys)),
                                       bytes_hint=getattr(inputs, "total_bytes", 0) or 0)
        return _result(manifest, prefix, out_root, tok_path, reused=False)
    if mode == "shard":
        if shard_index is None or not 0 <= shard_index < spec.shards:
            raise BinarizeError(f"shard index {shard_index} is outside 0..{spec.shards - 1}")
        info = pipeline.run(req, shard=(shard_index, spec.shards))
        if info.get("already_published"):
            log(f"shard {shard_index}/{spec.shards}: already published by an earlier attempt, nothing to do")
        else:
            log(f"shard {shard_index}/{spec.shards}: {info['chunks']} chunks ({info['chunks_reused']} reused from "
                f"an earlier attempt), {info['documents']:,} documents"
                + (f", published as {pipeline.shard_prefix(os.fspath(prefix), shard_index)}_*" if keep else ""))
        return {"ok": True, "reused": False, "fingerprint": fingerprint, **info}
    if mode == "all" and keep:  # one machine does every shard in turn, then the blend list
        _, chunks = pipeline.plan(req)
        whole = {"bytes_total": sum(c.size for c in chunks), "chunks_total": len(chunks)}
        offsets = {"bytes_done": 0, "documents": 0, "tokens": 0, "chunks_done": 0, "chunks_reused": 0}
        started = None

        def overall(stats: dict) -> None:  # one bar for the whole run, not one per shard
            nonlocal started
            started = started or stats["started"]
            if progress is not None:
                progress({**stats, **{k: stats[k] + v for k, v in offsets.items()}, "started": started, **whole})

        for i in range(spec.shards):
            last: dict = {}
            req.progress = lambda st: (last.update(st), overall(st))
            pipeline.run(req, shard=(i, spec.shards))
            for k in offsets:
                offsets[k] += last.get(k, 0)
        req.progress = progress
        mode = "merge"
    manifest = pipeline.finish(req) if mode == "merge" else pipeline.run(req)
    return _result(manifest, prefix, out_root, tok_path, reused=False)


def delete_output(spec: DatasetPrepSpec, volumes: dict[str, Path], log: Callable[[str], None] = lambda m: None) -> dict:
    """Delete this spec's published dataset and unfinished work (``spec.deleteDataOnDelete``)."""
    volumes = {k: Path(v) for k, v in volumes.items()}
    out_root = _volume(volumes, spec.output.claim_name, spec.output.claim_name, "output")
    prefix = out_root / spec.output.prefix
    if not prefix.parent.is_dir():
        log(f"{prefix.parent} does not exist: nothing to delete")
        return {"ok": True, "deleted_files": 0, "deleted_bytes": 0}
    removed = pipeline.remove_output(os.fspath(prefix), spec.source.text_keys)
    log(f"deleted {removed['files']} files ({removed['bytes']:,} bytes) of {prefix}")
    return {"ok": True, "deleted_files": removed["files"], "deleted_bytes": removed["bytes"]}


def _result(manifest: dict, prefix: Path, out_root: Path, tok_path: Path | None, reused: bool) -> dict:
    tok = manifest["tokenizer"]
    rel_tok = None
    if tok_path is not None:
        try:
            rel_tok = os.path.relpath(tok_path, out_root)
        except ValueError:
            rel_tok = os.fspath(tok_path)
    def rel(name: str) -> str:
        return os.path.relpath(prefix.parent / name, out_root)

    outputs = []
    for o in manifest["outputs"]:
        entry = {"key": o["key"], "prefix": rel(o["prefix"]), "documents": o["documents"],
                 "sequences": o["sequences"], "tokens": o["tokens"], "dtype": o["dtype"]}
        if manifest.get("layout") == "shards":
            # shard i is ``{prefix}_shard{i:05d}_{key}_document``; an empty one has weight 0 and is
            # left out of the blend list
            entry.update({"blend_file": rel(o["blend_file"]), "shards": len(o["shards"]),
                          "blend_weights": [s["tokens"] if s["sequences"] else 0 for s in o["shards"]]})
        else:
            entry.update({"bin_sha256": o["bin_sha256"], "idx_sha256": o["idx_sha256"]})
        outputs.append(entry)
    return {
        "ok": True,
        "reused": reused,
        "fingerprint": manifest.get("fingerprint"),
        "resolved_revision": (manifest.get("source") or {}).get("revision"),
        "outputs": outputs,
        "tokenizer": {"type": tok["type"], "path": rel_tok, "vocab_size": tok["vocab_size"], "eod_id": tok["eod_id"]},
        "manifest": manifest,
    }
