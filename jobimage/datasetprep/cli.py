"""The ``datasetprep`` command line.

* ``binarize``: a drop-in for Megatron-LM's ``tools/preprocess_data.py`` and NeMo's
  ``preprocess_data_for_megatron.py`` flags, writing the same bytes.
* ``inspect``: counts, dtype, length distribution, the first documents decoded.
* ``merge``: Megatron's ``merge_datasets.py``, streaming.
* ``run -f manifest.yaml``: run a DatasetPrep manifest on this machine, no cluster.
* ``job``: the Job pod entrypoint (used by the operator).
* ``operator``: run the Kubernetes operator.
* ``wait dsp/NAME`` / ``wait dsb/NAME``: wait until a DatasetPrep / DatasetBlend is Ready or Stalled (needs the
  ``operator`` extra).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from . import __version__
from .naming import BLEND_SUFFIX


def _die(msg: str, code: int = 1) -> int:
    print(f"datasetprep: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# binarize
# ---------------------------------------------------------------------------------------------


def add_binarize(sub) -> None:
    p = sub.add_parser(
        "binarize", help="JSONL/Parquet/Arrow → Megatron .bin/.idx (preprocess_data.py compatible)",
        description="Tokenize text records into Megatron-LM indexed datasets "
        "{output_prefix}_{key}_document.bin/.idx, byte-identical to Megatron-LM's preprocess_data.py.",
    )
    p.add_argument("--input", nargs="+", required=True,
                   help="input files, globs or save_to_disk folders (.jsonl/.json[.gz|.zst], .parquet, .arrow); "
                        "a path that exists is taken literally, even with [ ] * ? in its name")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="fields to tokenize (one output each)")
    p.add_argument("--tokenizer-type", default=None,
                   help="SentencePieceTokenizer | HuggingFaceTokenizer | TikTokenizer | NullTokenizer | auto "
                        "(or sentencepiece/huggingface/tiktoken/null). With NeMo's --tokenizer-library huggingface, "
                        "the model path, as NeMo takes it")
    p.add_argument("--tokenizer-library", default=None, help="NeMo's flag: sentencepiece | huggingface | tiktoken")
    p.add_argument("--tokenizer-model", default=None, help="tokenizer file or folder")
    p.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer vocabulary size")
    p.add_argument("--eod-id", type=int, default=None, help="override the end-of-document id")
    p.add_argument("--append-eod", action="store_true", help="append EOD to every non-empty document")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.add_argument("--partitions", type=int, default=1,
                   help="Megatron's --partitions: reproduce its round-robin document order (no files left behind)")
    p.add_argument("--keep-sequential-samples", action="store_true", help="with --partitions: keep input order")
    p.add_argument("--dataset-impl", default="mmap", help="accepted for compatibility; only mmap exists")
    p.add_argument("--split-sentences", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-hf-no-include-special-tokens", action="store_true",
                   help="HF: do not add post-processor special tokens (e.g. BOS)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--chunk-mib", type=float, default=None,
                   help="work unit size (advanced; default: input/64, between 1 and 16 MiB)")
    p.add_argument("--max-document-bytes", type=str, default=None, metavar="SIZE",
                   help="refuse a document (one JSONL line, or one row's text) larger than this, e.g. 512MiB "
                        "(default 256MiB); a corrupt file without line ends then fails fast instead of filling memory")
    p.add_argument("--no-native", action="store_true", help="never use the native BPE engine")
    p.set_defaults(func=cmd_binarize)


def _tokenizer_args(a) -> tuple[str, str | None]:
    kind = a.tokenizer_type
    path = a.tokenizer_model
    if a.tokenizer_library:
        lib = a.tokenizer_library.lower()
        if lib == "megatron":
            raise ValueError("--tokenizer-library megatron (GPT-2 vocab/merges files) is not supported; "
                             "convert to a tokenizer.json and use huggingface")
        if lib == "huggingface" and path is None and kind:
            path, kind = kind, "huggingface"  # NeMo passes the model name/path in --tokenizer-type
        else:
            kind = lib
    return kind or "auto", path


MAX_WORKERS = 1024
MAX_CHUNK_MIB = 4096
MAX_TOKEN_ID = 2**31 - 1


def output_prefix_problem(prefix: str, flag: str = "--output-prefix") -> str | None:
    """Why a path cannot be an output prefix (None if it can): it names files, not a folder."""
    name = os.path.basename(prefix)
    if not prefix or prefix.endswith(("/", os.sep)) or name in ("", ".", ".."):
        return (f"{flag} {prefix!r} names a folder, not a file prefix: outputs are {{prefix}}_{{key}}_document.bin/.idx, "
                f"so give e.g. {os.path.join(prefix.rstrip('/' + os.sep) or '.', 'dataset')!r}")
    return None


def _binarize_args_problem(a) -> str | None:
    """The first invalid flag value of ``binarize`` (with the fix), or None.  Also turns
    ``--max-document-bytes`` into bytes."""
    from .readers import MAX_PARTITIONS

    if not 1 <= a.workers <= MAX_WORKERS:
        return f"--workers must be between 1 and {MAX_WORKERS}, got {a.workers}"
    if not 1 <= a.partitions <= MAX_PARTITIONS:
        return (f"--partitions must be between 1 and {MAX_PARTITIONS} (Megatron-LM's round-robin order makes one "
                f"pass over the input per partition), got {a.partitions}")
    if a.chunk_mib is not None and not (math.isfinite(a.chunk_mib) and 0 < a.chunk_mib <= MAX_CHUNK_MIB):
        return f"--chunk-mib must be a number of MiB above 0 and at most {MAX_CHUNK_MIB}, got {a.chunk_mib}"
    if a.eod_id is not None and not 0 <= a.eod_id <= MAX_TOKEN_ID:
        return f"--eod-id must be a token id (0 to {MAX_TOKEN_ID}, within the tokenizer's vocabulary), got {a.eod_id}"
    if a.vocab_size is not None and not 1 <= a.vocab_size <= MAX_TOKEN_ID + 1:
        return f"--vocab-size must be between 1 and {MAX_TOKEN_ID + 1}, got {a.vocab_size}"
    try:
        a.max_document_bytes = parse_size(a.max_document_bytes, "--max-document-bytes")
    except ValueError as e:
        return str(e)
    return output_prefix_problem(a.output_prefix)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
          "g": 1000**3, "gb": 1000**3, "gib": 1 << 30}


def parse_size(text: str | None, flag: str) -> int:
    """``--max-document-bytes``: bytes, or a number with a unit (512MiB, 1GiB, 300MB); None: the default."""
    from .limits import DEFAULT_MAX_DOCUMENT_BYTES, MAX_MAX_DOCUMENT_BYTES, MIN_MAX_DOCUMENT_BYTES

    if text is None:
        return DEFAULT_MAX_DOCUMENT_BYTES
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{flag} {text!r} is not a size: give bytes or a number with a unit, e.g. 512MiB or 1GiB")
    n = int(float(m.group(1)) * _UNITS[unit])
    if not MIN_MAX_DOCUMENT_BYTES <= n <= MAX_MAX_DOCUMENT_BYTES:
        raise ValueError(f"{flag} {text!r} is outside {MIN_MAX_DOCUMENT_BYTES >> 10} KiB .. "
                         f"{MAX_MAX_DOCUMENT_BYTES >> 30} GiB")
    return n


def cmd_binarize(a) -> int:
    from . import tokenization

    if a.dataset_impl != "mmap":
        return _die(f"--dataset-impl {a.dataset_impl} is a legacy format; only mmap (MMIDIDX) is written", 2)
    if a.split_sentences:
        return _die("--split-sentences (NLTK sentence splitting) is not supported; give list-valued fields "
                    "instead: each list element becomes its own sequence", 2)
    problem = _binarize_args_problem(a)
    if problem:
        return _die(problem, 2)
    kind, path = _tokenizer_args(a)
    cfg = tokenization.resolve_config(kind, path, vocab_size=a.vocab_size, eod_id=a.eod_id,
                                      add_special_tokens=not a.tokenizer_hf_no_include_special_tokens,
                                      use_native=not a.no_native)
    tokenization.preload(cfg)  # built while the rest is imported and the run is prepared
    from . import layout, pipeline, progress, readers

    inputs = readers.expand_inputs(a.input)
    prog = progress.make(not a.no_progress)
    req = pipeline.Request(
        inputs=inputs, output_prefix=a.output_prefix, tokenizer=cfg, keys=tuple(a.json_keys),
        append_eod=a.append_eod, workers=a.workers, overwrite=a.overwrite,
        chunk_bytes=max(1, int(a.chunk_mib * 2**20)) if a.chunk_mib else None, partitions=a.partitions,
        keep_sequential=a.keep_sequential_samples, progress=prog,
        max_document_bytes=a.max_document_bytes, who=f"datasetprep binarize --output-prefix {a.output_prefix}",
        log=lambda m: print(m, file=sys.stderr),
    )
    try:
        m = pipeline.run(req)
    finally:
        if prog:
            prog.close()
    for o in m.outputs:
        print(f"wrote {Path(a.output_prefix).parent / o.prefix}.{{bin,idx}}: {o.documents:,} documents, "
              f"{o.sequences:,} sequences, {o.tokens:,} tokens ({o.dtype})")
    print(f"in {m.stats.seconds:.2f} s with {a.workers} worker(s); manifest {layout.manifest_path(a.output_prefix)}")
    return 0


# ---------------------------------------------------------------------------------------------
# inspect / merge
# ---------------------------------------------------------------------------------------------


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="counts, dtype, lengths and the first documents of a dataset")
    p.add_argument("prefix", help="dataset prefix (without .bin/.idx), or a kept-shards blend list (.blend.txt)")
    p.add_argument("--tokenizer-model", default=None, help="decode documents with this tokenizer")
    p.add_argument("--tokenizer-type", default="auto")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("-n", "--num-docs", type=int, default=3, help="documents to show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)


def inspect_dataset(prefix: str, n: int = 3, tok=None) -> dict:
    import numpy as np

    from .indexed import IndexedDataset
    from .publish import recover_dataset

    prefix = prefix[:-4] if prefix.endswith((".bin", ".idx")) else prefix
    recover_dataset(prefix, log=lambda m: print(f"datasetprep: {m}", file=sys.stderr))  # a cut publish
    ds = IndexedDataset(prefix)
    lens = ds.sequence_lengths.astype(np.int64)
    di = np.asarray(ds.document_indices)
    doc_seqs = np.diff(di)
    info = {
        "prefix": prefix, "dtype": ds.dtype.name, "documents": ds.num_documents, "sequences": ds.num_sequences,
        "tokens": ds.num_tokens, "empty_documents": int((doc_seqs == 0).sum()), "multimodal": ds.multimodal,
        "sequence_length": {} if not len(lens) else {
            "min": int(lens.min()), "mean": round(float(lens.mean()), 1),
            "p50": int(np.percentile(lens, 50)), "p90": int(np.percentile(lens, 90)),
            "p99": int(np.percentile(lens, 99)), "max": int(lens.max())},
        "first_documents": [],
    }
    for d in range(min(n, ds.num_documents)):
        ids = ds.document(d)
        entry = {"index": d, "tokens": int(len(ids)), "ids_head": [int(x) for x in ids[:16]]}
        if tok is not None:
            entry["text"] = tok.decode(ids)[:500]
        info["first_documents"].append(entry)
    return info


def cmd_inspect(a) -> int:
    from . import tokenization

    tok = None
    if a.tokenizer_model or (a.tokenizer_type and a.tokenizer_type.lower().startswith("null")):
        tok = tokenization.load_tokenizer(a.tokenizer_type, a.tokenizer_model, vocab_size=a.vocab_size)
    if a.prefix.endswith(BLEND_SUFFIX):
        return _inspect_blend(a, tok)
    info = inspect_dataset(a.prefix, a.num_docs, tok)
    if a.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"{info['prefix']}: {info['documents']:,} documents ({info['empty_documents']:,} empty), "
          f"{info['sequences']:,} sequences, {info['tokens']:,} tokens, dtype {info['dtype']}")
    if info["sequence_length"]:
        s = info["sequence_length"]
        print(f"sequence length: min {s['min']}, mean {s['mean']}, p50 {s['p50']}, p90 {s['p90']}, "
              f"p99 {s['p99']}, max {s['max']}")
    for d in info["first_documents"]:
        print(f"--- document {d['index']} ({d['tokens']} tokens) ids {d['ids_head']}")
        if "text" in d:
            print(d["text"])
    return 0


def _inspect_blend(a, tok) -> int:
    """A kept-shards blend list: every dataset it names, totals, and whether the weights are the
    datasets' token counts (as datasetprep writes them)."""
    from .indexed import IndexedDataset
    from .merge import read_blend

    shards = []
    for weight, prefix in read_blend(a.prefix):
        ds = IndexedDataset(prefix)
        shards.append({"prefix": prefix, "weight": weight, "documents": ds.num_documents,
                       "sequences": ds.num_sequences, "tokens": ds.num_tokens, "dtype": ds.dtype.name})
    info = {"blend": a.prefix, "datasets": len(shards),
            "documents": sum(s["documents"] for s in shards), "sequences": sum(s["sequences"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards), "dtypes": sorted({s["dtype"] for s in shards}),
            "weights_are_token_counts": all(s["weight"] == s["tokens"] for s in shards),
            "shards": shards, "first_documents": inspect_dataset(shards[0]["prefix"], a.num_docs, tok)["first_documents"]}
    if a.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"{a.prefix}: a blend of {info['datasets']} datasets, {info['documents']:,} documents, "
          f"{info['sequences']:,} sequences, {info['tokens']:,} tokens, dtype {', '.join(info['dtypes'])}; "
          f"weights {'= token counts' if info['weights_are_token_counts'] else 'are NOT the token counts'}")
    for s in shards:
        print(f"  {s['weight']:>14,.0f}  {s['prefix']}  ({s['documents']:,} documents, {s['tokens']:,} tokens)")
    for d in info["first_documents"]:
        print(f"--- document {d['index']} of the first dataset ({d['tokens']} tokens) ids {d['ids_head']}")
        if "text" in d:
            print(d["text"])
    return 0


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge datasets (like Megatron's merge_datasets.py), streaming")
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes in order, one folder (its pairs in lexicographic order), or one "
                   "blend list of kept shards (.blend.txt)")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)


def cmd_merge(a) -> int:
    from .merge import merge

    problem = output_prefix_problem(a.output_prefix)
    if problem:
        return _die(problem, 2)
    info = merge(a.input, a.output_prefix, a.overwrite)
    print(f"wrote {a.output_prefix}.{{bin,idx}}: {info['documents']:,} documents, {info['sequences']:,} sequences, "
          f"{info['tokens']:,} tokens ({info['dtype']}) from {len(info['inputs'])} inputs in {info['seconds']} s")
    return 0


# ---------------------------------------------------------------------------------------------
# run / job / operator
# ---------------------------------------------------------------------------------------------


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run a DatasetPrep manifest on this machine (no cluster)")
    p.add_argument("-f", "--filename", required=True, help="DatasetPrep YAML (kind DatasetPrep, or its spec)")
    p.add_argument("--volume", action="append", default=[], metavar="CLAIM=DIR",
                   help="local folder for a claim (default: every claim is the manifest's folder)")
    p.add_argument("--workers", type=int, default=None, help="override spec.workers")
    p.add_argument("--overwrite", action="store_true", help="replace an output made from other inputs/settings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)


def load_manifest_spec(path: str):
    import yaml

    from .spec import API_VERSION, KIND, parse_spec

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == KIND:
            if d.get("apiVersion") != API_VERSION:
                raise ValueError(f"{path}: apiVersion must be {API_VERSION}, got {d.get('apiVersion')}")
            meta = d.get("metadata") or {}
            if not isinstance(meta, dict):
                raise ValueError(f"{path}: metadata must be a mapping (e.g. 'metadata: {{name: wiki}}'), "
                                 f"got {type(meta).__name__} {str(meta)[:40]!r}")
            name = meta.get("name", "local")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{path}: metadata.name must be a non-empty string, got {name!r}")
            spec = d.get("spec") or {}
            if not isinstance(spec, dict):
                raise ValueError(f"{path}: spec must be a mapping of DatasetPrep fields, got {type(spec).__name__}")
            return name, parse_spec(spec)
    if len(docs) == 1 and isinstance(docs[0], dict) and "source" in docs[0]:
        return "local", parse_spec(docs[0])
    raise ValueError(f"{path} holds no {KIND} (apiVersion {API_VERSION})")


def cmd_run(a) -> int:
    from . import progress
    from .runner import run_spec
    from .settings import Settings, read_token

    if a.workers is not None and not 1 <= a.workers <= MAX_WORKERS:
        return _die(f"--workers must be between 1 and {MAX_WORKERS}, got {a.workers}", 2)
    name, spec = load_manifest_spec(a.filename)
    base = Path(a.filename).resolve().parent
    claims = {spec.output.claim_name}
    if spec.source.files and spec.source.files.claim_name:
        claims.add(spec.source.files.claim_name)
    if spec.tokenizer.path and spec.tokenizer.path.claim_name:
        claims.add(spec.tokenizer.path.claim_name)
    volumes = {c: base for c in claims}
    for v in a.volume:
        if "=" not in v:
            raise ValueError(f"--volume {v!r}: expected CLAIM=DIR")
        c, d = v.split("=", 1)
        volumes[c] = Path(d).resolve()
    settings = Settings.from_env()
    prog = progress.make(not a.no_progress)
    try:
        res = run_spec(spec, volumes, settings=settings, token=read_token(), workers=a.workers,
                       overwrite=a.overwrite, progress=prog, log=lambda m: print(m, file=sys.stderr),
                       who=f"datasetprep run -f {a.filename}")
    finally:
        if prog:
            prog.close()
    root = volumes[spec.output.claim_name]
    verb = "reused" if res.reused else "wrote"
    for o in res.outputs:
        if o.blend_file:
            used = sum(1 for w in o.blend_weights or () if w)
            print(f"{name}: {verb} {o.shards} shard datasets, blend list {root / o.blend_file} "
                  f"({used} non-empty; Megatron-LM: --data-args-path): {o.documents:,} documents, "
                  f"{o.tokens:,} tokens ({o.dtype})")
        else:
            print(f"{name}: {verb} {root / o.prefix}.{{bin,idx}}: {o.documents:,} documents, "
                  f"{o.tokens:,} tokens ({o.dtype})")
    return 0


def add_job(sub) -> None:
    p = sub.add_parser("job", help="Job pod entrypoint (used by the operator)",
                       description="Run one step of a DatasetPrep, as the operator's Job pods do: the spec, the "
                       "volumes and the run plan come from the environment (DATASETPREP_SPEC, DATASETPREP_VOLUMES, "
                       "DATASETPREP_RUN; see datasetprep.contract).")
    p.set_defaults(func=lambda a: __import__("datasetprep.job", fromlist=["main"]).main())


def add_check(sub) -> None:
    p = sub.add_parser("check-training-config", help="check a training ConfigMap from inside a training pod",
                       description="Read the training ConfigMap mounted at DIR as each trainer reads it (Megatron-LM, "
                       "NeMo 2, Megatron-Bridge, the NeMo guide's config.yaml), check that all describe the same "
                       "blend, and open every dataset it lists with the index reader (counts and dtype checked). "
                       "Exits 1 with what is wrong.")
    p.add_argument("dir", nargs="?", default="/etc/datasetprep", help="where the ConfigMap is mounted")
    p.set_defaults(func=cmd_check)


def cmd_check(a) -> int:
    from .trainercheck import check

    check(Path(a.dir))
    print("training config OK")
    return 0


def add_operator(sub) -> None:
    p = sub.add_parser("operator", help="run the Kubernetes operator")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--namespace", "-n", action="append", default=None, help="watch this namespace (repeatable)")
    g.add_argument("--all-namespaces", "-A", action="store_true",
                   help="watch every namespace (default, unless DATASETPREP_WATCH_NAMESPACES names some)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' to disable)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 to disable)")
    p.add_argument("--peering", default=None, help="kopf peering name for several replicas (default: standalone)")
    p.add_argument("--priority", type=int, default=None,
                   help="kopf peering priority (replicas need distinct ones; the Helm chart derives it)")
    p.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="log lines as text (default) or one JSON object per line for log shippers "
                        "(default: DATASETPREP_LOG_FORMAT, else text)")
    p.set_defaults(func=cmd_operator)


def cmd_operator(a) -> int:
    try:
        from datasetprep_operator import cli as op_cli
    except ImportError as e:  # the job image: the engine without the operator's dependencies
        raise ValueError(f"the operator is not installed here ({e.name} is missing): use the operator image, "
                         "or pip install 'datasetprep[operator]'") from None

    return op_cli.run(
        namespaces=a.namespace, all_namespaces=a.all_namespaces,
        liveness=a.liveness or None, metrics_port=a.metrics_port or None,
        peering=a.peering, standalone=a.peering is None, priority=a.priority, log_format=a.log_format,
    ) or 0


def add_wait(sub) -> None:
    p = sub.add_parser(
        "wait", help="wait until a DatasetPrep or DatasetBlend is Ready or Stalled; exit 0 if Ready, 1 if it failed",
        description="Wait until a DatasetPrep (dsp/NAME) or a DatasetBlend (dsb/NAME) is Ready or Stalled for its "
        "current spec, print its message, and "
        "exit 0 (Ready), 1 (Stalled, deleted, not found) or 124 (timed out). Uses the credentials kubectl "
        "uses ($KUBECONFIG).")
    p.add_argument("target", metavar="dsp/NAME|dsb/NAME",
                   help="the DatasetPrep (dsp/NAME, datasetprep/NAME or NAME) or the DatasetBlend (dsb/NAME, "
                   "datasetblend/NAME)")
    p.add_argument("--namespace", "-n", default=None, help="its namespace (default: the kubeconfig context's)")
    p.add_argument("--timeout", default="none",
                   help="give up after this long: 6h, 1h30m, 90s, 45 (seconds), 0 (look once); default none")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr while waiting")
    p.set_defaults(func=cmd_wait)


def cmd_wait(a) -> int:
    try:
        from datasetprep_operator import wait
    except ImportError as e:  # the job image: no Kubernetes client
        raise ValueError(f"datasetprep wait needs the Kubernetes client ({e.name} is missing): "
                         "pip install 'datasetprep[operator]'") from None
    return wait.run(a.target, a.namespace, a.timeout, quiet=a.quiet)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datasetprep", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"datasetprep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_binarize, add_inspect, add_merge, add_run, add_job, add_check, add_operator, add_wait):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    debug = bool(os.environ.get("DATASETPREP_DEBUG"))  # the entry point: tracebacks instead of messages
    args = build_parser().parse_args(argv)
    if args.command in ("job", "operator"):  # the job handles its signals itself, kopf its own
        return args.func(args)
    from . import signals
    from .errors import user_message

    signals.install()
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return _die("interrupted; nothing was published", 130)
    except signals.Terminated:
        return _die("terminated (SIGTERM); nothing was published, and a rerun resumes the chunks already done",
                    signals.EXIT_TERMINATED)
    except Exception as e:
        if e.__class__.__name__ == "ValidationError":
            from .spec import format_validation_error

            return _die(format_validation_error(e), 2)
        if debug:
            raise
        return _die(user_message(e))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
