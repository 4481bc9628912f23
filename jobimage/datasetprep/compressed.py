"""Decompressing ``.gz`` and ``.zst`` inputs with every integrity check the formats carry.

* gzip (RFC 1952): every member's CRC32 and ISIZE trailer is checked (Python's ``gzip`` does it,
  member after member); a stream that ends inside a member, bad deflate data, a bad CRC or size,
  and bytes after the last member that are not another member are errors.  Zero padding after the
  last member is allowed, as gzip(1) allows it.
* zstd (RFC 8878): the decoder checks the content checksum of every frame that has one.  It does
  not notice a stream that ends inside a frame (it just stops), so :class:`ZstdFrames` follows
  the frame structure (headers, block headers, checksum) of the compressed bytes as they are read
  and tells a complete stream from a cut one.  Skippable frames are allowed.

Neither format can tell a stream cut exactly between two members/frames from a shorter valid
file: that needs the expected size or hash, which the Hub's file listing gives (see ``hub``).
Decompressed bytes come out in bounded pieces, so a small file that expands enormously never
sits in memory whole.
"""
from __future__ import annotations

import gzip
import zlib

ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE = 0xFFFFFFF0, 0x184D2A50


class CorruptStream(ValueError):
    """The compressed data is damaged or incomplete; the message says how (the caller adds the file)."""


class ZstdFrames:
    """Follows the frame structure of a zstd stream as it is fed, without decompressing.

    ``complete`` is true when the bytes fed so far end exactly after a whole frame (or are empty);
    ``error`` names the first structural problem found (the decoder usually reports it as well).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 4
        self._state = "magic"
        self._skip = 0
        self._checksum = False
        self._last = False
        self.frames = 0
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self._state == "magic" and not self._buf and not self._skip

    def feed(self, data) -> None:
        mv = memoryview(data).cast("B")
        i, n = 0, len(mv)
        while i < n and self.error is None:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._after_content()
                continue
            k = min(self._need - len(self._buf), n - i)
            self._buf += mv[i:i + k]
            i += k
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._step(field)

    def _step(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif value & _SKIPPABLE_MASK == _SKIPPABLE:
                self._state, self._need = "skippable", 4
            else:
                self.error = f"bytes that are not a zstd frame (magic 0x{value:08x}) after frame {self.frames}"
        elif self._state == "descriptor":
            single = bool(value & 0x20)
            if value & 0x08:
                self.error = "a zstd frame header with its reserved bit set"
                return
            self._checksum = bool(value & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[value & 3] + ((1 if single else 0), 2, 4, 8)[value >> 6]
            self._state, self._need = ("header", rest) if rest else ("block", 3)
        elif self._state == "header":
            self._state, self._need = "block", 3
        elif self._state == "block":
            self._last = bool(value & 1)
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                self.error = "a zstd block of the reserved type"
                return
            self._skip = 1 if kind == 1 else size
            if not self._skip:
                self._after_content()
        elif self._state == "checksum":
            self._end_frame()
        elif self._state == "skippable":
            self._state, self._skip = "skip-frame", value
            if not value:
                self._state, self._need = "magic", 4

    def _after_content(self) -> None:
        if self._state == "skip-frame":
            self._state, self._need = "magic", 4
        elif not self._last:
            self._state, self._need = "block", 3
        elif self._checksum:
            self._state, self._need = "checksum", 4
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self._state, self._need = "magic", 4


class _Tap:
    """A read-only file object that counts the compressed bytes read and shows them to a tracker."""

    def __init__(self, fileobj, tracker: ZstdFrames | None = None) -> None:
        self.f = fileobj
        self.pos = 0
        self.tracker = tracker

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        if self.tracker is not None and data:
            self.tracker.feed(data)
        return data

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.f.close()


class Decompressed:
    """The decompressed bytes of a ``.gz``/``.zst`` file object, read in bounded pieces.

    :meth:`read` raises :class:`CorruptStream` for damaged or truncated data (checked up to the
    very end: the empty read that ends the stream is only returned once the stream proved
    complete).  ``compressed_pos`` is how many compressed bytes were consumed (for progress).
    """

    def __init__(self, fileobj, name: str) -> None:
        self.kind = "zstd" if name.lower().endswith(".zst") else "gzip"
        self._frames = ZstdFrames() if self.kind == "zstd" else None
        self._tap = _Tap(fileobj, self._frames)
        self._decoder_error: type[Exception] | None = None
        if self.kind == "zstd":
            import zstandard

            self._decoder_error = zstandard.ZstdError
            self._reader = zstandard.ZstdDecompressor().stream_reader(self._tap, read_across_frames=True,
                                                                      closefd=False)
        else:
            self._reader = gzip.GzipFile(fileobj=self._tap, mode="rb")

    @property
    def compressed_pos(self) -> int:
        return self._tap.pos

    def read(self, n: int) -> bytes:
        try:
            data = self._reader.read(n)
        except EOFError:
            raise CorruptStream("truncated: the gzip stream ends inside a member, before its CRC32/size "
                                "trailer") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise CorruptStream(f"corrupt: {self._describe(e)}") from None
        except Exception as e:  # the decoder's errors; the source's own (disk, network) pass through
            if self._decoder_error is not None and isinstance(e, self._decoder_error):
                raise CorruptStream(f"corrupt: {self._describe(e)}") from None
            raise
        if not data:
            self._check_end()
        return data

    def _describe(self, e: Exception) -> str:
        text = str(e) or type(e).__name__
        if self._frames is not None and self._frames.error:
            return f"{self._frames.error} ({text})"
        return f"{self.kind}: {text}"

    def _check_end(self) -> None:
        if self._frames is None:
            return
        rest = self._tap.read()  # the decoder stopped: nothing may follow
        if self._frames.error:
            raise CorruptStream(f"corrupt: {self._frames.error}")
        if rest:
            raise CorruptStream(f"corrupt: {len(rest)} bytes follow the last zstd frame")
        if not self._frames.complete:
            raise CorruptStream(f"truncated: the stream ends inside zstd frame {self._frames.frames + 1} "
                                "(before its last block or checksum)")

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self._tap.close()

    def __enter__(self) -> "Decompressed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
