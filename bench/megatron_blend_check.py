#!/usr/bin/env python3
"""Megatron-Core reads a kept-shards blend list and samples it like the merged dataset (CPU only).

Usage (torch and megatron-core importable; no GPU needed):

    python3 bench/megatron_blend_check.py --make DIR    # kept shards of the golden corpus (no torch)
    python3 bench/megatron_blend_check.py BLEND_FILE MERGED_PREFIX

  BLEND_FILE     {prefix}_text_document.blend.txt written by a `keepShards: true` run
  MERGED_PREFIX  the merged dataset of the same input (e.g. Megatron-LM's golden output)

What it does, with Megatron-Core's own code:
  1. parses the file as Megatron-LM's `--data-args-path` does
     (`get_blend_from_list(open(path).read().split())`);
  2. opens every shard with `IndexedDataset` and checks that their documents, in order, are the
     merged dataset's documents, token for token, and that each weight is the shard's token count;
  3. builds the blended training set with `BlendedMegatronDatasetBuilder` + `GPTDatasetConfig` for
     a number of samples several epochs long (as a pretraining run asks), and checks that the
     samples drawn from each shard are in proportion to its tokens (within 1 %), and that every
     sample is a window of that shard's tokens;
  4. builds the merged dataset the same way and compares the totals.

Exits non-zero on any failure.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

SEQ_LEN = 128
SEED = 1234
EPOCHS = 3


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


class TinyTokenizer:
    """The attributes GPTDatasetConfig / GPTDataset read from a tokenizer."""

    def __init__(self, vocab_size: int, eod: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.eos = eod
        self.pad = -1
        self.unique_identifiers = {"class": "TinyTokenizer", "vocab_size": vocab_size, "eod": eod}


def make(folder: str, shards: int = 4) -> None:
    """Kept shards of the golden corpus (SentencePiece, EOD) in ``folder``, as a keepShards run
    writes them (our package, no torch)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "jobimage"))
    sys.path.insert(0, str(repo / "tests"))
    from datasetprep import pipeline, tokenization
    from paths import CORPUS_A, SP_MODEL

    Path(folder).mkdir(parents=True, exist_ok=True)
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)

    def req():
        return pipeline.Request(inputs=[CORPUS_A], output_prefix=f"{folder}/ds", tokenizer=cfg, append_eod=True,
                                workers=2, chunk_bytes=150_000, overwrite=True, keep_shards=shards)

    for i in range(shards):
        pipeline.run(req(), shard=(i, shards))
    pipeline.finish(req())
    print(f"wrote {folder}/ds_text_document.blend.txt", flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make":
        return make(sys.argv[2])
    if len(sys.argv) != 3:
        fail(__doc__.split("\n\n")[1])
    blend_file, merged_prefix = sys.argv[1], sys.argv[2]

    import megatron.core
    import torch
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import get_blend_from_list

    # BlendedDataset asks for the rank when it writes its index cache: a one-process gloo group (CPU)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    torch.distributed.init_process_group(backend="gloo", world_size=1, rank=0)
    print(f"torch {torch.__version__}; megatron-core {megatron.core.__version__}; numpy {np.__version__}; "
          f"python {sys.version.split()[0]}; CPU only", flush=True)

    # 1. as --data-args-path reads it
    with open(blend_file) as f:
        prefixes, weights = get_blend_from_list(f.read().split())
    check(weights is not None and len(weights) == len(prefixes) > 1, f"not a weighted blend: {prefixes}")
    print(f"[blend] {len(prefixes)} datasets, weights {weights}", flush=True)

    # 2. the shards are the merged dataset's documents, in order; weights = tokens
    merged = IndexedDataset(merged_prefix)
    shards = [IndexedDataset(p) for p in prefixes]
    for p, w, ds in zip(prefixes, weights, shards):
        check(int(ds.sequence_lengths.sum()) == w, f"{p}: weight {w} is not its token count")
    d = 0
    for ds in shards:
        check(ds.index.dtype == merged.index.dtype, "dtype differs from the merged dataset")
        for i in range(len(ds.document_indices) - 1):
            a, b = ds.document_indices[i], ds.document_indices[i + 1]
            ma, mb = merged.document_indices[d], merged.document_indices[d + 1]
            check(b - a == mb - ma, f"document {d}: {b - a} sequences, merged has {mb - ma}")
            for s, ms in zip(range(a, b), range(ma, mb)):
                check(np.array_equal(ds[s], merged[ms]), f"document {d}: tokens differ from the merged dataset")
            d += 1
    check(d == len(merged.document_indices) - 1, f"{d} documents in the shards, merged has "
          f"{len(merged.document_indices) - 1}")
    total = int(merged.sequence_lengths.sum())
    print(f"[IndexedDataset] {d} documents, {total} tokens: the shards in order are the merged dataset", flush=True)

    # 3. the blended training set, several epochs long
    tok = TinyTokenizer(vocab_size=int(max(int(s.max()) for s in (merged[i] for i in range(len(merged))))) + 1,
                        eod=0)
    samples = EPOCHS * (total // SEQ_LEN)

    def build(blend):
        config = GPTDatasetConfig(random_seed=SEED, sequence_length=SEQ_LEN, blend=blend, split="100,0,0",
                                  path_to_cache=tempfile.mkdtemp(prefix="mcore_cache_"), tokenizer=tok,
                                  reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
        return BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()[0]

    blended = build((prefixes, weights))
    check(isinstance(blended, BlendedDataset), f"train split is {type(blended)}")
    check(len(blended) >= samples, f"{len(blended)} samples, asked for {samples}")
    counts = np.bincount(np.asarray(blended.dataset_index[:samples]), minlength=len(prefixes))
    share = counts / counts.sum()
    expected = np.asarray(weights) / sum(weights)
    print(f"[BlendedDataset] {len(blended)} samples; per shard {counts.tolist()}; share "
          f"{np.round(share, 4).tolist()} vs tokens {np.round(expected, 4).tolist()}", flush=True)
    check(np.all(np.abs(share - expected) < 0.01), "samples are not drawn in proportion to the shards' tokens")
    rng = np.random.default_rng(SEED)
    for i in rng.choice(samples, size=50, replace=False):
        ds_i, s_i = int(blended.dataset_index[i]), int(blended.dataset_sample_index[i])
        tokens = np.asarray(blended[int(i)]["tokens"])
        window = np.asarray(blended.datasets[ds_i][s_i]["tokens"])
        check(np.array_equal(tokens, window), f"sample {i} differs from shard {ds_i}'s sample {s_i}")
    print("[BlendedDataset] sampled windows come from their shards", flush=True)

    # 4. the merged dataset, same request
    single = build(([merged_prefix], None))
    check(isinstance(single, GPTDataset) and len(single) >= samples, f"merged: {type(single)} {len(single)}")
    per_epoch_blend = sum(len(ds) for ds in blended.datasets)
    print(f"[GPTDataset] merged: {len(single)} samples for the same request; shard datasets hold "
          f"{per_epoch_blend} (the blend builds each shard's epochs separately)", flush=True)
    torch.distributed.destroy_process_group()
    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    main()
