"""Names of what a run leaves on the volume, shared by the job (which writes them) and the operator
(which points the training pods at them). Plain strings in, plain strings out: no file is touched.

Under an output prefix ``P`` (e.g. ``out/llama``) a run writes:

* ``P_{key}_document.bin/.idx`` -- one dataset per text key, the naming of Megatron-LM's
  ``preprocess_data.py`` (:func:`dataset_prefix`);
* ``P.manifest.json`` -- what was made, from what (:func:`manifest_file`), written last;
* with kept shards: ``P_shard{i:05d}_{key}_document.bin/.idx`` and ``P_shard{i:05d}.manifest.json``
  per shard (:func:`shard_prefix`), and ``P_{key}_document.blend.txt`` (:func:`blend_file`);
* while it works: ``.datasetprep-work-{name}-{key}/`` (chunk parts and their records),
  ``.datasetprep-tmp-{name}-{id}/`` (files about to be published), ``.datasetprep-lock-{name}`` (who
  holds the prefix) and, during the publish itself, ``.datasetprep-publish-{name}.json`` (its
  journal) next to ``P``, ``name`` being the last segment of ``P``;
* on the output claim's root: ``.datasetprep/`` (Hub cache, fetched tokenizers).
"""
from __future__ import annotations

import posixpath

LEVEL = "document"
BLEND_SUFFIX = ".blend.txt"
MANIFEST_SUFFIX = ".manifest.json"
WORK_DIR_PREFIX = ".datasetprep-work-"
TMP_DIR_PREFIX = ".datasetprep-tmp-"
LOCK_FILE_PREFIX = ".datasetprep-lock-"
"""Next to the prefix: ``{LOCK_FILE_PREFIX}{name}``, held while a run writes under it (``ownership``)."""
JOURNAL_PREFIX = ".datasetprep-publish-"
"""Next to the prefix: ``{JOURNAL_PREFIX}{name}.json``, the journal of a publish in progress (``publish``)."""
HIDDEN_PREFIX = ".datasetprep"
"""Every name of ours that is not an output starts with this (work, temporary, lock, journal, state)."""
STATE_DIR = ".datasetprep"
"""On the output claim's root: the Hub cache and fetched tokenizers, shared by every run."""

#: Megatron-LM's ``--tokenizer-type`` per tokenizer type (also NeMo's name for it).
MEGATRON_TOKENIZER = {
    "sentencepiece": "SentencePieceTokenizer",
    "huggingface": "HuggingFaceTokenizer",
    "tiktoken": "TikTokenizer",
    "null": "NullTokenizer",
}


def dataset_prefix(prefix: str, key: str, level: str = LEVEL) -> str:
    """``{prefix}_{key}_{level}``: the dataset of one text key, without ``.bin``/``.idx``."""
    return f"{prefix}_{key}_{level}"


def shard_prefix(prefix: str, index: int) -> str:
    """``{prefix}_shard{i:05d}``: shard i's own dataset is ``{prefix}_shard{i:05d}_{key}_document``."""
    return f"{prefix}_shard{index:05d}"


def blend_file(prefix: str, key: str, level: str = LEVEL) -> str:
    """The blend list of one text key's kept shards, for Megatron-LM's ``--data-args-path``."""
    return dataset_prefix(prefix, key, level) + BLEND_SUFFIX


def manifest_file(prefix: str) -> str:
    """The manifest of what was published under ``prefix``."""
    return prefix + MANIFEST_SUFFIX


def work_dir_name(prefix: str, key: str) -> str:
    """The work folder of one chunk plan (``key``: its hash) of ``prefix``, next to it."""
    return f"{WORK_DIR_PREFIX}{posixpath.basename(prefix)}-{key}"


def tmp_dir_name(prefix: str, tag: str) -> str:
    """A folder of files about to be published under ``prefix``, next to it."""
    return f"{TMP_DIR_PREFIX}{posixpath.basename(prefix)}-{tag}"


def journal_file_name(name: str) -> str:
    """The journal of a publish in progress under the prefix whose last segment is ``name``."""
    return f"{JOURNAL_PREFIX}{name}.json"
