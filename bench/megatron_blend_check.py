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

A DatasetBlend's files (issue 15), with Megatron-Core's own code:

    python3 bench/megatron_blend_check.py --make-blend DIR   # a blend of two golden datasets (no torch)
    python3 bench/megatron_blend_check.py --blend DIR

  --make-blend  writes, with datasetprep's own blend arithmetic and files Job, DIR/all/ (data-args.txt +
                sequences-per-dataset.json: weights 3:1 of a_spbpe_eod and a_spbpe_eod_part2) and
                DIR/split/ (per-split-data-args.json: train 3:1, valid part2, test null)
  --blend       1. reads data-args.txt with Megatron-Core's get_blend_from_list and the per-split file as
                   Megatron-LM's get_blend_and_blend_per_split does, and compares both with datasetprep's
                   own readers (datasetprep.blendformats);
                2. builds the BlendedDataset with BlendedMegatronDatasetBuilder from `blend` + `split` and
                   from `blend_per_split`, with the sequences file as `sequences_per_dataset` where this
                   Megatron-Core has that field, and checks that the samples drawn from each dataset are in
                   proportion to its weight (within 1 %) and that sampled windows are its tokens.
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
    from datasetprep.contract import RunPlan
    from paths import CORPUS_A, SP_MODEL

    Path(folder).mkdir(parents=True, exist_ok=True)
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)

    def req():
        return pipeline.Request(inputs=[CORPUS_A], output_prefix=f"{folder}/ds", tokenizer=cfg, append_eod=True,
                                workers=2, chunk_bytes=150_000, overwrite=True)

    for i in range(shards):
        pipeline.run_shard(req(), RunPlan.shard(i, shards, keep_shards=True))
    pipeline.finish(req(), RunPlan(step="merge", shards=shards, keep_shards=True))
    print(f"wrote {folder}/ds_text_document.blend.txt", flush=True)


def make_blend(folder: str) -> None:
    """Two golden datasets blended 3:1 by datasetprep (arithmetic, order, files Job), with and without splits."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for p in ("jobimage", "operator", "tests"):
        sys.path.insert(0, str(repo / p))
    from blendfixtures import merged, plan_of
    from datasetprep.blendjob import write_blend
    from datasetprep.indexed import IndexedDataset
    from datasetprep_operator import blendconfig
    from paths import GOLDEN

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    comps = []
    for name, golden in (("wiki", "a_spbpe_eod_text_document"), ("code", "a_spbpe_eod_part2_text_document")):
        for ext in (".bin", ".idx"):
            (root / f"{name}_text_document{ext}").write_bytes((GOLDEN / f"{golden}{ext}").read_bytes())
        ds = IndexedDataset(root / f"{name}_text_document")
        comps.append(merged(name, ds.num_tokens, documents=ds.num_documents, sequences=ds.num_sequences))
    specs = {"all": {"components": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}],
                     "splits": "90,10,0"},
             "split": {"perSplit": {"train": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}],
                                    "valid": [{"datasetPrep": "code", "weight": 1}]}}}
    for kind, spec in specs.items():
        plan = plan_of(spec | {"mountPath": str(root)}, *comps)
        order = blendconfig.order(plan, str(root / "blends" / kind))
        written = write_blend(order, log=print)
        (root / kind).unlink(missing_ok=True)
        (root / kind).symlink_to(written.blend_folder)
    print(f"wrote {root}/all and {root}/split", flush=True)


def check_blend(folder: str) -> None:
    """DatasetBlend files through Megatron-Core's own readers and BlendedMegatronDatasetBuilder."""
    import dataclasses
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "jobimage"))
    import megatron.core
    import torch
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    from datasetprep import blendformats as fmt

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29521")
    torch.distributed.init_process_group(backend="gloo", world_size=1, rank=0)
    print(f"torch {torch.__version__}; megatron-core {megatron.core.__version__}; CPU only", flush=True)
    root = Path(folder)
    data_args = (root / "all" / fmt.DATA_ARGS_FILE).read_text()
    blend = get_blend_from_list(data_args.split())  # what --data-args-path does
    check(blend == fmt.blend_from_list(data_args.split()), f"our reader disagrees: {blend}")
    doc = json.loads((root / "split" / fmt.PER_SPLIT_FILE).read_text())
    per_split = [get_blend_from_list(doc[s].split() if isinstance(doc[s], str) else doc[s])
                 for s in ("train", "valid", "test")]  # what --per-split-data-args-path does
    ours = fmt.megatron_data(f"--per-split-data-args-path {root / 'split' / fmt.PER_SPLIT_FILE}",
                             lambda p: Path(p).read_text()).blend_per_split
    check(per_split == [tuple(b) if b else None for b in ours] or per_split == ours,
          f"per-split: Megatron {per_split}, ours {ours}")
    print(f"[readers] data-args {blend}; per-split {per_split}: Megatron-Core and datasetprep agree", flush=True)
    cases = [["/a"], ["/a", "/b"], ["30", "/a", "70", "/b"], ["1e-05", " /a "], ["0.75", "/a", "0.25", "/b", "/c"]]
    for items in cases:  # the edge cases of the rule, on both implementations
        check(get_blend_from_list(items) == fmt.blend_from_list(items), f"get_blend_from_list({items}) differs")
    print(f"[readers] get_blend_from_list agrees with datasetprep on {len(cases)} edge cases", flush=True)

    sequences = json.loads((root / "all" / fmt.SEQUENCES_FILE).read_text())
    has_fast = "sequences_per_dataset" in {f.name for f in dataclasses.fields(GPTDatasetConfig)}
    tok = TinyTokenizer(vocab_size=8000, eod=2)

    def build(**kw):
        extra = {"sequences_per_dataset": sequences} if has_fast else {}
        config = GPTDatasetConfig(random_seed=SEED, sequence_length=SEQ_LEN, path_to_cache=tempfile.mkdtemp(),
                                  tokenizer=tok, reset_position_ids=False, reset_attention_mask=False,
                                  eod_mask_loss=False, **extra, **kw)
        return BlendedMegatronDatasetBuilder(GPTDataset, [4000, 400, 0], lambda: True, config).build()

    for label, kw, weights in (("blend + split", {"blend": blend, "split": "90,10,0"}, blend[1]),
                               ("blend_per_split", {"blend_per_split": per_split}, per_split[0][1])):
        train, valid, _ = build(**kw)
        check(isinstance(train, BlendedDataset), f"{label}: train is {type(train)}")
        counts = np.bincount(np.asarray(train.dataset_index[:4000]), minlength=len(weights))
        share, want = counts / counts.sum(), np.asarray(weights) / sum(weights)
        check(np.all(np.abs(share - want) < 0.01), f"{label}: shares {share} vs weights {want}")
        for i in range(0, 4000, 397):
            d, s = int(train.dataset_index[i]), int(train.dataset_sample_index[i])
            check(np.array_equal(np.asarray(train[i]["tokens"]), np.asarray(train.datasets[d][s]["tokens"])),
                  f"{label}: sample {i} is not its dataset's window")
        print(f"[{label}] {len(train)} train samples, shares {np.round(share, 4).tolist()} vs weights "
              f"{np.round(want, 4).tolist()}; valid {len(valid)} samples; sequences file "
              f"{'used' if has_fast else 'not supported by this megatron-core'}", flush=True)
    torch.distributed.destroy_process_group()
    print("ALL CHECKS PASSED", flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make":
        return make(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--make-blend":
        return make_blend(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--blend":
        return check_blend(sys.argv[2])
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
