"""Byte-for-byte equality with Megatron-LM's own preprocess_data.py output (../shared/golden)."""
from __future__ import annotations

import hashlib

import pytest

from datasetprep import cli, indexed, pipeline, tokenization
from paths import golden_cases

CASES = golden_cases()


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_all_golden_vectors_are_covered():
    names = {c["name"] for c in CASES}
    assert len(CASES) == 7, names
    assert {"a_spbpe_eod", "a_hfbpe_eod", "null_v65500_eod", "a_spbpe_eod_part2"} <= names


@pytest.mark.parametrize("workers,chunk", [(1, 16 << 20), (2, 64 << 10), (3, 100_000)])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_megatron(tmp_path, case, workers, chunk):
    cfg = tokenization.resolve_config(case["kind"], case["model"], vocab_size=case["vocab_size"])
    out = tmp_path / case["name"]
    m = pipeline.run(pipeline.Request(
        inputs=[case["input"]], output_prefix=str(out), tokenizer=cfg, append_eod=case["append_eod"],
        workers=workers, chunk_bytes=chunk, partitions=case["partitions"],
    ))
    meta = case["meta"]
    got = indexed.output_prefix(out, "text")
    assert _sha(indexed.bin_path(got)) == meta["sha256"]["bin"]
    assert _sha(indexed.idx_path(got)) == meta["sha256"]["idx"]
    assert indexed.bin_path(got).read_bytes() == indexed.bin_path(case["prefix"]).read_bytes()
    assert indexed.idx_path(got).read_bytes() == indexed.idx_path(case["prefix"]).read_bytes()
    o = m.outputs[0]
    assert (o.documents, o.sequences, o.tokens, o.dtype) == (
        meta["document_count"], meta["sequence_count"], meta["token_count"], meta["dtype"])
    assert o.bin_sha256 == meta["sha256"]["bin"] and o.idx_sha256 == meta["sha256"]["idx"]
    assert m.tokenizer.vocab_size == meta["vocab_size"]
    assert m.tokenizer.eod_id == meta["eod_id"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cli_runs_the_upstream_command(tmp_path, case, monkeypatch):
    """The exact upstream command line, with our program name, gives the same bytes."""
    cmd = case["meta"]["command"].split()
    args = cmd[cmd.index("tools/preprocess_data.py") + 1:] if "tools/preprocess_data.py" in cmd else cmd[2:]
    monkeypatch.chdir(case["input"].parent)
    out = tmp_path / case["name"]
    i = args.index("--output-prefix")
    args[i + 1] = str(out)
    assert cli.main(["binarize", *args, "--no-progress"]) == 0
    got = indexed.output_prefix(out, "text")
    assert indexed.bin_path(got).read_bytes() == indexed.bin_path(case["prefix"]).read_bytes()
    assert indexed.idx_path(got).read_bytes() == indexed.idx_path(case["prefix"]).read_bytes()


def test_reader_agrees_with_golden_header():
    for case in CASES:
        ds = indexed.IndexedDataset(case["prefix"])
        meta = case["meta"]
        assert ds.num_documents == meta["document_count"]
        assert ds.num_sequences == meta["sequence_count"]
        assert ds.num_tokens == meta["token_count"]
        assert ds.dtype.name == meta["dtype"]
        non_empty = [d for d in range(ds.num_documents) if len(ds.document(d))]
        assert [int(x) for x in ds.document(non_empty[0])[:len(meta["first_sequence_head"])]] == \
            meta["first_sequence_head"]
        assert [int(x) for x in ds.document(non_empty[-1])[-len(meta["last_sequence_tail"]):]] == \
            meta["last_sequence_tail"]


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "HuggingFaceTokenizer"], ids=lambda c: c["name"])
def test_hf_plain_library_path_matches_too(tmp_path, case):
    """The `tokenizers` path (used when the native engine is absent or refuses a file) is exact too."""
    cfg = tokenization.resolve_config(case["kind"], case["model"], use_native=False)
    assert tokenization.load(cfg).engine == "tokenizers"
    out = tmp_path / case["name"]
    pipeline.run(pipeline.Request(inputs=[case["input"]], output_prefix=str(out), tokenizer=cfg,
                                  append_eod=case["append_eod"], workers=2, chunk_bytes=256 << 10))
    got = indexed.output_prefix(out, "text")
    assert indexed.bin_path(got).read_bytes() == indexed.bin_path(case["prefix"]).read_bytes()
    assert indexed.idx_path(got).read_bytes() == indexed.idx_path(case["prefix"]).read_bytes()
