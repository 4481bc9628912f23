#!/usr/bin/env python3
"""GPU check: a dataset written by datasetprep loads in a real Megatron-Core training step.

Usage (on a machine with one CUDA GPU, torch and megatron-core importable):

    python3 bench/megatron_gpu_check.py PATH_PREFIX   # e.g. .gpucheck/data/ours_text_document

What it does:
  1. parses PATH_PREFIX.{idx,bin} with plain numpy (independent of Megatron) and checks the
     counts written by `datasetprep binarize --append-eod` on the golden corpus_a.jsonl;
  2. loads the same prefix with megatron.core.datasets.indexed_dataset.IndexedDataset and checks
     it agrees with the numpy parse;
  3. builds a GPTDataset through BlendedMegatronDatasetBuilder + GPTDatasetConfig (this uses the
     C++ index helpers in megatron.core.datasets.helpers_cpp);
  4. checks samples from a DataLoader against tokens read with numpy from the .bin;
  5. builds a tiny GPTModel (local spec, no Transformer Engine) on cuda and runs 3 Adam steps.

Exits non-zero on any failure. The numpy-only parts run without torch via `--numpy-only`.
"""

import os
import struct
import sys
import tempfile

import numpy as np

EXPECTED_DOCUMENTS = 526
EXPECTED_SEQUENCES = 522
EXPECTED_TOKENS = 821228
VOCAB_SIZE = 8000
PADDED_VOCAB_SIZE = 8064  # 8000 rounded up to a multiple of 128
EOD = 2
SEQ_LEN = 128
BATCH = 8
STEPS = 3
SEED = 1234

_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
           6: np.float64, 7: np.float32, 8: np.uint16}


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def read_mmidx_numpy(prefix):
    """Parse MMIDIDX .idx and the .bin with numpy only."""
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    check(raw[:9] == b"MMIDIDX\x00\x00", f"bad magic {raw[:9]!r}")
    (version,) = struct.unpack("<Q", raw[9:17])
    check(version == 1, f"bad version {version}")
    dtype = _DTYPES[raw[17]]
    seq_count, doc_count = struct.unpack("<QQ", raw[18:34])
    off = 34
    sizes = np.frombuffer(raw, dtype=np.int32, count=seq_count, offset=off)
    off += 4 * seq_count
    pointers = np.frombuffer(raw, dtype=np.int64, count=seq_count, offset=off)
    off += 8 * seq_count
    doc_idx = np.frombuffer(raw, dtype=np.int64, count=doc_count, offset=off)
    off += 8 * doc_count
    check(off == len(raw), f".idx has {len(raw) - off} trailing bytes")
    tokens = np.fromfile(prefix + ".bin", dtype=dtype)
    return dtype, sizes, pointers, doc_idx, tokens


def numpy_checks(prefix):
    dtype, sizes, pointers, doc_idx, tokens = read_mmidx_numpy(prefix)
    itemsize = np.dtype(dtype).itemsize
    n_docs = len(doc_idx) - 1
    print(f"[numpy] dtype={np.dtype(dtype).name} sequences={len(sizes)} documents={n_docs} "
          f"tokens={int(sizes.sum())} bin_tokens={tokens.size}", flush=True)
    check(dtype == np.uint16, f"dtype {dtype} != uint16")
    check(len(sizes) == EXPECTED_SEQUENCES, f"sequences {len(sizes)} != {EXPECTED_SEQUENCES}")
    check(n_docs == EXPECTED_DOCUMENTS, f"documents {n_docs} != {EXPECTED_DOCUMENTS}")
    check(int(sizes.sum()) == EXPECTED_TOKENS, f"tokens {int(sizes.sum())} != {EXPECTED_TOKENS}")
    check(tokens.size == EXPECTED_TOKENS, f".bin holds {tokens.size} tokens")
    check(doc_idx[0] == 0 and doc_idx[-1] == len(sizes), "document index does not span sequences")
    check(np.all(np.diff(doc_idx) >= 0), "document index not monotone")
    exp_ptr = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))[:-1]]) * itemsize
    check(np.array_equal(pointers, exp_ptr), "sequence pointers are not contiguous offsets")
    check(int(tokens.max()) < VOCAB_SIZE, f"token id {int(tokens.max())} >= vocab {VOCAB_SIZE}")
    ends = np.cumsum(sizes.astype(np.int64)) - 1
    check(np.all(tokens[ends] == EOD), "not every sequence ends with EOD")
    print(f"[numpy] every sequence ends with EOD={EOD}; max token id {int(tokens.max())}",
          flush=True)
    return dtype, sizes, pointers, doc_idx, tokens


def expected_sample(gpt, idx, sizes, pointers, tokens, itemsize):
    """Recompute sample `idx` from the raw numpy tokens using the dataset's index arrays."""
    j = int(gpt.shuffle_index[idx])
    d_beg, o_beg = (int(x) for x in gpt.sample_index[j])
    d_end, o_end = (int(x) for x in gpt.sample_index[j + 1])
    parts = []
    for i in range(d_beg, d_end + 1):
        s = int(gpt.document_index[i])
        start = int(pointers[s]) // itemsize
        seq = tokens[start:start + int(sizes[s])]
        lo = o_beg if i == d_beg else 0
        hi = (o_end + 1) if i == d_end else len(seq)  # +1: add_extra_token_to_sequence
        parts.append(seq[lo:hi])
    out = np.concatenate(parts).astype(np.int64)
    return out


class TinyTokenizer:
    """The attributes GPTDatasetConfig / GPTDataset read from a tokenizer."""

    def __init__(self, vocab_size, eod):
        self.vocab_size = vocab_size
        self.eod = eod
        self.eos = eod
        self.pad = -1  # no real pad token: never matches a token in the data
        self.unique_identifiers = {"class": "TinyTokenizer", "vocab_size": vocab_size, "eod": eod}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    prefix = args[0] if args else ".gpucheck/data/ours_text_document"
    dtype, sizes, pointers, doc_idx, tokens = numpy_checks(prefix)
    itemsize = np.dtype(dtype).itemsize
    if "--numpy-only" in sys.argv:
        print("numpy-only checks passed", flush=True)
        return

    import torch
    import megatron.core
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    check(torch.cuda.is_available(), "CUDA not available")
    print(f"torch {torch.__version__} (cuda {torch.version.cuda}); "
          f"megatron-core {megatron.core.__version__}; numpy {np.__version__}; "
          f"GPU {torch.cuda.get_device_name(0)}; python {sys.version.split()[0]}", flush=True)

    # --- distributed / model-parallel init (world size 1) ---
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    torch.cuda.set_device(0)
    torch.distributed.init_process_group(backend="nccl", world_size=1, rank=0)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(SEED)
    torch.manual_seed(SEED)

    # --- IndexedDataset ---
    ids = IndexedDataset(prefix)
    n_docs = len(ids.document_indices) - 1
    n_tok = int(ids.sequence_lengths.sum())
    print(f"[IndexedDataset] dtype={np.dtype(ids.index.dtype).name} sequences={len(ids)} "
          f"documents={n_docs} tokens={n_tok}", flush=True)
    check(len(ids) == EXPECTED_SEQUENCES, f"IndexedDataset sequences {len(ids)}")
    check(n_docs == EXPECTED_DOCUMENTS, f"IndexedDataset documents {n_docs}")
    check(n_tok == EXPECTED_TOKENS, f"IndexedDataset tokens {n_tok}")
    check(ids.index.dtype == np.uint16, f"IndexedDataset dtype {ids.index.dtype}")
    check(np.array_equal(ids.sequence_lengths, sizes), "sequence lengths differ from numpy")
    check(np.array_equal(ids.document_indices, doc_idx), "document indices differ from numpy")
    for s in (0, 1, len(ids) // 2, len(ids) - 1):
        start = int(pointers[s]) // itemsize
        check(np.array_equal(ids[s], tokens[start:start + int(sizes[s])]),
              f"IndexedDataset[{s}] differs from numpy")
    print("[IndexedDataset] counts and sequences match the numpy parse", flush=True)

    # --- GPTDataset through the builder ---
    cache = tempfile.mkdtemp(prefix="gpt_cache_")
    config = GPTDatasetConfig(
        random_seed=SEED,
        sequence_length=SEQ_LEN,
        blend=([prefix], None),
        split="100,0,0",
        path_to_cache=cache,
        tokenizer=TinyTokenizer(VOCAB_SIZE, EOD),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    train_ds, valid_ds, test_ds = BlendedMegatronDatasetBuilder(
        GPTDataset, [None, None, None], lambda: True, config
    ).build()
    check(isinstance(train_ds, GPTDataset), f"train split is {type(train_ds)}")
    check(valid_ds is None and test_ds is None, "unexpected valid/test splits")
    n_samples = len(train_ds)
    exp_samples = (EXPECTED_TOKENS - 1) // SEQ_LEN  # one epoch, last partial sample dropped
    print(f"[GPTDataset] samples={n_samples} (expected {exp_samples}); "
          f"cache files={sorted(os.listdir(cache))}", flush=True)
    check(n_samples == exp_samples, f"GPTDataset has {n_samples} samples")
    check(len(train_ds.document_index) == EXPECTED_SEQUENCES,
          "GPTDataset document index is not one epoch of all sequences")

    for idx in (0, 1, n_samples // 2, n_samples - 1):
        want = expected_sample(train_ds, idx, sizes, pointers, tokens, itemsize)
        got = train_ds[idx]
        check(want.shape[0] == SEQ_LEN + 1, f"sample {idx}: numpy window {want.shape[0]}")
        check(torch.equal(got["tokens"], torch.from_numpy(want[:-1])),
              f"sample {idx}: tokens differ from raw .bin")
        check(torch.equal(got["labels"], torch.from_numpy(want[1:])),
              f"sample {idx}: labels differ from raw .bin")
    s0 = train_ds[0]
    print(f"[GPTDataset] sample 0 tokens[:12]={s0['tokens'][:12].tolist()} "
          f"EODs in sample={int((s0['tokens'] == EOD).sum())}", flush=True)

    # --- model ---
    tcfg = TransformerConfig(
        num_layers=2,
        hidden_size=128,
        num_attention_heads=4,
        use_cpu_initialization=False,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=PADDED_VOCAB_SIZE,
        max_sequence_length=SEQ_LEN,
    ).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] GPTModel params={n_params}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    loader = torch.utils.data.DataLoader(train_ds, batch_size=BATCH, shuffle=False,
                                         num_workers=2, drop_last=True)
    losses = []
    model.train()
    for step, batch in enumerate(loader):
        if step == 0:
            # the DataLoader's first batch (via worker processes) against the raw .bin
            for k in range(BATCH):
                want = expected_sample(train_ds, k, sizes, pointers, tokens, itemsize)
                check(torch.equal(batch["tokens"][k], torch.from_numpy(want[:-1])),
                      f"DataLoader sample {k}: tokens differ from raw .bin")
                check(torch.equal(batch["labels"][k], torch.from_numpy(want[1:])),
                      f"DataLoader sample {k}: labels differ from raw .bin")
            print(f"[loader] first batch keys={sorted(batch)} tokens={tuple(batch['tokens'].shape)}"
                  f" attention_mask={tuple(batch['attention_mask'].shape)}; "
                  f"{BATCH} samples equal the raw .bin", flush=True)
        if step >= STEPS:
            break
        tok = batch["tokens"].cuda(non_blocking=True)
        lab = batch["labels"].cuda(non_blocking=True)
        pos = batch["position_ids"].cuda(non_blocking=True)
        att = batch["attention_mask"].cuda(non_blocking=True)
        lmask = batch["loss_mask"].cuda(non_blocking=True).float()
        opt.zero_grad(set_to_none=True)
        per_tok = model(tok, pos, att, labels=lab)  # [b, s] per-token cross-entropy
        check(per_tok.numel() == BATCH * SEQ_LEN, f"loss shape {tuple(per_tok.shape)}")
        loss = (per_tok.float().view(-1) * lmask.view(-1)).sum() / lmask.sum()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        losses.append(loss.item())
        print(f"[train] step {step}: loss={losses[-1]:.4f} (loss_mask sum={int(lmask.sum())})",
              flush=True)

    check(len(losses) == STEPS, f"ran {len(losses)} steps")
    check(all(np.isfinite(losses)), f"non-finite loss {losses}")
    check(abs(losses[0] - np.log(PADDED_VOCAB_SIZE)) < 1.5,
          f"initial loss {losses[0]:.3f} far from ln(V)={np.log(PADDED_VOCAB_SIZE):.3f}")
    print(f"losses={['%.4f' % x for x in losses]} decreasing={losses[-1] < losses[0]}", flush=True)

    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    main()
