"""An input that shrinks or changes during a run, or between a crash and its resume, is never
published from (issue 11 item 2): the run's input identities hold from start to end, and a chunk
record proves it was made from the bytes its input holds now before it is trusted."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from datasetprep import chunks, cli, pipeline, readers, tokenization
from datasetprep.errors import InputChanged
from paths import CORPUS_A, SP_MODEL


class Crash(Exception):
    pass


def _req(src, out, **kw):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    return pipeline.Request(inputs=[src], output_prefix=str(out), tokenizer=cfg, append_eod=True,
                            chunk_bytes=150_000, **kw)


def _after(n, action):
    def cb(stats):
        if stats.chunks_done >= n and not cb.done:
            cb.done = True
            action()
    cb.done = False
    return cb


@pytest.mark.parametrize("workers", [1, 2])
def test_input_truncated_during_the_run_publishes_nothing(tmp_path, workers):
    """Cut to 40 % of its size (at a line end: what is left is valid) after three chunks: the run
    fails naming the file and how it changed, instead of publishing part of the documents."""
    src = tmp_path / "in.jsonl"
    data = (CORPUS_A.read_bytes().rstrip(b"\n") + b"\n") * 3
    src.write_bytes(data)
    size = len(data)
    cut = data.rindex(b"\n", 0, size * 2 // 5) + 1

    def truncate():
        with open(src, "r+b") as f:
            f.truncate(cut)

    with pytest.raises(InputChanged, match=rf"input {src} changed while the run was using it: its size went from "
                                           rf"{size:,} to {cut:,} bytes"):
        pipeline.run(_req(src, tmp_path / "ds", workers=workers, progress=_after(3, truncate)))
    assert not list(tmp_path.glob("ds*"))  # nothing under the final names


def test_input_changed_after_the_last_chunk_is_caught_before_publishing(tmp_path):
    """Every chunk was read from the old bytes; the file changes before the publish: refused."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(CORPUS_A.read_bytes())
    n = len(pipeline.plan(_req(src, tmp_path / "ds"))[1])

    def append():
        with open(src, "ab") as f:
            f.write(b'{"text": "late"}\n')

    with pytest.raises(InputChanged, match="its size went from"):
        pipeline.run(_req(src, tmp_path / "ds", progress=_after(n, append)))
    assert not list(tmp_path.glob("ds*"))


def test_cli_exit_code_and_message_for_a_shrinking_input(tmp_path):
    """The command line, as a user runs it: a second process truncates the input while it works."""
    src = tmp_path / "in.jsonl"
    data = (CORPUS_A.read_bytes().rstrip(b"\n") + b"\n") * 8  # ~25 MB: a few seconds of work
    src.write_bytes(data)
    p = subprocess.Popen([sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(src), "--output-prefix",
                          str(tmp_path / "ds"), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                          str(SP_MODEL), "--workers", "1", "--chunk-mib", "0.5", "--no-progress"],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".datasetprep-work-ds-*/parts/*.done")) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(src, "r+b") as f:
        f.truncate(data.rindex(b"\n", 0, 8 << 20) + 1)  # to 8 MB, at a line end
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, out + err
    assert f"input {src} changed while the run was using it" in err and "Traceback" not in err
    assert not list(tmp_path.glob("ds*"))


def test_input_edited_in_place_with_size_and_mtime_kept_is_not_resumed(tmp_path):
    """Crash after 5 chunks; the file is edited inside chunk 1 with the same size and its mtime put
    back. The rerun must not trust the records: its output equals a fresh run's on the edited file."""
    src = tmp_path / "in.jsonl"
    data = bytearray(CORPUS_A.read_bytes())
    src.write_bytes(bytes(data))
    with pytest.raises(Crash):
        pipeline.run(_req(src, tmp_path / "ds", progress=_after(5, lambda: (_ for _ in ()).throw(Crash()))))
    st = src.stat()
    i = data.index(b'"text": "', 200_000) + 9
    data[i:i + 5] = b"EDITS"  # same length: the same size, the same line ends
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    m = pipeline.run(_req(src, tmp_path / "ds"))
    assert m.stats.chunks_reused == 0
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "in.jsonl").write_bytes(bytes(data))
    pipeline.run(_req(fresh / "in.jsonl", fresh / "ds"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ds_text_document{ext}").read_bytes() == (fresh / f"ds_text_document{ext}").read_bytes()


def _crash_then_records(tmp_path, src, n=5):
    with pytest.raises(Crash):
        pipeline.run(_req(src, tmp_path / "ds", progress=_after(n, lambda: (_ for _ in ()).throw(Crash()))))
    return sorted(tmp_path.glob(".datasetprep-work-ds-*/parts/*.done"))


def test_a_record_proves_its_input_bytes(tmp_path):
    """Each record carries its input file's identity and the sha256 of the bytes of its range; a
    record whose hash does not match the bytes now is redone (``content``), whatever the stat says."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(CORPUS_A.read_bytes())
    records = _crash_then_records(tmp_path, src)
    assert len(records) >= 5
    doc = json.loads(records[1].read_text())
    start, end = doc["input"]["range"]
    assert doc["input"]["sha256"] == hashlib.sha256(src.read_bytes()[start:end]).hexdigest()
    assert doc["input"]["stat"] == chunks.InputStat.of(src).as_list()
    doc["input"]["sha256"] = "0" * 64  # as if the bytes had changed behind an unchanged identity
    records[1].write_text(json.dumps(doc))
    m = pipeline.run(_req(src, tmp_path / "ds", workers=2))
    assert m.stats.chunks_reused == len(records) - 1


def test_stat_check_trusts_the_identity_and_reads_nothing(tmp_path, monkeypatch):
    """``DATASETPREP_RESUME_CHECK=stat``: the identity decides, the input is not read again."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(CORPUS_A.read_bytes())
    records = _crash_then_records(tmp_path, src)
    reads = []
    monkeypatch.setattr(readers, "hash_input", lambda *a: reads.append(a) or "x")
    m = pipeline.run(_req(src, tmp_path / "ds", resume_check="stat"))
    assert m.stats.chunks_reused == len(records) and not reads


@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "parquet", "arrow"])
def test_the_hash_taken_while_reading_equals_the_one_checked_on_resume(tmp_path, kind):
    """What a worker hashes as it reads (inline for JSON Lines, the spans for Parquet/Arrow) is what
    ``hash_input`` reads again on resume."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [json.loads(x)["text"] for x in CORPUS_A.read_text().splitlines()[:200]]
    p = tmp_path / f"in.{kind}"
    body = "".join(json.dumps({"text": t, "other": "x" * 10}) + "\n" for t in texts).encode()
    if kind == "jsonl.gz":
        p.write_bytes(gzip.compress(body))
    elif kind == "jsonl.zst":
        p.write_bytes(zstandard.ZstdCompressor().compress(body))
    elif kind == "parquet":
        pq.write_table(pa.table({"text": texts, "other": ["x" * 10] * len(texts)}), p, row_group_size=50)
    else:
        table = pa.table({"text": texts})
        with pa.ipc.new_stream(p, table.schema) as w:
            w.write_table(table)
    plan = readers.plan_chunks([p], 20_000)
    for c in plan:
        digest = hashlib.sha256()
        for _ in readers.read_chunk(c, ("text",), digest):
            pass
        assert digest.hexdigest() == readers.hash_input(c, ("text",))
    if kind == "parquet":
        assert len(plan) > 1
        spans = readers.input_spans(plan[1], ("text",))
        assert spans and all(0 < a < b < p.stat().st_size for a, b in spans)
