"""A DatasetBlend's files Job order and its training ConfigMap: pure functions of the blend plan.

The ConfigMap holds the blend for each trainer (checked against each one's own reader, see
:mod:`datasetprep.blendformats`):

* ``megatron-args.txt`` -- Megatron-LM ``pretrain_gpt.py`` flags: ``--data-args-path`` + ``--split``, or
  ``--per-split-data-args-path``; ``--per-dataset-sequences-path`` (start-up skips reading every index
  header) unless Megatron's dtype rule disagrees with the data; the tokenizer flags.
* ``config.yaml`` -- the NeMo guide's shape: ``training.data.dataset_path`` as a weighted list (or a
  train/validation/test dict), the files, ``tokenizer_path``.
* ``nemo2-data.yaml`` -- ``PreTrainingDataModule`` arguments: ``paths`` (a flat weight/prefix list, or the
  train/validation/test dict with ``split: null``), ``split``, ``tokenizer``.
* ``megatron-bridge.yaml`` -- Megatron-Bridge's ``GPTDatasetConfig`` fields ``blend``/``blend_per_split``
  and ``split``.
* ``claims.yaml`` (and ``claimName``/``mountPath`` when there is one claim) -- what to mount where.

Lists too long for a ConfigMap (more than :data:`INLINE_LIMIT` datasets), or kept-shards components whose
shard tokens only their blend list holds, are not inlined: the inline forms then name the file on the volume.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from datasetprep import blendformats as fmt
from datasetprep.blending import BlendPlan, Dataset, digest
from datasetprep.blendspec import DatasetBlendSpec
from datasetprep.contract import BlendOrder, BlendSource, BlendWritten

from datasetprep_operator.trainingconfig import (NEMO_HEADER, nemo_tokenizer, tokenizer_args, tokenizer_model_path,
                                                 yaml_str)

FILES_ROOT = "datasetprep-blends"
INLINE_LIMIT = 1000
VERSION_LEN = 16
NEMO_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test"}


def files_claim(spec: DatasetBlendSpec, first_claim: str) -> str:
    return spec.files.claim_name or first_claim


def files_folder(spec: DatasetBlendSpec, name: str, mounts: Mapping[str, str], claim: str) -> str:
    """The folder of the blend's file versions, as the training pods see it."""
    return posixpath.join(mounts[claim], spec.files.path or posixpath.join(FILES_ROOT, name))


# --------------------------------------------------------------------------- the files Job's order


def order(plan: BlendPlan, folder: str, keep: Sequence[str] = (), root: str | None = None, *,
          owner: str | None = None, generation: int | None = None) -> BlendOrder:
    """What the files Job checks and writes; its version (subfolder) is the content address of the lists
    and the folder. ``root``: the files claim's mount path, which the Job holds ``folder`` to; ``owner``
    and ``generation``: the blend's uid and generation, which mark the version (see
    :class:`~datasetprep.contract.BlendOrder`)."""
    lists: dict[str, tuple[BlendSource, ...]] = {}
    for split, entries in plan.lists.items():
        sources = []
        for e in entries:
            d = e.data
            common = dict(component=f"{d.name}/{d.text_key}", share=e.share, dtype=d.dtype or "unknown",
                          tokens=d.tokens)
            if d.kept_shards:
                sources.append(BlendSource(**common, blend_file=e.pod_blend_file, list_root=d.mount_path,
                                           pod_root=plan.mounts[d.claim]))
            else:
                sources.append(BlendSource(**common, prefix=e.pod_prefix, sequences=d.sequences,
                                           documents=d.documents))
        lists[split] = tuple(sources)
    body = {"lists": {k: [s.model_dump(mode="json", exclude_none=True) for s in v] for k, v in lists.items()},
            "folder": folder}
    version = digest({"order": json.dumps(body, sort_keys=True)})[:VERSION_LEN]
    return BlendOrder(lists=lists, folder=folder, version=version, keep=tuple(k for k in keep if k != version),
                      root=root, owner=owner, generation=generation)


def expected_listing(plan: BlendPlan) -> str | None:
    """The data-args (or per-split) file the Job should write, where the plan knows every dataset."""
    if not plan.expanded:
        return None
    pairs = {s: [(d.weight, d.prefix) for d in plan.datasets(s) or ()] for s in plan.lists}
    if "all" in pairs:
        return fmt.data_args_text(pairs["all"])
    return fmt.per_split_text(pairs)


# --------------------------------------------------------------------------- the ConfigMap


def _inline(plan: BlendPlan) -> dict[str, list[Dataset]] | None:
    if not plan.expanded:
        return None
    lists = {s: plan.datasets(s) or [] for s in plan.lists}
    return lists if sum(len(v) for v in lists.values()) <= INLINE_LIMIT else None


def _pairs(datasets: Sequence[Dataset]) -> list[tuple[float, str]]:
    return [(d.weight, d.prefix) for d in datasets]


def _flow(items: Sequence[str]) -> str:
    """``[w, "p", ...]``: weights as YAML numbers, prefixes quoted."""
    return "[" + ", ".join(w if n % 2 == 0 else yaml_str(w) for n, w in enumerate(items)) + "]"


def config_data(plan: BlendPlan, written: BlendWritten) -> dict[str, str]:
    """The training ConfigMap's data for the blend whose files ``written`` describes."""
    inline = _inline(plan)
    listing = written.data_args or written.per_split_data_args or ""
    tok_path = (tokenizer_model_path(plan.tokenizer.type, posixpath.join(plan.mounts[plan.tokenizer_claim],
                                                                         plan.tokenizer.path))
                if plan.tokenizer.path else None)
    tok_type = plan.tokenizer.type or "unknown"
    data = {
        "megatron-args.txt": _megatron(plan, written, tok_type, tok_path),
        "config.yaml": _guide(plan, inline, listing, tok_path),
        "nemo2-data.yaml": _nemo(plan, inline, listing, tok_type, tok_path),
        "megatron-bridge.yaml": _bridge(plan, inline, listing),
        "claims.yaml": yaml.safe_dump([{"claimName": c, "mountPath": m} for c, m in plan.mounts.items()],
                                      sort_keys=False),
    }
    if len(plan.mounts) == 1:
        ((claim, mount),) = plan.mounts.items()
        data |= {"claimName": claim, "mountPath": mount}
    return data


def _megatron(plan: BlendPlan, written: BlendWritten, tok_type: str, tok_path: str | None) -> str:
    if written.data_args:
        args = ["--data-args-path", written.data_args, "--split", (plan.splits or "").replace(" ", "")]
    else:
        args = ["--per-split-data-args-path", written.per_split_data_args or ""]
    if plan.fast_path:
        args += ["--per-dataset-sequences-path", written.sequences]
    return " ".join(args + tokenizer_args(tok_type, tok_path, plan.tokenizer.vocab_size)) + "\n"


def _guide(plan: BlendPlan, inline: dict[str, list[Dataset]] | None, listing: str, tok_path: str | None) -> str:
    lines = ["training:", "  data:"]
    if inline is not None and "all" in inline:
        lines += ["    # the blend: token shares and dataset prefixes, as NeMo's weighted data_prefix",
                  f"    dataset_path: {_flow(fmt.flat_list(_pairs(inline['all'])))}"]
    elif inline is not None:
        lines += ["    # one blend per split: token shares and dataset prefixes", "    dataset_path:"]
        lines += [f"      {NEMO_SPLIT_NAMES[s]}: {_flow(fmt.flat_list(_pairs(v)))}" for s, v in inline.items()]
    else:
        lines += [f"    # the blend is too long to list here: paths = open({json.dumps(listing)}).read().split()"]
    if plan.splits:
        lines += [f"    splits_string: {yaml_str(plan.splits.replace(' ', ''))}",
                  f"    data_args_path: {yaml_str(listing)}"]
    else:
        lines += [f"    per_split_data_args_path: {yaml_str(listing)}"]
    if tok_path is not None:
        lines.append(f"    tokenizer_path: {yaml_str(tok_path)}")
    return "\n".join(lines) + "\n"


def _nemo(plan: BlendPlan, inline: dict[str, list[Dataset]] | None, listing: str, tok_type: str,
          tok_path: str | None) -> str:
    lines = list(NEMO_HEADER)
    if inline is not None and "all" in inline:
        lines += ["# a flat list of token shares and dataset prefixes, cut into train/validation/test by split",
                  "paths:"] + [f"  - {yaml_str(w)}" for w in fmt.flat_list(_pairs(inline["all"]))]
        lines.append(f"split: {yaml_str((plan.splits or '').replace(' ', ''))}")
    elif inline is not None and all(s in inline for s in ("train", "valid", "test")):
        lines += ["# one blend per split (split: null, or NeMo warns that it ignores its default)", "paths:"]
        for s, v in inline.items():
            lines.append(f"  {NEMO_SPLIT_NAMES[s]}:")
            lines += [f"    - {yaml_str(w)}" for w in fmt.flat_list(_pairs(v))]
        lines.append("split: null")
    elif inline is not None:
        lines += ["# NeMo's paths dict needs train, validation and test; this blend has "
                  f"{', '.join(NEMO_SPLIT_NAMES[s] for s in inline)} only. Use Megatron-LM's files instead."]
    else:
        lines += [f"# the blend is too long to list here: paths = open({json.dumps(listing)}).read().split()"]
    return "\n".join(lines + nemo_tokenizer(tok_type, tok_path, plan.tokenizer.vocab_size)) + "\n"


def _bridge(plan: BlendPlan, inline: dict[str, list[Dataset]] | None, listing: str) -> str:
    head = ["# Megatron-Bridge: fields of ConfigContainer.dataset (megatron.bridge.training.config.GPTDatasetConfig):",
            "# blend = (prefixes, weights) cut by split, or blend_per_split = [train, valid, test] (null: none)."]
    if inline is None:
        return "\n".join(head + [f"# the blend is too long to list here; its Megatron-LM file is {listing}"]) + "\n"

    def pair(datasets: Sequence[Dataset]) -> list[Any]:
        return [[d.prefix for d in datasets], [d.weight for d in datasets]]

    if "all" in inline:
        dataset: dict[str, Any] = {"blend": pair(inline["all"]), "split": (plan.splits or "").replace(" ", "")}
    else:
        dataset = {"blend_per_split": [pair(inline[s]) if s in inline else None for s in ("train", "valid", "test")],
                   "split": None}
    return "\n".join(head) + "\n" + yaml.safe_dump({"dataset": dataset}, sort_keys=False, width=1000)

