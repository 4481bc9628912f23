"""Streaming readers: input files → planned chunks → batches of records.

The input is planned once into *chunks* (work units): byte ranges of plain JSONL files cut at line
boundaries, whole compressed JSONL files, row-group ranges of Parquet files, whole Arrow files of a
``save_to_disk`` folder.  Chunks are processed independently (by any worker, in any order) and their
outputs concatenated in plan order, so the result never depends on how many workers ran.

Each reader yields batches of ``(records, input_bytes_done)`` where a record holds the values of
the text keys; problems raise :class:`InputError` naming file, line/row and field.  Compressed
inputs are checked by every integrity check their format carries (``compressed``), lines are cut
in linear time (``lines``), Parquet and Arrow are read in ``columnar``; a document above the
chunk's ``max_document_bytes`` is refused as soon as that much of it was read.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .compressed import CorruptStream, Decompressed
from .errors import InputError
from .limits import DEFAULT_MAX_DOCUMENT_BYTES
from .lines import TooLong, line_blocks, range_blocks, split_lines
from .naming import HIDDEN_PREFIX, MANIFEST_SUFFIX

try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = None

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED = (".gz", ".zst")
BATCH_BYTES = 1 << 20
MAX_DOCUMENT_FIX = "raise the maximum with --max-document-bytes (spec: maxDocumentBytes) if the document is real"


@dataclass(frozen=True)
class Chunk:
    """One unit of work.  ``kind``: jsonl (byte range), jsonl-stream (whole compressed file),
    parquet (row groups [start, end)), arrow (whole file)."""

    kind: str
    path: str
    start: int
    end: int
    size: int  # input bytes this chunk accounts for (progress)
    stride: int = 1  # keep only lines whose chunk-local index i satisfies i % stride == phase
    phase: int = 0
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES  # a larger document is refused (not in describe())

    def describe(self) -> str:
        return f"{self.kind}:{self.path}:{self.start}-{self.end}"


def _suffix_kind(p: Path) -> str | None:
    name = p.name.lower()
    for c in COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return None


def expand_inputs(patterns: list[str], root: str | os.PathLike | None = None) -> list[Path]:
    """Expand paths/globs (relative to root) into a sorted, de-duplicated list of data files.

    A path that exists is taken literally, even when its name holds glob characters (``a[1].jsonl``);
    only a path that does not exist is expanded as a glob (write ``[[]`` for a literal ``[`` there).
    A folder written by ``datasets.save_to_disk`` expands to its Arrow files in their recorded
    order.  Nothing matched is an error, as is an unsupported file type.  What datasetprep itself
    wrote (manifests, work folders, the Hub cache) is never picked up by a glob or a folder.
    """
    out: list[Path] = []
    for pat in patterns:
        full = os.path.join(os.fspath(root), pat) if root is not None else pat
        if os.path.exists(full) or not glob.has_magic(full):
            matches = [full]
        else:
            matches = [m for m in sorted(glob.glob(full, recursive=True)) if not is_ours(Path(m))]
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise InputError(f"input {pat!r} matches no file" + (f" under {root}" if root else "")
                             + ": check the path (globs like 'raw/*.jsonl' are allowed)")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(expand_dir(p))
            elif _suffix_kind(p) is None:
                raise InputError(
                    f"input {p} has an unsupported type: expected .jsonl/.json (optionally .gz/.zst), "
                    ".parquet, .arrow, or a datasets save_to_disk folder"
                )
            else:
                out.append(p)
    seen, uniq = set(), []
    for p in out:
        k = os.path.realpath(p)
        if k not in seen:
            seen.add(k)
            uniq.append(p)
    if not uniq:
        raise InputError(f"inputs {patterns} hold no data files")
    return uniq


def expand_dir(d: Path) -> list[Path]:
    state = d / "state.json"
    if state.is_file():
        return _saved_files(d, state)
    if (d / "dataset_dict.json").is_file():
        try:
            splits = json.loads((d / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        raise InputError(
            f"{d} is a DatasetDict with splits {splits}: point the input at one split folder, e.g. {d / splits[0]}"
            if splits and isinstance(splits, list) else f"{d} is a DatasetDict: point the input at one split folder"
        )
    files = sorted(p for p in d.rglob("*")
                   if p.is_file() and _suffix_kind(p) is not None and not is_ours(p.relative_to(d), d))
    if not files:
        raise InputError(f"folder {d} holds no .jsonl/.parquet/.arrow files")
    return files


def is_ours(path: Path, base: Path | None = None) -> bool:
    """Whether datasetprep wrote ``path`` (relative to ``base``, if given) beside its outputs: a name
    under a ``.datasetprep*`` folder or file (work, temporary, journal, Hub cache) or one of our
    manifests (``*.manifest.json`` of kind ``datasetprep.io/manifest``)."""
    if any(part.startswith(HIDDEN_PREFIX) for part in path.parts):
        return True
    if not path.name.endswith(MANIFEST_SUFFIX):
        return False
    try:
        with open(base / path if base is not None else path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return b'"kind": "datasetprep.io/manifest"' in head


def _saved_files(d: Path, state: Path) -> list[Path]:
    """The Arrow files a ``save_to_disk`` folder lists in its ``state.json``, checked."""
    fix = "save the dataset again with datasets' save_to_disk, or point the input at its .arrow files"
    try:
        doc = json.loads(state.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {state}: {e.strerror}") from None
    except ValueError as e:
        raise InputError(f"{state} is not valid JSON ({e}): {fix}") from None
    files = doc.get("_data_files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not files:
        raise InputError(f"{state} has no list of data files (\"_data_files\"): {fix}")
    out = []
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise InputError(f"{state}: data file entry {entry!r} is not a file name in the folder: {fix}")
        if not (d / name).is_file():
            raise InputError(f"{state} lists {name}, which is missing from {d}: {fix}")
        out.append(d / name)
    return out


def plan_chunks(files: list[Path], target_bytes: int = 32 << 20,
                max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> list[Chunk]:
    """Cut the inputs into chunks of about ``target_bytes`` (never splitting a line or row group).
    Reading a chunk refuses a document larger than ``max_document_bytes``."""
    chunks: list[Chunk] = []
    for p in files:
        kind = _suffix_kind(p)
        size = p.stat().st_size
        name = p.name.lower()
        if kind == "jsonl" and not name.endswith(COMPRESSED):
            chunks.extend(_jsonl_ranges(p, size, target_bytes))
        elif kind == "jsonl":
            chunks.append(Chunk("jsonl-stream", os.fspath(p), 0, size, size))
        elif kind == "parquet":
            chunks.extend(_parquet_ranges(p, size, target_bytes))
        else:
            chunks.append(Chunk("arrow", os.fspath(p), 0, size, size))
    if max_document_bytes != DEFAULT_MAX_DOCUMENT_BYTES:
        chunks = [dataclasses.replace(c, max_document_bytes=max_document_bytes) for c in chunks]
    return chunks


MAX_PARTITIONS = 1024


def plan_round_robin(files: list[Path], partitions: int, target_bytes: int = 32 << 20,
                     max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> list[Chunk]:
    """Megatron-LM's ``--partitions K`` order: line i of the inputs goes to partition i mod K, and the
    partitions are concatenated (lines 0, K, 2K, ... then 1, K+1, ...).  Plain JSONL only.

    Every partition reads every chunk once, so K is bounded (:data:`MAX_PARTITIONS`)."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InputError(f"--partitions {partitions} is outside 1..{MAX_PARTITIONS}: Megatron-LM's round-robin "
                         "order needs one pass over the input per partition; use a small count (e.g. the number "
                         "of workers) or --keep-sequential-samples")
    base = plan_chunks(files, target_bytes, max_document_bytes)
    for c in base:
        if c.kind != "jsonl":
            raise InputError(f"--partitions with round-robin order needs plain JSONL inputs; {c.path} is not")
    firsts, n = [], 0
    for c in base:
        firsts.append(n)
        n += _count_lines(c)
    out = []
    for p in range(partitions):
        for c, first in zip(base, firsts):
            out.append(dataclasses.replace(c, size=c.size // partitions + (c.size % partitions if p == 0 else 0),
                                           stride=partitions, phase=(p - first) % partitions))
    return out


def _count_lines(c: Chunk) -> int:
    """Lines of a plain JSONL chunk, as :func:`~datasetprep.lines.split_lines` counts them (read in blocks)."""
    n = 0
    try:
        for block in line_blocks(range_blocks(c.path, c.start, c.end, BATCH_BYTES), c.max_document_bytes):
            n += len(split_lines(block))
    except TooLong:
        where = f"{c.path}:{_line_number(c.path, c.start, n)}"
        raise InputError(too_long(where, 0, c.max_document_bytes)) from None
    return n


def _next_line_start(f, pos: int, size: int) -> int:
    """The offset just after the first ``\\n`` at or after ``pos`` (or ``size``), scanning in blocks so
    that a long line is never held in memory."""
    f.seek(pos)
    while pos < size:
        buf = f.read(BATCH_BYTES)
        if not buf:
            break
        i = buf.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(buf)
    return size


def _jsonl_ranges(p: Path, size: int, target: int) -> list[Chunk]:
    out, start = [], 0
    with open(p, "rb") as f:
        while start < size:
            end = start + target
            end = size if end >= size else _next_line_start(f, end, size)
            out.append(Chunk("jsonl", os.fspath(p), start, end, end - start))
            start = end
    if size == 0:
        out.append(Chunk("jsonl", os.fspath(p), 0, 0, 0))
    return out


def _parquet_ranges(p: Path, size: int, target: int) -> list[Chunk]:
    from .columnar import open_parquet

    md = open_parquet(os.fspath(p)).metadata
    out, start, acc = [], 0, 0
    n = md.num_row_groups
    for i in range(n):
        acc += md.row_group(i).total_byte_size
        if acc >= target or i == n - 1:
            out.append(Chunk("parquet", os.fspath(p), start, i + 1, 0))
            start, acc = i + 1, 0
    if not out:
        out.append(Chunk("parquet", os.fspath(p), 0, 0, size))
    # share the file size out over the chunks for progress
    each = size // len(out)
    return [Chunk(c.kind, c.path, c.start, c.end, each + (size - each * len(out) if k == 0 else 0))
            for k, c in enumerate(out)]


# ---------------------------------------------------------------------------------------------
# Reading a chunk
# ---------------------------------------------------------------------------------------------


def _line_number(path: str, offset: int, k: int) -> int:
    """1-based line number of the k-th line (0-based) after byte ``offset`` (error path only)."""
    n = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            buf = f.read(min(remaining, 1 << 24))
            if not buf:
                break
            n += buf.count(b"\n")
            remaining -= len(buf)
    return n + k + 1


def record_location(chunk: Chunk, k: int) -> str:
    """``file:line`` (or ``file row N``) of the k-th record read from a chunk (error path only)."""
    if chunk.kind == "jsonl":
        if chunk.stride > 1:
            return f"{chunk.path} (record {k + 1} of partition {chunk.phase})"
        return f"{chunk.path}:{_line_number(chunk.path, chunk.start, k)}"
    if chunk.kind == "jsonl-stream":
        return f"{chunk.path}:{k + 1} (decompressed)"
    if chunk.kind == "parquet":
        import pyarrow.parquet as pq

        md = pq.ParquetFile(chunk.path).metadata
        row0 = sum(md.row_group(i).num_rows for i in range(chunk.start))
        return f"{chunk.path} row {row0 + k}"
    return f"{chunk.path} row {k}"


MAX_JSON_DEPTH = 1000  # json.loads stops at Python's recursion limit (orjson at 1024)


def parse_json_line(line: bytes, where: str) -> dict:
    """Parse one JSONL line exactly as ``json.loads`` does (orjson first, for speed)."""
    if _fast_loads is not None:
        try:
            obj = _fast_loads(line)
            if isinstance(obj, dict):
                return obj
        except Exception:
            pass
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{where}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
            "re-encode the file as UTF-8"
        ) from None
    if not text.strip():
        raise InputError(f"{where}: empty line; a JSONL file holds exactly one JSON object per line")
    if text.startswith("\ufeff"):
        raise InputError(f"{where}: the file starts with a UTF-8 byte-order mark; save it without BOM")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: the JSON is nested too deeply (more than about {MAX_JSON_DEPTH} levels of "
                         "arrays/objects); flatten the record, or drop the deep field before binarizing") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def pick(obj: dict, keys: tuple[str, ...], where: str):
    out = []
    for k in keys:
        try:
            v = obj[k]
        except KeyError:
            fields = ", ".join(list(obj)[:10]) or "none"
            raise InputError(
                f"{where}: record has no field {k!r} (its fields: {fields}); "
                "choose the text field with --json-keys / source.textKeys"
            ) from None
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            out.append(v)
        else:
            raise InputError(
                f"{where}: field {k!r} is {'null' if v is None else type(v).__name__}, expected a string "
                "(or a list of strings)"
            )
    return out


def read_chunk(chunk: Chunk, keys: tuple[str, ...], digest: Any = None, lines: bool = False
               ) -> Iterator[tuple[list | LineBatch, int]]:
    """Yield ``(records, bytes_done)`` batches; each record is the list of values of ``keys``.

    ``digest`` (a hashlib object), once every batch was read, has been fed the input bytes the
    chunk covers (:func:`input_spans`): JSON Lines as they are read, Parquet and Arrow (read by
    random access inside pyarrow) by reading their spans once more at the end, from the page cache.
    ``lines``: plain JSONL chunks yield each batch as a :class:`LineBatch` instead (not parsed
    yet; see :func:`records_of`).
    """
    if chunk.kind == "jsonl":
        yield from _read_jsonl_range(chunk, keys, lines, digest)
    elif chunk.kind == "jsonl-stream":
        yield from _read_jsonl_stream(chunk, keys, digest)
    elif chunk.kind == "parquet":
        from .columnar import read_parquet

        yield from read_parquet(chunk, keys)
    elif chunk.kind == "arrow":
        from .columnar import read_arrow

        yield from read_arrow(chunk, keys)
    else:  # pragma: no cover
        raise ValueError(chunk.kind)
    if digest is not None and chunk.kind in ("parquet", "arrow"):
        _hash_spans(chunk.path, input_spans(chunk, keys), digest)


def input_spans(chunk: Chunk, keys: tuple[str, ...]) -> list[tuple[int, int]]:
    """The byte ranges of its file a chunk's records come from: its line range (plain JSON Lines),
    the whole file (compressed JSON Lines, Arrow), or the column chunks of its row groups for the
    text keys (Parquet; the footer is covered by the file's identity)."""
    if chunk.kind == "jsonl":
        return [(chunk.start, chunk.end)]
    if chunk.kind != "parquet":
        return [(0, chunk.end)]
    from .columnar import open_parquet

    md = open_parquet(chunk.path).metadata
    spans = []
    for g in range(chunk.start, chunk.end):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.path_in_schema.split(".")[0] not in keys:
                continue
            start = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset:
                start = min(start, col.dictionary_page_offset)
            spans.append((start, start + col.total_compressed_size))
    return spans


def _hash_spans(path: str, spans: list[tuple[int, int]], digest: Any) -> None:
    for start, end in spans:
        for block in range_blocks(path, start, end, 1 << 20):
            digest.update(block)


def hash_input(chunk: Chunk, keys: tuple[str, ...]) -> str:
    """sha256 of the input bytes ``chunk`` covers now (what its record says they were)."""
    digest = hashlib.sha256()
    _hash_spans(chunk.path, input_spans(chunk, keys), digest)
    return digest.hexdigest()


def _hashed(blocks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for block in blocks:
        digest.update(block)
        yield block


class _HashedFile:
    """A file object that feeds what is read from it to a digest."""

    def __init__(self, f: Any, digest: Any) -> None:
        self.f, self.digest = f, digest

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def close(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class LineBatch:
    """A batch of whole JSONL lines, parsed into records only when asked (``records()``): an
    engine that reads JSONL itself takes ``data`` as it is and returns None when it cannot read
    a line exactly as ``records()`` would (then ``records()`` reads it, or names the error)."""

    data: bytes | bytearray
    keys: tuple[str, ...]
    where: Callable[[int], str]
    limit: int | None

    def records(self) -> list:
        return _records_from_lines(split_lines(self.data), self.keys, self.where, self.limit)


def records_of(batch) -> list:
    """The records of a batch yielded by :func:`read_chunk` (a list, or a :class:`LineBatch`)."""
    return batch.records() if isinstance(batch, LineBatch) else batch


def _records_from_lines(lines: list[bytes], keys, where_fn, limit: int | None = None) -> list:
    out = []
    for k, line in enumerate(lines):
        if limit is not None and len(line) > limit and len(line.rstrip(b"\n")) > limit:
            raise InputError(too_long(where_fn(k), len(line.rstrip(b"\n")), limit, exact=True))
        obj = None
        if _fast_loads is not None:
            try:
                obj = _fast_loads(line)
            except Exception:
                obj = None
        if not isinstance(obj, dict):
            obj = parse_json_line(line, where_fn(k))
        if len(keys) == 1:
            v = obj.get(keys[0], _MISSING)
            if type(v) is str:
                out.append((v,))
                continue
        out.append(tuple(pick(obj, keys, where_fn(k))))
    return out


_MISSING = object()


def too_long(where: str, nbytes: int, limit: int, exact: bool = False) -> str:
    """The message for a document above the maximum size (``exact``: its size is known; else
    reading stopped once it passed the maximum)."""
    size = f"is {nbytes:,} bytes, larger than" if exact else "is larger than"
    stopped = "" if exact else " (reading stopped there)"
    return (f"{where}: the document {size} the maximum document size of {limit:,} bytes{_human(limit)}{stopped}; "
            f"{MAX_DOCUMENT_FIX}")


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f" ({n / (1 << shift):.4g} {unit})"
    return ""


def _lines_in(data: bytes | bytearray) -> int:
    """``len(split_lines(data))`` without splitting."""
    n = data.count(b"\n")
    if b"\r" in data:
        n += data.count(b"\r") - data.count(b"\r\n")
    return n + (1 if data and data[-1:] not in (b"\n", b"\r") else 0)


def _read_jsonl_range(chunk: Chunk, keys, as_lines: bool = False, digest: Any = None
                      ) -> Iterator[tuple[list | LineBatch, int]]:
    limit = chunk.max_document_bytes
    line_base = 0  # lines already consumed in this chunk
    raw = range_blocks(chunk.path, chunk.start, chunk.end, BATCH_BYTES)
    blocks = line_blocks(_hashed(raw, digest) if digest is not None else raw, limit)
    while True:
        try:
            data = next(blocks)
        except StopIteration:
            return
        except TooLong:
            where = f"{chunk.path}:{_line_number(chunk.path, chunk.start, line_base)}"
            raise InputError(too_long(where, 0, limit)) from None
        nbytes = len(data)
        base = line_base
        if as_lines and chunk.stride == 1:
            line_base += _lines_in(data)
            yield LineBatch(data, tuple(keys), lambda k, base=base: f"{chunk.path}:"
                            f"{_line_number(chunk.path, chunk.start, base + k)}", limit), nbytes
            continue
        lines = split_lines(data)
        del data  # a long line is held once, as its line
        n_lines = len(lines)
        first, step = 0, 1
        if chunk.stride > 1:
            first, step = (chunk.phase - base) % chunk.stride, chunk.stride
            lines = lines[first::step]
        recs = _records_from_lines(
            lines, keys,
            lambda k, base=base, first=first, step=step:
                f"{chunk.path}:{_line_number(chunk.path, chunk.start, base + first + k * step)}",
            limit,
        )
        line_base += n_lines
        yield recs, nbytes


def _stream_blocks(src: Decompressed, path: str) -> Iterator[bytes]:
    while True:
        try:
            data = src.read(BATCH_BYTES)
        except CorruptStream as e:
            raise InputError(f"{path}: the compressed data is {e}; the file is damaged or incomplete: "
                             "download or copy it again") from None
        if not data:
            return
        yield data


def _read_jsonl_stream(chunk: Chunk, keys, digest: Any = None) -> Iterator[tuple[list, int]]:
    limit = chunk.max_document_bytes
    try:
        f = open(chunk.path, "rb")
        src = Decompressed(_HashedFile(f, digest) if digest is not None else f, chunk.path)
    except OSError as e:
        raise InputError(f"cannot open {chunk.path}: {e.strerror or e}") from None
    lineno = 0
    consumed = 0
    with src:
        blocks = line_blocks(_stream_blocks(src, chunk.path), limit)
        while True:
            try:
                data = next(blocks)
            except StopIteration:
                break
            except TooLong:
                raise InputError(too_long(f"{chunk.path}:{lineno + 1} (decompressed)", 0, limit)) from None
            lines = split_lines(data)
            del data
            base = lineno
            recs = _records_from_lines(lines, keys, lambda k, base=base: f"{chunk.path}:{base + k + 1} (decompressed)",
                                       limit)
            lineno += len(lines)
            done = min(src.compressed_pos, chunk.size)
            yield recs, max(0, done - consumed)
            consumed = max(consumed, done)
    if consumed < chunk.size:
        yield [], chunk.size - consumed


def file_bytes(chunks: list[Chunk]) -> int:
    return sum(c.size for c in chunks)
