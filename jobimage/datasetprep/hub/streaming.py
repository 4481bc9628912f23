"""Streaming mode: records read over HTTP range requests while tokenizing; nothing is stored."""
from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any, Iterator, Sequence


from .client import (
    HubError, HubOfflineError, HubSettings, RetryPolicy, _Hub, _RANGE_READ, _Transient, _closing, _file_url,
)
from .layout import RemoteFile, ResolvedDataset
from ..compressed import CorruptStream, Decompressed
from ..limits import DEFAULT_MAX_DOCUMENT_BYTES
from ..lines import TooLong, line_blocks, split_lines

log = logging.getLogger("datasetprep.hub")

# =============================================================================================== streaming


class _RemoteRaw(io.RawIOBase):
    """A seekable read-only view of a remote file: every read is one ranged GET (with retries)."""

    def __init__(self, hub: _Hub, repo: str, sha: str, rf: RemoteFile) -> None:
        super().__init__()
        self.hub, self.repo, self.sha, self.rf = hub, repo, sha, rf
        self.url = _file_url(hub.endpoint, "dataset", repo, sha, rf.path)
        self.size = rf.size if rf.size is not None else self._head_size()
        self.pos = 0
        self.requests = 0
        # Read front to back (JSON Lines), the bytes are hashed on the way and checked against the
        # listing's hash at the end; random access (Parquet) leaves this to the format's own checks.
        self._hash = hashlib.sha256() if rf.sha256 else (hashlib.sha1(b"blob %d\0" % self.size) if rf.blob_id else None)
        self._hashed = 0

    def _head_size(self) -> int:  # pragma: no cover - sizes always come from paths-info
        def once() -> int:
            resp, _ = self.hub.open(self.url, range_=(0, 0))
            with _closing(resp):
                cr = resp.headers.get("Content-Range", "")
                return int(cr.rsplit("/", 1)[-1]) if "/" in cr else int(resp.headers.get("Content-Length", 0))

        return self.hub.call(once, self.hub.ctx(self.repo, "dataset", f"read {self.rf.path}", self.sha,
                                                self.rf.path))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        elif whence == io.SEEK_END:
            self.pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        self.pos = max(0, self.pos)
        return self.pos

    def readinto(self, b) -> int:  # type: ignore[override]
        want = min(len(b), self.size - self.pos)
        if want <= 0:
            return 0
        start, end = self.pos, self.pos + want - 1

        def once() -> bytes:
            self.requests += 1
            resp, _ = self.hub.open(self.url, range_=(start, end))
            with _closing(resp):
                data = resp.read()
            if resp.status_code == 200:  # Range ignored: cut it ourselves
                data = data[start:end + 1]
            if len(data) != want:
                raise _Transient(f"short range read ({len(data)} of {want} bytes)")
            return data

        data = self.hub.call(once, self.hub.ctx(self.repo, "dataset", f"read {self.rf.path}", self.sha,
                                                self.rf.path))
        b[:len(data)] = data
        self.pos += len(data)
        if self._hash is not None and start == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)
            if self._hashed == self.size:
                self._check_hash()
        return len(data)

    def _check_hash(self) -> None:
        want = self.rf.sha256 or self.rf.blob_id
        if self._hash.hexdigest() != want:
            raise HubError(f"{self.rf.path} of dataset {self.repo}@{self.sha}: the bytes read do not match the "
                           f"{'sha256' if self.rf.sha256 else 'git blob id'} the Hub lists ({want}); the file changed "
                           "on the server or was damaged on the way: run again")


def _iter_parquet(fileobj, columns: Sequence[str] | None, batch_size: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fileobj)
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
        yield from batch.to_pylist()


def _iter_jsonl(fileobj, path: str, columns: Sequence[str] | None,
                max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> Iterator[dict]:
    """Records of a JSON Lines stream (.gz/.zst: every integrity check of the format is verified);
    blank lines are skipped; a line above ``max_document_bytes`` stops the run as soon as it passed it."""
    from .. import readers

    name = path.lower()
    stream: Any = Decompressed(fileobj, path) if name.endswith((".gz", ".zst")) else fileobj

    def blocks() -> Iterator[bytes]:
        while True:
            try:
                data = stream.read(1 << 20)
            except CorruptStream as e:
                raise HubError(f"{path}: the compressed data is {e}; the file on the Hub is damaged, or the "
                               "download was cut: run again") from None
            if not data:
                return
            yield data

    lineno = 0
    lines = line_blocks(blocks(), max_document_bytes)
    while True:
        try:
            block = next(lines)
        except StopIteration:
            return
        except TooLong:
            raise HubError(readers.too_long(f"{path} line {lineno + 1}", 0, max_document_bytes)) from None
        for raw in split_lines(block):
            lineno += 1
            if len(raw) > max_document_bytes and len(raw.rstrip(b"\n")) > max_document_bytes:
                raise HubError(readers.too_long(f"{path} line {lineno}", len(raw.rstrip(b"\n")), max_document_bytes,
                                                exact=True))
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise HubError(f"{path} line {lineno}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise HubError(f"{path} line {lineno}: a JSON object was expected, got {type(rec).__name__}")
            yield {k: rec.get(k) for k in columns} if columns else rec


def iter_streaming_records(resolved: ResolvedDataset, token: str | None, *, endpoint: str | None = None,
                           retry: RetryPolicy | None = None, files: Sequence[str] | None = None,
                           batch_size: int = 1024, columns: Sequence[str] | None = None,
                           hub: HubSettings | None = None,
                           max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> Iterator[dict]:
    """The records of the resolved files, read over HTTP as they are consumed (nothing on disk).

    Files are read in the resolved order (``files``: only these paths, e.g. one shard's share).
    Parquet is read row group by row group through ranged GETs; JSON Lines (.gz/.zst too) as a
    byte stream of ranged GETs, so a dropped connection resumes where it stopped.  Every request is
    retried per the policy.  ``columns`` keeps only these keys.  JSON Lines files read to their end
    are checked against the hash the Hub lists; a line above ``max_document_bytes`` is refused.
    """
    settings = HubSettings.resolve(hub, endpoint=endpoint or resolved.endpoint, retry=retry)
    if settings.offline:
        raise HubOfflineError(f"offline mode (HF_HUB_OFFLINE=1): streaming dataset {resolved.repo} needs the "
                              "network; use download mode (streaming: false) after a first online run")
    client = _Hub(settings, token)
    wanted = set(files) if files is not None else None
    for rf in resolved.files:
        if wanted is not None and rf.path not in wanted:
            continue
        fmt = rf.format
        if fmt is None:
            raise HubError(f"{rf.path}: datasetprep reads Parquet and JSON Lines files only")
        raw = _RemoteRaw(client, resolved.repo, resolved.sha, rf)
        buf = io.BufferedReader(raw, buffer_size=_RANGE_READ if fmt == "jsonl" else 1 << 20)
        log.info("streaming %s/%s (%s bytes)", resolved.repo, rf.path, rf.size)
        with buf:
            if fmt == "parquet":
                yield from _iter_parquet(buf, columns, batch_size)
            else:
                yield from _iter_jsonl(buf, rf.path, columns, max_document_bytes)
