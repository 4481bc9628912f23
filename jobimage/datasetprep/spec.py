"""The one DatasetPrep spec model.

This module is the single source of truth for what a ``DatasetPrep`` (``datasetprep.io/v1alpha1``)
says.  The operator reads custom resources through it, the job pods and ``datasetprep run`` read
their work order through it, and the CRD's OpenAPI schema is generated from it
(``datasetprep_operator.crdgen``), so the three cannot drift.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.  Every
field has a description: it becomes the text that ``kubectl explain`` prints.  Cross-field rules
are written twice on purpose, once as a pydantic validator (for ``datasetprep run`` and the job) and
once as a CEL rule in ``x-kubernetes-validations`` (for the API server), and a test checks both
reject the same manifests.
"""
from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator,
                      model_validator)
from pydantic.alias_generators import to_camel

from .limits import DEFAULT_MAX_DOCUMENT_BYTES, MAX_MAX_DOCUMENT_BYTES, MIN_MAX_DOCUMENT_BYTES

GROUP = "datasetprep.io"
VERSION = "v1alpha1"
KIND = "DatasetPrep"
PLURAL = "datasetpreps"
SINGULAR = "datasetprep"
SHORT_NAMES = ["dsp"]
API_VERSION = f"{GROUP}/{VERSION}"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"


class _Model(BaseModel):
    """Base: camelCase aliases, unknown fields refused (a typo is an error, not a silent no-op)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dict as it appears in the custom resource (unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def check_relative_path(value: str, what: str) -> str:
    """Refuse absolute paths and any ``..`` segment: outputs stay inside their volume."""
    if not value or value.startswith("/"):
        raise ValueError(f"{what} must be a relative path inside the volume, got {value!r}")
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"{what} must not contain '..' segments, got {value!r}")
    if posixpath.normpath(value) in (".", ""):
        raise ValueError(f"{what} must name a file or prefix, got {value!r}")
    return value


# CEL twin of check_relative_path, used by the CRD generator.
CEL_RELATIVE_PATH = "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')"


class HubRepo(_Model):
    """A repository on the HuggingFace Hub (or a compatible endpoint)."""

    repo: str = Field(
        description="Repository id on the Hub, e.g. `wikitext` or `meta-llama/Llama-3.1-8B`.",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
    )
    revision: str = Field(
        default="main",
        description="Branch, tag or commit sha. It is resolved to a commit sha at run time and "
        "the sha is recorded in status and in the output manifest.",
        min_length=1,
        max_length=200,
    )


class HubDatasetSource(HubRepo):
    """A dataset repository on the Hub."""

    subset: str | None = Field(
        default=None,
        description="Dataset configuration (subset) name, e.g. `wikitext-103-v1`. Leave unset for "
        "datasets with a single configuration.",
        max_length=200,
    )
    split: str = Field(default="train", description="Split to read, e.g. `train`.", min_length=1, max_length=200)
    data_files: list[str] | None = Field(
        default=None,
        description="Optional glob patterns of data files inside the repository (Parquet or "
        "JSON Lines), instead of the subset's own file list.",
        max_length=1000,
    )
    streaming: bool = Field(
        default=False,
        description="Read the data files over the network as they are tokenized instead of "
        "downloading them to the cache on the output volume first. Downloads are reused by "
        "later runs; streaming is not.",
    )


class FilesSource(_Model):
    """Files that are already on a volume."""

    claim_name: str | None = Field(
        default=None,
        description="PersistentVolumeClaim that holds the files. Defaults to `output.claimName`.",
        pattern=_DNS_SUBDOMAIN,
        max_length=253,
    )
    paths: list[str] = Field(
        description="Paths or glob patterns relative to the volume root. Supported: JSON Lines "
        "(`.jsonl`, `.json`, optionally `.gz` or `.zst`), Parquet (`.parquet`), and folders "
        "written by `datasets.Dataset.save_to_disk`. Matches are read in sorted order. A path that exists "
        "is taken literally, even with `[`, `*` or `?` in its name; write `[[]` for a literal `[` in a glob.",
        min_length=1,
        max_length=1000,
    )

    @field_validator("paths")
    @classmethod
    def _relative(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if len(p) > 4096:
                raise ValueError("source.files.paths entries are at most 4096 characters")
            check_relative_path(p, "source.files.paths entry")
        return paths


class SourceSpec(_Model):
    """Where the text comes from: exactly one of `hub` or `files`."""

    hub: HubDatasetSource | None = Field(default=None, description="A dataset on the HuggingFace Hub.")
    files: FilesSource | None = Field(default=None, description="Files already on a volume.")
    text_keys: list[str] = Field(
        default_factory=lambda: ["text"],
        description="Record fields to tokenize. Each key becomes its own output "
        "`{prefix}_{key}_document.bin/.idx`, as Megatron-LM's `--json-keys` does.",
        min_length=1,
        max_length=16,
    )

    @field_validator("text_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        if len(set(keys)) != len(keys):
            raise ValueError(f"source.textKeys has duplicates: {keys}")
        for k in keys:
            if not re.match(_CONFIG_KEY, k):
                raise ValueError(f"source.textKeys entry {k!r} may only hold letters, digits, '-', '_' and '.'")
        return keys

    @model_validator(mode="after")
    def _one_kind(self) -> "SourceSpec":
        if (self.hub is None) == (self.files is None):
            raise ValueError("source must set exactly one of `hub` or `files`")
        return self


class VolumePath(_Model):
    """A file on a volume."""

    claim_name: str | None = Field(
        default=None,
        description="PersistentVolumeClaim that holds the file. Defaults to `output.claimName`.",
        pattern=_DNS_SUBDOMAIN,
        max_length=253,
    )
    path: str = Field(description="Path relative to the volume root.", min_length=1, max_length=1024)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        return check_relative_path(path, "tokenizer.path.path")


class HubTokenizerSource(HubRepo):
    """Tokenizer files in a model repository on the Hub."""

    file: str | None = Field(
        default=None,
        description="The tokenizer file: `tokenizer.model` (SentencePiece or tiktoken BPE ranks) "
        "or `tokenizer.json`. Unset: `tokenizer.json` if the repo has one, else `tokenizer.model`. "
        "`tokenizer_config.json` and `special_tokens_map.json` are fetched alongside when present.",
        max_length=1024,
    )


TokenizerType = Literal["auto", "sentencepiece", "huggingface", "tiktoken", "null"]


class TokenizerSpec(_Model):
    """The tokenizer: exactly one of `hub` or `path`, except for type `null`."""

    type: TokenizerType = Field(
        default="auto",
        description="`sentencepiece` (a SentencePiece `.model`), `huggingface` (a `tokenizer.json` "
        "or a folder with one), `tiktoken` (a BPE rank file such as Llama 3's `tokenizer.model`), "
        "`null` (Megatron's NullTokenizer: the text is space-separated ids) or `auto` (detected "
        "from the file's content).",
    )
    hub: HubTokenizerSource | None = Field(default=None, description="Tokenizer files from a Hub model repository.")
    path: VolumePath | None = Field(default=None, description="A tokenizer file on a volume.")
    vocab_size: int | None = Field(
        default=None,
        description="Vocabulary size for the `null` tokenizer (required there). For other types it "
        "is read from the tokenizer and this field must be unset.",
        ge=1,
        le=2**31 - 1,
    )
    eod_id: int | None = Field(
        default=None,
        description="Override the end-of-document token id. By default it comes from the "
        "tokenizer (SentencePiece `eos_id`, the HF `eos_token`, tiktoken `<|end_of_text|>`/"
        "`<|endoftext|>`, null: `vocabSize - 1`).",
        ge=0,
        le=2**31 - 1,
    )
    add_special_tokens: bool = Field(
        default=True,
        description="HF tokenizers only: add the post-processor's special tokens (e.g. Llama's "
        "BOS on every document), as Megatron-LM does. Set false for NeMo's behaviour "
        "(`--tokenizer-hf-no-include-special-tokens`).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "TokenizerSpec":
        if self.type == "null":
            if self.hub is not None or self.path is not None:
                raise ValueError("tokenizer type `null` takes no `hub` or `path`")
            if self.vocab_size is None:
                raise ValueError("tokenizer type `null` needs `vocabSize`")
        else:
            if (self.hub is None) == (self.path is None):
                raise ValueError("tokenizer must set exactly one of `hub` or `path`")
            if self.vocab_size is not None:
                raise ValueError("tokenizer.vocabSize is only for type `null`; other tokenizers report their own")
        return self


class OutputSpec(_Model):
    """Where the dataset is written."""

    claim_name: str = Field(
        description="PersistentVolumeClaim the dataset is written to (ReadWriteMany to share it "
        "with the training pods).",
        pattern=_DNS_SUBDOMAIN,
        max_length=253,
    )
    prefix: str = Field(
        description="Output prefix relative to the volume root, e.g. `llama_dataset` gives "
        "`llama_dataset_text_document.bin/.idx`. No leading `/` and no `..`.",
        min_length=1,
        max_length=512,
    )
    mount_path: str = Field(
        default="/data",
        description="Where the job pods and the training pods mount the claim.",
        pattern=r"^/.*$",
        max_length=512,
    )

    @field_validator("prefix")
    @classmethod
    def _relative(cls, prefix: str) -> str:
        check_relative_path(prefix, "output.prefix")
        if prefix.endswith(("/", "/.")):
            raise ValueError(f"output.prefix names a folder ({prefix!r}): give a file prefix in it, e.g. "
                             f"{prefix.rstrip('/.') + '/dataset'!r}")
        return prefix


# CEL twin of OutputSpec._relative's folder check, used by the CRD generator.
CEL_NOT_A_FOLDER = "!self.endsWith('/') && !self.endsWith('/.')"


class SecretKeyRef(_Model):
    """A key in a Secret in the resource's namespace."""

    name: str = Field(description="Secret name.", pattern=_DNS_SUBDOMAIN, max_length=253)
    key: str = Field(default="token", description="Key in the Secret.", pattern=_CONFIG_KEY, max_length=253)


class TrainingConfigSpec(_Model):
    """The ConfigMap written for the training pods once the data is complete."""

    config_map_name: str | None = Field(
        default=None,
        description="Name of the ConfigMap. Defaults to `<name>-training`.",
        pattern=_DNS_SUBDOMAIN,
        max_length=253,
    )


#: A Kubernetes resource quantity (``resource.Quantity``'s syntax: ``500m``, ``2``, ``4Gi``, ``1e9``).
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY, max_length=64)]


class ResourcesSpec(_Model):
    """Compute resources of each job pod (Kubernetes quantities). Each value given here replaces the
    operator's default for that resource (chart value ``jobResources``); the others keep it."""

    requests: dict[str, Quantity] | None = Field(
        default=None, description="e.g. `{cpu: \"4\", memory: 4Gi}`.", max_length=16)
    limits: dict[str, Quantity] | None = Field(
        default=None, description="e.g. `{memory: 8Gi, ephemeral-storage: 20Gi}`. A pod that goes over its memory "
        "limit is killed (OOMKilled); one whose `/tmp` and logs go over `ephemeral-storage` is evicted.",
        max_length=16)
    tmp_size_limit: Quantity | None = Field(
        default=None, description="Size limit of the job pod's `/tmp` (an emptyDir: the Hub client's downloads of "
        "a streamed source, temporary files). Going over it gets the pod evicted. Default: the operator's "
        "(chart value `jobTmpSizeLimit`).")


class PodSecuritySpec(_Model):
    """Who the job pods run as: always non-root. For a volume whose ownership `fsGroup` does not change
    (NFS, hostPath): run as the owner of the output folder, or in its group if it is group-writable."""

    run_as_user: int | None = Field(default=None, description="uid of the job pods. Default: 65532.",
                                    ge=1, le=2147483647)
    run_as_group: int | None = Field(default=None, description="Primary gid of the job pods, also their `fsGroup`. "
                                     "Default: 65532.", ge=1, le=2147483647)
    supplemental_groups: list[Annotated[int, Field(ge=1, le=2147483647)]] | None = Field(
        default=None, description="Further groups of the job pods, e.g. the group of a group-writable NFS export.",
        max_length=32)


class DatasetPrepSpec(_Model):
    """Turn a dataset into a Megatron-LM / NeMo indexed dataset (`.bin` + `.idx`)."""

    source: SourceSpec = Field(description="Where the text comes from.")
    tokenizer: TokenizerSpec = Field(description="The tokenizer.")
    output: OutputSpec = Field(description="Where the dataset is written.")
    append_eod: bool = Field(
        default=True,
        description="Append the end-of-document token to every non-empty document "
        "(Megatron-LM's `--append-eod`). Pretraining needs it; NeMo's guide forgets it.",
    )
    workers: int = Field(default=2, description="Tokenizer processes per job pod.", ge=1, le=256)
    shards: int = Field(
        default=1,
        description="Number of slices the input is cut into, each processed by one pod of an "
        "Indexed Job. The output bytes do not depend on it.",
        ge=1,
        le=10000,
    )
    parallelism: int | None = Field(
        default=None, description="How many shard pods run at once. Defaults to `shards`.", ge=1, le=10000
    )
    keep_shards: bool = Field(
        default=False,
        description="With `shards` > 1: skip the merge. Each shard pod publishes its own dataset "
        "`{prefix}_shard{i:05d}_{key}_document`, and the last step writes the blend list "
        "`{prefix}_{key}_document.blend.txt` (`tokens prefix` per shard, for Megatron-LM's `--data-args-path`); "
        "the training ConfigMap names the blend instead of one prefix. Same tokens, no final copy of the "
        "whole dataset; the sample order then comes from Megatron's blending, not from one file.",
    )
    max_document_bytes: int = Field(
        default=DEFAULT_MAX_DOCUMENT_BYTES,
        description="The largest document read, in bytes: one JSON Lines line, or the text fields of one "
        "Parquet/Arrow row. A larger one fails the run with its file and line, as soon as that much of it "
        "was read (a corrupt file without line ends does not fill the memory). Raise it for genuinely huge "
        "documents; the job pods need memory for a few times this size.",
        ge=MIN_MAX_DOCUMENT_BYTES,
        le=MAX_MAX_DOCUMENT_BYTES,
    )
    resources: ResourcesSpec | None = Field(default=None, description="Resources of each job pod.")
    security_context: PodSecuritySpec | None = Field(
        default=None, description="The uid, gid and groups the job pods run as (non-root), for volumes whose "
        "permissions `fsGroup` cannot change, e.g. NFS exports. See docs/security.md.")
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding a HuggingFace token, for gated or private repositories. It "
        "reaches the job pods only as a read-only file from a Secret volume (`HF_TOKEN_FILE`), never as an "
        "environment variable; it is never copied anywhere.",
    )
    training_config: TrainingConfigSpec = Field(
        default_factory=TrainingConfigSpec, description="The ConfigMap for the training pods."
    )
    delete_data_on_delete: bool = Field(
        default=False,
        description="Delete the dataset files when the DatasetPrep is deleted: a finalizer holds the resource "
        "while a clean-up Job removes what the output's manifests list (never inputs, tokenizers or other "
        "files). The data is kept when another DatasetPrep reuses it. By default the data is kept.",
    )
    backoff_limit: int = Field(
        default=2, description="Retries of a failed job pod (per shard index when `shards` > 1).", ge=0, le=100
    )
    reuse: Literal["IfIdentical", "Never"] = Field(
        default="IfIdentical",
        description="`IfIdentical`: when another DatasetPrep in the namespace already produced the same data "
        "(same source, tokenizer, text keys, EOD setting and output claim) and is Ready, point at its output "
        "instead of launching a Job. Files on a volume are trusted not to have changed since; use `Never` "
        "to always run. Within a run, an output whose manifest fingerprint matches is never redone.",
    )
    image: str | None = Field(
        default=None, description="Job image override. Defaults to the operator's configured job image.",
        max_length=1024,
    )

    @model_validator(mode="after")
    def _cross(self) -> "DatasetPrepSpec":
        if self.parallelism is not None and self.parallelism > self.shards:
            raise ValueError(f"parallelism ({self.parallelism}) cannot exceed shards ({self.shards})")
        if self.keep_shards and self.shards < 2:
            raise ValueError("keepShards needs shards > 1 (with one shard there is nothing to merge): "
                             "set shards, or drop keepShards")
        return self


class _Status(_Model):
    """Base of the status models: unknown fields are refused when the operator builds a status (a
    misspelt field is an error in its tests, not pruned by the API server), and dropped when it
    reads one back (:meth:`read`: the API server's copy also holds kopf's bookkeeping)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_when_reading(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and (info.context or {}).get("read"):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            data = {k: v for k, v in data.items() if k in known}
        return data

    @classmethod
    def read(cls, data: Any) -> Any:
        """The model of a status as stored (camelCase), unknown fields dropped at every level."""
        return cls.model_validate(data or {}, context={"read": True})

    def to_patch(self) -> dict[str, Any]:
        """camelCase, only the fields that were set: one set to None is None (a merge patch deletes it)."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


class Condition(_Status):
    """A kstatus-compatible condition."""

    type: str = Field(description="`Ready`, `Reconciling` or `Stalled`.")
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    observed_generation: int | None = Field(default=None, description="Generation the condition is about.")
    last_transition_time: str | None = Field(default=None, description="When the status last changed.")


class OutputTokenizerStatus(_Status):
    """The tokenizer the published dataset was made with, as the job reported it."""

    type: str | None = Field(default=None, description="Tokenizer type (`sentencepiece`, `huggingface`, ...).")
    path: str | None = Field(default=None, description="The tokenizer file as the training pods see it.")
    vocab_size: int | None = Field(default=None, description="Vocabulary size.")
    eod_id: int | None = Field(default=None, description="End-of-document token id.")
    fingerprint: str | None = Field(default=None, description="Fingerprint of the tokenizer (its files' content, "
                                    "type, vocabulary, EOD and special-token setting): datasets with equal "
                                    "fingerprints were tokenized alike, which a DatasetBlend checks.")


class OutputFileStatus(_Status):
    """One text key's dataset, as the job reported it."""

    key: str = Field(description="The text key.")
    prefix: str | None = Field(default=None, description="Dataset path prefix as the training pods see it.")
    documents: int | None = Field(default=None, description="Documents.")
    sequences: int | None = Field(default=None, description="Sequences.")
    tokens: int | None = Field(default=None, description="Tokens, EOD included.")
    dtype: str | None = Field(default=None, description="Token dtype.")
    bin_sha256: str | None = Field(default=None, description="sha256 of the `.bin` file.")
    idx_sha256: str | None = Field(default=None, description="sha256 of the `.idx` file.")
    blend_file: str | None = Field(default=None, description="Kept shards: the blend list, as the training pods "
                                   "see it.")
    shards: int | None = Field(default=None, description="Kept shards: how many.")
    shard_tokens: list[int] | None = Field(default=None, description="Kept shards: each shard's tokens (the blend "
                                           "weights), when the job could report them.")


class OutputStatus(_Status):
    """Facts about the published dataset, copied from the job's manifest."""

    layout: Literal["Merged", "Shards"] | None = Field(
        default=None, description="`Merged`: one dataset per text key. `Shards` (`spec.keepShards`): one dataset "
        "per shard and text key, listed in a blend file.")
    prefix: str | None = Field(
        default=None, description="Dataset path prefix as the training pods see it (layout `Merged`).")
    blend_file: str | None = Field(
        default=None, description="Blend list of the shard datasets, as the training pods see it (layout "
        "`Shards`): `tokens prefix` pairs, for Megatron-LM's `--data-args-path`.")
    claim_name: str | None = Field(default=None, description="Claim that holds it.")
    documents: int | None = Field(default=None, description="Documents.")
    sequences: int | None = Field(default=None, description="Sequences.")
    tokens: int | None = Field(default=None, description="Tokens, EOD included.")
    dtype: str | None = Field(default=None, description="Token dtype (`uint16` or `int32`).")
    files: list[OutputFileStatus] | None = Field(
        default=None, description="One entry per text key: prefix, counts and sha256 of `.bin` and `.idx`; with "
        "kept shards: blend file, shards and each shard's tokens (`shardTokens`, when the job could report them)."
    )
    fingerprint: str | None = Field(default=None, description="Content fingerprint of the work.")
    reused: bool | None = Field(default=None, description="True when an earlier identical output was reused.")
    reused_from: str | None = Field(
        default=None,
        description="The DatasetPrep (same namespace) whose output this one points at, when `spec.reuse: "
        "IfIdentical` found an identical Ready one and no Job was launched.",
    )
    tokenizer: OutputTokenizerStatus | None = Field(default=None, description="The tokenizer it was made with.")


class ProgressStatus(_Status):
    """Live progress, aggregated over the job pods."""

    percent: int | None = Field(default=None, description="Percent of input bytes done.")
    summary: str | None = Field(default=None, description="Short text for `kubectl get`, e.g. `42%`.")
    documents: int | None = Field(default=None, description="Documents done.")
    tokens: int | None = Field(default=None, description="Tokens written.")
    bytes_done: int | None = Field(default=None, description="Input bytes done.")
    bytes_total: int | None = Field(default=None, description="Input bytes in all.")
    tokens_per_second: int | None = Field(default=None, description="Current rate.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")
    shards_done: int | None = Field(default=None, description="Shards complete.")
    shards_total: int | None = Field(default=None, description="Shards in all.")


class DatasetPrepStatus(_Status):
    """Observed state, written by the operator."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"] | None = Field(
        default=None, description="`Pending`, `Running`, `Succeeded` or `Failed`."
    )
    observed_generation: int | None = Field(default=None, description="Last generation acted upon.")
    conditions: list[Condition] | None = Field(default=None, description="`Ready`, `Reconciling`, `Stalled`.")
    message: str | None = Field(default=None, description="Last notable message.")
    job_name: str | None = Field(default=None, description="The current Job.")
    config_map_name: str | None = Field(default=None, description="The training ConfigMap, once written.")
    start_time: str | None = Field(default=None, description="When the current run started.")
    completion_time: str | None = Field(default=None, description="When it completed.")
    resolved_revision: str | None = Field(default=None, description="Commit sha the Hub revision resolved to.")
    output: OutputStatus | None = Field(default=None, description="The published dataset.")
    reuse_key: str | None = Field(
        default=None,
        description="Content address of the current spec's output (source, text keys, tokenizer, EOD setting, "
        "output claim, format version): DatasetPreps with equal keys produce identical data.",
    )
    progress: ProgressStatus | None = Field(default=None, description="Live progress.")
    attempt: int | None = Field(
        default=None,
        description="Which attempt of the current Job is running: 1 for the first; every failed pod of the run "
        "adds one (a sharded run counts the failed pods of all shards).",
    )
    last_failure: str | None = Field(
        default=None,
        description="Why the last failed attempt of the current run failed (the job's own error); the Job "
        "retries while `spec.backoffLimit` allows and the error is not permanent.",
    )
    observed_retry: str | None = Field(
        default=None,
        description="The `datasetprep.io/retry` annotation value the current run was started for (a new "
        "value starts a new run of the same spec).",
    )


def parse_spec(data: dict[str, Any]) -> DatasetPrepSpec:
    """Validate a spec dict (camelCase, as in the resource); raises pydantic.ValidationError."""
    return DatasetPrepSpec.model_validate(data)


def format_validation_error(exc: Exception) -> str:
    """One line per problem, with the camelCase field path, for users (not a traceback)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"spec.{loc}: {msg}" if loc else f"spec: {msg}")
    return "; ".join(lines)
