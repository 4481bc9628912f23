"""Limits shared by the spec model (the CRD's bounds) and the data engine, defined once.

Kept free of imports so that both the operator (through ``spec``) and the readers can use them at
no cost.
"""
from __future__ import annotations

from typing import Literal

#: The largest document read by default, in bytes: one JSONL line, or the text fields of one
#: Parquet/Arrow row.  ``--max-document-bytes`` / ``spec.maxDocumentBytes`` change it.
DEFAULT_MAX_DOCUMENT_BYTES = 256 << 20

#: The values ``--max-document-bytes`` / ``spec.maxDocumentBytes`` may take (1 KiB .. 64 GiB).
MIN_MAX_DOCUMENT_BYTES = 1 << 10
MAX_MAX_DOCUMENT_BYTES = 64 << 30

ResumeCheck = Literal["content", "stat"]
"""How a chunk record's input is verified before it is trusted: ``content`` (default) hashes the
input bytes it covers again; ``stat`` trusts the file's identity (size, mtime, ctime, inode), which
any write changes, and reads nothing."""
