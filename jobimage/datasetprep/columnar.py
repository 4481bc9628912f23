"""Reading Parquet and Arrow (``datasets.save_to_disk``) chunks, with the formats' own checks.

Parquet page checksums are verified when the writer stored them; any error pyarrow raises on a
damaged page or a cut file becomes an :class:`~datasetprep.readers.InputError` naming the file.
An Arrow IPC stream must end with its end-of-stream marker, so a file cut exactly at a record
batch boundary is refused too.  Rows whose text is above the maximum document size are refused
with their row number.
"""
from __future__ import annotations

from typing import Iterator

from .readers import Chunk, InputError, too_long


def _guarded(items: Iterator, where: str, what: str) -> Iterator:
    """Items of a pyarrow iterator; pyarrow's errors (corrupt page, truncated message) become an
    :class:`InputError` naming the file."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (MemoryError, InputError):
            raise
        except Exception as e:
            raise InputError(f"{where}: cannot read the {what} ({type(e).__name__}: {e}); the file is damaged "
                             "or incomplete: write or copy it again") from None
        yield item


def _document_bytes(batch, keys):
    """Bytes of text per row (over the key columns; list elements summed), or None if a column is
    not text (reported later, with its row)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = np.zeros(batch.num_rows, dtype=np.int64)
    for k in keys:
        col = batch.column(batch.schema.names.index(k))
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            total += pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
                pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
            lens = pc.fill_null(pc.binary_length(pc.list_flatten(col)), 0).to_numpy(zero_copy_only=False)
            parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
            total += np.bincount(parents, weights=lens, minlength=batch.num_rows).astype(np.int64)
        else:
            return None
    return total


def _arrow_rows(table_batches, keys, where_prefix: str, row0: int, limit: int | None = None):
    row = row0
    for batch in table_batches:
        names = batch.schema.names
        for k in keys:
            if k not in names:
                raise InputError(
                    f"{where_prefix}: has no column {k!r} (its columns: {', '.join(names[:10])}); "
                    "choose the text field with --json-keys / source.textKeys"
                )
        if limit is not None and batch.num_rows:
            sizes = _document_bytes(batch, keys)
            if sizes is not None and int(sizes.max()) > limit:
                i = int((sizes > limit).argmax())
                raise InputError(too_long(f"{where_prefix} row {row + i}", int(sizes[i]), limit, exact=True))
        cols = []
        for k in keys:
            try:
                cols.append(batch.column(names.index(k)).to_pylist())
            except (UnicodeDecodeError, ValueError) as e:
                raise InputError(f"{where_prefix} rows {row}-{row + batch.num_rows - 1}: field {k!r} cannot be read "
                                 f"as text ({e})") from None
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


def open_parquet(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:
        raise _open_error(path, "Parquet", e) from None


def _open_error(path: str, what: str, e: Exception) -> Exception:
    """The error to raise for a file pyarrow could not open: the disk's own, or a clear one."""
    if isinstance(e, MemoryError):
        return e
    if isinstance(e, OSError) and e.errno is not None:
        return InputError(f"cannot read {path}: {e.strerror}")
    return InputError(f"{path} is not a readable {what} file ({e})")


def read_parquet(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    pf = open_parquet(chunk.path)
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
    batches = _guarded(pf.iter_batches(row_groups=groups, columns=list(keys), batch_size=2048), chunk.path,
                       f"Parquet row groups {chunk.start}-{chunk.end - 1}")
    for recs, nb in _arrow_rows(batches, keys, chunk.path, row0, chunk.max_document_bytes):
        share = min(chunk.size - done, int(chunk.size * nb / total))
        done += share
        yield recs, share
    if done < chunk.size:
        yield [], chunk.size - done


ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _arrow_batches(path: str, size: int) -> Iterator:
    """Record batches of an Arrow IPC file (stream format, as ``save_to_disk`` writes, or file
    format).  A stream must end with its end-of-stream marker: without it the file was cut."""
    import pyarrow as pa

    try:
        src = pa.memory_map(path, "r")
        try:
            reader = pa.ipc.open_stream(src)
            stream = True
        except pa.ArrowInvalid:
            src = pa.memory_map(path, "r")
            reader = pa.ipc.open_file(src)
            stream = False
    except Exception as e:
        raise _open_error(path, "Arrow", e) from None
    if stream:
        with open(path, "rb") as f:
            f.seek(max(0, size - len(ARROW_EOS)))
            tail = f.read()
        if tail != ARROW_EOS:
            raise InputError(f"{path}: the Arrow stream has no end-of-stream marker: the file was cut short "
                             "(an interrupted save_to_disk or copy); write or copy it again")
        yield from _guarded(iter(reader), path, "Arrow record batches")
    else:
        yield from _guarded((reader.get_batch(i) for i in range(reader.num_record_batches)), path,
                            "Arrow record batches")


def read_arrow(chunk: Chunk, keys) -> Iterator[tuple[list, int]]:
    done = 0
    for recs, nb in _arrow_rows(_arrow_batches(chunk.path, chunk.size), keys, chunk.path, 0,
                                chunk.max_document_bytes):
        share = min(chunk.size - done, nb)
        done += share
        yield recs, share
    if done < chunk.size:
        yield [], chunk.size - done
