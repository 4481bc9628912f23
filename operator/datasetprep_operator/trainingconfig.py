"""The training ConfigMap: where the dataset and the tokenizer are, in the shapes training tools read.

* ``config.yaml`` -- ``training.data.dataset_path`` / ``tokenizer_path``, exactly as step 4 of the NeMo
  data-preparation guide has them.
* ``megatron-args.txt`` -- the Megatron-LM ``pretrain_gpt.py`` data and tokenizer flags.
* ``nemo2-data.yaml`` -- arguments of NeMo 2's ``PreTrainingDataModule``.
* ``claimName`` / ``mountPath`` -- where to mount the data.

Written only from a :class:`~datasetprep.contract.Published` result, so only once the data is complete.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from datasetprep.contract import OutputFile, Published
from datasetprep.naming import MEGATRON_TOKENIZER, dataset_prefix as dataset_name, shard_prefix
from datasetprep.spec import DatasetPrepSpec

from datasetprep_operator.naming import LABEL_COMPONENT, child_labels

#: NeMo's ``get_nmt_tokenizer(library=...)`` per tokenizer type.
NEMO_LIBRARY = {"sentencepiece": "sentencepiece", "huggingface": "huggingface", "tiktoken": "tiktoken",
                "null": "null"}


def pod_path(spec: DatasetPrepSpec, relative: str) -> str:
    """A path on the output claim as the job and training pods see it."""
    return posixpath.join(spec.output.mount_path, relative)


def dataset_prefix(spec: DatasetPrepSpec, result: Published) -> str:
    """The first key's dataset prefix (no ``.bin``/``.idx``) at the mount path."""
    first = result.outputs[0]
    return pod_path(spec, first.prefix)


def shard_dataset_prefix(spec: DatasetPrepSpec, output: OutputFile, index: int) -> str:
    """Shard ``index``'s own dataset of ``output``'s key (kept shards), at the mount path.

    Named after the output the job reported (``{prefix}_{key}_document``), not after this spec's
    prefix: a reused output lives under its maker's prefix.
    """
    base = output.prefix.removesuffix(dataset_name("", output.key))
    return pod_path(spec, dataset_name(shard_prefix(base, index), output.key))


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


def tokenizer_file(spec: DatasetPrepSpec, result: Published) -> str | None:
    """The tokenizer file at the mount path, or None (null tokenizer).

    Megatron's and NeMo's HuggingFace tokenizers load a folder, so a reported ``tokenizer.json``
    becomes its folder.
    """
    if not result.tokenizer.path:
        return None
    return tokenizer_model_path(result.tokenizer.type, pod_path(spec, result.tokenizer.path))


def tokenizer_model_path(tok_type: str | None, path: str) -> str:
    """What ``--tokenizer-model`` takes: the file, or a HuggingFace ``tokenizer.json``'s folder."""
    if tok_type == "huggingface" and path.endswith(".json"):
        return posixpath.dirname(path) or "/"
    return path


def training_config_data(spec: DatasetPrepSpec, result: Published) -> dict[str, str]:
    """The training ConfigMap's data (see the module docstring)."""
    tok_path = tokenizer_file(spec, result)
    tok_type = result.tokenizer.type or spec.tokenizer.type
    vocab = result.tokenizer.vocab_size if result.tokenizer.vocab_size is not None else spec.tokenizer.vocab_size
    first = result.outputs[0]
    if first.kept_shards:
        return _kept_shards_config(spec, result, first, tok_path, tok_type, vocab)
    prefix = dataset_prefix(spec, result)

    config = ["training:", "  data:", f"    dataset_path: {yaml_str(prefix)}"]
    if tok_path is not None:
        config.append(f"    tokenizer_path: {yaml_str(tok_path)}")

    args = ["--data-path", prefix] + tokenizer_args(tok_type, tok_path, vocab)
    nemo = NEMO_HEADER + ["paths:", f"  - {yaml_str(prefix)}"] + nemo_tokenizer(tok_type, tok_path, vocab)
    return _config_data(spec, config, args, nemo)


def _config_data(spec: DatasetPrepSpec, config: list[str], args: list[str], nemo: list[str]) -> dict[str, str]:
    return {
        "config.yaml": "\n".join(config) + "\n",
        "megatron-args.txt": " ".join(args) + "\n",
        "nemo2-data.yaml": "\n".join(nemo) + "\n",
        "claimName": spec.output.claim_name,
        "mountPath": spec.output.mount_path,
    }


NEMO_HEADER = [
    "# NeMo 2: nemo.collections.llm.gpt.data.PreTrainingDataModule(paths=..., seq_length=..., tokenizer=...)",
    "# with the tokenizer from nemo.collections.nlp.modules.common.tokenizer_utils.get_nmt_tokenizer(**tokenizer).",
    "# seq_length is not a property of the data: set it to the model's context length, e.g.",
    "# seq_length: 8192",
]


def _kept_shards_config(spec: DatasetPrepSpec, result: Published, first: OutputFile, tok_path: str | None,
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
            w if n % 2 == 0 else yaml_str(w) for n, w in enumerate(items)) + "]")
    config.append(f"    data_args_path: {yaml_str(blend_file)}")
    if tok_path is not None:
        config.append(f"    tokenizer_path: {yaml_str(tok_path)}")

    args = ["--data-args-path", blend_file] + tokenizer_args(tok_type, tok_path, vocab)
    nemo = list(NEMO_HEADER)
    if items is not None:
        nemo += [f"# a blend of {first.shards} shard datasets, weighted by their tokens", "paths:"]
        nemo += [f"  - {yaml_str(w)}" for w in items]
    else:
        nemo += [f"# a blend of {first.shards} shard datasets: too many to list here. The weight/prefix list is",
                 f"# {blend_file}: paths = open(that file).read().split()"]
    nemo += nemo_tokenizer(tok_type, tok_path, vocab)
    return _config_data(spec, config, args, nemo)


def tokenizer_args(tok_type: str, tok_path: str | None, vocab: int | None) -> list[str]:
    args = ["--tokenizer-type", MEGATRON_TOKENIZER.get(tok_type, tok_type)]
    if tok_path is not None:
        args += ["--tokenizer-model", tok_path]
    if tok_type == "null" and vocab is not None:
        args += ["--vocab-size", str(vocab)]
    return args


def nemo_tokenizer(tok_type: str, tok_path: str | None, vocab: int | None) -> list[str]:
    nemo = ["tokenizer:", f"  library: {yaml_str(NEMO_LIBRARY.get(tok_type, tok_type))}"]
    if tok_path is not None:
        key = "model_name" if tok_type == "huggingface" else "tokenizer_model"
        nemo.append(f"  {key}: {yaml_str(tok_path)}")
    if tok_type == "null" and vocab is not None:
        nemo.append(f"  vocab_size: {vocab}")
    return nemo


def yaml_str(value: str) -> str:
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
