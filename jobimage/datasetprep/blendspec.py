"""The DatasetBlend model: a training blend of Ready DatasetPreps (``datasetprep.io/v1alpha1``, short name ``dsb``).

A sibling of :mod:`datasetprep.spec` (the one DatasetPrep model) built on the same bases: the operator
reads DatasetBlends through it, and the CRD's schema is generated from it (``datasetprep_operator.crdgen``).
Cross-field rules are written twice, as pydantic validators here and as CEL rules in the generator, and
``tests/test_crd.py`` feeds both the same manifests.

Weights are **token shares**: ``weight: 3`` next to ``weight: 1`` means three quarters of the training
tokens come from the first component, whatever the sizes of the datasets. A ``fraction`` is a share of
the token budget ``totalTokens``; fractions must sum to 1 (within :data:`FRACTION_TOLERANCE`, for
decimal fractions such as 0.1 + 0.2 + 0.7 that a float does not hold exactly).
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .spec import _CONFIG_KEY, _DNS_SUBDOMAIN, Condition, TrainingConfigSpec, _Model, _Status, check_relative_path

BLEND_KIND = "DatasetBlend"
BLEND_PLURAL = "datasetblends"
BLEND_SINGULAR = "datasetblend"
BLEND_SHORT_NAMES = ["dsb"]

FRACTION_TOLERANCE = 1e-6
"""How far the fractions of one list may sum from 1 (the API server's CEL rule uses the same bound)."""
DEFAULT_SPLITS = "969,30,1"
"""Megatron-LM's long-standing ``--split`` default, used when neither ``splits`` nor ``perSplit`` is set."""
DEFAULT_MAX_EPOCHS = 4
MAX_COMPONENTS = 64
"""Components per list: bounds the CEL rules' cost; a blend of more datasets uses kept shards."""
SPLITS_PATTERN = r"^ *[0-9]+(\.[0-9]+)? *(, *[0-9]+(\.[0-9]+)? *){0,2}$"
SPLIT_NAMES = ("train", "valid", "test")
SplitName = Literal["train", "valid", "test"]


class BlendComponent(_Model):
    """One Ready DatasetPrep (one of its text keys) in the blend, with its share."""

    dataset_prep: str = Field(description="Name of a DatasetPrep in the blend's namespace.",
                              pattern=_DNS_SUBDOMAIN, max_length=253)
    text_key: str | None = Field(
        default=None, description="Which of its text keys (`source.textKeys`). Unset: its only one.",
        pattern=_CONFIG_KEY, max_length=253)
    weight: float | None = Field(
        default=None, description="Relative share of the training **tokens** (not documents, not samples): "
        "weights 3 and 1 give 75 % and 25 % of the tokens. Exclusive with `fraction`.", gt=0, le=10**12)
    fraction: float | None = Field(
        default=None, description="Share of the token budget `totalTokens`, in (0, 1]; the fractions of a list "
        "sum to 1. Exclusive with `weight`.", gt=0, le=1)

    @model_validator(mode="after")
    def _one_share(self) -> "BlendComponent":
        if (self.weight is None) == (self.fraction is None):
            raise ValueError(f"component {self.dataset_prep}: set exactly one of `weight` or `fraction`")
        return self

    @property
    def key(self) -> tuple[str, str | None]:
        return self.dataset_prep, self.text_key

    @property
    def label(self) -> str:
        """How messages name it: ``name`` or ``name/key``."""
        return self.dataset_prep if self.text_key is None else f"{self.dataset_prep}/{self.text_key}"


Components = list[BlendComponent]


def check_components(components: Components, where: str) -> Components:
    """One list's rules: no component twice, one kind of share for all, fractions summing to 1."""
    seen: set[tuple[str, str | None]] = set()
    for c in components:
        if c.key in seen:
            raise ValueError(f"{where}: {c.label} is listed twice; give it one weight")
        seen.add(c.key)
    kinds = {c.weight is None for c in components}
    if len(kinds) > 1:
        raise ValueError(f"{where}: use `weight` on every component or `fraction` on every component, not both")
    if components and components[0].fraction is not None:
        total = sum(c.fraction or 0.0 for c in components)
        if abs(total - 1.0) > FRACTION_TOLERANCE:
            raise ValueError(f"{where}: the fractions sum to {total:g}, not 1")
    return components


class PerSplitSpec(_Model):
    """Separate component lists for the train, validation and test datasets (Megatron-LM's
    `--per-split-data-args-path`, NeMo's `paths` dict): no `splits`, each list is used whole."""

    train: Components = Field(description="Components of the training set.", min_length=1,
                              max_length=MAX_COMPONENTS)
    valid: Components | None = Field(default=None, description="Components of the validation set.",
                                     min_length=1, max_length=MAX_COMPONENTS)
    test: Components | None = Field(default=None, description="Components of the test set.", min_length=1,
                                    max_length=MAX_COMPONENTS)

    @model_validator(mode="after")
    def _lists(self) -> "PerSplitSpec":
        for name in SPLIT_NAMES:
            items = getattr(self, name)
            if items is not None:
                check_components(items, f"perSplit.{name}")
        return self


class BlendFilesSpec(_Model):
    """Where the blend files (`--data-args-path`, `--per-split-data-args-path`, the per-dataset
    sequences file) are written, by a short Job of the job image."""

    claim_name: str | None = Field(default=None, description="Claim the files go to. Defaults to the first "
                                   "component's output claim.", pattern=_DNS_SUBDOMAIN, max_length=253)
    path: str | None = Field(default=None, description="Folder relative to that claim's root. Defaults to "
                             "`datasetprep-blends/<name>`; each version of the blend gets a subfolder of it.",
                             min_length=1, max_length=512)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str | None) -> str | None:
        return None if path is None else check_relative_path(path, "files.path")


class DatasetBlendSpec(_Model):
    """Blend Ready DatasetPreps into one training data mixture (Megatron-LM, NeMo 2, Megatron-Bridge)."""

    components: Components | None = Field(
        default=None, description="The datasets of one distribution, cut into train/valid/test by `splits`. "
        "Exclusive with `perSplit`.", min_length=1, max_length=MAX_COMPONENTS)
    per_split: PerSplitSpec | None = Field(
        default=None, description="Separate component lists per split instead of `components` + `splits`.")
    splits: str | None = Field(
        default=None, description=f"Megatron-LM's `--split`: train,valid,test proportions of every dataset "
        f"(by documents), e.g. `969,30,1` (the default with `components`). Not with `perSplit`.",
        pattern=SPLITS_PATTERN, max_length=64)
    total_tokens: int | None = Field(
        default=None, description="The training token budget. Required with `fraction`; with `weight` it is "
        "optional and only shows in status how many epochs of each component the budget consumes.",
        ge=1, le=10**16)
    max_epochs: float = Field(
        default=DEFAULT_MAX_EPOCHS, description="A component the budget repeats more often than this gets a "
        "Warning event and a note in status.", gt=0, le=10**6)
    mount_path: str = Field(
        default="/data", description="Where the training pods mount the data: the components' claim here; "
        "with components on several claims, each claim at `<mountPath>/<claimName>`.", pattern=r"^/.*$",
        max_length=512)
    files: BlendFilesSpec = Field(default_factory=BlendFilesSpec, description="Where the blend files go.")
    training_config: TrainingConfigSpec = Field(
        default_factory=TrainingConfigSpec, description="The ConfigMap for the training pods "
        "(`<name>-training` by default).")
    image: str | None = Field(default=None, description="Image of the Job that writes the blend files. "
                              "Defaults to the operator's job image.", max_length=1024)

    @model_validator(mode="after")
    def _shape(self) -> "DatasetBlendSpec":
        if (self.components is None) == (self.per_split is None):
            raise ValueError("set exactly one of `components` or `perSplit`")
        if self.per_split is not None and self.splits is not None:
            raise ValueError("`splits` cuts one distribution; with `perSplit` every list is used whole: drop `splits`")
        if self.components is not None:
            check_components(self.components, "components")
        if self.splits is not None and split_fractions(self.splits)[0] <= 0:
            raise ValueError(f"splits {self.splits!r} gives the training set nothing")
        if self.total_tokens is None and any(c.fraction is not None for _, c in self.all_components()):
            raise ValueError("`fraction` is a share of the token budget: set `totalTokens`, or use `weight`")
        return self

    def lists(self) -> dict[str, Components]:
        """The component lists by split name (``all`` for `components`, cut by `splits`)."""
        if self.components is not None:
            return {"all": self.components}
        assert self.per_split is not None  # _shape guarantees one of the two
        return {name: getattr(self.per_split, name) for name in SPLIT_NAMES
                if getattr(self.per_split, name) is not None}

    def all_components(self) -> list[tuple[str, BlendComponent]]:
        return [(split, c) for split, items in self.lists().items() for c in items]

    @property
    def effective_splits(self) -> str | None:
        """`splits`, or its default when the blend is cut from one distribution."""
        return None if self.per_split is not None else (self.splits or DEFAULT_SPLITS)


def split_fractions(splits: str) -> tuple[float, float, float]:
    """``"969,30,1"`` -> (0.969, 0.03, 0.001), as Megatron-Core normalises ``--split`` (missing parts are 0)."""
    parts = [float(x) for x in re.findall(r"[.0-9]+", splits)][:3]
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    if total <= 0:
        return (0.0, 0.0, 0.0)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


# --------------------------------------------------------------------------- status


class BlendComponentStatus(_Status):
    """One component as the blend uses it."""

    split: Literal["all", "train", "valid", "test"] = Field(description="`all` (cut by `splits`) or the "
                                                            "`perSplit` list it is in.")
    dataset_prep: str = Field(description="The DatasetPrep.")
    text_key: str | None = Field(default=None, description="Its text key.")
    generation: int | None = Field(default=None, description="The DatasetPrep's `metadata.generation` whose "
                                   "output the blend uses.")
    claim_name: str | None = Field(default=None, description="The claim its data is on.")
    prefix: str | None = Field(default=None, description="Its dataset prefix as the training pods see it, or its "
                               "kept shards' blend list.")
    datasets: int | None = Field(default=None, description="Datasets it adds to the blend (kept shards: one per "
                                 "non-empty shard).")
    documents: int | None = Field(default=None, description="Documents.")
    sequences: int | None = Field(default=None, description="Sequences.")
    tokens: int | None = Field(default=None, description="Tokens, EOD included.")
    weight: float | None = Field(default=None, description="`weight` as given.")
    fraction: float | None = Field(default=None, description="`fraction` as given.")
    share: float | None = Field(default=None, description="Its share of its split's tokens (weights normalised).")
    train_tokens: int | None = Field(default=None, description="Its tokens in the training set (`splits` applied).")
    epochs: float | None = Field(default=None, description="How many times the token budget reads its training "
                                 "tokens (with `totalTokens`).")
    note: str | None = Field(default=None, description="What to look at, e.g. a component repeated more than "
                             "`maxEpochs` times.")


class ClaimMount(_Status):
    """A claim the training pods mount, and where."""

    claim_name: str = Field(description="PersistentVolumeClaim.")
    mount_path: str = Field(description="Where the training pods mount it.")


class BlendFilesStatus(_Status):
    """The blend files on the volume, as the training pods see them."""

    claim_name: str | None = Field(default=None, description="Claim they are on.")
    folder: str | None = Field(default=None, description="Their folder.")
    data_args: str | None = Field(default=None, description="`--data-args-path` file (`components`).")
    per_split_data_args: str | None = Field(default=None, description="`--per-split-data-args-path` file "
                                            "(`perSplit`).")
    sequences: str | None = Field(default=None, description="`--per-dataset-sequences-path` file.")
    digest: str | None = Field(default=None, description="Content address of this version of the blend.")
    datasets: int | None = Field(default=None, description="Dataset prefixes listed.")


class DatasetBlendStatus(_Status):
    """Observed state, written by the operator."""

    observed_generation: int | None = Field(default=None, description="Last generation acted upon.")
    conditions: list[Condition] | None = Field(default=None, description="`Ready`, `Reconciling`, `Stalled`.")
    message: str | None = Field(default=None, description="Last notable message.")
    component_count: int | None = Field(default=None, description="Components (the `kubectl get dsb` column).")
    tokens: int | None = Field(default=None, description="Tokens of the blended datasets, each counted once.")
    datasets: int | None = Field(default=None, description="Dataset prefixes in the blend (kept shards "
                                 "expanded).")
    components: list[BlendComponentStatus] | None = Field(default=None, description="Each component: the "
                                                          "generation used, tokens, share, epochs.")
    claims: list[ClaimMount] | None = Field(default=None, description="What the training pods must mount.")
    files: BlendFilesStatus | None = Field(default=None, description="The blend files on the volume.")
    files_job: str | None = Field(default=None, description="The Job writing (or that wrote) the files.")
    config_map_name: str | None = Field(default=None, description="The training ConfigMap, once written.")
    notes: list[str] | None = Field(default=None, description="Warnings about the blend (repeated data, "
                                    "formats left out).")


def parse_blend_spec(data: dict) -> DatasetBlendSpec:
    """Validate a DatasetBlend spec dict (camelCase); raises pydantic.ValidationError."""
    return DatasetBlendSpec.model_validate(data)
