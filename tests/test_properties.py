"""Property tests (Hypothesis) of the readers, the index writer/reader and merge (issue 11).

* Generated documents round-trip: what is written is what is read back, and the counts match
  (records read; tokens written by a whole binarize run == tokens in the dataset == the manifest).
* Generated garbage (random bytes, truncations and bit flips of valid files) gives an
  ``InputError``/``FormatError`` naming the file, or (where a format has no check for that byte)
  the original records; never another exception, and a failed run publishes nothing.

Every test is derandomized with a fixed number of examples, so CI runs the same cases each time.
"""
from __future__ import annotations

import gzip
import io
import contextlib
import json
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasetprep import cli, indexed, pipeline, readers, tokenization
from datasetprep.compressed import ZstdFrames
from datasetprep.indexed import FormatError, IndexedDataset
from datasetprep.merge import merge
from datasetprep.pipeline import BinarizeError
from datasetprep.readers import InputError


def fixed(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Text as JSON can carry it: any Unicode scalar value (no lone surrogates), line ends included.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
documents = st.lists(texts, min_size=1, max_size=40)
COMPRESSIONS = ["plain", "gz", "zst", "gz-members", "zst-frames"]


def _encode(data: bytes, how: str) -> bytes:
    if how == "gz":
        return gzip.compress(data)
    if how == "zst":
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    half = len(data) // 2
    if how == "gz-members":
        return gzip.compress(data[:half]) + gzip.compress(data[half:])
    if how == "zst-frames":
        c = zstandard.ZstdCompressor(write_checksum=True)
        return c.compress(data[:half]) + c.compress(data[half:])
    return data


def _suffix(how: str) -> str:
    return {"plain": ".jsonl", "gz": ".jsonl.gz", "gz-members": ".jsonl.gz"}.get(how, ".jsonl.zst")


def _read(path: Path, target: int = 32 << 20, limit: int | None = None) -> list[str]:
    kw = {"max_document_bytes": limit} if limit else {}
    return [r[0] for c in readers.plan_chunks([path], target, **kw) for recs, _ in readers.read_chunk(c, ("text",))
            for r in recs]


def _jsonl(docs: list[str], newline: str = "\n") -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + newline for d in docs).encode()


# --------------------------------------------------------------------------- round trips


@fixed(60)
@given(docs=documents, how=st.sampled_from(COMPRESSIONS), newline=st.sampled_from(["\n", "\r\n"]),
       target=st.integers(1, 3000), block=st.integers(16, 700))
def test_jsonl_round_trip(docs, how, newline, target, block):
    """Any texts, any compression, any chunking and read block size: the same texts back, in order."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("in" + _suffix(how))
        f.write_bytes(_encode(_jsonl(docs, newline), how))
        old = readers.BATCH_BYTES
        readers.BATCH_BYTES = block  # lines spanning many blocks, line ends on block edges
        try:
            assert _read(f, target) == docs
        finally:
            readers.BATCH_BYTES = old


@fixed(30)
@given(docs=documents, row_group=st.integers(1, 50), target=st.integers(1, 5000))
def test_parquet_round_trip(docs, row_group, target):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "in.parquet"
        pq.write_table(pa.table({"text": docs}), f, row_group_size=row_group)
        assert _read(f, target) == docs


ids = st.lists(st.integers(0, 998), max_size=30)


@fixed(25)
@given(docs=st.lists(ids, min_size=1, max_size=30), how=st.sampled_from(COMPRESSIONS), workers=st.sampled_from([1, 2]),
       chunk=st.integers(20, 400))
def test_binarize_round_trip_tokens_and_counts(docs, how, workers, chunk):
    """A whole run (null tokenizer: the text is the ids): the dataset holds exactly the ids plus EOD,
    and the manifest's counts are the dataset's."""
    texts = [" ".join(map(str, d)) for d in docs]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("in" + _suffix(how))
        f.write_bytes(_encode(_jsonl(texts), how))
        cfg = tokenization.resolve_config("null", None, vocab_size=1000)
        m = pipeline.run(pipeline.Request(inputs=[f], output_prefix=str(Path(d) / "o" / "x"), tokenizer=cfg,
                                          append_eod=True, workers=workers, chunk_bytes=chunk))
        ds = IndexedDataset(Path(d) / "o" / "x_text_document")
        got = [ds.document(i).tolist() for i in range(ds.num_documents)]
        assert got == [doc + [999] if doc else [] for doc in docs]
        out = m.outputs[0]
        assert (out.documents, out.tokens) == (len(docs), sum(len(x) + (1 if x else 0) for x in docs))
        assert out.sequences == ds.num_sequences == sum(1 for x in docs if x)
        assert out.max_document_tokens == max(len(x) + (1 if x else 0) for x in docs)


token_docs = st.lists(st.lists(st.integers(0, 65535), max_size=20), max_size=25)


def _write_dataset(prefix: Path, docs: list[list[int]], dtype=np.uint16, sentences: bool = False) -> dict:
    """A dataset through the writer: ``PartWriter`` (packed or per document) + ``assemble``."""
    w = indexed.PartWriter(str(prefix) + ".part", dtype)
    if sentences:
        for doc in docs:
            w.add_document([np.asarray(doc[i:i + 3], dtype=np.int64) for i in range(0, len(doc), 3)])
    else:
        toks = np.asarray([t for doc in docs for t in doc], dtype=np.int64)
        lens = np.asarray([len(doc) for doc in docs if doc], dtype=np.int64)
        w.add_packed(toks, lens, np.asarray([1 if doc else 0 for doc in docs], dtype=np.int32))
    part = w.close()
    return indexed.assemble([part], str(prefix), dtype)


@fixed(40)
@given(parts=st.lists(token_docs, min_size=1, max_size=4), sentences=st.booleans())
def test_index_writer_reader_and_merge_round_trip(parts, sentences):
    with tempfile.TemporaryDirectory() as d:
        prefixes = []
        for i, docs in enumerate(parts):
            p = Path(d) / f"p{i}"
            info = _write_dataset(p, docs, sentences=sentences)
            ds = IndexedDataset(p)
            assert [ds.document(k).tolist() for k in range(ds.num_documents)] == docs
            assert (info["documents"], info["tokens"]) == (len(docs), sum(map(len, docs)))
            assert info["max_document_tokens"] == max(map(len, docs), default=0)
            prefixes.append(str(p))
        info = merge(prefixes, str(Path(d) / "m" / "merged"))
        m = IndexedDataset(Path(d) / "m" / "merged")
        assert [m.document(k).tolist() for k in range(m.num_documents)] == [x for docs in parts for x in docs]
        assert info["documents"] == sum(map(len, parts)) and info["tokens"] == m.num_tokens


# --------------------------------------------------------------------------- garbage


def _is_clear(err: Exception, path: Path) -> bool:
    return isinstance(err, (InputError, FormatError)) and path.name in str(err)


@fixed(60)
@given(data=st.binary(min_size=1, max_size=600), kind=st.sampled_from([".jsonl", ".jsonl.gz", ".jsonl.zst",
                                                                         ".parquet", ".arrow"]))
def test_random_bytes_give_a_clear_error(data, kind):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("x" + kind)
        f.write_bytes(data)
        try:
            got = _read(f)
        except Exception as e:  # noqa: BLE001 - the point: which exceptions come out
            assert _is_clear(e, f), f"{type(e).__name__}: {e}"
        else:
            assert all(isinstance(x, str) for x in got)


def _valid(how: str, docs: list[str]) -> bytes:
    if how == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": docs}), buf, row_group_size=7, write_page_checksum=True)
        return buf.getvalue()
    return _encode(_jsonl(docs), how)


CHECKED = ["gz", "zst", "gz-members", "zst-frames", "parquet"]


@fixed(80)
@given(how=st.sampled_from(CHECKED), docs=documents, where=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_refused(how, docs, where):
    """A cut anywhere but at a member/frame boundary is an error naming the file."""
    data = _valid(how, docs)
    cut = max(1, int(len(data) * where))
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("x" + (".parquet" if how == "parquet" else _suffix(how)))
        f.write_bytes(data[:cut])
        boundary = how in ("gz-members", "zst-frames") and _is_boundary(data, cut, how)
        try:
            got = _read(f)
        except Exception as e:  # noqa: BLE001
            assert _is_clear(e, f), f"{type(e).__name__}: {e}"
        else:
            assert boundary, f"a cut at {cut} of {len(data)} was accepted ({len(got)} records)"


def _is_boundary(data: bytes, cut: int, how: str) -> bool:
    """Is ``cut`` the end of the first member/frame (a shorter valid file, by construction)?"""
    if how == "gz-members":
        d = zlib.decompressobj(31)
        d.decompress(data)
        return cut == len(data) - len(d.unused_data)
    t = ZstdFrames()
    t.feed(data[:cut])
    return t.complete


@fixed(80)
@given(how=st.sampled_from(["gz", "zst", "parquet"]), docs=documents, where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_bit_flips_are_refused_or_harmless(how, docs, where, bit):
    """A flipped bit is caught by a checksum, or sits where it changes no record (e.g. a gzip
    header's timestamp); for Parquet, a flip outside the checksummed pages may change metadata, which
    is then refused or read as text, never an internal error."""
    data = bytearray(_valid(how, docs))
    i = int(len(data) * where)
    data[i] ^= 1 << bit
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("x" + (".parquet" if how == "parquet" else _suffix(how)))
        f.write_bytes(bytes(data))
        try:
            got = _read(f)
        except Exception as e:  # noqa: BLE001
            assert _is_clear(e, f), f"{type(e).__name__}: {e}"
        else:
            if how != "parquet":
                assert got == docs, f"flip at byte {i} bit {bit} changed the records undetected"
            else:
                assert all(isinstance(x, str) for x in got)


@fixed(60)
@given(docs=st.lists(st.lists(st.integers(0, 100), max_size=8), min_size=1, max_size=8),
       where=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255), cut=st.booleans())
def test_damaged_index_is_refused_or_consistent_and_merge_publishes_nothing(docs, where, value, cut):
    """A damaged .idx opens only if every invariant holds (and then reads within the .bin); merge
    of a refused one leaves no output."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a"
        _write_dataset(p, docs)
        ip = indexed.idx_path(p)
        data = bytearray(ip.read_bytes())
        i = int(len(data) * where)
        if cut:
            data = data[:i]
        else:
            data[i] = value
        ip.write_bytes(bytes(data))
        try:
            ds = IndexedDataset(p)
        except FormatError as e:
            assert ip.name in str(e) or "a.bin" in str(e)
            out = Path(d) / "m" / "merged"
            with pytest.raises((FormatError, BinarizeError)):
                merge([str(p)], str(out))
            assert not out.parent.exists() or list(out.parent.iterdir()) == []
            return
        lens = np.asarray(ds.sequence_lengths, dtype=np.int64)
        assert (lens >= 0).all() and int(lens.sum()) * ds.dtype.itemsize == indexed.bin_path(p).stat().st_size
        for i in range(ds.num_sequences):  # every sequence lies whole inside the .bin
            assert len(ds.sequence(i)) == lens[i]


@fixed(20)
@given(data=st.binary(min_size=1, max_size=300), kind=st.sampled_from([".jsonl", ".jsonl.gz", ".jsonl.zst"]))
def test_binarize_of_garbage_exits_with_a_message_and_publishes_nothing(data, kind):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("x" + kind)
        f.write_bytes(data)
        out = Path(d) / "o" / "x"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["binarize", "--input", str(f), "--output-prefix", str(out), "--tokenizer-type",
                           "NullTokenizer", "--vocab-size", "1000", "--workers", "1", "--no-progress"])
        text = err.getvalue()
        if rc != 0:
            assert "internal error" not in text and "Traceback" not in text, text
            assert not out.parent.exists() or list(out.parent.iterdir()) == []
