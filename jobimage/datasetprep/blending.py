"""The token arithmetic of a DatasetBlend: pure functions from the spec and the components' facts.

What goes in: the :class:`~datasetprep.blendspec.DatasetBlendSpec` and, per component, a
:class:`ComponentData` (what a Ready DatasetPrep's status says of one text key, paths relative to
its claim). What comes out: a :class:`BlendPlan` -- every dataset prefix as the training pods see
it with its weight, each component's share, training tokens and epochs under the budget, the claims
to mount, and the notes worth a warning -- or a list of differences that make the blend impossible
(:func:`differences`).

Weights are token shares. A component's share is its weight over the sum of its list's weights (or
its fraction over the fractions' sum, which is 1 within float error). Megatron-Core's
``BlendedDataset`` draws fixed-length samples from each dataset in proportion to the weights, so a
share of the weights is a share of the training tokens. A kept-shards component is expanded into its
shard datasets, each weighted by the component's share times the shard's part of the component's
tokens; empty shards are left out, as the job's own blend list does.

Standard library and the core models only: the operator imports this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence

from .blendspec import BlendComponent, DatasetBlendSpec, split_fractions
from .naming import dataset_prefix as dataset_name, shard_prefix

ROUND_SHARE = 6
ROUND_EPOCHS = 3
UINT16_LIMIT = 65536
"""Megatron-Core's ``GPTDatasetConfig`` reads token ids as int32 above this vocabulary size, uint16 at or
below it, when the per-dataset sequences file skips reading each index header."""


@dataclasses.dataclass(frozen=True)
class TokenizerFacts:
    type: str | None = None
    vocab_size: int | None = None
    eod_id: int | None = None
    fingerprint: str | None = None
    path: str | None = None
    """The tokenizer file relative to the component's claim (None: the null tokenizer)."""

    def describe(self) -> str:
        head = f"{self.type or 'unknown'} tokenizer"
        if self.fingerprint:
            head += f" {self.fingerprint[:12]}"
        return f"{head} (vocab {self.vocab_size}, EOD {self.eod_id})"

    def same_as(self, other: "TokenizerFacts") -> bool:
        """Equal fingerprints (the files' content, the type, vocabulary, EOD and special-token setting); where
        one side has none (made by an older operator), equal type, vocabulary and EOD."""
        if self.fingerprint and other.fingerprint:
            return self.fingerprint == other.fingerprint
        return (self.type, self.vocab_size, self.eod_id) == (other.type, other.vocab_size, other.eod_id)


@dataclasses.dataclass(frozen=True)
class ComponentData:
    """One text key of a Ready DatasetPrep, as its status and spec describe it (paths relative to its claim)."""

    name: str
    text_key: str
    generation: int | None
    claim: str
    tokens: int
    documents: int | None
    sequences: int | None
    dtype: str | None
    tokenizer: TokenizerFacts
    append_eod: bool
    prefix: str | None = None
    """Merged layout: the dataset prefix."""
    blend_file: str | None = None
    """Kept shards: the job's blend list of the shard datasets."""
    shard_tokens: tuple[int, ...] | None = None
    """Kept shards: each shard's tokens, when the job could report them (else only the blend list has them)."""
    mount_path: str = "/data"
    """Where the DatasetPrep's own pods mount its claim (its blend list's prefixes start with it)."""

    @property
    def kept_shards(self) -> bool:
        return self.blend_file is not None

    def shard_datasets(self) -> list[tuple[str, int]]:
        """Kept shards with known tokens: (relative prefix, tokens) of each non-empty shard, in order."""
        assert self.blend_file is not None and self.shard_tokens is not None
        base = self.blend_file.removesuffix(".blend.txt").removesuffix(dataset_name("", self.text_key))
        return [(dataset_name(shard_prefix(base, i), self.text_key), t)
                for i, t in enumerate(self.shard_tokens) if t]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One prefix of the blend as the training pods see it, with its weight (a token share)."""

    weight: float
    prefix: str
    component: str
    tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class ComponentEntry:
    """A component in a list, with what the files Job needs to expand it."""

    split: str
    component: BlendComponent
    data: ComponentData
    share: float
    pod_prefix: str | None
    """Merged: the prefix as the training pods see it."""
    pod_blend_file: str | None
    """Kept shards: the blend list as the training pods see it (its prefixes are the component's own pods')."""
    datasets: tuple[Dataset, ...] | None
    """The expanded datasets, or None for kept shards whose tokens only the blend list holds."""


@dataclasses.dataclass(frozen=True)
class ComponentFigures:
    train_tokens: int | None
    epochs: float | None
    note: str | None


@dataclasses.dataclass(frozen=True)
class BlendPlan:
    """Everything the blend's files, ConfigMap and status say, decided once."""

    splits: str | None
    """Megatron's ``--split`` (one distribution), or None (``perSplit``)."""
    lists: dict[str, tuple[ComponentEntry, ...]]
    """``all``, or ``train``/``valid``/``test``."""
    figures: dict[tuple[str, str, str], ComponentFigures]
    """By (list, DatasetPrep, text key)."""
    mounts: dict[str, str]
    """claim -> where the training pods mount it."""
    tokenizer: TokenizerFacts
    tokenizer_claim: str
    dtype: str | None
    notes: tuple[str, ...]
    fast_path: bool
    """The per-dataset sequences file is safe to hand Megatron-LM (its dtype rule agrees with the data)."""

    def datasets(self, split: str) -> list[Dataset] | None:
        """The expanded (weight, prefix) list of one list, or None when a kept-shards component's tokens are
        only in its blend list on the volume."""
        out: list[Dataset] = []
        for entry in self.lists.get(split, ()):
            if entry.datasets is None:
                return None
            out.extend(entry.datasets)
        return out

    @property
    def expanded(self) -> bool:
        return all(self.datasets(s) is not None for s in self.lists)

    def tokens(self) -> int:
        """Tokens of the distinct datasets blended (a component in several lists counts once)."""
        seen = {(e.data.name, e.data.text_key): e.data.tokens for entries in self.lists.values() for e in entries}
        return sum(seen.values())

    def components(self) -> int:
        return len({(e.data.name, e.data.text_key) for entries in self.lists.values() for e in entries})


# --------------------------------------------------------------------------- mounts and paths


def claim_mounts(claims: Sequence[str], mount_path: str) -> dict[str, str]:
    """Where the training pods mount each claim: the only one at ``mount_path``, several each at
    ``mount_path/<claim>`` (in the order given)."""
    unique = list(dict.fromkeys(claims))
    if len(unique) == 1:
        return {unique[0]: mount_path}
    return {c: posixpath.join(mount_path, c) for c in unique}


def pod_path(mounts: Mapping[str, str], claim: str, relative: str) -> str:
    return posixpath.join(mounts[claim], relative)


# --------------------------------------------------------------------------- checks


def differences(components: Sequence[ComponentData]) -> list[str]:
    """What makes these datasets unfit to train one model on together, one sentence each (empty: fine).

    Tokenizer (fingerprint of its files and settings; type, vocabulary and EOD where a fingerprint is
    missing), token dtype and the EOD setting must be the same for all.
    """
    out: list[str] = []
    groups: list[tuple[TokenizerFacts, list[str]]] = []
    for c in components:
        for tok, names in groups:
            if tok.same_as(c.tokenizer):
                names.append(label(c))
                break
        else:
            groups.append((c.tokenizer, [label(c)]))
    if len(groups) > 1:
        out.append("different tokenizers: " + "; ".join(f"{', '.join(n)} use{'s' if len(n) == 1 else ''} "
                                                        f"{tok.describe()}" for tok, n in groups))
    for what, value in (("token dtypes", lambda c: c.dtype or "unknown"),
                        ("EOD settings", lambda c: "appendEod: true" if c.append_eod else "appendEod: false")):
        by: dict[str, list[str]] = {}
        for c in components:
            by.setdefault(value(c), []).append(label(c))
        if len(by) > 1:
            out.append(f"different {what}: " + "; ".join(f"{', '.join(n)}: {v}" for v, n in by.items()))
    return out


def label(c: ComponentData) -> str:
    return f"{c.name}/{c.text_key}"


def whitespace_paths(paths: Sequence[str]) -> list[str]:
    """Paths Megatron-LM cannot read from a data-args file (it splits the file on whitespace)."""
    return [p for p in paths if any(ch.isspace() for ch in p)]


def fast_path_dtype(vocab_size: int | None) -> str | None:
    """The dtype Megatron-Core assumes for ``--per-dataset-sequences-path`` (None: it refuses the file)."""
    if vocab_size is None:
        return None
    return "int32" if vocab_size > UINT16_LIMIT else "uint16"


# --------------------------------------------------------------------------- the plan


def shares(components: Sequence[BlendComponent]) -> list[float]:
    """Each component's share of its list's tokens: weights (or fractions) normalised to sum to 1."""
    raw = [c.weight if c.weight is not None else (c.fraction or 0.0) for c in components]
    total = sum(raw)
    return [r / total for r in raw]


def expand(share: float, data: ComponentData, mounts: Mapping[str, str]) -> tuple[Dataset, ...] | None:
    """The datasets a component adds: its prefix with its share, or (kept shards) each non-empty shard with
    ``share * shard tokens / component tokens``; None when the shards' tokens are unknown here."""
    name = label(data)
    if not data.kept_shards:
        assert data.prefix is not None
        return (Dataset(share, pod_path(mounts, data.claim, data.prefix), name, data.tokens),)
    if data.shard_tokens is None:
        return None
    shards = data.shard_datasets()
    total = sum(t for _, t in shards)
    return tuple(Dataset(share * t / total, pod_path(mounts, data.claim, p), name, t) for p, t in shards)


def plan(spec: DatasetBlendSpec, data: Mapping[tuple[str, str | None], ComponentData],
         files_claim: str | None = None) -> BlendPlan:
    """The blend, once every component is known to be Ready and compatible (see :func:`differences`).

    Args:
        data: by the spec's ``(datasetPrep, textKey)``, for every component of every list.
        files_claim: the claim the blend files go to, when it holds no component (it is mounted too).
    """
    ordered = [data[c.key] for _, c in spec.all_components()]
    mounts = claim_mounts([d.claim for d in ordered] + ([files_claim] if files_claim else []), spec.mount_path)
    lists: dict[str, tuple[ComponentEntry, ...]] = {}
    for split, items in spec.lists().items():
        entries = []
        for comp, share in zip(items, shares(items)):
            d = data[comp.key]
            entries.append(ComponentEntry(
                split=split, component=comp, data=d, share=share,
                pod_prefix=pod_path(mounts, d.claim, d.prefix) if d.prefix else None,
                pod_blend_file=pod_path(mounts, d.claim, d.blend_file) if d.blend_file else None,
                datasets=expand(share, d, mounts)))
        lists[split] = tuple(entries)
    first = ordered[0]
    figures, notes = _figures(spec, lists)
    fast = fast_path_dtype(first.tokenizer.vocab_size)
    fast_ok = fast is not None and all(d.dtype == fast for d in ordered)
    if not fast_ok:
        notes.append(f"no per-dataset sequences file for Megatron-LM: with vocabulary size "
                     f"{first.tokenizer.vocab_size} it would read the tokens as {fast or 'an unknown dtype'}, "
                     f"but the data is {first.dtype}; training start-up reads each index header instead")
    return BlendPlan(splits=spec.effective_splits, lists=lists, figures=figures, mounts=mounts,
                     tokenizer=first.tokenizer, tokenizer_claim=first.claim, dtype=first.dtype, notes=tuple(notes),
                     fast_path=fast_ok)


def _figures(spec: DatasetBlendSpec, lists: Mapping[str, Sequence[ComponentEntry]]
             ) -> tuple[dict[tuple[str, str, str], ComponentFigures], list[str]]:
    """Training tokens per component and, with a budget, the epochs it consumes; notes above ``maxEpochs``."""
    train_part = split_fractions(spec.effective_splits)[0] if spec.effective_splits else 1.0
    figures: dict[tuple[str, str, str], ComponentFigures] = {}
    notes: list[str] = []
    for split, entries in lists.items():
        for e in entries:
            key = (split, e.data.name, e.data.text_key)
            if split not in ("all", "train"):
                figures[key] = ComponentFigures(None, None, None)
                continue
            train_tokens = int(e.data.tokens * train_part)
            epochs = note = None
            if spec.total_tokens is not None and train_tokens > 0:
                epochs = e.share * spec.total_tokens / train_tokens
                if epochs > spec.max_epochs:
                    note = (f"{label(e.data)} is repeated {epochs:.1f} times ({round(e.share * 100, 2)} % of "
                            f"{spec.total_tokens:,} tokens from {train_tokens:,} training tokens), more than "
                            f"maxEpochs {spec.max_epochs:g}")
                    notes.append(note)
            elif spec.total_tokens is not None:
                note = f"{label(e.data)} has no training tokens (splits {spec.effective_splits})"
                notes.append(note)
            figures[key] = ComponentFigures(train_tokens, None if epochs is None else round(epochs, ROUND_EPOCHS),
                                            note)
    return figures, notes


def digest(texts: Mapping[str, str]) -> str:
    """Content address of one version of the blend's files (sha256 over their names and texts)."""
    return hashlib.sha256(json.dumps(dict(texts), sort_keys=True).encode()).hexdigest()
