"""Pure builders: Job manifests, training ConfigMaps, job results and status fragments.

Nothing here talks to the API server or reads the environment; every function takes what it needs
and returns plain dicts, so the unit tests check the exact manifests without a cluster. The
reconciler (``reconcile.py``) decides *when* to call them and submits what they return.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from datasetprep.pipeline import FORMAT_VERSION, shard_prefix
from datasetprep.spec import DatasetPrepSpec, parse_spec

from datasetprep_operator.config import OperatorConfig

# Labels and annotations put on every child object.
LABEL_OWNER_UID = "datasetprep.io/owner-uid"
LABEL_SPEC_HASH = "datasetprep.io/spec-hash"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
ANNOTATION_OWNER_NAME = "datasetprep.io/owner-name"
MANAGED_BY = "datasetprep-operator"

CONTAINER_NAME = "datasetprep"
JOB_COMMAND = ["datasetprep", "job"]
MERGE_COMMAND = ["datasetprep", "job", "--merge"]
MERGE_SUFFIX = "-merge"
DELETE_DATA_COMMAND = ["datasetprep", "job", "--delete-data"]
DELETE_DATA_SUFFIX = "delete-data"
DELETE_DATA_COMPONENT = "delete-data"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
RUN_AS_ID = 65532
CLAIMS_ROOT = "/mnt/claims"
TMP_DIR = "/tmp"
HF_HOME = "/tmp/hf"
MAX_NAME = 63
HASH_LEN = 8
REUSE_KEY_LEN = 32
MAX_MESSAGE = 1024

# Spec fields that do not change what the Job does, so changing them does not start a new run.
_HASH_EXCLUDED = frozenset({"deleteDataOnDelete"})

# Megatron-LM's --tokenizer-type and NeMo's get_nmt_tokenizer(library=...) per tokenizer type.
MEGATRON_TOKENIZER = {
    "sentencepiece": "SentencePieceTokenizer",
    "huggingface": "HuggingFaceTokenizer",
    "tiktoken": "TikTokenizer",
    "null": "NullTokenizer",
}
NEMO_LIBRARY = {"sentencepiece": "sentencepiece", "huggingface": "huggingface", "tiktoken": "tiktoken",
                "null": "null"}


# --------------------------------------------------------------------------- names


def spec_hash(spec: DatasetPrepSpec) -> str:
    """Short content hash of everything in the spec that shapes the Job.

    Fields left at their defaults are left out of the hash, so a newer spec model that adds an
    optional field (or a manifest that spells a default out) does not relaunch finished work.
    """
    wire = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    wire = {k: v for k, v in wire.items() if k not in _HASH_EXCLUDED}
    canonical = json.dumps(wire, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LEN]


def job_name(parent: str, digest: str) -> str:
    """``<parent>-<digest>``, the parent part cut so the whole fits a 63-character label value."""
    head = parent[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"


def merge_job_name(parent: str, digest: str) -> str:
    """``<parent>-<digest>-merge``: the second stage of a sharded run, the digest kept whole."""
    return job_name(parent, digest + MERGE_SUFFIX)


def delete_data_job_name(parent: str) -> str:
    """``<parent>-delete-data``: the clean-up Job of ``spec.deleteDataOnDelete``."""
    return job_name(parent, DELETE_DATA_SUFFIX)


@dataclasses.dataclass(frozen=True)
class RunJobs:
    """The Jobs of one run: ``main`` (the only one, or the Indexed shard Job) and ``merge`` (sharded only)."""

    main: str
    merge: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.main,) if self.merge is None else (self.main, self.merge)

    @classmethod
    def for_spec(cls, parent: str, spec: DatasetPrepSpec) -> "RunJobs":
        digest = spec_hash(spec)
        return cls(job_name(parent, digest), merge_job_name(parent, digest) if spec.shards > 1 else None)


def reuse_key(spec: DatasetPrepSpec) -> str:
    """Content address of what a spec produces: equal keys mean byte-identical data on the same claim.

    It covers the source (Hub repo, revision, subset, split and data files; or the files' claim and
    paths), the text keys, the tokenizer spec, ``appendEod``, the output claim and the engine's format
    version -- not the output prefix, the mount path, workers, shards or resources, which change where
    or how fast, not what. With ``keepShards`` the layout (N shard datasets and a blend list) is part
    of it: such an output is never handed to a resource that expects one merged dataset, or back. A Hub revision is taken as written (a branch is not resolved here) and files
    on a volume are trusted not to have changed; ``spec.reuse: Never`` opts out.
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
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:REUSE_KEY_LEN]


def config_map_name(parent: str, spec: DatasetPrepSpec) -> str:
    """The training ConfigMap's name: ``spec.trainingConfig.configMapName`` or ``<parent>-training``."""
    return spec.training_config.config_map_name or f"{parent}-training"


# --------------------------------------------------------------------------- volumes


@dataclasses.dataclass(frozen=True)
class ClaimMount:
    """One PersistentVolumeClaim the job pod mounts."""

    claim: str
    volume: str
    mount_path: str
    read_only: bool


def claim_mounts(spec: DatasetPrepSpec) -> list[ClaimMount]:
    """Every claim the spec references: the output claim (read-write) first, then inputs (read-only)."""
    out = spec.output.claim_name
    mounts = [ClaimMount(out, "output", spec.output.mount_path, False)]
    inputs: list[str] = []
    if spec.source.files is not None:
        inputs.append(spec.source.files.claim_name or out)
    if spec.tokenizer.path is not None:
        inputs.append(spec.tokenizer.path.claim_name or out)
    for i, claim in enumerate(sorted(set(inputs) - {out})):
        mounts.append(ClaimMount(claim, f"claim-{i}", posixpath.join(CLAIMS_ROOT, claim), True))
    return mounts


# --------------------------------------------------------------------------- the Job


def child_labels(parent_uid: str, digest: str | None = None) -> dict[str, str]:
    """Labels that find a DatasetPrep's children (by owner uid: names may exceed label limits)."""
    labels = {LABEL_NAME: "datasetprep", LABEL_MANAGED_BY: MANAGED_BY, LABEL_OWNER_UID: parent_uid}
    if digest is not None:
        labels[LABEL_SPEC_HASH] = digest
    return labels


def job_env(spec: DatasetPrepSpec, *, parent: str, namespace: str,
            extra: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The job container's environment (the contract with ``datasetprep job``), then ``extra``.

    ``extra`` (the operator's ``DATASETPREP_JOB_ENV``) adds plain variables; one named like a default
    that is not part of the contract (``HF_HOME``) replaces it.
    """
    volumes = {m.claim: m.mount_path for m in claim_mounts(spec)}
    env: list[dict[str, Any]] = [
        {"name": "DATASETPREP_SPEC", "value": compact_json(spec.to_wire())},
        {"name": "DATASETPREP_VOLUMES", "value": compact_json(volumes)},
        {"name": "DATASETPREP_NAME", "value": parent},
        {"name": "DATASETPREP_NAMESPACE", "value": namespace},
        {"name": "DATASETPREP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "DATASETPREP_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HF_HOME", "value": HF_HOME},
    ]
    if spec.hf_token_secret_ref is not None:
        ref = spec.hf_token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    names = {name for name, _ in extra}
    return [e for e in env if e["name"] not in names] + [{"name": n, "value": v} for n, v in extra]


def restricted_security_context() -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts that satisfy the ``restricted`` Pod Security Standard."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def build_job(
    spec: DatasetPrepSpec,
    *,
    parent: str,
    namespace: str,
    parent_uid: str,
    config: OperatorConfig,
    indexed: bool = False,
    merge: bool = False,
    delete_data: bool = False,
) -> dict[str, Any]:
    """The Job that runs ``datasetprep job`` for one spec version.

    Args:
        spec: the validated spec.
        parent: name of the DatasetPrep (the Job is ``<parent>-<spec hash>``).
        namespace: its namespace.
        parent_uid: its uid, for the labels that find the children again.
        config: operator settings (default image, service account, pull policy, extra env).
        indexed: stage 1 of a sharded run: an Indexed Job with ``spec.shards`` completions, each
            pod tokenizing one slice (``JOB_COMPLETION_INDEX``), ``spec.backoffLimit`` retries per
            index and no failed index tolerated.
        merge: stage 2 of a sharded run: one pod running ``datasetprep job --merge``, which checks
            every shard's chunks and assembles and publishes the output (``<parent>-<hash>-merge``).
        delete_data: the clean-up when the DatasetPrep is deleted with ``spec.deleteDataOnDelete``:
            one pod running ``datasetprep job --delete-data`` (``<parent>-delete-data``), without the
            HF token (nothing is downloaded; its Secret may be gone already).

    Returns:
        The manifest, without owner references (the caller adopts it).
    """
    if indexed + merge + delete_data > 1:
        raise ValueError("a Job is one of: the shards' (indexed), the merge, the data clean-up")
    digest = spec_hash(spec)
    if delete_data:
        name, component, command = delete_data_job_name(parent), DELETE_DATA_COMPONENT, DELETE_DATA_COMMAND
    elif merge:
        name, component, command = merge_job_name(parent, digest), "merge", MERGE_COMMAND
    else:
        name, component, command = job_name(parent, digest), "job", JOB_COMMAND
    labels = child_labels(parent_uid, digest) | {LABEL_COMPONENT: component}
    env = job_env(spec, parent=parent, namespace=namespace, extra=config.job_env)
    pod_sc, container_sc = restricted_security_context()
    mounts = claim_mounts(spec)
    if delete_data:  # only the output claim: input claims may be gone by now, and are not touched
        mounts = mounts[:1]
        env = [e for e in env if e["name"] != "HF_TOKEN"]
        for e in env:
            if e["name"] == "DATASETPREP_VOLUMES":
                e["value"] = compact_json({m.claim: m.mount_path for m in mounts})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or config.job_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(command),
        "env": env,
        "securityContext": container_sc,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": m.volume, "mountPath": m.mount_path, "readOnly": m.read_only} for m in mounts]
        + [{"name": "tmp", "mountPath": TMP_DIR}],
    }
    if spec.resources is not None:
        resources = spec.resources.model_dump(by_alias=True, exclude_none=True)
        if resources:
            container["resources"] = resources
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": config.job_service_account,
        # The job annotates its own pod with progress (needs pods get/patch in the namespace).
        "automountServiceAccountToken": True,
        "securityContext": pod_sc,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}]
        + [{"name": m.volume, "persistentVolumeClaim": {"claimName": m.claim, "readOnly": m.read_only}}
           for m in mounts],
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if indexed:
        job_spec.update({
            "completionMode": "Indexed",
            "completions": spec.shards,
            "parallelism": spec.parallelism or spec.shards,
            "backoffLimitPerIndex": spec.backoff_limit,
            "maxFailedIndexes": 0,  # one shard out of retries fails the run at once: its output is needed
        })
        del job_spec["backoffLimit"]  # with per-index limits the global one only caps total failures
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {ANNOTATION_OWNER_NAME: parent},
        },
        "spec": job_spec,
    }


def compact_json(value: Any) -> str:
    """Compact, key-sorted JSON (stable across runs)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- job results


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One ``{prefix}_{key}_document.{bin,idx}`` pair, as the job reports it."""

    key: str
    prefix: str
    documents: int | None = None
    sequences: int | None = None
    tokens: int | None = None
    dtype: str | None = None
    bin_sha256: str | None = None
    idx_sha256: str | None = None
    #: kept shards (``spec.keepShards``): the blend list file, the number of shards and, when the
    #: termination message had room for them, each shard's weight (its tokens; 0 = empty, not listed)
    blend_file: str | None = None
    shards: int | None = None
    blend_weights: tuple[int, ...] | None = None

    @property
    def kept_shards(self) -> bool:
        return self.blend_file is not None


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What ``datasetprep job`` said in its termination message."""

    ok: bool
    error: str | None = None
    outputs: tuple[OutputFile, ...] = ()
    tokenizer_type: str | None = None
    tokenizer_path: str | None = None
    vocab_size: int | None = None
    eod_id: int | None = None
    fingerprint: str | None = None
    resolved_revision: str | None = None
    reused: bool | None = None


def parse_termination_message(message: str | None, *, fallback: str | None = None) -> JobResult:
    """Read the job's termination message defensively.

    Success is only ever taken from a well-formed ``{"ok": true, "outputs": [...]}``. Anything else
    (``{"ok": false, "error": ...}``, a log tail that ``FallbackToLogsOnError`` put there, a message
    cut at Kubernetes' 4 KiB limit, nothing at all) is a failure whose error is the best text there is.

    Args:
        message: ``state.terminated.message`` of the job container, if any.
        fallback: text to report when the message says nothing usable (e.g. a log tail).
    """
    text = (message or "").strip()
    data: Any = None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if isinstance(data, dict) and data.get("ok") is True:
        try:
            return _success(data)
        except (TypeError, ValueError, KeyError) as exc:
            return JobResult(ok=False, error=f"the job reported success with an unreadable result: {exc}")
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip():
        return JobResult(ok=False, error=_clip(data["error"].strip()))
    if text:
        return JobResult(ok=False, error=_clip(text, tail=True))
    if fallback and fallback.strip():
        return JobResult(ok=False, error=_clip(fallback.strip(), tail=True))
    return JobResult(ok=False, error="the job left no termination message and no log")


def _success(data: Mapping[str, Any]) -> JobResult:
    outputs = data.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise ValueError("no outputs")
    files = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("prefix"), str):
            raise ValueError(f"malformed output entry {item!r}")
        files.append(OutputFile(
            key=item["key"], prefix=item["prefix"], documents=_int(item.get("documents")),
            sequences=_int(item.get("sequences")), tokens=_int(item.get("tokens")),
            dtype=_str(item.get("dtype")), bin_sha256=_str(item.get("bin_sha256")),
            idx_sha256=_str(item.get("idx_sha256")), blend_file=_str(item.get("blend_file")),
            shards=_int(item.get("shards")), blend_weights=_weights(item.get("blend_weights"), _int(item.get("shards"))),
        ))
    tok = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}
    return JobResult(
        ok=True, outputs=tuple(files), tokenizer_type=_str(tok.get("type")), tokenizer_path=_str(tok.get("path")),
        vocab_size=_int(tok.get("vocab_size")), eod_id=_int(tok.get("eod_id")),
        fingerprint=_str(data.get("fingerprint")), resolved_revision=_str(data.get("resolved_revision")),
        reused=data.get("reused") if isinstance(data.get("reused"), bool) else None,
    )


def _weights(value: Any, shards: int | None) -> tuple[int, ...] | None:
    """Per-shard weights, if well-formed (one non-negative int per shard)."""
    if not isinstance(value, list) or shards is None or len(value) != shards:
        return None
    if not all(_int(v) is not None and v >= 0 for v in value):
        return None
    return tuple(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _clip(text: str, *, tail: bool = False) -> str:
    """Keep status messages short: the end of a log tail, the start of an error."""
    if len(text) <= MAX_MESSAGE:
        return text
    return "..." + text[-(MAX_MESSAGE - 3):] if tail else text[: MAX_MESSAGE - 3] + "..."


# --------------------------------------------------------------------------- training ConfigMap


def pod_path(spec: DatasetPrepSpec, relative: str) -> str:
    """A path on the output claim as the job and training pods see it."""
    return posixpath.join(spec.output.mount_path, relative)


def dataset_prefix(spec: DatasetPrepSpec, result: JobResult) -> str:
    """The first key's dataset prefix (no ``.bin``/``.idx``) at the mount path."""
    first = result.outputs[0]
    return pod_path(spec, first.prefix)


def shard_dataset_prefix(spec: DatasetPrepSpec, output: OutputFile, index: int) -> str:
    """Shard ``index``'s own dataset of ``output``'s key (kept shards), at the mount path.

    Named after the output the job reported (``{prefix}_{key}_document``), not after this spec's
    prefix: a reused output lives under its maker's prefix.
    """
    base = output.prefix.removesuffix(f"_{output.key}_document")
    return pod_path(spec, f"{shard_prefix(base, index)}_{output.key}_document")


def blend_list(spec: DatasetPrepSpec, output: OutputFile) -> list[str] | None:
    """``[weight, prefix, weight, prefix, ...]`` of kept shards (weights = tokens, empty shards left out),
    as Megatron-LM's ``--data-path`` and NeMo's ``paths`` take it; None when the weights are unknown."""
    if output.blend_weights is None:
        return None
    items: list[str] = []
    for i, w in enumerate(output.blend_weights):
        if w:
            items += [str(w), shard_dataset_prefix(spec, output, i)]
    return items


def tokenizer_file(spec: DatasetPrepSpec, result: JobResult) -> str | None:
    """The tokenizer file at the mount path, or None (null tokenizer).

    Megatron's and NeMo's HuggingFace tokenizers load a folder, so a reported ``tokenizer.json``
    becomes its folder.
    """
    if not result.tokenizer_path:
        return None
    path = pod_path(spec, result.tokenizer_path)
    if result.tokenizer_type == "huggingface" and path.endswith(".json"):
        path = posixpath.dirname(path) or "/"
    return path


def training_config_data(spec: DatasetPrepSpec, result: JobResult) -> dict[str, str]:
    """The training ConfigMap's data: ``config.yaml`` in the guide's shape and two siblings.

    * ``config.yaml`` -- ``training.data.dataset_path`` / ``tokenizer_path``, exactly as step 4 of the
      NeMo data-preparation guide has them.
    * ``megatron-args.txt`` -- the Megatron-LM ``pretrain_gpt.py`` data and tokenizer flags.
    * ``nemo2-data.yaml`` -- arguments of NeMo 2's ``PreTrainingDataModule``.
    * ``claimName`` / ``mountPath`` -- where to mount the data.
    """
    tok_path = tokenizer_file(spec, result)
    tok_type = result.tokenizer_type or spec.tokenizer.type
    vocab = result.vocab_size if result.vocab_size is not None else spec.tokenizer.vocab_size
    first = result.outputs[0]
    if first.kept_shards:
        return _kept_shards_config(spec, result, first, tok_path, tok_type, vocab)
    prefix = dataset_prefix(spec, result)

    config = ["training:", "  data:", f"    dataset_path: {_yaml_str(prefix)}"]
    if tok_path is not None:
        config.append(f"    tokenizer_path: {_yaml_str(tok_path)}")

    args = ["--data-path", prefix] + _tokenizer_args(tok_type, tok_path, vocab)
    nemo = _NEMO_HEADER + ["paths:", f"  - {_yaml_str(prefix)}"] + _nemo_tokenizer(tok_type, tok_path, vocab)
    return _config_data(spec, config, args, nemo)


def _config_data(spec: DatasetPrepSpec, config: list[str], args: list[str], nemo: list[str]) -> dict[str, str]:
    return {
        "config.yaml": "\n".join(config) + "\n",
        "megatron-args.txt": " ".join(args) + "\n",
        "nemo2-data.yaml": "\n".join(nemo) + "\n",
        "claimName": spec.output.claim_name,
        "mountPath": spec.output.mount_path,
    }


_NEMO_HEADER = [
    "# NeMo 2: nemo.collections.llm.gpt.data.PreTrainingDataModule(paths=..., seq_length=..., tokenizer=...)",
    "# with the tokenizer from nemo.collections.nlp.modules.common.tokenizer_utils.get_nmt_tokenizer(**tokenizer).",
    "# seq_length is not a property of the data: set it to the model's context length, e.g.",
    "# seq_length: 8192",
]


def _kept_shards_config(spec: DatasetPrepSpec, result: JobResult, first: OutputFile, tok_path: str | None,
                        tok_type: str, vocab: int | None) -> dict[str, str]:
    """The training ConfigMap's data for kept shards: the blend of the shard datasets.

    Megatron-LM reads the blend list file on the volume (``--data-args-path``), whatever the number
    of shards. ``config.yaml`` and NeMo's ``paths`` list the blend inline when the job reported the
    weights (it does while they fit in its 4 KiB termination message, a few hundred shards);
    beyond that they name the file, which holds the same list.
    """
    blend_file = pod_path(spec, first.blend_file or "")
    items = blend_list(spec, first)
    config = ["training:", "  data:"]
    if items is not None:
        config.append("    # weights (tokens) and shard dataset prefixes, as NeMo's data_prefix takes a blend")
        config.append("    dataset_path: [" + ", ".join(
            w if n % 2 == 0 else _yaml_str(w) for n, w in enumerate(items)) + "]")
    config.append(f"    data_args_path: {_yaml_str(blend_file)}")
    if tok_path is not None:
        config.append(f"    tokenizer_path: {_yaml_str(tok_path)}")

    args = ["--data-args-path", blend_file] + _tokenizer_args(tok_type, tok_path, vocab)
    nemo = list(_NEMO_HEADER)
    if items is not None:
        nemo += [f"# a blend of {first.shards} shard datasets, weighted by their tokens", "paths:"]
        nemo += [f"  - {_yaml_str(w)}" for w in items]
    else:
        nemo += [f"# a blend of {first.shards} shard datasets: too many to list here. The weight/prefix list is",
                 f"# {blend_file}: paths = open(that file).read().split()"]
    nemo += _nemo_tokenizer(tok_type, tok_path, vocab)
    return _config_data(spec, config, args, nemo)


def _tokenizer_args(tok_type: str, tok_path: str | None, vocab: int | None) -> list[str]:
    args = ["--tokenizer-type", MEGATRON_TOKENIZER.get(tok_type, tok_type)]
    if tok_path is not None:
        args += ["--tokenizer-model", tok_path]
    if tok_type == "null" and vocab is not None:
        args += ["--vocab-size", str(vocab)]
    return args


def _nemo_tokenizer(tok_type: str, tok_path: str | None, vocab: int | None) -> list[str]:
    nemo = ["tokenizer:", f"  library: {_yaml_str(NEMO_LIBRARY.get(tok_type, tok_type))}"]
    if tok_path is not None:
        key = "model_name" if tok_type == "huggingface" else "tokenizer_model"
        nemo.append(f"  {key}: {_yaml_str(tok_path)}")
    if tok_type == "null" and vocab is not None:
        nemo.append(f"  vocab_size: {vocab}")
    return nemo


def _yaml_str(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def build_config_map(name: str, namespace: str, parent_uid: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The training ConfigMap manifest (without owner references: the caller adopts it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": child_labels(parent_uid) | {LABEL_COMPONENT: "training-config"},
        },
        "data": dict(data),
    }


# --------------------------------------------------------------------------- status


def output_status(spec: DatasetPrepSpec, result: JobResult, *, reused_from: str | None = None) -> dict[str, Any]:
    """``status.output`` for a successful run (camelCase, as stored).

    Args:
        reused_from: the DatasetPrep whose output this is, when no Job ran (``spec.reuse``).
    """
    first = result.outputs[0]
    files = []
    for f in result.outputs:
        entry = {"key": f.key, "prefix": None if f.kept_shards else pod_path(spec, f.prefix),
                 "documents": f.documents, "sequences": f.sequences, "tokens": f.tokens, "dtype": f.dtype,
                 "binSha256": f.bin_sha256, "idxSha256": f.idx_sha256,
                 "blendFile": pod_path(spec, f.blend_file) if f.blend_file else None, "shards": f.shards,
                 "shardTokens": list(f.blend_weights) if f.blend_weights is not None else None}
        files.append({k: v for k, v in entry.items() if v is not None})
    out = {
        "layout": "Shards" if first.kept_shards else "Merged",
        "prefix": None if first.kept_shards else dataset_prefix(spec, result),
        "blendFile": pod_path(spec, first.blend_file) if first.blend_file else None,
        "claimName": spec.output.claim_name,
        "documents": first.documents,
        "sequences": _sum(f.sequences for f in result.outputs),
        "tokens": _sum(f.tokens for f in result.outputs),
        "dtype": first.dtype,
        "files": files,
        "fingerprint": result.fingerprint,
        "reused": result.reused,
        "reusedFrom": reused_from,
        "tokenizer": _drop_none({"type": result.tokenizer_type, "vocabSize": result.vocab_size,
                                 "eodId": result.eod_id,
                                 "path": pod_path(spec, result.tokenizer_path) if result.tokenizer_path else None})
        or None,
    }
    return _drop_none(out)


def _drop_none(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def reusable_key(body: Mapping[str, Any]) -> str | None:
    """The reuse key of a DatasetPrep whose output others may point at, else None.

    That is one that is Ready for its current generation (``Succeeded``, conditions and
    ``observedGeneration`` current) and recorded its key with an output the training ConfigMap
    can be rebuilt from (files and tokenizer facts, which older operator versions did not record).
    """
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    output = status.get("output") or {}
    generation = meta.get("generation")
    if status.get("phase") != "Succeeded" or status.get("observedGeneration") != generation:
        return None
    ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
    if not ready or ready[0].get("status") != "True" or ready[0].get("observedGeneration") != generation:
        return None
    if not (output.get("files") and output.get("tokenizer") and (output.get("prefix") or output.get("blendFile"))):
        return None
    key = status.get("reuseKey")
    return key if isinstance(key, str) and key else None


def reused_result(source: Mapping[str, Any]) -> JobResult | None:
    """What the job of a Ready DatasetPrep reported, rebuilt from its status (for reusing its output).

    Paths in ``status.output`` are as that resource's training pods mount the claim; they are turned
    back into paths on the volume, so the reusing resource's own ``output.mountPath`` applies to them.
    None when the status is not complete enough to point at.
    """
    try:
        spec = parse_spec(dict(source.get("spec") or {}))
        status = source.get("status") or {}
        output = status["output"]
        mount = spec.output.mount_path

        def on_volume(path: str) -> str:
            return posixpath.relpath(path, mount)

        def entry(f: Mapping[str, Any]) -> OutputFile:
            if f.get("blendFile"):  # kept shards: the prefix is a name, not a file
                blend = on_volume(f["blendFile"])
                return OutputFile(
                    key=f["key"], prefix=blend.removesuffix(".blend.txt"), documents=_int(f.get("documents")),
                    sequences=_int(f.get("sequences")), tokens=_int(f.get("tokens")), dtype=_str(f.get("dtype")),
                    blend_file=blend, shards=_int(f.get("shards")),
                    blend_weights=_weights(f.get("shardTokens"), _int(f.get("shards"))))
            return OutputFile(
                key=f["key"], prefix=on_volume(f["prefix"]), documents=_int(f.get("documents")),
                sequences=_int(f.get("sequences")), tokens=_int(f.get("tokens")), dtype=_str(f.get("dtype")),
                bin_sha256=_str(f.get("binSha256")), idx_sha256=_str(f.get("idxSha256")))

        files = tuple(entry(f) for f in output["files"])
        tok = output.get("tokenizer") or {}
        return JobResult(
            ok=True, outputs=files, tokenizer_type=_str(tok.get("type")),
            tokenizer_path=on_volume(tok["path"]) if _str(tok.get("path")) else None,
            vocab_size=_int(tok.get("vocabSize")), eod_id=_int(tok.get("eodId")),
            fingerprint=_str(output.get("fingerprint")), resolved_revision=_str(status.get("resolvedRevision")),
            reused=True)
    except (ValidationError, KeyError, TypeError, ValueError):
        return None


def _sum(values: Iterable[int | None]) -> int | None:
    items = list(values)
    return None if any(v is None for v in items) else sum(items)  # type: ignore[arg-type]


def success_message(result: JobResult) -> str:
    """One line for the Ready condition and the event."""
    first = result.outputs[0]
    tokens = _sum(f.tokens for f in result.outputs)
    files = ", ".join(f"{f.shards} shard datasets listed in {f.blend_file}" if f.kept_shards
                      else f"{f.prefix}.bin/.idx" for f in result.outputs)
    docs = "?" if first.documents is None else f"{first.documents:,}"
    toks = "?" if tokens is None else f"{tokens:,}"
    return f"{docs} documents, {toks} tokens written to {files}"


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with one condition set.

    ``lastTransitionTime`` moves only when the condition's status changes, as the Kubernetes API
    conventions ask; reason, message and observedGeneration always follow the latest observation.
    """
    result = [dict(c) for c in conditions or ()]
    for cond in result:
        if cond.get("type") == type_:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message, observedGeneration=generation)
            return result
    result.append({"type": type_, "status": status, "reason": reason, "message": message,
                   "observedGeneration": generation, "lastTransitionTime": now})
    return result


def set_conditions(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    ready: bool,
    reconciling: bool,
    stalled: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Set Ready, Reconciling and Stalled together (kstatus: abnormal-true polarity for the last two)."""
    result = list(conditions or ())
    for type_, value in (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled)):
        result = set_condition(result, type_, "True" if value else "False", reason, message,
                               generation=generation, now=now)
    return result


PROGRESS_ANNOTATION = "datasetprep.io/progress"


def pod_progress(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The progress a job pod published on itself (annotation ``datasetprep.io/progress``), if readable."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(PROGRESS_ANNOTATION)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def aggregate_progress(reports: Iterable[Mapping[str, Any]], *, shards_done: int, shards_total: int,
                       pods_active: int) -> dict[str, Any]:
    """``status.progress`` from the job pods' own reports (latest per shard) and the Job's counts.

    A shard restarted after a failure reports again under the same index; its newest report wins,
    and it counts the chunks its predecessor finished as done. Shards that have not reported yet
    (``parallelism`` < ``shards``, or pods still starting) are assumed as big as the average reported
    one: the plan cuts the input into slices of equal chunk counts.
    """
    latest: dict[Any, Mapping[str, Any]] = {}
    for doc in reports:
        key = doc.get("shard")
        if key not in latest or (_num(doc.get("time")) or 0) >= (_num(latest[key].get("time")) or 0):
            latest[key] = doc
    progress: dict[str, Any] = {"shardsDone": shards_done, "shardsTotal": shards_total}
    total = sum(_int(d.get("bytesTotal")) or 0 for d in latest.values())
    done = sum(_int(d.get("bytesDone")) or 0 for d in latest.values())
    if total > 0 and shards_total > 1 and len(latest) < shards_total:
        total += (shards_total - len(latest)) * total // len(latest)
    if total > 0:
        percent = min(100, (100 * done) // total)
        tokens = sum(_int(d.get("tokens")) or 0 for d in latest.values())
        rate = sum(_int(d.get("tokensPerSecond")) or 0 for d in latest.values())
        progress.update(percent=percent, summary=f"{percent}%", bytesDone=done, bytesTotal=total, tokens=tokens,
                        documents=sum(_int(d.get("documents")) or 0 for d in latest.values()),
                        tokensPerSecond=rate)
        if rate > 0 and tokens > 0 and done > 0:
            bytes_per_second = rate * done / tokens
            progress["etaSeconds"] = int((total - done) / bytes_per_second)
    elif shards_done:
        progress.update(percent=(100 * shards_done) // max(shards_total, 1),
                        summary=f"{shards_done}/{shards_total} shards")
    else:
        progress["summary"] = "running" if pods_active else "starting"
    return progress


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


def _num(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def running_status(
    current: Mapping[str, Any],
    *,
    job: str,
    generation: int | None,
    now: str,
    start_time: str | None,
    progress: Mapping[str, Any] | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Status while the Job for the current generation runs (the published output stays as it was)."""
    previous = current.get("output")
    message = message or f"Job {job} is running"
    if previous and previous.get("prefix"):
        message += f"; the training ConfigMap still points at {previous['prefix']}"
    return {
        "phase": "Running",
        "observedGeneration": generation,
        "jobName": job,
        "startTime": start_time or now,
        "completionTime": None,
        "message": message,
        "progress": dict(progress) if progress is not None else {"summary": "starting"},
        "conditions": set_conditions(current.get("conditions"), ready=False, reconciling=True, stalled=False,
                                     reason="Running", message=message, generation=generation, now=now),
    }


def waiting_status(
    current: Mapping[str, Any], *, reason: str, message: str, generation: int | None, now: str
) -> dict[str, Any]:
    """Status while the run cannot start yet for a reason outside the spec (e.g. a claim to be created)."""
    return {
        "phase": "Pending",
        "observedGeneration": generation,
        "message": message,
        "progress": {"summary": "waiting"},
        "conditions": set_conditions(current.get("conditions"), ready=False, reconciling=True, stalled=False,
                                     reason=reason, message=message, generation=generation, now=now),
    }


def succeeded_status(
    current: Mapping[str, Any],
    spec: DatasetPrepSpec,
    result: JobResult,
    *,
    job: str | None,
    config_map: str,
    generation: int | None,
    now: str,
    completion_time: str | None,
    reused_from: str | None = None,
) -> dict[str, Any]:
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
    tokens = _sum(f.tokens for f in result.outputs)
    return {
        "phase": "Succeeded",
        "observedGeneration": generation,
        "jobName": job,
        "configMapName": config_map,
        "completionTime": completion_time or now,
        "resolvedRevision": result.resolved_revision,
        "message": message,
        "output": output_status(spec, result, reused_from=reused_from),
        "progress": {"summary": "reused" if reused_from is not None else "100%", "percent": 100,
                     "documents": result.outputs[0].documents, "tokens": tokens,
                     "shardsDone": spec.shards, "shardsTotal": spec.shards},
        "conditions": set_conditions(current.get("conditions"), ready=True, reconciling=False, stalled=False,
                                     reason=reason, message=message, generation=generation, now=now),
    }


def failed_status(
    current: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    job: str | None = None,
) -> dict[str, Any]:
    """Status when the run for this generation cannot succeed without a change to the spec."""
    status: dict[str, Any] = {
        "phase": "Failed",
        "observedGeneration": generation,
        "message": message,
        "progress": {"summary": "failed"},
        "conditions": set_conditions(current.get("conditions"), ready=False, reconciling=False, stalled=True,
                                     reason=reason, message=message, generation=generation, now=now),
    }
    if job is not None:
        status["jobName"] = job
        status["completionTime"] = now
    return status


def observed_status(current: Mapping[str, Any], *, generation: int | None) -> dict[str, Any]:
    """Bump observedGeneration (status and conditions) when a change needed no new run."""
    if current.get("observedGeneration") == generation:
        return {}
    conditions = [dict(c) | {"observedGeneration": generation} for c in current.get("conditions") or ()]
    return {"observedGeneration": generation, "conditions": conditions}
