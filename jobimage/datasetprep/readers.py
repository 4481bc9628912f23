"""Streaming readers: input files → planned chunks → batches of records.

The input is planned once into *chunks* (work units): byte ranges of plain JSONL files cut at line
boundaries, whole compressed JSONL files, row-group ranges of Parquet files, whole Arrow files of a
``save_to_disk`` folder.  Chunks are processed independently (by any worker, in any order) and their
outputs concatenated in plan order, so the result never depends on how many workers ran.

Each reader yields batches of ``(line_or_row_number, record)`` where record maps the text keys to
their values; problems raise :class:`InputError` naming file, line/row and field.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = None

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED = (".gz", ".zst")
BATCH_BYTES = 1 << 20


class InputError(ValueError):
    """Bad input data; the message names the file, line or row, and field."""


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

    A folder written by ``datasets.save_to_disk`` expands to its Arrow files in their recorded
    order.  Nothing matched is an error, as is an unsupported file type.
    """
    out: list[Path] = []
    for pat in patterns:
        full = os.path.join(os.fspath(root), pat) if root is not None else pat
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else [full]
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
        files = json.loads(state.read_text())["_data_files"]
        return [d / f["filename"] for f in files]
    if (d / "dataset_dict.json").is_file():
        splits = json.loads((d / "dataset_dict.json").read_text()).get("splits", [])
        raise InputError(
            f"{d} is a DatasetDict with splits {splits}: point the input at one split folder, e.g. {d / splits[0]}"
            if splits else f"{d} is an empty DatasetDict"
        )
    files = sorted(p for p in d.rglob("*") if p.is_file() and _suffix_kind(p) is not None)
    if not files:
        raise InputError(f"folder {d} holds no .jsonl/.parquet/.arrow files")
    return files


def plan_chunks(files: list[Path], target_bytes: int = 32 << 20) -> list[Chunk]:
    """Cut the inputs into chunks of about ``target_bytes`` (never splitting a line or row group)."""
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
    return chunks


def plan_round_robin(files: list[Path], partitions: int, target_bytes: int = 32 << 20) -> list[Chunk]:
    """Megatron-LM's ``--partitions K`` order: line i of the inputs goes to partition i mod K, and the
    partitions are concatenated (lines 0, K, 2K, ... then 1, K+1, ...).  Plain JSONL only."""
    base = plan_chunks(files, target_bytes)
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
            out.append(Chunk(c.kind, c.path, c.start, c.end, c.size // partitions + (c.size % partitions if p == 0 else 0),
                             partitions, (p - first) % partitions))
    return out


def _count_lines(c: Chunk) -> int:
    with open(c.path, "rb") as f:
        f.seek(c.start)
        data = f.read(c.end - c.start)
    return len(_split_lines(data))


def _jsonl_ranges(p: Path, size: int, target: int) -> list[Chunk]:
    out, start = [], 0
    with open(p, "rb") as f:
        while start < size:
            end = start + target
            if end >= size:
                end = size
            else:
                f.seek(end)
                rest = f.readline()
                end = min(size, end + len(rest))
            out.append(Chunk("jsonl", os.fspath(p), start, end, end - start))
            start = end
    if size == 0:
        out.append(Chunk("jsonl", os.fspath(p), 0, 0, 0))
    return out


def _parquet_ranges(p: Path, size: int, target: int) -> list[Chunk]:
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(p).metadata
    except Exception as e:
        raise InputError(f"{p} is not a readable Parquet file ({e})") from None
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


def _split_lines(data: bytes) -> list[bytes]:
    """Lines as Python's universal-newline text mode reads them (\\n, \\r\\n and a bare \\r end a
    line; U+2028/U+2029/U+0085 do not)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


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


def read_chunk(chunk: Chunk, keys: tuple[str, ...]) -> Iterator[tuple[list, int]]:
    """Yield ``(records, bytes_done)`` batches; each record is the list of values of ``keys``."""
    if chunk.kind == "jsonl":
        yield from _read_jsonl_range(chunk, keys)
    elif chunk.kind == "jsonl-stream":
        yield from _read_jsonl_stream(chunk, keys)
    elif chunk.kind == "parquet":
        yield from _read_parquet(chunk, keys)
    elif chunk.kind == "arrow":
        yield from _read_arrow(chunk, keys)
    else:  # pragma: no cover
        raise ValueError(chunk.kind)


def _records_from_lines(lines: list[bytes], keys, where_fn) -> list:
    out = []
    for k, line in enumerate(lines):
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


def _read_jsonl_range(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        pos = chunk.start
        line_base = 0  # lines already consumed in this chunk
        carry = b""
        while pos < chunk.end:
            want = min(BATCH_BYTES, chunk.end - pos)
            data = f.read(want)
            if not data:
                break
            pos += len(data)
            data = carry + data
            if pos < chunk.end:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry = data[cut + 1:]
                data = data[: cut + 1]
            else:
                carry = b""
            lines = _split_lines(data)
            base = line_base
            first, step = 0, 1
            if chunk.stride > 1:
                first, step = (chunk.phase - base) % chunk.stride, chunk.stride
                lines = lines[first::step]
            recs = _records_from_lines(
                lines, keys,
                lambda k, base=base, first=first, step=step:
                    f"{chunk.path}:{_line_number(chunk.path, chunk.start, base + first + k * step)}",
            )
            line_base += len(_split_lines(data)) if chunk.stride > 1 else len(lines)
            yield recs, len(data)


def _open_compressed(path: str):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def _read_jsonl_stream(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    try:
        raw = _open_compressed(chunk.path)
    except Exception as e:
        raise InputError(f"cannot open {chunk.path}: {e}") from None
    lineno = 0
    carry = b""
    size = max(chunk.size, 1)
    consumed = 0
    with raw:
        fobj = raw
        while True:
            try:
                data = fobj.read(BATCH_BYTES)
            except (OSError, EOFError, Exception) as e:  # corrupt gzip / zstd
                raise InputError(f"{chunk.path}: cannot decompress ({e})") from None
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            data = data[: cut + 1]
            lines = _split_lines(data)
            base = lineno
            recs = _records_from_lines(lines, keys, lambda k, base=base: f"{chunk.path}:{base + k + 1} (decompressed)")
            lineno += len(lines)
            done = _compressed_pos(raw, size)
            yield recs, max(0, done - consumed)
            consumed = max(consumed, done)
        if carry:
            lines = _split_lines(carry)
            base = lineno
            recs = _records_from_lines(lines, keys, lambda k, base=base: f"{chunk.path}:{base + k + 1} (decompressed)")
            yield recs, 0
    if consumed < chunk.size:
        yield [], chunk.size - consumed


def _compressed_pos(raw, size: int) -> int:
    try:
        fo = getattr(raw, "fileobj", None)
        if fo is not None:
            return min(fo.tell(), size)
        return min(raw.tell(), size)  # zstd reader: decompressed position; approximate
    except Exception:
        return 0


def _arrow_rows(table_batches, keys, where_prefix: str, row0: int):
    row = row0
    for batch in table_batches:
        names = batch.schema.names
        cols = []
        for k in keys:
            if k not in names:
                raise InputError(
                    f"{where_prefix}: has no column {k!r} (its columns: {', '.join(names[:10])}); "
                    "choose the text field with --json-keys / source.textKeys"
                )
            cols.append(batch.column(names.index(k)).to_pylist())
        recs = []
        for i, vals in enumerate(zip(*cols)):
            for k, v in zip(keys, vals):
                if not isinstance(v, (str, list)) or (isinstance(v, list) and not all(isinstance(x, str) for x in v)):
                    raise InputError(
                        f"{where_prefix} row {row + i}: field {k!r} is "
                        f"{'null' if v is None else type(v).__name__}, expected a string"
                    )
            recs.append(tuple(vals))
        row += batch.num_rows
        yield recs, batch.nbytes


def _read_parquet(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(chunk.path)
    groups = list(range(chunk.start, chunk.end))
    if not groups:
        yield [], chunk.size
        return
    row0 = sum(pf.metadata.row_group(i).num_rows for i in range(chunk.start))
    names = pf.schema_arrow.names
    missing = [k for k in keys if k not in names]
    if missing:
        raise InputError(
            f"{chunk.path}: has no column {missing[0]!r} (its columns: {', '.join(names[:10])}); "
            "choose the text field with --json-keys / source.textKeys"
        )
    total = sum(pf.metadata.row_group(i).total_byte_size for i in groups) or 1
    done = 0
    for recs, nb in _arrow_rows(pf.iter_batches(row_groups=groups, columns=list(keys), batch_size=2048),
                                keys, chunk.path, row0):
        share = min(chunk.size - done, int(chunk.size * nb / total))
        done += share
        yield recs, share
    if done < chunk.size:
        yield [], chunk.size - done


def _read_arrow(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    import pyarrow as pa

    try:
        src = pa.memory_map(chunk.path, "r")
        try:
            reader = pa.ipc.open_stream(src)
        except pa.ArrowInvalid:
            src = pa.memory_map(chunk.path, "r")
            reader = pa.ipc.open_file(src)
            reader = iter([reader.get_batch(i) for i in range(reader.num_record_batches)])
    except Exception as e:
        raise InputError(f"{chunk.path} is not a readable Arrow file ({e})") from None
    done = 0
    for recs, nb in _arrow_rows(reader, keys, chunk.path, 0):
        share = min(chunk.size - done, nb)
        done += share
        yield recs, share
    if done < chunk.size:
        yield [], chunk.size - done


def file_bytes(chunks: list[Chunk]) -> int:
    return sum(c.size for c in chunks)
