"""The data plane's settings, read from the environment once, at the entry point (``datasetprep job``,
``datasetprep run``), and passed down -- as the operator's ``config.py`` does for the control plane.

Nothing below the entry points reads ``os.environ``: the hub package gets :class:`HubSettings`, the
pipeline a chunk size. The token is not a setting (it is a
secret, read by :func:`read_token` where it is needed, never printed). Two variables are read where
they act: ``DATASETPREP_DEBUG`` by the CLI's entry point (tracebacks instead of messages), and
``DATASETPREP_NATIVE=0`` (the native BPE engine off) by ``tokenization``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from .contract import TERMINATION_MESSAGE_PATH
from .hub.client import HubSettings, token_from_env
from .limits import ResumeCheck

ENV_PREFIX = "DATASETPREP_"
MAX_LOCK_WAIT = 24 * 3600.0
JOB_LOCK_WAIT = 600.0
"""``datasetprep job``'s wait for a busy prefix unless ``DATASETPREP_LOCK_WAIT`` says otherwise."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the job and ``datasetprep run`` need to know that is not in the spec."""

    chunk_bytes: int | None = None
    """``DATASETPREP_CHUNK_MIB`` (MiB, fractions allowed): the work-unit size, i.e. how much a restarted
    pod may have to redo. Unset: input/64, clamped to 1-16 MiB."""

    termination_log: str = TERMINATION_MESSAGE_PATH
    """``DATASETPREP_TERMINATION_LOG``: where the job writes its result (Kubernetes reads it)."""

    hub: HubSettings = dataclasses.field(default_factory=HubSettings)
    """``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``DATASETPREP_HUB_CACHE``, ``DATASETPREP_HUB_*`` (retries)."""

    lock_wait: float = 0.0
    """``DATASETPREP_LOCK_WAIT`` (seconds): how long a run waits for an output prefix that another run
    holds before it fails, naming the other. ``datasetprep job`` waits 600 s unless set (a retried pod
    finds its predecessor still stopping), ``datasetprep run`` fails at once."""

    resume_check: ResumeCheck = "content"
    """``DATASETPREP_RESUME_CHECK``: ``content`` (default) -- a chunk record is trusted only once the
    input bytes it covers hash to what it recorded (one read of the resumed input); ``stat`` -- trust
    the input file's identity (size, mtime, ctime, inode), which any write changes, and read nothing
    (for huge inputs on slow storage). See docs/reliability.md."""

    def __post_init__(self) -> None:
        if self.chunk_bytes is not None and self.chunk_bytes < 1:
            raise ValueError(f"{ENV_PREFIX}CHUNK_MIB must be positive")
        if not 0 <= self.lock_wait <= MAX_LOCK_WAIT:
            raise ValueError(f"{ENV_PREFIX}LOCK_WAIT must be between 0 and {MAX_LOCK_WAIT} seconds")
        if self.resume_check not in ("content", "stat"):
            raise ValueError(f"{ENV_PREFIX}RESUME_CHECK must be content or stat, got {self.resume_check!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, lock_wait: float = 0.0) -> "Settings":
        """Read every setting; unset ones keep their defaults (``lock_wait``: this entry point's).

        Raises:
            ValueError: a value is malformed (the message names the variable).
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        chunk = get("CHUNK_MIB")
        try:
            chunk_bytes = int(float(chunk) * 2**20) if chunk is not None else None
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}CHUNK_MIB must be a number of MiB, got {chunk!r}") from None
        wait = get("LOCK_WAIT")
        try:
            lock_wait = float(wait) if wait is not None else lock_wait
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}LOCK_WAIT must be a number of seconds, got {wait!r}") from None
        if lock_wait != lock_wait:  # nan
            raise ValueError(f"{ENV_PREFIX}LOCK_WAIT must be a number of seconds, got {wait!r}")
        return cls(chunk_bytes=chunk_bytes, termination_log=get("TERMINATION_LOG") or TERMINATION_MESSAGE_PATH,
                   hub=HubSettings.from_env(env), lock_wait=lock_wait,
                   resume_check=get("RESUME_CHECK") or "content")  # type: ignore[arg-type]


def read_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The HuggingFace token: ``HF_TOKEN``, else the file named by ``HF_TOKEN_FILE``; None if neither."""
    return token_from_env(os.environ if environ is None else environ)
