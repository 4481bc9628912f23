"""Incomplete or damaged inputs are refused with the file's name, never published (issue 11, item 1),
and very long lines are read in linear time, up to a documented maximum (item 8)."""
from __future__ import annotations

import gzip
import json
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from datasetprep import cli, compressed, lines, readers
from datasetprep.readers import InputError
from hubserver import TINY_REPO, _fake_hub_server, fake_hub  # noqa: F401 - fixtures are used by name
from paths import SP_MODEL


def _lines(n: int = 300, tag: str = "doc") -> bytes:
    return "".join(json.dumps({"text": f"{tag} {i} " * 20}) + "\n" for i in range(n)).encode()


def _read_all(path, **plan) -> int:
    """Records read from one input file through the planner and the chunk readers."""
    return sum(len(recs) for c in readers.plan_chunks([path], **plan) for recs, _ in readers.read_chunk(c, ("text",)))


def _binarize(tmp_path, capsys, inp, *extra):
    out = tmp_path / "out" / "ds"
    rc = cli.main(["binarize", "--input", str(inp), "--output-prefix", str(out), "--tokenizer-model", str(SP_MODEL),
                   "--workers", "1", "--no-progress", "--append-eod", *extra])
    return rc, capsys.readouterr().err, out


def _published(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


# --------------------------------------------------------------------------- gzip


def test_gzip_without_trailer_is_refused_and_nothing_published(tmp_path, capsys):
    data = gzip.compress(_lines())
    for cut, name in ((8, "no-trailer"), (4, "no-isize"), (1, "one-byte-short")):
        f = tmp_path / f"{name}.jsonl.gz"
        f.write_bytes(data[:-cut])
        rc, err, out = _binarize(tmp_path, capsys, f)
        assert rc == 1, err
        assert f"{f}: the compressed data is truncated" in err and "CRC32/size trailer" in err
        assert "download or copy it again" in err
        assert _published(out) == []


@pytest.mark.parametrize("name, compress", [
    ("t.jsonl.gz", gzip.compress),
    ("t.jsonl.zst", zstandard.ZstdCompressor(write_checksum=True).compress),
    ("u.jsonl.zst", zstandard.ZstdCompressor(write_checksum=False).compress),
])
def test_every_truncation_is_refused(tmp_path, name, compress):
    """A cut anywhere inside the one member/frame (header, data, trailer/checksum) is an error."""
    data = compress(_lines(40))
    f = tmp_path / name
    for cut in range(1, len(data)):
        f.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"{f.name}: the compressed data is (truncated|corrupt)"):
            _read_all(f)


def test_gzip_crc_and_size_of_every_member_are_checked(tmp_path):
    a, b = gzip.compress(_lines(50, "a")), gzip.compress(_lines(50, "b"))
    f = tmp_path / "m.jsonl.gz"
    f.write_bytes(a + b)
    assert _read_all(f) == 100  # multi-member: both members read
    for member, offset, what in ((0, -8, "CRC check failed"), (0, -4, "Incorrect length"),
                                 (1, -8, "CRC check failed"), (1, -1, "Incorrect length")):
        parts = [bytearray(a), bytearray(b)]
        parts[member][offset] ^= 0x01
        f.write_bytes(bytes(parts[0] + parts[1]))
        with pytest.raises(InputError, match=f"{f.name}: the compressed data is corrupt: gzip: {what}"):
            _read_all(f)
    f.write_bytes(a + b[:-8])  # second member cut: its trailer is missing
    with pytest.raises(InputError, match="truncated"):
        _read_all(f)
    f.write_bytes(a + b"this is not gzip")
    with pytest.raises(InputError, match="corrupt"):
        _read_all(f)


def test_gzip_zero_padding_is_allowed_like_gzip1(tmp_path):
    f = tmp_path / "pad.jsonl.gz"
    f.write_bytes(gzip.compress(_lines(20)) + b"\0" * 512)
    assert _read_all(f) == 20


def test_gzip_bad_deflate_data(tmp_path):
    data = bytearray(gzip.compress(_lines()))
    for i in range(20, 60):
        data[i] ^= 0xFF
    f = tmp_path / "bad.jsonl.gz"
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{f.name}: the compressed data is corrupt"):
        _read_all(f)


# --------------------------------------------------------------------------- zstd


def test_zstd_without_last_checksum_is_refused_and_nothing_published(tmp_path, capsys):
    data = zstandard.ZstdCompressor(write_checksum=True).compress(_lines())
    f = tmp_path / "t.jsonl.zst"
    f.write_bytes(data[:-4])  # the frame lost its 4 checksum bytes: accepted before
    rc, err, out = _binarize(tmp_path, capsys, f)
    assert rc == 1, err
    assert f"{f}: the compressed data is truncated: the stream ends inside zstd frame 1" in err
    assert _published(out) == []


def test_zstd_many_frames_skippable_frames_and_checksums(tmp_path):
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    a, b = cctx.compress(_lines(30, "a")), cctx.compress(_lines(30, "b"))
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    f = tmp_path / "m.jsonl.zst"
    f.write_bytes(a + skippable + b)
    assert _read_all(f) == 60
    f.write_bytes(a + b[:-1])  # the second frame is cut: the first frame alone is not the file
    with pytest.raises(InputError, match="ends inside zstd frame 2"):
        _read_all(f)
    f.write_bytes(a + b"garbage!")
    with pytest.raises(InputError, match="corrupt: bytes that are not a zstd frame"):
        _read_all(f)
    bad = bytearray(a)
    bad[-2] ^= 0x40  # the content checksum
    f.write_bytes(bytes(bad))
    with pytest.raises(InputError, match="corrupt"):
        _read_all(f)


def test_zstd_stream_of_many_blocks_is_followed_exactly():
    """The frame tracker agrees with the format on a large multi-block, multi-frame stream fed in odd pieces."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=False)
    data = b"".join(cctx.compress(_lines(2000, t)) for t in ("x", "y", "z"))
    t = compressed.ZstdFrames()
    for i in range(0, len(data), 777):
        t.feed(data[i:i + 777])
    assert t.complete and t.frames == 3
    t = compressed.ZstdFrames()
    t.feed(data[:-1])
    assert not t.complete and t.error is None


# --------------------------------------------------------------------------- Parquet / Arrow


def _parquet(tmp_path, name="p.parquet"):
    f = tmp_path / name
    pq.write_table(pa.table({"text": [f"row {i} " * 40 for i in range(3000)]}), f, row_group_size=1000,
                   compression="snappy", write_page_checksum=True)
    return f


def test_parquet_corrupt_page_names_the_file(tmp_path, capsys):
    f = _parquet(tmp_path)
    data = bytearray(f.read_bytes())
    for i in range(3000, 3400):
        data[i] ^= 0x55
    f.write_bytes(bytes(data))
    rc, err, out = _binarize(tmp_path, capsys, f)
    assert rc == 1
    assert f"{f}: cannot read the Parquet row groups" in err and "damaged or incomplete" in err
    assert _published(out) == []


def test_parquet_truncated_names_the_file(tmp_path, capsys):
    f = _parquet(tmp_path)
    f.write_bytes(f.read_bytes()[:-100])
    rc, err, out = _binarize(tmp_path, capsys, f)
    assert rc == 1 and f"{f} is not a readable Parquet file" in err
    assert _published(out) == []


def _saved(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [f"row {i} " * 40 for i in range(3000)]}).save_to_disk(str(d))
    return d, next(d.glob("*.arrow"))


def test_arrow_truncated_names_the_file(tmp_path, capsys):
    d, arrow = _saved(tmp_path)
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) // 2])
    rc, err, out = _binarize(tmp_path, capsys, d)
    assert rc == 1 and str(arrow) in err and "internal error" not in err
    assert _published(out) == []
    arrow.write_bytes(data[:-8])  # cut exactly at a record batch boundary: only the end marker is missing
    rc, err, out = _binarize(tmp_path, capsys, d)
    assert rc == 1 and f"{arrow}: the Arrow stream has no end-of-stream marker" in err
    assert _published(out) == []
    arrow.write_bytes(data)
    rc, err, out = _binarize(tmp_path, capsys, d)
    assert rc == 0, err


# --------------------------------------------------------------------------- long lines


def _long_line(nbytes: int) -> bytes:
    return b'{"text": "' + b"ab " * (nbytes // 3) + b'"}\n'


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_long_lines_across_many_blocks_read_exactly(tmp_path, monkeypatch, newline):
    monkeypatch.setattr(readers, "BATCH_BYTES", 4096)  # many blocks per line, and line ends on block edges
    rows = [_lines(3), _long_line(50_000), _lines(2), _long_line(9_000), _long_line(4095), _long_line(4096)]
    data = b"".join(rows).replace(b"\n", newline)
    want = [json.loads(x) ["text"] for x in b"".join(rows).decode().splitlines()]
    for name, blob in (("l.jsonl", data), ("l.jsonl.gz", gzip.compress(data)),
                       ("l.jsonl.zst", zstandard.ZstdCompressor().compress(data))):
        f = tmp_path / name
        f.write_bytes(blob)
        got = [r[0] for c in readers.plan_chunks([f], target_bytes=10_000)
               for recs, _ in readers.read_chunk(c, ("text",)) for r in recs]
        assert got == want, name


def test_too_long_line_fails_fast_with_file_line_and_flag(tmp_path, capsys):
    f = tmp_path / "big.jsonl"
    f.write_bytes(_lines(5) + _long_line(3 << 20) + _lines(5))
    rc, err, out = _binarize(tmp_path, capsys, f, "--max-document-bytes", "2MiB")
    assert rc == 1
    assert f"{f}:6: the document is larger than the maximum document size of 2,097,152 bytes (2 MiB)" in err
    assert "--max-document-bytes" in err and "maxDocumentBytes" in err
    assert _published(out) == []
    g = tmp_path / "big.jsonl.gz"
    g.write_bytes(gzip.compress(f.read_bytes()))
    rc, err, out = _binarize(tmp_path, capsys, g, "--max-document-bytes", "2MiB")
    assert rc == 1 and f"{g}:6 (decompressed): the document is larger than the maximum" in err
    rc, err, out = _binarize(tmp_path, capsys, g, "--max-document-bytes", "4MiB")
    assert rc == 0, err


def test_too_long_line_below_one_block_is_caught_exactly(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(_lines(3) + _long_line(5000))
    with pytest.raises(InputError, match=r"x.jsonl:4: the document is 5,0\d\d bytes, larger than the maximum "
                                         r"document size of 4,096 bytes \(4 KiB\)"):
        _read_all(f, max_document_bytes=4096)


def test_long_line_is_refused_after_reading_about_the_maximum():
    """Memory stays bounded: the reader stops pulling input once the line passed the maximum."""
    pulled = []

    def blocks():
        for _ in range(10_000):  # a 10 GB line without an end
            pulled.append(1)
            yield b"x" * (1 << 20)

    with pytest.raises(lines.TooLong):
        for _ in lines.line_blocks(blocks(), 8 << 20):
            pass
    assert len(pulled) == 9


def test_gzip_bomb_line_stops_early(tmp_path):
    """A 1 MiB .gz of one 256 MiB line stops after about the maximum, with a clear message."""
    f = tmp_path / "bomb.jsonl.gz"
    with gzip.open(f, "wb", compresslevel=9) as g:
        g.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(256):
            g.write(block)
        g.write(b'"}\n')
    with pytest.raises(InputError, match="bomb.jsonl.gz:1 .decompressed.: the document is larger than the maximum "
                                         "document size of 4,194,304 bytes"):
        _read_all(f, max_document_bytes=4 << 20)


def test_parquet_row_above_the_maximum(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["small", "x" * 5000, "small"]}), f)
    with pytest.raises(InputError, match=r"p.parquet row 1: the document is 5,000 bytes, larger than the maximum"):
        _read_all(f, max_document_bytes=4096)
    g = tmp_path / "l.parquet"
    pq.write_table(pa.table({"text": [["a" * 3000, "b" * 3000], ["ok"]]}), g)
    with pytest.raises(InputError, match=r"l.parquet row 0: the document is 6,000 bytes"):
        _read_all(g, max_document_bytes=4096)
    assert _read_all(g, max_document_bytes=8192) == 2


def test_plan_does_not_hold_a_long_line(tmp_path):
    """Chunk boundaries are found by scanning, not by reading a whole line."""
    f = tmp_path / "x.jsonl"
    f.write_bytes(_lines(10) + _long_line(3 << 20) + _lines(10))
    chunks = readers.plan_chunks([f], target_bytes=1000)
    assert chunks[0].start == 0 and chunks[-1].end == f.stat().st_size
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    data = f.read_bytes()
    assert all(data[c.end - 1:c.end] == b"\n" for c in chunks)
    assert _read_all(f, target_bytes=1000, max_document_bytes=4 << 20) == 21


def test_decompressed_reports_zlib_errors_as_corrupt():
    import io

    raw = gzip.compress(b"x" * 1000)
    bad = raw[:10] + zlib.compress(b"y")[2:] + raw[-8:]
    d = compressed.Decompressed(io.BytesIO(bad), "x.gz")
    with pytest.raises(compressed.CorruptStream, match="corrupt|truncated"):
        while d.read(1 << 16):
            pass


# --------------------------------------------------------------------------- Hub listings: size and hash


@pytest.fixture
def fast():
    from datasetprep import hub

    return hub.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02, total_timeout=10, sleep=lambda d: None)


def _tiny(subset="fr", split="train"):
    from datasetprep.spec import HubDatasetSource

    return HubDatasetSource(repo=TINY_REPO, subset=subset, split=split)


def test_cached_hub_file_changed_in_place_is_downloaded_again(fake_hub, tmp_path, fast):
    """Same size, other bytes, mtime put back: the listing's sha256 catches it before the run uses it."""
    import os

    from datasetprep import hub

    r = hub.resolve_dataset(_tiny(), None, retry=fast)
    (path,) = hub.download_dataset(r, tmp_path, None, retry=fast)
    good = path.read_bytes()
    st = path.stat()
    path.write_bytes(good.replace(b"le", b"LE"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fake_hub.reset()
    assert hub.download_dataset(r, tmp_path, None, retry=fast) == [path]
    assert fake_hub.file_downloads() >= 1 and path.read_bytes() == good
    fake_hub.reset()
    assert hub.download_dataset(r, tmp_path, None, retry=fast) == [path]
    assert fake_hub.requests == []  # verified once, remembered: no request, no re-download


def test_streamed_hub_file_is_checked_against_the_listing(fake_hub, fast, monkeypatch):
    from datasetprep import hub

    r = hub.resolve_dataset(_tiny(), None, retry=fast)
    served = fake_hub.data.file(TINY_REPO, "fr/train-00000-of-00001.jsonl")
    monkeypatch.setattr(served, "data", served.data.replace(b"le", b"LE"))  # changed on the server since
    with pytest.raises(hub.HubError, match="fr/train-00000-of-00001.jsonl of dataset .*: the bytes read do not "
                                           "match the git blob id the Hub lists"):
        list(hub.iter_streaming_records(r, None, retry=fast))


def test_streamed_truncated_gzip_from_the_hub_is_refused(fake_hub, fast, monkeypatch):
    """The listing agrees with a file that is itself cut: the gzip trailer check catches it."""
    from datasetprep import hub

    served = fake_hub.data.file(TINY_REPO, "fr/validation-00000-of-00001.jsonl.gz")
    monkeypatch.setattr(served, "data", served.data[:-8])
    r = hub.resolve_dataset(_tiny(split="validation"), None, retry=fast)
    with pytest.raises(hub.HubError, match=r"validation-00000-of-00001.jsonl.gz: the compressed data is truncated"):
        list(hub.iter_streaming_records(r, None, retry=fast))


def test_streamed_line_above_the_maximum(fake_hub, fast, monkeypatch):
    from datasetprep import hub

    served = fake_hub.data.file(TINY_REPO, "fr/train-00000-of-00001.jsonl")
    monkeypatch.setattr(served, "data", served.data + _long_line(5000))
    r = hub.resolve_dataset(_tiny(), None, retry=fast)
    with pytest.raises(hub.HubError, match=r"fr/train-00000-of-00001.jsonl line 10: the document is 5,0\d\d bytes, "
                                           "larger than the maximum document size of 4,096 bytes"):
        list(hub.iter_streaming_records(r, None, retry=fast, max_document_bytes=4096))


def test_round_robin_plan_refuses_a_too_long_line(tmp_path):
    """--partitions counts lines while planning: that pass stops at the maximum too."""
    f = tmp_path / "x.jsonl"
    f.write_bytes(_lines(3) + _long_line(3 << 20) + _lines(3))
    with pytest.raises(InputError, match="x.jsonl:4: the document is larger than the maximum document size of "
                                         "2,097,152 bytes"):
        readers.plan_round_robin([f], 2, 32 << 20, max_document_bytes=2 << 20)
    assert len(readers.plan_round_robin([f], 2, 32 << 20, max_document_bytes=4 << 20)) == 2
