"""The contract between the operator and ``datasetprep job``: one module, imported by both sides.

* **What the operator hands the job** -- :class:`JobInputs`, carried in environment variables whose
  names are the ``ENV_*`` constants: the spec (JSON), the volumes (JSON), the resource's name and
  namespace; the HF token as a file (:data:`ENV_HF_TOKEN_FILE`), never as a value.
* **What the job hands back** -- a :data:`JobResult` in its termination message: :class:`Published`
  (a dataset is complete), :class:`ShardDone` (one slice of a sharded run), :class:`Deleted` (the
  clean-up) or :class:`Failed` (a message for users and an :data:`ErrorKind`). The message is at
  most :data:`TERMINATION_MESSAGE_MAX_BYTES`; :func:`encode_result` is the one rule that makes it
  fit, :func:`decode_result` the one reader.
* **What the job says while it runs** -- a :class:`ProgressRecord`, as a line of its log
  (:meth:`ProgressRecord.to_log_line`, :data:`PROGRESS_LOG_PREFIX`): job pods have no API
  credentials, the operator reads the lines from the pod's log.

Light by design: pydantic and the standard library only. The operator imports this module and must
not pull the data plane's numpy, pyarrow or tokenizers.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .spec import DatasetPrepSpec, format_validation_error

# ----------------------------------------------------------------------------- the environment

ENV_SPEC = "DATASETPREP_SPEC"
"""The spec as compact camelCase JSON, defaults spelled out (it holds no secret)."""
ENV_VOLUMES = "DATASETPREP_VOLUMES"
"""JSON ``{claimName: mountPath}`` of every claim the pod mounts."""
ENV_RUN = "DATASETPREP_RUN"
"""The :class:`RunPlan` of the Job, as compact camelCase JSON."""
ENV_NAME = "DATASETPREP_NAME"
ENV_NAMESPACE = "DATASETPREP_NAMESPACE"
ENV_HF_TOKEN = "HF_TOKEN"
"""Never set by the operator (an environment variable is readable in ``/proc/<pid>/environ`` and is
often dumped by crash reporters): the token reaches the job as a file, :data:`ENV_HF_TOKEN_FILE`."""
ENV_HF_TOKEN_FILE = "HF_TOKEN_FILE"
"""Path of the file holding the HF token: the Secret ``spec.hfTokenSecretRef`` mounted read-only."""
HF_TOKEN_DIR = "/var/run/secrets/datasetprep/hf-token"
"""Where the token's Secret volume is mounted in job pods."""
HF_TOKEN_FILE = HF_TOKEN_DIR + "/token"
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
"""Set by Kubernetes in the pods of an Indexed Job: the shard a pod works on."""
ENV_BLEND = "DATASETPREP_BLEND"
"""A blend files Job's work order (:class:`BlendOrder`, compact JSON); a Job with it runs no DatasetPrep."""
ENV_HF_HOME = "HF_HOME"
HF_HOME = "/tmp/hf"
"""``HF_HOME`` of the job pods: the root filesystem is read-only, ``/tmp`` an emptyDir."""

RESERVED_ENV = frozenset({ENV_SPEC, ENV_VOLUMES, ENV_RUN, ENV_BLEND, ENV_NAME, ENV_NAMESPACE, ENV_HF_TOKEN,
                          ENV_HF_TOKEN_FILE, ENV_COMPLETION_INDEX})
"""Variables that carry the contract: the operator's ``DATASETPREP_JOB_ENV`` cannot set them."""

# ----------------------------------------------------------------------------- limits and names

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a container's termination message."""
PROGRESS_LOG_PREFIX = "datasetprep-progress "
"""What starts a :class:`ProgressRecord`'s line in the job's log."""


def compact_json(value: Any) -> str:
    """Compact, key-sorted JSON: the form of every JSON value in the contract (stable across runs)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------------- the run plan

Step = Literal["all", "shard", "merge", "delete"]


class RunPlan(BaseModel):
    """The shape of one process's work, made once from the spec and passed down unchanged.

    ``step``:

    * ``all`` -- one process does everything: an unsharded run's Job, ``datasetprep run``. With kept
      shards it makes each shard's dataset in turn, then the blend lists.
    * ``shard`` -- slice ``index`` of ``shards`` of the chunk plan (a pod of the Indexed Job); with
      ``keep_shards`` it publishes that slice as its own dataset.
    * ``merge`` -- after every shard: assemble and publish the dataset, or with ``keep_shards`` check
      the shard datasets and write their blend lists.
    * ``delete`` -- delete what the output's manifests list (``spec.deleteDataOnDelete``).

    The operator's Job manifest carries the plan (:data:`ENV_RUN`); a shard pod's ``index`` is bound at
    start from :data:`ENV_COMPLETION_INDEX`, the one thing that differs between the pods of a Job.
    """

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="forbid")

    step: Step
    shards: int = Field(default=1, ge=1)
    keep_shards: bool = False
    index: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "RunPlan":
        if self.index is not None and (self.step != "shard" or self.index >= self.shards):
            raise ValueError(f"shard index {self.index} is outside 0..{self.shards - 1}" if self.step == "shard"
                             else f"a {self.step} step has no shard index")
        if self.step in ("shard", "merge") and self.shards < 2:
            raise ValueError(f"a {self.step} step needs shards > 1")
        if self.keep_shards and self.shards < 2:
            raise ValueError("keepShards needs shards > 1")
        return self

    @classmethod
    def stages(cls, spec: DatasetPrepSpec) -> tuple["RunPlan", ...]:
        """The run's Jobs, in order: one ``all`` Job, or the shards' Indexed Job then the merge Job."""
        if spec.shards == 1:
            return (cls(step="all"),)
        return (cls(step="shard", shards=spec.shards, keep_shards=spec.keep_shards),
                cls(step="merge", shards=spec.shards, keep_shards=spec.keep_shards))

    @classmethod
    def local(cls, spec: DatasetPrepSpec) -> "RunPlan":
        """Everything on this machine (``datasetprep run``)."""
        return cls(step="all", shards=spec.shards, keep_shards=spec.keep_shards)

    @classmethod
    def cleanup(cls) -> "RunPlan":
        """The clean-up of ``spec.deleteDataOnDelete``."""
        return cls(step="delete")

    @classmethod
    def shard(cls, index: int, shards: int, *, keep_shards: bool = False) -> "RunPlan":
        return cls(step="shard", shards=shards, keep_shards=keep_shards, index=index)

    def at_index(self, index: int) -> "RunPlan":
        """This shard step, bound to one slice."""
        return type(self).model_validate(self.model_dump() | {"index": index})

    @property
    def layout(self) -> Literal["merged", "shards"]:
        """What is published: one dataset per text key, or one per shard and text key plus blend lists."""
        return "shards" if self.keep_shards else "merged"

    def to_json(self) -> str:
        return compact_json(self.model_dump(by_alias=True, exclude_none=True))


# ----------------------------------------------------------------------------- inputs


class JobInputs(BaseModel):
    """The work order of one job pod, as the environment carries it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: DatasetPrepSpec
    volumes: dict[str, str] = Field(description="claim name -> where the pod mounts it")
    plan: RunPlan
    name: str | None = None
    namespace: str | None = None

    def env(self) -> list[tuple[str, str]]:
        """The plain variables the operator sets (the token is a file from a Secret, never a value)."""
        env = [(ENV_SPEC, compact_json(self.spec.to_wire())), (ENV_VOLUMES, compact_json(self.volumes)),
               (ENV_RUN, self.plan.to_json())]
        if self.name is not None:
            env.append((ENV_NAME, self.name))
        if self.namespace is not None:
            env.append((ENV_NAMESPACE, self.namespace))
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "JobInputs":
        """Read the work order.

        Raises:
            ValueError: a variable is missing or malformed; the message names it.
        """
        raw = environ.get(ENV_SPEC)
        if not raw:
            raise ValueError(f"{ENV_SPEC} is not set: the operator passes the spec as JSON in it")
        try:
            spec = DatasetPrepSpec.model_validate(json.loads(raw))
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV_SPEC} is not valid JSON ({e.msg})") from None
        except ValidationError as e:
            raise ValueError(format_validation_error(e)) from None
        volumes = _json_object(environ, ENV_VOLUMES) or {spec.output.claim_name: spec.output.mount_path}
        return cls(spec=spec, volumes=volumes, plan=_plan(environ, spec), name=environ.get(ENV_NAME) or None,
                   namespace=environ.get(ENV_NAMESPACE) or None)


def _plan(environ: Mapping[str, str], spec: DatasetPrepSpec) -> RunPlan:
    raw = environ.get(ENV_RUN)
    if not raw:
        raise ValueError(f"{ENV_RUN} is not set: the operator passes the run plan as JSON in it")
    try:
        plan = RunPlan.model_validate_json(raw)
    except ValidationError as e:
        raise ValueError(f"{ENV_RUN} is not a run plan: {_validation_summary(e)}") from None
    if plan.step in ("shard", "merge") and (plan.shards, plan.keep_shards) != (spec.shards, spec.keep_shards):
        raise ValueError(f"{ENV_RUN} ({raw}) does not match the spec's shards/keepShards")
    if plan.step != "shard":
        return plan
    index = environ.get(ENV_COMPLETION_INDEX)
    if index is None or not index.isdigit():
        raise ValueError(f"a shard step needs {ENV_COMPLETION_INDEX} (shard pods run in an Indexed Job), "
                         f"got {index!r}")
    try:
        return plan.at_index(int(index))
    except ValidationError as e:
        raise ValueError(_validation_summary(e)) from None


def _json_object(environ: Mapping[str, str], name: str) -> dict[str, str]:
    raw = environ.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON ({e.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{name} must be a JSON object of strings, got {raw[:200]}")
    return value


# ----------------------------------------------------------------------------- a blend's files


class BlendSource(BaseModel):
    """One component of a blend list, as the files Job expands it (paths as the training pods see them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    share: float = Field(gt=0)
    dtype: str
    tokens: int
    prefix: str | None = None
    """Merged: the dataset prefix."""
    sequences: int | None = None
    documents: int | None = None
    blend_file: str | None = None
    """Kept shards: the component's blend list, whose prefixes start with ``list_root`` (its own pods' mount)."""
    list_root: str | None = None
    pod_root: str | None = None
    """Kept shards: where that claim is mounted in the blend's pods (``list_root`` is replaced by it)."""

    @model_validator(mode="after")
    def _one(self) -> "BlendSource":
        if (self.prefix is None) == (self.blend_file is None):
            raise ValueError("a blend source is a prefix or a blend list")
        if self.blend_file is not None and (self.list_root is None or self.pod_root is None):
            raise ValueError("a blend list needs list_root and pod_root")
        return self


class BlendOrder(BaseModel):
    """The work order of a DatasetBlend's files Job (``DATASETPREP_BLEND``): check every dataset the blend
    lists and write the trainers' files into ``folder/version``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lists: dict[Literal["all", "train", "valid", "test"], tuple[BlendSource, ...]]
    """``all`` (one distribution, cut by ``--split``) or the train/valid/test lists."""
    folder: str
    version: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    keep: tuple[str, ...] = ()
    """Other versions in ``folder`` to keep (the one the training ConfigMap names now); older ones go."""
    root: str | None = None
    """Where the claim that holds ``folder`` is mounted: ``folder`` must resolve inside it (a symbolic link
    planted on the volume cannot send the files elsewhere). None: not checked (an order of an older operator)."""
    owner: str | None = Field(default=None, pattern=r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
    """The DatasetBlend's uid. The Job marks the version it writes as this blend's and prunes only versions
    marked as this blend's, of an earlier ``generation``: two blends may name one folder, and a version's Job
    may start after its successor's. None (an order of an older operator): every version not kept that was
    there when the Job started is pruned."""
    generation: int | None = None
    """The blend's ``metadata.generation`` this order was made for."""

    def to_json(self) -> str:
        return compact_json(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "BlendOrder | None":
        """The order in the environment, or None when this Job is no blend Job.

        Raises:
            ValueError: it is not a blend order; the message says why.
        """
        raw = environ.get(ENV_BLEND)
        if not raw:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise ValueError(f"{ENV_BLEND} is not a blend order: {_validation_summary(e)}") from None


# ----------------------------------------------------------------------------- results


class _Result(BaseModel):
    """Results are snake_case on the wire. Unknown fields are ignored, so an operator reads the
    results of a newer job; absent ones are None."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class OutputFile(_Result):
    """One text key's dataset: ``{prefix}.bin/.idx`` (paths relative to the output claim), or with
    kept shards its blend list."""

    key: str
    prefix: str
    documents: int | None = None
    sequences: int | None = None
    tokens: int | None = None
    dtype: str | None = None
    bin_sha256: str | None = None
    idx_sha256: str | None = None
    blend_file: str | None = None
    """Kept shards: the blend list (``tokens prefix`` per non-empty shard)."""
    shards: int | None = None
    blend_weights: tuple[int, ...] | None = None
    """Kept shards: each shard's tokens (0: empty, not listed), when the message had room for them."""

    @model_validator(mode="before")
    @classmethod
    def _weights(cls, data: Any) -> Any:
        """Weights that are not one non-negative int per shard are left out, not an error."""
        if isinstance(data, Mapping) and data.get("blend_weights") is not None:
            weights, shards = data["blend_weights"], data.get("shards")
            if not (isinstance(weights, (list, tuple)) and len(weights) == shards
                    and all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights)):
                data = {k: v for k, v in data.items() if k != "blend_weights"}
        return data

    @property
    def kept_shards(self) -> bool:
        return self.blend_file is not None


class TokenizerInfo(_Result):
    """The tokenizer the dataset was made with; ``path`` relative to the output claim (None: the
    null tokenizer, which has no file)."""

    type: str | None = None
    path: str | None = None
    vocab_size: int | None = None
    eod_id: int | None = None
    fingerprint: str | None = None
    """The tokenizer's fingerprint (its files' content, type, vocabulary, EOD, special-token setting): equal
    fingerprints tokenize alike. A DatasetBlend compares them."""


class Published(_Result):
    """A complete dataset: every text key's output and the tokenizer, ready for training."""

    ok: Literal[True] = True
    outputs: tuple[OutputFile, ...] = Field(min_length=1)
    tokenizer: TokenizerInfo = TokenizerInfo()
    fingerprint: str | None = None
    resolved_revision: str | None = None
    """The commit sha a Hub revision resolved to."""
    reused: bool = False
    """An identical earlier output was found and nothing was redone."""


class ShardDone(_Result):
    """One slice of a sharded run is tokenized (and, with kept shards, published as its own dataset)."""

    ok: Literal[True] = True
    shard: int
    shards: int
    chunks: int
    chunks_reused: int
    """Chunks an earlier attempt had finished (not redone)."""
    documents: int
    published: bool = False
    already_published: bool = False
    fingerprint: str | None = None


class BlendWritten(_Result):
    """A DatasetBlend's files are on the volume (paths as the training pods see them)."""

    ok: Literal[True] = True
    blend_folder: str
    data_args: str | None = None
    per_split_data_args: str | None = None
    sequences: str
    datasets: int
    listing_sha256: str
    """sha256 of the data-args (or per-split) file written: the operator compares it with the list it
    computed from status, where it could."""


class Deleted(_Result):
    """The clean-up of ``spec.deleteDataOnDelete`` is done."""

    ok: Literal[True] = True
    deleted_files: int
    deleted_bytes: int


ErrorKind = Literal["permanent", "transient", "internal"]
"""Why a job failed: ``permanent`` -- the input, spec, tokenizer or access must change first;
``transient`` -- the same run may succeed later (the Hub unreachable, an I/O error, a killed worker);
``internal`` -- a bug in datasetprep."""

EXIT_PERMANENT = 3
"""The job's exit code for a ``permanent`` failure. The Job's ``podFailurePolicy`` fails the whole Job
on it at once (a retry would fail the same way); every other failure (exit 1, a signal, an eviction)
keeps the Job's retries."""
EXIT_FAILED = 1
"""The job's exit code for any other failure (``transient`` or ``internal``): worth another attempt."""


def exit_code(kind: "ErrorKind") -> int:
    """The exit code a job that failed with ``kind`` ends with."""
    return EXIT_PERMANENT if kind == "permanent" else EXIT_FAILED


class Failed(_Result):
    """The job failed; ``error`` is a message for users (what is wrong and how to fix it)."""

    ok: Literal[False] = False
    error: str
    kind: ErrorKind = "permanent"
    """An older job wrote no kind: taken as permanent, the conservative choice."""


JobResult = Union[Published, ShardDone, Deleted, BlendWritten, Failed]
RESULT_TYPES: tuple[type[_Result], ...] = (Published, ShardDone, Deleted, BlendWritten, Failed)

#: Success fields dropped, in this order, until a Published result fits: the operator can do
#: without checksums, and the blend weights stay in the blend list file on the volume.
_DROPPABLE = ("idx_sha256", "bin_sha256", "blend_weights")
TOO_BIG = "the job's result does not fit in a termination message (too many text keys?)"


def _dump(result: _Result) -> str:
    return json.dumps(result.model_dump(mode="json", exclude_none=True), separators=(",", ":"), sort_keys=True)


def _fits(text: str) -> bool:
    return len(text.encode("utf-8")) <= TERMINATION_MESSAGE_MAX_BYTES


def encode_result(result: JobResult) -> str:
    """The termination message for ``result``: compact JSON of at most 4 KiB.

    The trimming rule: a Published result that is too big loses checksums, then blend weights
    (each for every output at once) until it fits, else it becomes a Failed one; a Failed result's
    error is cut. The result passed in is left as it is.
    """
    text = _dump(result)
    if _fits(text):
        return text
    if isinstance(result, Published):
        outputs = list(result.outputs)
        for field in _DROPPABLE:
            outputs = [o.model_copy(update={field: None}) for o in outputs]
            text = _dump(result.model_copy(update={"outputs": tuple(outputs)}))
            if _fits(text):
                return text
        return _dump(Failed(error=TOO_BIG, kind="internal"))
    if isinstance(result, Failed):  # the longest head of the error that fits (JSON escapes vary in size)
        lo, hi = 0, len(result.error)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _fits(_dump(result.model_copy(update={"error": result.error[:mid] + "..."}))):
                lo = mid
            else:
                hi = mid - 1
        return _dump(result.model_copy(update={"error": result.error[:lo] + "..."}))
    return _dump(Failed(error=TOO_BIG, kind="internal"))


class UnreadableResult(ValueError):
    """A termination message that is no result the job writes."""

    def __init__(self, message: str, *, success: bool = False) -> None:
        super().__init__(message)
        self.success = success
        """It says ``"ok": true`` (then it must never be taken for anything but a broken success)."""


def decode_result(text: str) -> JobResult:
    """Read a termination message the job wrote.

    Raises:
        UnreadableResult: not a result: not JSON, cut at the size limit, a log tail, or a result whose
            fields are malformed (the message says which).
    """
    try:
        doc = json.loads(text)
    except ValueError:
        raise UnreadableResult("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise UnreadableResult("not a job result (no boolean `ok`)")
    if doc["ok"] is False:
        kind: type[_Result] = Failed
    elif "outputs" in doc:
        kind = Published
    elif "shard" in doc:
        kind = ShardDone
    elif "deleted_files" in doc:
        kind = Deleted
    elif "blend_folder" in doc:
        kind = BlendWritten
    else:
        raise UnreadableResult("no outputs", success=True)
    try:
        return kind.model_validate(doc)  # type: ignore[return-value]
    except ValidationError as e:
        raise UnreadableResult(_validation_summary(e), success=doc["ok"]) from None


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'result'}: {err['msg']}" for err in exc.errors())


# ----------------------------------------------------------------------------- progress


class ProgressRecord(BaseModel):
    """What a running job pod reports about itself (camelCase on the wire)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")

    bytes_done: int = 0
    bytes_total: int = 0
    documents: int = 0
    tokens: int = 0
    tokens_per_second: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    shard: int | None = None
    """The shard index (None: an unsharded run)."""
    time: float = 0.0
    """When it was taken (Unix seconds): the newest report of a shard wins."""

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> "ProgressRecord | None":
        """The record in ``text``, or None when there is none or it is unreadable."""
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return None

    def to_log_line(self) -> str:
        """The record as one log line: ``datasetprep-progress {json}``."""
        return PROGRESS_LOG_PREFIX + self.to_json()

    @classmethod
    def from_log_line(cls, line: str) -> "ProgressRecord | None":
        """The record on a log line written by :meth:`to_log_line`, else None."""
        if not line.startswith(PROGRESS_LOG_PREFIX):
            return None
        return cls.from_json(line[len(PROGRESS_LOG_PREFIX):].strip())


# ----------------------------------------------------------------------------- the manifest

MANIFEST_KIND = "datasetprep.io/manifest"
Layout = Literal["merged", "shard", "shards"]
"""What a manifest describes: a merged dataset per text key; one shard's own datasets (kept shards);
or the blend of every shard (kept shards, the manifest of the whole)."""


class _ManifestPart(BaseModel):
    """Manifests are snake_case JSON files next to the data; unknown fields are ignored when read."""

    model_config = ConfigDict(extra="ignore")


class ManifestTokenizer(_ManifestPart):
    type: str
    engine: str | None = None
    megatron_type: str | None = None
    path: str | None = None
    vocab_size: int | None = None
    eod_id: int | None = None
    fingerprint: str | None = None


class ManifestInput(_ManifestPart):
    files: list[str] = []
    bytes: int = 0
    sha256: str | None = None
    """sha256 over every input file's name, size and sha256, when it was computed."""


class ShardDataset(_ManifestPart):
    """One shard's dataset of a text key, as the manifest of the whole lists it (kept shards)."""

    prefix: str
    documents: int
    sequences: int
    tokens: int
    bin_bytes: int
    idx_bytes: int
    bin_sha256: str
    idx_sha256: str


class ManifestOutput(_ManifestPart):
    """One text key's output: ``prefix`` is a file name next to the manifest (no folder)."""

    key: str
    prefix: str
    documents: int
    sequences: int
    tokens: int
    dtype: str
    max_document_tokens: int = 0
    bin_bytes: int | None = None
    idx_bytes: int | None = None
    bin_sha256: str | None = None
    idx_sha256: str | None = None
    blend_file: str | None = None
    """Layout ``shards``: the blend list, and the shard datasets it lists."""
    shards: list[ShardDataset] | None = None


class ManifestStats(_ManifestPart):
    seconds: float
    workers: int
    chunks: int
    chunks_reused: int = 0


class Manifest(_ManifestPart):
    """``{prefix}.manifest.json``: what was published under a prefix, made from what. Written last:
    a manifest marks a complete output."""

    kind: Literal["datasetprep.io/manifest"] = MANIFEST_KIND
    format: Literal["MMIDIDX"] = "MMIDIDX"
    format_version: int
    datasetprep_version: str
    created: str
    layout: Layout = "merged"
    level: str
    append_eod: bool
    dtype: str
    tokenizer: ManifestTokenizer
    input: ManifestInput
    outputs: list[ManifestOutput]
    stats: ManifestStats
    fingerprint: str | None = None
    """The work fingerprint (:func:`datasetprep.hashes.work_fingerprint`): equal means the same bytes."""
    source: dict[str, Any] | None = None
    """The resolved source (Hub commit and files, or files on a volume)."""
    tokenizer_file: str | None = None
    shard: tuple[int, int] | None = None
    """Layout ``shard``: ``(index, shards)``."""
    shards: int | None = None
    """Layout ``shards``: how many."""
    work_key: str | None = None
    """Kept shards: the chunk plan's key (:func:`datasetprep.hashes.chunk_plan_key`) the shards were made from."""

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n"

    @classmethod
    def read(cls, text: str) -> "Manifest | None":
        """The manifest in ``text``, or None when it is none (missing fields, not JSON)."""
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return None
