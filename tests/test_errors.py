"""Bad input: a clear message naming file/line/field, a non-zero exit, and nothing published."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time


from datasetprep import cli
from paths import HF_DIR, SP_MODEL


def _run(tmp_path, capsys, inputs, *extra, model=SP_MODEL, workers=2):
    out = tmp_path / "out" / "ds"
    rc = cli.main(["binarize", "--input", *map(str, inputs), "--output-prefix", str(out),
                   "--tokenizer-model", str(model), "--workers", str(workers), "--append-eod",
                   "--no-progress", "--chunk-mib", "0.05", *extra])
    err = capsys.readouterr().err
    return rc, err, out


def _leftovers(out) -> list[str]:
    """What a failed run left in its output folder (it must leave nothing)."""
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


def _write(path, lines, mode="w"):
    with open(path, mode) as f:
        f.write(lines)
    return path


def _good_lines(n=400):
    return "".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(n))


def test_malformed_json_names_the_line(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(300) + '{"text": "oops}\n' + _good_lines(50))
    rc, err, out = _run(tmp_path, capsys, [f])
    assert rc == 1
    assert f"{f}:301: malformed JSON" in err
    assert _leftovers(out) == []


def test_missing_key_names_the_field(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(10) + '{"content": "x", "id": 3}\n')
    rc, err, out = _run(tmp_path, capsys, [f])
    assert rc == 1 and f"{f}:11: record has no field 'text' (its fields: content, id)" in err
    assert "--json-keys" in err
    assert _leftovers(out) == []


def test_non_string_field(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", '{"text": 42}\n')
    rc, err, out = _run(tmp_path, capsys, [f])
    assert rc == 1 and "field 'text' is int, expected a string" in err and f"{f}:1" in err


def test_non_utf8_bytes(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_bytes(_good_lines(5).encode() + b'{"text": "caf\xe9"}\n')
    rc, err, out = _run(tmp_path, capsys, [f])
    assert rc == 1 and f"{f}:6: not valid UTF-8 (byte 0xe9" in err
    assert _leftovers(out) == []


def test_empty_line_and_bom(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(3) + "\n" + _good_lines(1))
    rc, err, _ = _run(tmp_path, capsys, [f])
    assert rc == 1 and f"{f}:4: empty line" in err
    g = tmp_path / "bom.jsonl"
    g.write_bytes(b"\xef\xbb\xbf" + _good_lines(2).encode())
    rc, err, _ = _run(tmp_path, capsys, [g])
    assert rc == 1 and "byte-order mark" in err


def test_lone_surrogate(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(2) + '{"text": "bad \\ud800 escape"}\n')
    rc, err, _ = _run(tmp_path, capsys, [f])
    assert rc == 1 and "lone UTF-16 surrogate" in err and str(f) in err


def test_empty_and_nonexistent_input(tmp_path, capsys):
    e = _write(tmp_path / "empty.jsonl", "")
    rc, err, out = _run(tmp_path, capsys, [e])
    assert rc == 1 and f"input {e} is empty" in err
    rc, err, _ = _run(tmp_path, capsys, [tmp_path / "missing.jsonl"])
    assert rc == 1 and "matches no file" in err
    rc, err, _ = _run(tmp_path, capsys, [tmp_path / "*.parquet"])
    assert rc == 1 and "matches no file" in err
    t = _write(tmp_path / "notes.txt", "hello")
    rc, err, _ = _run(tmp_path, capsys, [t])
    assert rc == 1 and "unsupported type" in err


def test_bad_tokenizers(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(3))
    rc, err, out = _run(tmp_path, capsys, [f], model=tmp_path / "nope.model")
    assert rc == 1 and "does not exist" in err
    rc, err, out = _run(tmp_path, capsys, [f], "--tokenizer-type", "SentencePieceTokenizer", model=HF_DIR)
    assert rc == 1 and "is a HuggingFace tokenizer.json, not a SentencePiece model" in err
    assert _leftovers(out) == []


def test_unwritable_output(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(3))
    blocker = _write(tmp_path / "afile", "x")
    rc = cli.main(["binarize", "--input", str(f), "--output-prefix", str(blocker / "sub" / "ds"),
                   "--tokenizer-model", str(SP_MODEL), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot create output folder" in err


def test_existing_output_refused_unless_overwrite(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(3))
    rc, err, out = _run(tmp_path, capsys, [f])
    assert rc == 0
    before = (out.parent / "ds_text_document.bin").read_bytes()
    g = _write(tmp_path / "in2.jsonl", _good_lines(7))
    rc, err, _ = _run(tmp_path, capsys, [g])
    assert rc == 1 and "already exists; pass --overwrite" in err
    assert (out.parent / "ds_text_document.bin").read_bytes() == before
    rc, err, _ = _run(tmp_path, capsys, [g], "--overwrite")
    assert rc == 0 and (out.parent / "ds_text_document.bin").read_bytes() != before


def test_failed_rerun_keeps_the_old_output_intact(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(30))
    rc, _, out = _run(tmp_path, capsys, [f])
    files = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    bad = _write(tmp_path / "bad.jsonl", _good_lines(30) + "{nope\n")
    rc, err, _ = _run(tmp_path, capsys, [bad], "--overwrite")
    assert rc == 1
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == files  # no temp dirs, same bytes


def test_mixed_inputs_and_compressed(tmp_path, capsys):
    import zstandard

    lines = _good_lines(50)
    a = _write(tmp_path / "a.jsonl", lines)
    b = tmp_path / "b.jsonl.gz"
    with gzip.open(b, "wt") as g:
        g.write(lines)
    c = tmp_path / "c.jsonl.zst"
    c.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    rc, err, out = _run(tmp_path, capsys, [a, b, c])
    assert rc == 0, err
    from datasetprep.indexed import IndexedDataset
    ds = IndexedDataset(str(out) + "_text_document")
    assert ds.num_documents == 150
    assert (ds.document(0) == ds.document(50)).all() and (ds.document(0) == ds.document(100)).all()
    bad = tmp_path / "d.jsonl.gz"
    with gzip.open(bad, "wt") as g:
        g.write(lines + '{"text": 1}\n')
    rc, err, _ = _run(tmp_path, capsys, [bad], "--overwrite")
    assert rc == 1 and f"{bad}:51 (decompressed)" in err


def test_error_in_a_worker_ends_the_run_within_seconds(tmp_path):
    """Megatron-LM hangs forever here; we exit with the message."""
    f = tmp_path / "big.jsonl"
    with open(f, "w") as fh:
        for _ in range(40):
            fh.write(_good_lines(500))
        fh.write('{"text": 3.5}\n')
        for _ in range(40):
            fh.write(_good_lines(500))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(f), "--output-prefix",
                        str(tmp_path / "o" / "ds"), "--tokenizer-model", str(SP_MODEL), "--workers", "2",
                        "--chunk-mib", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    elapsed = time.time() - t0
    assert p.returncode == 1
    assert "field 'text' is float, expected a string" in p.stderr and "Traceback" not in p.stderr
    assert elapsed < 120
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_unknown_tokenizer_type_and_legacy_impl(tmp_path, capsys):
    f = _write(tmp_path / "in.jsonl", _good_lines(3))
    rc, err, _ = _run(tmp_path, capsys, [f], "--tokenizer-type", "GPT2BPETokenizer")
    assert rc == 1 and "unknown tokenizer type" in err
    rc, err, _ = _run(tmp_path, capsys, [f], "--dataset-impl", "lazy")
    assert rc == 2 and "legacy format" in err
