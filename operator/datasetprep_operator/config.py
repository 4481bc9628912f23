"""Operator settings, parsed once from the environment (prefix ``DATASETPREP_``).

The operator reads its environment in exactly one place, :meth:`OperatorConfig.from_env`, and
passes the result around through kopf's ``memo``; apart from the standard ``KUBECONFIG`` (``kube.py``),
nothing else in the package reads ``os.environ``.
The Helm chart sets these variables; ``datasetprep operator`` flags override the watch scope, the
metrics port and peering.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

from datasetprep_operator import __version__

ENV_PREFIX = "DATASETPREP_"

_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the API server accepts as an env var name
#: Job container variables that carry the operator's contract with the job; DATASETPREP_JOB_ENV cannot set them.
RESERVED_JOB_ENV = frozenset({
    "DATASETPREP_SPEC", "DATASETPREP_VOLUMES", "DATASETPREP_NAME", "DATASETPREP_NAMESPACE",
    "DATASETPREP_POD_NAME", "DATASETPREP_POD_NAMESPACE", "HF_TOKEN", "JOB_COMPLETION_INDEX",
})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: The job image used when neither the DatasetPrep nor the environment names one.
DEFAULT_JOB_IMAGE = f"datasetprep-job:{__version__}"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs to know that is not in a DatasetPrep."""

    job_image: str = DEFAULT_JOB_IMAGE
    """``DATASETPREP_JOB_IMAGE``: image of the job pods, unless a DatasetPrep sets ``spec.image``."""

    job_service_account: str = "default"
    """``DATASETPREP_JOB_SERVICE_ACCOUNT``: service account of the job pods. They need no API access."""

    image_pull_policy: str = "IfNotPresent"
    """``DATASETPREP_JOB_IMAGE_PULL_POLICY`` (or ``DATASETPREP_IMAGE_PULL_POLICY``): pull policy of the
    job image, ``Always``, ``IfNotPresent`` or ``Never``."""

    watch_namespaces: tuple[str, ...] = ()
    """``DATASETPREP_WATCH_NAMESPACES``: comma-separated namespaces (kopf globs allowed) to serve.
    Empty or ``*``: every namespace (cluster-wide). ``datasetprep operator`` flags take precedence."""

    metrics_port: int | None = None
    """``DATASETPREP_METRICS_PORT``: port of the Prometheus ``/metrics`` endpoint; unset or 0: off."""

    log_tail_lines: int = 20
    """``DATASETPREP_LOG_TAIL_LINES``: lines of a failed pod's log quoted when it left no message."""

    job_env: tuple[tuple[str, str], ...] = ()
    """``DATASETPREP_JOB_ENV``: a JSON object ``{"NAME": "value", ...}`` of plain environment variables
    added to every job container, e.g. ``{"HTTPS_PROXY": "http://proxy:3128", "DATASETPREP_CHUNK_MIB": "4"}``
    (``DATASETPREP_CHUNK_MIB`` sets the work-unit size, i.e. how much a restarted pod may have to redo;
    default: input/64, clamped to 1-16 MiB). Values are strings (numbers are accepted and written as
    text). The variables of the job contract (``DATASETPREP_SPEC``, ``DATASETPREP_VOLUMES``, ...,
    ``HF_TOKEN``, ``JOB_COMPLETION_INDEX``) cannot be set; ``HF_HOME`` can. Secrets do not belong here:
    the value is copied into every Job manifest."""

    def __post_init__(self) -> None:
        if not self.job_image.strip():
            raise ValueError(f"{ENV_PREFIX}JOB_IMAGE must not be empty")
        if not _DNS_SUBDOMAIN.match(self.job_service_account):
            raise ValueError(f"{ENV_PREFIX}JOB_SERVICE_ACCOUNT {self.job_service_account!r} is not a valid name")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise ValueError(f"{ENV_PREFIX}IMAGE_PULL_POLICY must be one of {', '.join(_PULL_POLICIES)}, "
                             f"got {self.image_pull_policy!r}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ValueError(f"{ENV_PREFIX}METRICS_PORT must be 1-65535, got {self.metrics_port}")
        if self.log_tail_lines < 0:
            raise ValueError(f"{ENV_PREFIX}LOG_TAIL_LINES must not be negative, got {self.log_tail_lines}")
        for name, value in self.job_env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: {name!r} is not a valid environment variable name")
            if name in RESERVED_JOB_ENV:
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: {name} is set by the operator and cannot be overridden")
            if not isinstance(value, str):
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: the value of {name} must be a string")

    @property
    def clusterwide(self) -> bool:
        """True when the configured scope is every namespace."""
        return not self.watch_namespaces or "*" in self.watch_namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorConfig":
        """Read every ``DATASETPREP_*`` setting; unset ones keep their defaults.

        Raises:
            ValueError: a value is malformed (the message names the variable).
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        kwargs: dict[str, object] = {}
        for name, field in (("JOB_IMAGE", "job_image"), ("JOB_SERVICE_ACCOUNT", "job_service_account"),
                            ("IMAGE_PULL_POLICY", "image_pull_policy"), ("JOB_IMAGE_PULL_POLICY", "image_pull_policy")):
            if (value := get(name)) is not None:
                kwargs[field] = value
        if (value := get("WATCH_NAMESPACES")) is not None:
            kwargs["watch_namespaces"] = tuple(ns.strip() for ns in value.split(",") if ns.strip())
        for name, field, kind in (("METRICS_PORT", "metrics_port", int), ("LOG_TAIL_LINES", "log_tail_lines", int)):
            if (value := get(name)) is not None:
                try:
                    kwargs[field] = kind(value)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{name} must be a number, got {value!r}") from None
        if (value := get("JOB_ENV")) is not None:
            kwargs["job_env"] = parse_job_env(value)
        if kwargs.get("metrics_port") == 0:
            kwargs["metrics_port"] = None
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_job_env(text: str) -> tuple[tuple[str, str], ...]:
    """``DATASETPREP_JOB_ENV``'s JSON object as sorted ``(name, value)`` pairs (names are checked later).

    Raises:
        ValueError: not a JSON object of strings (or numbers, which are turned into text).
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}JOB_ENV must be a JSON object, e.g. "
                         f"'{{\"DATASETPREP_CHUNK_MIB\": \"4\"}}': {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ENV_PREFIX}JOB_ENV must be a JSON object of name: value, got {type(data).__name__}")
    pairs = []
    for name, value in sorted(data.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = json.dumps(value)
        if not isinstance(value, str):
            raise ValueError(f"{ENV_PREFIX}JOB_ENV: the value of {name} must be a string, got {json.dumps(value)}")
        pairs.append((name, value))
    return tuple(pairs)
