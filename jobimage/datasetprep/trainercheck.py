"""``datasetprep check-training-config DIR``: check a training ConfigMap from inside a training pod.

Run where the training runs (an init container of the training Job, or a one-off pod) with the ConfigMap
mounted at ``DIR`` and the claims where ``claims.yaml`` says. It reads every file the way its trainer does
(:mod:`datasetprep.blendformats`):

* ``megatron-args.txt`` -- the flags, then ``--data-path``/``--data-args-path``/``--per-split-data-args-path``
  as Megatron-LM's ``get_blend_and_blend_per_split``, and ``--per-dataset-sequences-path`` looked up by each
  prefix's exact string, as Megatron-Core's ``GPTDataset`` does;
* ``nemo2-data.yaml`` -- ``paths`` as NeMo 2's ``PreTrainingDataModule``;
* ``megatron-bridge.yaml`` -- ``dataset.blend``/``blend_per_split`` as Megatron-Bridge's config;
* ``config.yaml`` -- ``training.data.dataset_path`` (the NeMo guide's shape);

checks that all of them describe the same datasets with the same shares, then opens every dataset with the
index reader (:class:`~datasetprep.indexed.IndexedDataset`: every sequence of the index checked against the
``.bin``), and compares its counts with the sequences file and its dtype with the tokenizer's vocabulary (the
rule ``preprocess_data.py`` writes by, and the rule Megatron-Core reads by when the sequences file is used).
A wrong path, a missing file or a count that disagrees fails here, with the file and the reason.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import blendformats as fmt
from .blending import fast_path_dtype
from .errors import BinarizeError
from .indexed import IndexedDataset, dtype_for_vocab
from .naming import MEGATRON_TOKENIZER

_TYPE_OF = {v: k for k, v in MEGATRON_TOKENIZER.items()}
Lists = dict[str, list[tuple[str, float]] | None]
"""train/valid/test (or ``all``) -> (prefix, share) pairs."""


@dataclasses.dataclass
class CheckReport:
    formats: list[str]
    datasets: int
    tokens: int
    dtype: str | None
    vocab_size: int | None


def _lists(blend: fmt.Blend | None, per_split: list[fmt.Blend | None] | None) -> Lists:
    if per_split is not None:
        return {name: fmt.normalised(b) for name, b in zip(fmt.MEGATRON_SPLITS, per_split)}
    return {"all": fmt.normalised(blend)}


def _same(a: Lists, b: Lists) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k] or [], b[k] or []
        if [p for p, _ in x] != [p for p, _ in y]:
            return False
        if any(not (math.isnan(s) and math.isnan(t)) and not math.isclose(s, t, rel_tol=1e-9)
               for (_, s), (_, t) in zip(x, y)):
            return False
    return True


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BinarizeError(f"cannot read {path} ({e.strerror}): is its claim mounted where claims.yaml says?") \
            from None


def _formats(config_dir: Path, megatron: Lists, log: Callable[[str], None]) -> list[str]:
    """Read the other formats and compare each with Megatron-LM's view."""
    seen = ["megatron-args.txt"]
    readers: dict[str, Callable[[Any], tuple[fmt.Blend | None, list[fmt.Blend | None] | None] | None]] = {
        "nemo2-data.yaml": lambda doc: fmt.nemo_blends(doc["paths"]) if "paths" in doc else None,
        "megatron-bridge.yaml": lambda doc: fmt.bridge_blends(doc["dataset"]) if "dataset" in doc else None,
        "config.yaml": _guide_blends,
    }
    for name, reader in readers.items():
        f = config_dir / name
        if not f.exists():
            continue
        try:
            got = reader(yaml.safe_load(f.read_text(encoding="utf-8")) or {})
        except (fmt.FormatProblem, KeyError, TypeError, ValueError) as e:
            raise BinarizeError(f"{name}: its trainer could not read it: {e}") from None
        if got is None:
            log(f"{name}: no inline blend (it names the files instead)")
            continue
        mine = _lists(*got)
        if "all" not in mine and "all" not in megatron:
            mine = {k: v for k, v in mine.items() if v is not None or megatron.get(k) is not None}
        if not _same(mine, megatron):
            raise BinarizeError(f"{name} describes another blend than megatron-args.txt: {mine} vs {megatron}")
        seen.append(name)
    return seen


def _guide_blends(doc: Any) -> tuple[fmt.Blend | None, list[fmt.Blend | None] | None] | None:
    path = ((doc.get("training") or {}).get("data") or {}).get("dataset_path")
    if path is None:
        return None
    if isinstance(path, dict):
        return None, [fmt.blend_from_list(path[k]) if path.get(k) else None for k in fmt.NEMO_SPLITS]
    return fmt.blend_from_list(path if isinstance(path, list) else [path]), None


def _vocab(m: fmt.MegatronData) -> int | None:
    from .tokenization import load_tokenizer

    kind = _TYPE_OF.get(m.tokenizer_type or "", m.tokenizer_type)
    if kind is None:
        return None
    return load_tokenizer(kind, m.tokenizer_model, vocab_size=m.vocab_size).vocab_size


def check(config_dir: Path, *, log: Callable[[str], None] = print) -> CheckReport:
    """Check the ConfigMap mounted at ``config_dir``; raises BinarizeError with what is wrong."""
    args = config_dir / "megatron-args.txt"
    if not args.exists():
        raise BinarizeError(f"{args} does not exist: mount the training ConfigMap at {config_dir}")
    try:
        m = fmt.megatron_data(args.read_text(encoding="utf-8"), _read)
    except fmt.FormatProblem as e:
        raise BinarizeError(f"megatron-args.txt: Megatron-LM could not read it: {e}") from None
    lists = _lists(m.blend, m.blend_per_split)
    formats = _formats(config_dir, lists, log)
    sequences = _sequences(m)
    vocab = _vocab(m)
    want = dtype_for_vocab(vocab).name if vocab is not None else None
    prefixes = list(dict.fromkeys(p for pairs in lists.values() for p, _ in pairs or ()))
    tokens = 0
    for prefix in prefixes:
        try:
            ds = IndexedDataset(prefix)
        except (OSError, ValueError) as e:
            raise BinarizeError(f"dataset {prefix}: {e}") from None
        tokens += ds.num_tokens
        if want is not None and ds.dtype.name != want:
            raise BinarizeError(f"dataset {prefix} holds {ds.dtype.name} tokens; the tokenizer's vocabulary of "
                                f"{vocab} needs {want}")
        if sequences is not None:
            _check_counts(prefix, ds, sequences, vocab)
    log(f"{len(prefixes)} datasets, {tokens:,} tokens, read as {', '.join(formats)}"
        + (", counts as in the per-dataset sequences file" if sequences is not None else ""))
    return CheckReport(formats=formats, datasets=len(prefixes), tokens=tokens, dtype=want, vocab_size=vocab)


def _sequences(m: fmt.MegatronData) -> dict[str, Any] | None:
    if m.sequences_path is None:
        return None
    import json

    try:
        return json.loads(_read(m.sequences_path))
    except ValueError as e:
        raise BinarizeError(f"{m.sequences_path} is not JSON: {e}") from None


def _check_counts(prefix: str, ds: IndexedDataset, sequences: dict[str, Any], vocab: int | None) -> None:
    if prefix not in sequences:
        raise BinarizeError(f"dataset {prefix} is not in the per-dataset sequences file (Megatron-Core looks it "
                            f"up by this exact string)")
    want = [ds.num_sequences, ds.num_documents + 1]
    if list(sequences[prefix]) != want:
        raise BinarizeError(f"dataset {prefix}: the sequences file says {sequences[prefix]}, its index "
                            f"{want} (sequences, documents + 1)")
    fast = fast_path_dtype(vocab)
    if vocab is not None and fast != ds.dtype.name:
        raise BinarizeError(f"dataset {prefix} holds {ds.dtype.name} tokens, but with the sequences file "
                            f"Megatron-Core reads {fast} for a vocabulary of {vocab}: drop "
                            f"--per-dataset-sequences-path")
