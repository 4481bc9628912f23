"""Megatron-Core indexed dataset format ("MMIDIDX"): the one place that knows the bytes.

A dataset is a pair sharing a path prefix: ``P.bin`` (the token ids of every sequence, back to back,
no header) and ``P.idx``::

    magic b"MMIDIDX\\x00\\x00" | u64 version=1 | u8 dtype code | u64 S | u64 D1
    int32[S] sequence lengths | int64[S] sequence byte pointers | int64[D1] document indices

all little-endian and unaligned.  ``document_indices`` starts at 0 and entry i+1 is the sequence
index where document i ends, so an empty document repeats the previous value.  This mirrors
``megatron/core/datasets/indexed_dataset.py`` (``DType``, ``_IndexWriter``) and is checked byte for
byte against the upstream tool's output in ``tests/test_golden.py``.

Writers here never hold the index arrays of a whole dataset in memory: lengths and document
boundaries stream to side files and the ``.idx`` is assembled from them in fixed-size blocks.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from .errors import FormatError
from .naming import LEVEL, dataset_prefix

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, S, D1  (34 bytes)

# Megatron-Core dtype codes (NeMo/legacy map 7 to float64; the tools only write 4 and 8).
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF = {v: k for k, v in DTYPE_CODES.items()}

BLOCK = 1 << 20  # elements per block when streaming index arrays


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Megatron's rule: uint16 when the vocabulary size is below 65500, else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def output_prefix(prefix: str | os.PathLike, key: str, level: str = LEVEL) -> str:
    """``{prefix}_{key}_{level}``, the naming of Megatron-LM's preprocess_data.py."""
    return dataset_prefix(os.fspath(prefix), key, level)


# ---------------------------------------------------------------------------------------------
# Parts: what one worker writes for one chunk of input.
# ---------------------------------------------------------------------------------------------


def _create(path: str, buffering: int) -> BinaryIO:
    """A part file made anew: whatever was at its name (a file of a cut attempt, or a link someone
    planted in the work folder) is unlinked, never followed or written through."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "wb", buffering=buffering)


class PartWriter:
    """Writes one part: tokens to ``base.bin``, sequence lengths (int32) to ``base.len`` and the
    number of sequences of each document (int32) to ``base.doc``.

    Parts are concatenated into the final dataset by :func:`assemble`.  Buffers are flushed in
    blocks, so memory is bounded by the largest document plus the block size.
    """

    def __init__(self, base: str | os.PathLike, dtype: np.dtype):
        self.base = os.fspath(base)
        self.dtype = np.dtype(dtype)
        self._bin = _create(self.base + ".bin", 1 << 20)
        self._bin_hash = hashlib.sha256()
        self._len = _create(self.base + ".len", 1 << 16)
        self._doc = _create(self.base + ".doc", 1 << 16)
        self._lens: list[int] = []
        self._docs: list[int] = []
        self.documents = 0
        self.sequences = 0
        self.tokens = 0
        self.max_document_tokens = 0

    def add_document(self, sequences: list[np.ndarray]) -> None:
        """Add one document made of zero or more non-empty sequences."""
        n_tok = 0
        for seq in sequences:
            n = int(seq.shape[0])
            data = seq.astype(self.dtype, copy=False).tobytes()
            self._bin_hash.update(data)
            self._bin.write(data)
            self._lens.append(n)
            n_tok += n
        self._docs.append(len(sequences))
        self.documents += 1
        self.sequences += len(sequences)
        self.tokens += n_tok
        if n_tok > self.max_document_tokens:
            self.max_document_tokens = n_tok
        if len(self._lens) >= BLOCK or len(self._docs) >= BLOCK:
            self._flush_index()

    def add_packed(self, tokens: np.ndarray, seq_lens: np.ndarray, docs: np.ndarray) -> None:
        """Add many documents at once: ``tokens`` back to back, ``seq_lens`` per sequence (all > 0)
        and ``docs`` the number of sequences of each document."""
        data = memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)).cast("B")  # no copy when it fits
        self._bin_hash.update(data)
        self._bin.write(data)
        self._flush_index()
        self._len.write(np.asarray(seq_lens, dtype="<i4").tobytes())
        self._doc.write(np.asarray(docs, dtype="<i4").tobytes())
        self.documents += int(len(docs))
        self.sequences += int(len(seq_lens))
        self.tokens += int(tokens.shape[0])
        if len(seq_lens):
            # tokens per document: sums of its sequences' lengths
            ends = np.cumsum(np.asarray(docs, dtype=np.int64))
            csum = np.concatenate(([0], np.cumsum(np.asarray(seq_lens, dtype=np.int64))))
            per_doc = csum[ends] - csum[ends - np.asarray(docs, dtype=np.int64)]
            self.max_document_tokens = max(self.max_document_tokens, int(per_doc.max()))

    def _flush_index(self) -> None:
        if self._lens:
            self._len.write(np.asarray(self._lens, dtype="<i4").tobytes())
            self._lens.clear()
        if self._docs:
            self._doc.write(np.asarray(self._docs, dtype="<i4").tobytes())
            self._docs.clear()

    def close(self) -> "PartInfo":
        """Finish the part.  No fsync: parts are scratch data, and every part is verified against
        the sizes and sha256 recorded here before a later run trusts it (see pipeline)."""
        self._flush_index()
        for f in (self._bin, self._len, self._doc):
            f.close()
        digests = {".bin": (os.path.getsize(self.base + ".bin"), self._bin_hash.hexdigest())}
        for ext in (".len", ".doc"):
            with open(self.base + ext, "rb") as f:
                data = f.read()
            digests[ext] = (len(data), hashlib.sha256(data).hexdigest())
        return PartInfo(self.base, self.documents, self.sequences, self.tokens, self.max_document_tokens, digests)

    def abort(self) -> None:
        for f in (self._bin, self._len, self._doc):
            try:
                f.close()
            except OSError:
                pass


@dataclass(frozen=True)
class PartInfo:
    """A finished part, as a source for :func:`assemble`."""

    base: str
    documents: int
    sequences: int
    tokens: int
    max_document_tokens: int = 0
    digests: dict | None = None  # ext -> (size, sha256), computed while writing

    @property
    def bin_file(self) -> str:
        return self.base + ".bin"

    def length_blocks(self) -> Iterator[np.ndarray]:
        return _read_blocks(self.base + ".len", "<i4")

    def doc_blocks(self) -> Iterator[np.ndarray]:
        return _read_blocks(self.base + ".doc", "<i4")


class DatasetSource:
    """An existing dataset as a source for :func:`assemble` (used by merge)."""

    def __init__(self, ds: "IndexedDataset"):
        self.ds = ds
        self.bin_file = os.fspath(bin_path(ds.prefix))
        self.documents = ds.num_documents
        self.sequences = ds.num_sequences
        self.tokens = ds.num_tokens
        self.max_document_tokens = 0

    def length_blocks(self) -> Iterator[np.ndarray]:
        lens = self.ds.sequence_lengths
        for i in range(0, len(lens), BLOCK):
            yield np.asarray(lens[i : i + BLOCK])

    def doc_blocks(self) -> Iterator[np.ndarray]:
        di = self.ds.document_indices
        for i in range(0, len(di) - 1, BLOCK):
            yield np.diff(np.asarray(di[i : i + BLOCK + 1])).astype("<i4")


def _read_blocks(path: str, dtype: str, block: int = BLOCK) -> Iterator[np.ndarray]:
    item = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while True:
            buf = f.read(block * item)
            if not buf:
                return
            yield np.frombuffer(buf, dtype=dtype)


class _HashingWriter:
    """File writer that feeds a sha256 as it goes.  Large blocks are hashed on a helper thread
    while the next write proceeds (hashlib and file writes both release the GIL), so checksumming
    costs little wall time on top of the copy."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0
        self._pool = None
        self._pending = None

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) >= (1 << 20):
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1)
            self.wait()
            self._pending = self._pool.submit(self.h.update, mv)
        else:
            self.wait()
            self.h.update(mv)
        self.f.write(mv)
        self.n += len(mv)

    def wait(self) -> None:
        """Until every byte given is hashed."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def hexdigest(self) -> str:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self.h.hexdigest()


class BinAssembly:
    """``path`` (a ``.bin``) written from parts appended in order, hashed as it goes.

    :func:`assemble` takes one that already holds the first parts: the run appends each chunk's part
    as soon as the chunks before it are done, while the workers go on, so that little of the copy,
    the checksum and the write-back is left for after the last chunk.
    """

    SYNC_BYTES = 64 << 20
    """Written back (``fdatasync``) every this many bytes while the run goes on, so that the final
    fsync finds little left to write."""

    def __init__(self, path: str):
        self.path = path
        self._f = _create(path, 1 << 20)
        self._w = _HashingWriter(self._f)
        self.parts = 0
        """How many parts it holds (the first ones of the list :func:`assemble` is given)."""
        self._unsynced = 0

    def append(self, part) -> None:
        with open(part.bin_file, "rb") as src:
            while True:
                buf = src.read(8 << 20)
                if not buf:
                    break
                self._w.write(buf)
                self._unsynced += len(buf)
        self.parts += 1
        if self._unsynced >= self.SYNC_BYTES:
            self._w.wait()
            self._f.flush()
            os.fdatasync(self._f.fileno())
            self._unsynced = 0

    def finish(self) -> tuple[int, str]:
        """Bytes and sha256 of the whole file, fsynced and closed."""
        digest = self._w.hexdigest()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self._w.n, digest

    def close(self) -> None:
        """Give up (the caller removes the file with its folder)."""
        self._w.hexdigest()
        self._f.close()


def assemble(parts: list, prefix: str, dtype: np.dtype, bin_: BinAssembly | None = None) -> dict:
    """Concatenate parts (in order) into ``prefix.bin`` and ``prefix.idx``; streams everything.

    Returns counts and the sha256 of both files.  The caller chooses temporary prefixes and
    renames them when every output is complete.  ``bin_``: ``prefix.bin`` begun, holding the first
    ``bin_.parts`` of ``parts``.
    """
    dtype = np.dtype(dtype)
    S = sum(p.sequences for p in parts)
    D = sum(p.documents for p in parts)
    if bin_ is None:
        bin_ = BinAssembly(prefix + ".bin")
    elif bin_.path != prefix + ".bin" or bin_.parts > len(parts):
        raise FormatError(f"internal error: {bin_.path} holds {bin_.parts} parts, not the first of "
                          f"{len(parts)} for {prefix}.bin")
    for p in parts[bin_.parts:]:
        bin_.append(p)
    bin_bytes, bin_sha256 = bin_.finish()
    itemsize = dtype.itemsize
    with open(prefix + ".idx", "wb", buffering=1 << 20) as fi:
        hi = _HashingWriter(fi)
        hi.write(HEADER.pack(MAGIC, VERSION, CODE_OF[dtype], S, D + 1))
        # sequence lengths
        for p in parts:
            for blk in p.length_blocks():
                hi.write(blk.astype("<i4", copy=False).tobytes())
        # sequence pointers: running int64 sum of lengths * itemsize, starting at 0
        offset = 0
        for p in parts:
            for blk in p.length_blocks():
                sizes = blk.astype(np.int64) * itemsize
                ptr = np.empty_like(sizes)
                ptr[0] = offset
                if len(sizes) > 1:
                    np.cumsum(sizes[:-1], out=ptr[1:])
                    ptr[1:] += offset
                offset += int(sizes.sum())
                hi.write(ptr.astype("<i8").tobytes())
        # document indices: 0, then the running sequence count at each document end
        hi.write(np.zeros(1, dtype="<i8").tobytes())
        seq_so_far = 0
        for p in parts:
            for blk in p.doc_blocks():
                ends = np.cumsum(blk.astype(np.int64)) + seq_so_far
                seq_so_far = int(ends[-1]) if len(ends) else seq_so_far
                hi.write(ends.astype("<i8").tobytes())
        hi.hexdigest()
        fi.flush()
        os.fsync(fi.fileno())
    if seq_so_far != S:
        raise FormatError(f"internal error: document indices end at {seq_so_far}, expected {S} sequences")
    return {
        "documents": D,
        "sequences": S,
        "tokens": sum(p.tokens for p in parts),
        "dtype": dtype.name,
        "bin_bytes": bin_bytes,
        "idx_bytes": hi.n,
        "bin_sha256": bin_sha256,
        "idx_sha256": hi.hexdigest(),
        "max_document_tokens": max((p.max_document_tokens for p in parts), default=0),
    }


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexHeader:
    """What an ``.idx`` header says, checked against the sizes of both files without reading the arrays."""

    dtype: np.dtype
    sequences: int
    document_count: int
    """The header's document count: ``document_indices`` entries, i.e. documents + 1 (what Megatron's
    ``_IndexReader.document_count`` and ``tools/build_sequences_per_dataset.py`` report)."""

    @property
    def documents(self) -> int:
        return self.document_count - 1


def read_header(prefix: str | os.PathLike) -> IndexHeader:
    """The header of ``prefix.idx``, with O(1) checks: both files exist, the ``.idx`` is as long as its
    header says, and the ``.bin`` ends where the last sequence ends. (:class:`IndexedDataset` checks every
    sequence.)"""
    ip, bp = idx_path(prefix), bin_path(prefix)
    for p in (ip, bp):
        if not p.exists():
            raise FormatError(f"{p} does not exist (expected the pair {bp.name} + {ip.name})")
    size = ip.stat().st_size
    with open(ip, "rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise FormatError(f"{ip} is {size} bytes, shorter than the 34-byte MMIDIDX header")
        magic, version, code, S, D1 = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or code not in DTYPE_CODES:
            raise FormatError(f"{ip} is not a Megatron MMIDIDX index version 1 (magic {magic!r}, version "
                              f"{version}, dtype code {code})")
        expected = HEADER.size + 12 * S + 8 * D1
        if size not in (expected, expected + S):
            raise FormatError(f"{ip} is {size} bytes but its header says {expected} (S={S}, D1={D1})")
        dtype = DTYPE_CODES[code]
        end = 0
        if S:
            f.seek(HEADER.size + 4 * (S - 1))
            (last_len,) = struct.unpack("<i", f.read(4))
            f.seek(HEADER.size + 4 * S + 8 * (S - 1))
            (last_ptr,) = struct.unpack("<q", f.read(8))
            end = last_ptr + last_len * dtype.itemsize
    if bp.stat().st_size != end:
        raise FormatError(f"{bp} is {bp.stat().st_size} bytes but its index ends at byte {end}")
    return IndexHeader(dtype=dtype, sequences=S, document_count=D1)


class IndexedDataset:
    """Memory-mapped reader of a ``.bin``/``.idx`` pair, validating every invariant."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        ip, bp = idx_path(self.prefix), bin_path(self.prefix)
        for p in (ip, bp):
            if not p.exists():
                raise FormatError(f"{p} does not exist (expected the pair {bp.name} + {ip.name})")
        size = ip.stat().st_size
        if size < HEADER.size:
            raise FormatError(f"{ip} is {size} bytes, shorter than the 34-byte MMIDIDX header")
        with open(ip, "rb") as f:
            magic, version, code, S, D1 = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC:
            raise FormatError(f"{ip} is not a Megatron MMIDIDX index (magic {magic!r})")
        if version != VERSION:
            raise FormatError(f"{ip} has index version {version}, only version 1 exists")
        if code not in DTYPE_CODES:
            raise FormatError(f"{ip} has unknown dtype code {code}")
        self.dtype = DTYPE_CODES[code]
        expected = HEADER.size + 12 * S + 8 * D1
        if size not in (expected, expected + S):
            raise FormatError(f"{ip} is {size} bytes but its header says {expected} (S={S}, D1={D1})")
        self.multimodal = size == expected + S and S > 0
        idx = np.memmap(ip, dtype=np.uint8, mode="r")
        o = HEADER.size
        self.sequence_lengths = np.frombuffer(idx, dtype="<i4", count=S, offset=o)
        self.sequence_pointers = np.frombuffer(idx, dtype="<i8", count=S, offset=o + 4 * S)
        self.document_indices = np.frombuffer(idx, dtype="<i8", count=D1, offset=o + 12 * S)
        if D1 < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != S:
            raise FormatError(f"{ip}: document indices must run from 0 to {S}")
        if D1 > 1 and np.any(np.diff(self.document_indices) < 0):
            raise FormatError(f"{ip}: document indices decrease")
        bsize = bp.stat().st_size
        total = self._check_sequences(ip)
        if bsize != total:
            raise FormatError(f"{bp} is {bsize} bytes but the index describes {total}")
        self._bin = np.memmap(bp, dtype=self.dtype, mode="r") if bsize else np.zeros(0, self.dtype)

    def _check_sequences(self, ip: Path) -> int:
        """Every length is >= 0 and every pointer is where the previous sequence ends (sequences
        back to back from byte 0, as Megatron writes them); returns the bytes they cover.  In
        blocks, so memory stays small for any index."""
        itemsize = self.dtype.itemsize
        offset = 0
        lens, ptrs = self.sequence_lengths, self.sequence_pointers
        for i in range(0, len(lens), BLOCK):
            blk = np.asarray(lens[i:i + BLOCK]).astype(np.int64)
            if blk.size and int(blk.min()) < 0:
                j = i + int((blk < 0).argmax())
                raise FormatError(f"{ip}: sequence {j} has a negative length ({int(lens[j])}); the index is corrupt: "
                                  "make the dataset again")
            want = np.empty_like(blk)
            want[0] = offset
            np.cumsum(blk[:-1] * itemsize, out=want[1:])
            want[1:] += offset
            got = np.asarray(ptrs[i:i + BLOCK])
            if not np.array_equal(got, want):
                j = i + int((got != want).argmax())
                raise FormatError(f"{ip}: sequence {j} starts at byte {int(ptrs[j])} of the .bin, but the lengths "
                                  f"before it end at byte {int(want[j - i])}; the index is corrupt: make the dataset again")
            offset += int(blk.sum()) * itemsize
        return offset

    @property
    def num_sequences(self) -> int:
        return int(self.sequence_lengths.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.document_indices.shape[0]) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.astype(np.int64).sum())

    def sequence(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return np.asarray(self._bin[start : start + int(self.sequence_lengths[i])])

    def document(self, d: int) -> np.ndarray:
        """All tokens of document d (its sequences concatenated)."""
        a, b = int(self.document_indices[d]), int(self.document_indices[d + 1])
        if a == b:
            return np.zeros(0, dtype=self.dtype)
        start = int(self.sequence_pointers[a]) // self.dtype.itemsize
        n = int(self.sequence_lengths[a:b].astype(np.int64).sum())
        return np.asarray(self._bin[start : start + n])

    def documents(self) -> Iterable[np.ndarray]:
        for d in range(self.num_documents):
            yield self.document(d)
