"""Parquet, Arrow (datasets.save_to_disk) and multi-key inputs; merge; the reader's checks."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasetprep import cli, indexed, pipeline, pool, tokenization
from datasetprep.indexed import FormatError, IndexedDataset
from datasetprep.merge import merge
from datasetprep.errors import BinarizeError, InputError
from paths import CORPUS_A, GOLDEN, HF_DIR, SP_MODEL, read_texts


def _run(inputs, out, keys=("text",), model=SP_MODEL, workers=2, eod=True):
    cfg = tokenization.resolve_config("auto", model)
    return pipeline.run(pipeline.Request(inputs=list(inputs), output_prefix=str(out), tokenizer=cfg,
                                         keys=tuple(keys), append_eod=eod, workers=workers, chunk_bytes=100_000))


def _golden_bytes(name="a_spbpe_eod"):
    p = GOLDEN / f"{name}_text_document"
    return indexed.bin_path(p).read_bytes(), indexed.idx_path(p).read_bytes()


def test_parquet_gives_the_same_bytes_as_jsonl(tmp_path):
    texts = read_texts(CORPUS_A)
    f = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), f, row_group_size=37)
    _run([f], tmp_path / "o")
    got = indexed.output_prefix(tmp_path / "o", "text")
    assert (indexed.bin_path(got).read_bytes(), indexed.idx_path(got).read_bytes()) == _golden_bytes()


def test_save_to_disk_folder_gives_the_same_bytes(tmp_path):
    import datasets

    texts = read_texts(CORPUS_A)
    d = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(d), max_shard_size="1MB")
    assert len(list(d.glob("*.arrow"))) > 1
    _run([d], tmp_path / "o")
    got = indexed.output_prefix(tmp_path / "o", "text")
    assert (indexed.bin_path(got).read_bytes(), indexed.idx_path(got).read_bytes()) == _golden_bytes()


def test_parquet_missing_column_and_null(tmp_path):
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), f)
    with pytest.raises(InputError, match="has no column 'text'.*content"):
        _run([f], tmp_path / "o")
    g = tmp_path / "y.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), g)
    with pytest.raises(InputError, match="row 1: field 'text' is null"):
        _run([g], tmp_path / "o2")


def test_multiple_keys_one_output_each(tmp_path):
    f = tmp_path / "in.jsonl"
    rows = [{"title": f"Title {i}", "content": f"Body of document {i}. " * (i + 1)} for i in range(50)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m = _run([f], tmp_path / "b", keys=("content", "title"), model=HF_DIR)
    assert [o.prefix for o in m.outputs] == ["b_content_document", "b_title_document"]
    tok = tokenization.load_tokenizer("auto", HF_DIR)
    for key in ("content", "title"):
        ds = IndexedDataset(tmp_path / f"b_{key}_document")
        assert ds.num_documents == 50
        assert tok.decode(ds.document(7)[:-1]) == rows[7][key]


def test_merge_matches_concatenation(tmp_path):
    lines = CORPUS_A.read_text(encoding="utf-8").split("\n")
    half = len(lines) // 2
    (tmp_path / "p1.jsonl").write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    (tmp_path / "p2.jsonl").write_text("\n".join(lines[half:]), encoding="utf-8")
    _run([tmp_path / "p1.jsonl"], tmp_path / "parts" / "p1")
    _run([tmp_path / "p2.jsonl"], tmp_path / "parts" / "p2")
    info = merge([str(tmp_path / "parts" / "p1_text_document"), str(tmp_path / "parts" / "p2_text_document")],
                 str(tmp_path / "merged"))
    assert (indexed.bin_path(tmp_path / "merged").read_bytes(),
            indexed.idx_path(tmp_path / "merged").read_bytes()) == _golden_bytes()
    assert info["documents"] == 526
    # Megatron's folder form: pairs in lexicographic order; stray files refused
    for p in (tmp_path / "parts").glob("*.manifest.json"):
        p.unlink()
    assert cli.main(["merge", "--input", str(tmp_path / "parts"), "--output-prefix", str(tmp_path / "m2")]) == 0
    assert indexed.idx_path(tmp_path / "m2").read_bytes() == _golden_bytes()[1]


def test_merge_refuses_mixed_dtypes_and_keeps_nothing(tmp_path, capsys):
    _run([CORPUS_A], tmp_path / "a")
    cfg = tokenization.resolve_config("null", None, vocab_size=70000)
    pipeline.run(pipeline.Request(inputs=[GOLDEN / "corpus_null.jsonl"], output_prefix=str(tmp_path / "n"),
                                  tokenizer=cfg))
    rc = cli.main(["merge", "--input", str(tmp_path / "a_text_document"), str(tmp_path / "n_text_document"),
                   "--output-prefix", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 1 and "different token dtypes" in err and "uint16" in err and "int32" in err
    assert not list(tmp_path.glob("m.*"))


def test_merge_missing_partner(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"")
    with pytest.raises(BinarizeError, match="x.idx is missing"):
        merge([str(tmp_path / "d")], str(tmp_path / "m"))


def test_reader_rejects_corrupt_files(tmp_path):
    _run([CORPUS_A], tmp_path / "a")
    p = tmp_path / "a_text_document"
    idx = indexed.idx_path(p)
    data = bytearray(idx.read_bytes())
    bad = tmp_path / "bad"
    indexed.bin_path(bad).write_bytes(indexed.bin_path(p).read_bytes())
    indexed.idx_path(bad).write_bytes(b"XXXXXXXXX" + bytes(data[9:]))
    with pytest.raises(FormatError, match="not a Megatron MMIDIDX"):
        IndexedDataset(bad)
    indexed.idx_path(bad).write_bytes(bytes(data[:-8]))
    with pytest.raises(FormatError, match="header says"):
        IndexedDataset(bad)
    indexed.idx_path(bad).write_bytes(bytes(data))
    indexed.bin_path(bad).write_bytes(indexed.bin_path(p).read_bytes()[:-2])
    with pytest.raises(FormatError, match="index describes"):
        IndexedDataset(bad)


def test_pack_matches_megatron_rules():
    toks, lens, docs = pool.pack([[5, 6], [], [7]], 2, np.dtype(np.uint16))
    assert toks.tolist() == [5, 6, 2, 7, 2] and lens.tolist() == [3, 2] and docs.tolist() == [1, 0, 1]
    toks, lens, docs = pool.pack([[5, 6], [], [7]], None, np.dtype(np.uint16))
    assert toks.tolist() == [5, 6, 7] and lens.tolist() == [2, 1]
