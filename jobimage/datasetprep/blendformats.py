"""The blend in each trainer's own format, and each format read back the way that trainer reads it.

Written (by the blend files Job, onto the volume):

* ``data-args.txt`` -- Megatron-LM ``--data-args-path``: ``weight prefix`` pairs, read by
  ``megatron.training.utils.get_blend_and_blend_per_split`` as ``get_blend_from_list(f.read().split())``.
* ``per-split-data-args.json`` -- ``--per-split-data-args-path``: ``{"train": [...], "valid": [...],
  "test": [...]}``, each a flat ``weight, prefix`` list of strings (or a whitespace-separated string), and
  JSON ``null`` for a split without data (``get_blend_from_list(None)`` is ``None``, "blend not provided");
  all three keys must be there (the reader indexes them).
* ``sequences-per-dataset.json`` -- ``--per-dataset-sequences-path``: ``{prefix: [sequence_count,
  document_count]}`` with the counts of each ``.idx`` header, as ``tools/build_sequences_per_dataset.py``
  computes them (``_IndexReader(prefix + ".idx").sequence_count, .document_count``; the header's document
  count is the number of documents plus one). Megatron-Core looks each blend prefix up by its exact string.

Read back (:func:`blend_from_list` and the readers below) with the same rules as
``megatron.core.datasets.utils.get_blend_from_list`` (an odd-length list is prefixes only; an even one is
weight/prefix pairs unless a "weight" does not parse as a float), NeMo 2's
``PreTrainingDataModule(paths=...)`` (a list, or a dict with ``train``/``validation``/``test``) and
Megatron-Bridge's ``GPTDatasetConfig.blend`` / ``blend_per_split``. The in-pod check
(``datasetprep check-training-config``) and the tests use them; ``bench/megatron_blend_check.py`` compares
them with Megatron-Core's own function.

Standard library only.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DATA_ARGS_FILE = "data-args.txt"
PER_SPLIT_FILE = "per-split-data-args.json"
SEQUENCES_FILE = "sequences-per-dataset.json"
MEGATRON_SPLITS = ("train", "valid", "test")
NEMO_SPLITS = ("train", "validation", "test")

Blend = tuple[list[str], "list[float] | None"]
"""Megatron-Core's blend: prefixes and their weights (None: weights inferred from the datasets' sizes)."""


def weight_text(weight: float) -> str:
    """A weight as text that ``float()`` reads back to the same value."""
    return repr(float(weight))


def flat_list(pairs: Sequence[tuple[float, str]]) -> list[str]:
    """``[w0, p0, w1, p1, ...]``: the zipped list of ``--data-path`` and NeMo's ``paths``."""
    out: list[str] = []
    for weight, prefix in pairs:
        out += [weight_text(weight), prefix]
    return out


def data_args_text(pairs: Sequence[tuple[float, str]]) -> str:
    """The ``--data-args-path`` file: one ``weight prefix`` pair per line."""
    return "".join(f"{weight_text(w)} {p}\n" for w, p in pairs)


def per_split_text(lists: Mapping[str, Sequence[tuple[float, str]] | None]) -> str:
    """The ``--per-split-data-args-path`` file (every key present, ``null`` for a split without data)."""
    doc = {s: (flat_list(lists[s]) if lists.get(s) else None) for s in MEGATRON_SPLITS}
    return json.dumps(doc, indent=1) + "\n"


def sequences_text(counts: Mapping[str, tuple[int, int]]) -> str:
    """The ``--per-dataset-sequences-path`` file from ``{prefix: (sequence_count, header document_count)}``."""
    return json.dumps({p: [s, d] for p, (s, d) in counts.items()}, indent=1) + "\n"


# --------------------------------------------------------------------------- reading, as the trainers do


class FormatProblem(ValueError):
    """A file a trainer would refuse or misread; the message says which and why."""


def blend_from_list(items: Sequence[Any] | None) -> Blend | None:
    """Megatron-Core's ``get_blend_from_list``: prefixes (odd length, or any "weight" not a number) or
    weight/prefix pairs. Raises FormatProblem where Megatron-Core would fail (mixed weights, an empty list)."""
    if items is None:
        return None
    items = list(items)
    if not items:
        raise FormatProblem("an empty list (Megatron-Core cannot unpack it; write null for a split without data)")
    if len(items) % 2 == 1:
        return [str(p).strip() for p in items], None
    weights: list[float | None] = []
    for raw in items[0::2]:
        try:
            weights.append(float(raw))
        except (TypeError, ValueError):
            weights.append(None)
    if all(w is None for w in weights):
        return [str(p).strip() for p in items], None
    if any(w is None for w in weights):
        raise FormatProblem(f"some weights are not numbers: {items[0::2]}")
    return [str(p).strip() for p in items[1::2]], [float(w) for w in weights if w is not None]


@dataclasses.dataclass(frozen=True)
class MegatronData:
    """What Megatron-LM takes from its data arguments."""

    blend: Blend | None
    blend_per_split: list[Blend | None] | None
    split: str | None
    sequences_path: str | None
    tokenizer_type: str | None
    tokenizer_model: str | None
    vocab_size: int | None


_MEGATRON_LIST_FLAGS = {"--data-path": "data_path", "--train-data-path": "train", "--valid-data-path": "valid",
                        "--test-data-path": "test"}
_MEGATRON_VALUE_FLAGS = {"--data-args-path": "data_args_path", "--per-split-data-args-path": "per_split_path",
                         "--split": "split", "--per-dataset-sequences-path": "sequences_path",
                         "--tokenizer-type": "tokenizer_type", "--tokenizer-model": "tokenizer_model",
                         "--vocab-size": "vocab_size"}


def megatron_args(text: str) -> dict[str, Any]:
    """The data and tokenizer flags of a ``pretrain_gpt.py`` command line (argparse semantics: ``nargs='*'``
    lists run until the next flag)."""
    words = shlex.split(text)
    found: dict[str, Any] = {}
    i = 0
    while i < len(words):
        flag = words[i]
        if flag in _MEGATRON_LIST_FLAGS:
            j = i + 1
            while j < len(words) and not words[j].startswith("--"):
                j += 1
            found[_MEGATRON_LIST_FLAGS[flag]] = words[i + 1:j]
            i = j
        elif flag in _MEGATRON_VALUE_FLAGS:
            if i + 1 >= len(words):
                raise FormatProblem(f"{flag} has no value")
            found[_MEGATRON_VALUE_FLAGS[flag]] = words[i + 1]
            i += 2
        else:
            raise FormatProblem(f"unexpected word {flag!r} among the data arguments")
    return found


def megatron_data(text: str, read: Callable[[str], str]) -> MegatronData:
    """Megatron-LM's ``get_blend_and_blend_per_split`` over ``megatron-args.txt``; ``read(path)`` opens the
    files the flags name (on the volume)."""
    a = megatron_args(text)
    blend = per_split = None
    if "data_path" in a or "data_args_path" in a:
        if "data_path" in a and "data_args_path" in a:
            raise FormatProblem("--data-path and --data-args-path together (Megatron-LM asserts one)")
        blend = blend_from_list(read(a["data_args_path"]).split() if "data_args_path" in a else a["data_path"])
        if a.get("split") is None:
            raise FormatProblem("a blend without --split")
    elif "per_split_path" in a:
        doc = json.loads(read(a["per_split_path"]))
        per_split = []
        for name in MEGATRON_SPLITS:
            if name not in doc:
                raise FormatProblem(f"{a['per_split_path']} has no {name!r} key (Megatron-LM indexes all three)")
            value = doc[name].split() if isinstance(doc[name], str) else doc[name]
            per_split.append(blend_from_list(value))
        if a.get("split") is not None:
            raise FormatProblem("--split with per-split data (Megatron-Core asserts they are incompatible)")
    elif any(k in a for k in MEGATRON_SPLITS):
        per_split = [blend_from_list(a.get(k)) for k in MEGATRON_SPLITS]
    vocab = a.get("vocab_size")
    return MegatronData(blend=blend, blend_per_split=per_split, split=a.get("split"),
                        sequences_path=a.get("sequences_path"), tokenizer_type=a.get("tokenizer_type"),
                        tokenizer_model=a.get("tokenizer_model"), vocab_size=int(vocab) if vocab else None)


def nemo_blends(paths: Any) -> tuple[Blend | None, list[Blend | None] | None]:
    """NeMo 2's ``PreTrainingDataModule(paths=...)``: a list (one distribution, cut by ``split``), or a dict
    whose ``train``/``validation``/``test`` values are lists (``blend_per_split``); a single path is a list of
    one. Every split of the dict must be there (NeMo checks each value's files)."""
    if isinstance(paths, dict):
        missing = [k for k in NEMO_SPLITS if not paths.get(k)]
        if missing:
            raise FormatProblem(f"paths has no {', '.join(missing)} (NeMo reads all three)")
        return None, [blend_from_list(paths[k] if isinstance(paths[k], list) else [paths[k]]) for k in NEMO_SPLITS]
    if not isinstance(paths, list):
        paths = [paths]
    prefixes, weights = blend_from_list(paths) or ([], None)
    return (prefixes, None if len(prefixes) == 1 else weights), None


def bridge_blends(dataset: Mapping[str, Any]) -> tuple[Blend | None, list[Blend | None] | None]:
    """Megatron-Bridge's ``GPTDatasetConfig``: ``blend: [prefixes, weights]`` or ``blend_per_split`` (three
    such pairs or nulls), the types Megatron-Core's dataset config takes."""
    def one(value: Any) -> Blend | None:
        if value is None:
            return None
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], list)):
            raise FormatProblem(f"a blend is [prefixes, weights], got {value!r}")
        prefixes, weights = value
        if weights is not None and len(weights) != len(prefixes):
            raise FormatProblem("blend prefixes and weights must be equal in number")
        return [str(p) for p in prefixes], None if weights is None else [float(w) for w in weights]

    if dataset.get("blend") is not None and dataset.get("blend_per_split") is not None:
        raise FormatProblem("blend and blend_per_split are incompatible")
    if dataset.get("blend_per_split") is not None:
        per_split = dataset["blend_per_split"]
        if len(per_split) != 3:
            raise FormatProblem("blend_per_split must contain 3 blends")
        return None, [one(b) for b in per_split]
    return one(dataset.get("blend")), None


def normalised(blend: Blend | None) -> list[tuple[str, float]] | None:
    """(prefix, share) pairs with the weights summed to 1 (None weights: None)."""
    if blend is None:
        return None
    prefixes, weights = blend
    if weights is None:
        return [(p, float("nan")) for p in prefixes]
    total = sum(weights)
    return [(p, w / total) for p, w in zip(prefixes, weights)]
