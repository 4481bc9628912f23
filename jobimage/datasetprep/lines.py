"""Bytes → lines, in time linear in the input and memory bounded by the longest line allowed.

Lines end as Python's universal-newline text mode ends them (``\\n``, ``\\r\\n``, a bare ``\\r``), as
Megatron-LM reads JSONL.  A line spanning many read blocks grows one buffer in place; one above
the caller's limit stops the reading as soon as that much of it was read (:class:`TooLong`).
"""
from __future__ import annotations

from typing import Iterable, Iterator


class TooLong(Exception):
    """A line grew past the maximum before its end was found."""


def line_end(data: bytes) -> int:
    r"""Offset just after the last line end in ``data`` (0: none).  A bare ``\r`` ends a line too,
    except as the very last byte (it may be the first half of ``\r\n``)."""
    return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1


def line_blocks(blocks: Iterable[bytes], limit: int | None) -> Iterator[bytes]:
    """Regroup raw byte blocks into blocks of whole lines (the last one may lack its line end).

    Linear in the input whatever the line lengths: a line spanning many blocks grows one buffer
    (amortised, in place), which is handed out as the block.  A line that grows past ``limit``
    bytes raises :class:`TooLong` as soon as that much of it was read, so memory stays within
    ``limit`` plus one block.
    """
    pending = bytearray()
    for data in blocks:
        if pending and pending[-1] == 0x0D and data[:1] != b"\n":
            out, pending = pending, bytearray()  # a bare \r ended the line at the block boundary
            yield out
        cut = line_end(data)
        if not cut:
            pending += data
            if limit is not None and len(pending) > limit:
                raise TooLong()
            continue
        if pending:
            pending += memoryview(data)[:cut]
            out, pending = pending, bytearray()
        else:
            out = data if cut == len(data) else data[:cut]
        if cut < len(data):
            pending += memoryview(data)[cut:]
        del data
        yield out
        out = None
    if pending:
        yield pending


def range_blocks(path: str, start: int, end: int, block: int) -> Iterator[bytes]:
    """The bytes [start, end) of a file, in blocks of at most ``block`` bytes."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            data = f.read(min(block, end - pos))
            if not data:
                return
            pos += len(data)
            yield data


def split_lines(data: bytes) -> list[bytes]:
    """Lines as Python's universal-newline text mode reads them (\\n, \\r\\n and a bare \\r end a
    line; U+2028/U+2029/U+0085 do not).  A block that is one line comes back as itself, with its
    line end (JSON allows the whitespace), so a long line is never copied."""
    if b"\r" not in data and data.find(b"\n") == len(data) - 1:
        return [data] if data else []
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
