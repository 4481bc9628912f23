"""Clear messages instead of internal errors, and refusals instead of wrong outputs (issue 11).

Every case: the message names the file/line/field or flag and the fix, the exit code is non-zero,
there is no "internal error"/traceback, and nothing is published under the final names.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from datasetprep import cli, indexed
from datasetprep.indexed import IndexedDataset
from paths import CORPUS_A, SP_MODEL, read_texts


def _binarize(tmp_path, capsys, inputs, *extra, model=SP_MODEL, out=None):
    out = out or tmp_path / "out" / "ds"
    tok = ["--tokenizer-model", str(model)] if model else []
    rc = cli.main(["binarize", "--input", *map(str, inputs), "--output-prefix", str(out), *tok, "--workers", "1",
                   "--no-progress", "--append-eod", *extra])
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    return rc, err, out


def _nothing_published(out) -> bool:
    d = out.parent
    return not d.exists() or sorted(p.name for p in d.iterdir()) == []


def _jsonl(tmp_path, rows, name="in.jsonl"):
    f = tmp_path / name
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return f


GOOD = [{"text": f"document {i} with some words"} for i in range(5)]


def test_lone_surrogate_inside_a_list_value(tmp_path, capsys):
    f = _jsonl(tmp_path, GOOD + ['{"text": ["fine", "bad \\ud800 here"]}'])
    rc, err, out = _binarize(tmp_path, capsys, [f])
    assert rc == 1
    assert f"{f}:6: the text holds a lone UTF-16 surrogate (U+D800" in err and "fix the \\u escape" in err
    assert _nothing_published(out)


def test_json_nested_thousands_deep(tmp_path, capsys):
    for depth in (3000, 100_000):
        f = _jsonl(tmp_path, GOOD + ['{"text": "a", "x": ' + "[" * depth + "]" * depth + "}"])
        rc, err, out = _binarize(tmp_path, capsys, [f])
        assert rc == 1
        assert f"{f}:6: the JSON is nested too deeply" in err and "flatten the record" in err
        assert _nothing_published(out)


def test_nesting_that_json_loads_reads_is_fine(tmp_path, capsys):
    f = _jsonl(tmp_path, ['{"text": "a", "x": ' + "[" * 500 + "]" * 500 + "}"])
    rc, err, out = _binarize(tmp_path, capsys, [f])
    assert rc == 0, err


@pytest.fixture
def saved(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(50)]}).save_to_disk(str(d))
    return d


@pytest.mark.parametrize("state, phrase", [
    ("{not json", "is not valid JSON"),
    ('{"_data_files": 3}', 'has no list of data files ("_data_files")'),
    ('["a"]', 'has no list of data files ("_data_files")'),
    ('{"_data_files": [{"filename": "../../etc/passwd"}]}', "is not a file name in the folder"),
    ('{"_data_files": [{"name": "x"}]}', "is not a file name in the folder"),
    ('{"_data_files": [{"filename": "data-99.arrow"}]}', "lists data-99.arrow, which is missing"),
])
def test_save_to_disk_folder_with_a_bad_state_json(tmp_path, capsys, saved, state, phrase):
    (saved / "state.json").write_text(state)
    rc, err, out = _binarize(tmp_path, capsys, [saved])
    assert rc == 1 and f"{saved / 'state.json'}" in err and phrase in err
    assert "save_to_disk" in err  # the fix
    assert _nothing_published(out)


def test_eod_id_outside_the_dtype_and_the_vocabulary(tmp_path, capsys):
    f = _jsonl(tmp_path, GOOD)
    rc, err, out = _binarize(tmp_path, capsys, [f], "--eod-id", "-1")
    assert rc == 2 and "--eod-id must be a token id" in err and "-1" in err
    for eod in ("70000", "8000", "2147483647"):  # above uint16, and the vocabulary is 0..7999
        rc, err, out = _binarize(tmp_path, capsys, [f], "--eod-id", eod)
        assert rc == 1 and f"--eod-id {eod} is outside the vocabulary of this sentencepiece tokenizer (ids 0..7999)" in err
        assert "leave it unset" in err
        assert _nothing_published(out)
    rc, err, out = _binarize(tmp_path, capsys, [f], "--eod-id", "7999")
    assert rc == 0, err


def test_null_tokenizer_ids_at_or_above_vocab_size(tmp_path, capsys):
    f = _jsonl(tmp_path, [{"text": "1 2 3"}, {"text": "4 100"}])
    rc, err, out = _binarize(tmp_path, capsys, [f], "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
                             model=None)
    assert rc == 1 and f"{f}:2" in err and "token id 100 is outside the null tokenizer's vocabulary (ids 0..99)" in err
    assert "--vocab-size" in err and _nothing_published(out)
    rc, err, out = _binarize(tmp_path, capsys, [f], "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
                             "--eod-id", "100", model=None)
    assert rc == 1 and "--eod-id 100 is outside the vocabulary of this null tokenizer" in err
    rc, err, out = _binarize(tmp_path, capsys, [f], "--tokenizer-type", "NullTokenizer", "--vocab-size", "-5",
                             model=None)
    assert rc == 2 and "--vocab-size must be between 1" in err


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "1e9"])
def test_chunk_mib_must_be_a_finite_positive_size(tmp_path, capsys, value):
    f = _jsonl(tmp_path, GOOD)
    rc, err, out = _binarize(tmp_path, capsys, [f], "--chunk-mib", value)
    assert rc == 2 and "--chunk-mib must be a number of MiB above 0" in err
    assert _nothing_published(out)


@pytest.mark.parametrize("value, phrase", [("0", "--partitions must be between 1 and 1024"),
                                           ("-3", "--partitions must be between 1 and 1024"),
                                           ("100000000000", "--partitions must be between 1 and 1024")])
def test_partitions_out_of_range(tmp_path, capsys, value, phrase):
    f = _jsonl(tmp_path, GOOD)
    rc, err, out = _binarize(tmp_path, capsys, [f], "--partitions", value)
    assert rc == 2 and phrase in err and "round-robin" in err
    assert _nothing_published(out)


def test_workers_out_of_range(tmp_path, capsys):
    f = _jsonl(tmp_path, GOOD)
    for value in ("-2", "0", "100000"):
        rc, err, out = _binarize(tmp_path, capsys, [f], "--workers", value)
        assert rc == 2 and f"--workers must be between 1 and 1024, got {value}" in err
    m = tmp_path / "m.yaml"
    m.write_text("apiVersion: datasetprep.io/v1alpha1\nkind: DatasetPrep\nmetadata: {name: x}\nspec:\n"
                 "  source: {files: {paths: [in.jsonl]}}\n  tokenizer: {type: null, vocabSize: 100}\n"
                 "  output: {claimName: data, prefix: o/x}\n")
    assert cli.main(["run", "-f", str(m), "--workers", "-1", "--no-progress"]) == 2
    assert "--workers must be between 1 and 1024, got -1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_prefix_naming_a_folder(tmp_path, capsys):
    f = _jsonl(tmp_path, GOOD)
    (tmp_path / "out").mkdir()
    for prefix in (f"{tmp_path}/out/", f"{tmp_path}/out/.", f"{tmp_path}/out/.."):
        rc, err, _ = _binarize(tmp_path, capsys, [f], out=prefix)
        assert rc == 2 and "names a folder, not a file prefix" in err and "dataset" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]
    assert list((tmp_path / "out").iterdir()) == []
    rc = cli.main(["merge", "--input", "x", "--output-prefix", f"{tmp_path}/out/"])
    assert rc == 2 and "names a folder" in capsys.readouterr().err


def test_sentencepiece_model_given_as_its_folder(tmp_path, capsys):
    f = _jsonl(tmp_path, GOOD)
    rc, err, out = _binarize(tmp_path, capsys, [f], model=SP_MODEL.parent, out=tmp_path / "a" / "ds")
    assert rc == 0, err
    rc, err, out2 = _binarize(tmp_path, capsys, [f], model=SP_MODEL, out=tmp_path / "b" / "ds")
    assert rc == 0, err
    for ext in (".bin", ".idx"):
        assert (tmp_path / "a" / f"ds_text_document{ext}").read_bytes() == \
            (tmp_path / "b" / f"ds_text_document{ext}").read_bytes()
    m = json.loads((tmp_path / "a" / "ds.manifest.json").read_text())
    assert m["tokenizer"]["path"] == str(SP_MODEL)  # the file itself: it is what the fingerprint hashes
    empty = tmp_path / "tokdir"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    rc, err, out = _binarize(tmp_path, capsys, [f], "--tokenizer-type", "SentencePieceTokenizer", model=empty,
                             out=tmp_path / "c" / "ds")
    assert rc == 1 and f"tokenizer folder {empty} holds neither tokenizer.json nor tokenizer.model" in err


def test_input_name_with_glob_characters(tmp_path, capsys):
    """An existing path is taken literally; a path that does not exist is a glob."""
    lit = _jsonl(tmp_path, GOOD[:2], name="a[1].jsonl")
    _jsonl(tmp_path, GOOD, name="a1.jsonl")
    rc, err, out = _binarize(tmp_path, capsys, [lit], out=tmp_path / "o1" / "ds")
    assert rc == 0, err
    assert IndexedDataset(tmp_path / "o1" / "ds_text_document").num_documents == 2  # a[1].jsonl, not a1.jsonl
    rc, err, out = _binarize(tmp_path, capsys, [tmp_path / "a[0-9].jsonl"], out=tmp_path / "o2" / "ds")
    assert rc == 0, err
    assert IndexedDataset(tmp_path / "o2" / "ds_text_document").num_documents == 5  # the glob: a1.jsonl
    rc, err, out = _binarize(tmp_path, capsys, [tmp_path / "a[[]1].json*"], out=tmp_path / "o3" / "ds")
    assert rc == 0, err  # escaped: the file named a[1].jsonl
    assert IndexedDataset(tmp_path / "o3" / "ds_text_document").num_documents == 2


@pytest.mark.parametrize("meta, phrase", [("just-a-string", "metadata must be a mapping"),
                                          ("[1, 2]", "metadata must be a mapping"),
                                          ("{name: 5}", "metadata.name must be a non-empty string")])
def test_manifest_with_bad_metadata(tmp_path, capsys, meta, phrase):
    m = tmp_path / "m.yaml"
    m.write_text(f"apiVersion: datasetprep.io/v1alpha1\nkind: DatasetPrep\nmetadata: {meta}\nspec:\n"
                 "  source: {files: {paths: [in.jsonl]}}\n  tokenizer: {type: null, vocabSize: 100}\n"
                 "  output: {claimName: data, prefix: o/x}\n")
    rc = cli.main(["run", "-f", str(m), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{m}: {phrase}" in err and "internal error" not in err
    assert not (tmp_path / "o").exists()


def test_spec_output_prefix_naming_a_folder(tmp_path, capsys):
    m = tmp_path / "m.yaml"
    m.write_text("apiVersion: datasetprep.io/v1alpha1\nkind: DatasetPrep\nmetadata: {name: x}\nspec:\n"
                 "  source: {files: {paths: [in.jsonl]}}\n  tokenizer: {type: null, vocabSize: 100}\n"
                 "  output: {claimName: data, prefix: o/}\n")
    assert cli.main(["run", "-f", str(m), "--no-progress"]) == 2
    assert "spec.output.prefix: output.prefix names a folder ('o/'): give a file prefix in it" in \
        capsys.readouterr().err


# --------------------------------------------------------------------------- merge / index validation


def _dataset(tmp_path, capsys, name="a"):
    f = _jsonl(tmp_path, GOOD, name=f"{name}.jsonl")
    rc, err, _ = _binarize(tmp_path, capsys, [f], out=tmp_path / "ds" / name)
    assert rc == 0, err
    return tmp_path / "ds" / f"{name}_text_document"


def _patch_idx(prefix, offset_of, value, dtype):
    ip = indexed.idx_path(prefix)
    data = bytearray(ip.read_bytes())
    _, _, _, S, _ = indexed.HEADER.unpack(bytes(data[:indexed.HEADER.size]))
    off = offset_of(S)
    data[off:off + np.dtype(dtype).itemsize] = np.array([value], dtype=dtype).tobytes()
    ip.write_bytes(bytes(data))


def test_merge_refuses_an_index_with_negative_lengths(tmp_path, capsys):
    a = _dataset(tmp_path, capsys, "a")
    b = _dataset(tmp_path, capsys, "b")
    # lengths -5 and +5 more: the total still matches the .bin, which was all that was checked before
    _patch_idx(b, lambda S: indexed.HEADER.size, -5, "<i4")
    lens = IndexedDataset(a).sequence_lengths
    _patch_idx(b, lambda S: indexed.HEADER.size + 4, int(lens[1]) + int(lens[0]) + 5, "<i4")
    rc = cli.main(["merge", "--input", str(a), str(b), "--output-prefix", str(tmp_path / "m" / "merged")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{indexed.idx_path(b)}: sequence 0 has a negative length (-5)" in err
    assert "make the dataset again" in err
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


def test_index_pointers_must_follow_the_lengths(tmp_path, capsys):
    a = _dataset(tmp_path, capsys, "a")
    _patch_idx(a, lambda S: indexed.HEADER.size + 4 * S + 8 * 2, 12345, "<i8")
    with pytest.raises(indexed.FormatError, match="sequence 2 starts at byte 12345 of the .bin, but the lengths "
                                                  "before it end at byte"):
        IndexedDataset(a)
    rc = cli.main(["inspect", str(a)])
    assert rc == 1 and "sequence 2 starts at byte 12345" in capsys.readouterr().err


def test_manifest_max_document_tokens_is_the_longest_document(tmp_path, capsys):
    out = tmp_path / "o" / "ds"
    rc, err, _ = _binarize(tmp_path, capsys, [CORPUS_A], out=out)
    assert rc == 0, err
    m = json.loads((tmp_path / "o" / "ds.manifest.json").read_text())
    ds = IndexedDataset(tmp_path / "o" / "ds_text_document")
    longest = max(len(ds.document(d)) for d in range(ds.num_documents))
    assert m["outputs"][0]["max_document_tokens"] == longest > 0
    assert len(read_texts(CORPUS_A)) == ds.num_documents


def test_max_document_tokens_with_list_values(tmp_path, capsys):
    """The sentences of one document add up (each list element is its own sequence)."""
    f = _jsonl(tmp_path, [{"text": ["one two three", "four five"]}, {"text": "six"}, {"text": []}])
    out = tmp_path / "o" / "ds"
    rc, err, _ = _binarize(tmp_path, capsys, [f], out=out)
    assert rc == 0, err
    ds = IndexedDataset(tmp_path / "o" / "ds_text_document")
    m = json.loads((tmp_path / "o" / "ds.manifest.json").read_text())
    assert m["outputs"][0]["max_document_tokens"] == max(len(ds.document(d)) for d in range(3)) > 0
