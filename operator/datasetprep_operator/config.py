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

from datasetprep.contract import RESERVED_ENV
from datasetprep_operator import __version__
from datasetprep_operator.resources import ResourceDefaults, parse_quantity

ENV_PREFIX = "DATASETPREP_"

_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
LOG_FORMATS = ("text", "json")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the API server accepts as an env var name
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: The job image used when neither the DatasetPrep nor the environment names one.
DEFAULT_JOB_IMAGE = f"datasetprep-job:{__version__}"
#: The job pods' resources when the environment names none (the chart's defaults are the same).
DEFAULT_JOB_RESOURCES = ResourceDefaults(
    requests=(("cpu", "500m"), ("ephemeral-storage", "1Gi"), ("memory", "1Gi")),
    limits=(("ephemeral-storage", "4Gi"), ("memory", "4Gi")), tmp_size_limit="2Gi")


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

    job_resources: ResourceDefaults = dataclasses.field(default_factory=lambda: DEFAULT_JOB_RESOURCES)
    """``DATASETPREP_JOB_RESOURCES``: a JSON object ``{"requests": {...}, "limits": {...}}`` of every job
    container's default resources, and ``DATASETPREP_JOB_TMP_SIZE_LIMIT``: the ``sizeLimit`` of its
    ``/tmp`` emptyDir. A DatasetPrep's ``spec.resources`` replaces them value by value. Default:
    requests cpu 500m, memory 1Gi, ephemeral-storage 1Gi; limits memory 4Gi, ephemeral-storage 4Gi;
    ``/tmp`` 2Gi (no CPU limit: throttling only slows the run)."""

    job_volume_init: bool = False
    """``DATASETPREP_JOB_VOLUME_INIT`` (``true``/``false``): give every job pod an init container that runs
    as root (the job image, never ``spec.image``) and only creates the output folder and chowns it to
    the job's uid/gid -- for volumes owned by root where ``fsGroup`` does not apply (NFS without
    root squashing, hostPath). Its pods need the ``baseline`` Pod Security Standard, not ``restricted``
    (docs/security.md)."""

    workers: int = 16
    """``DATASETPREP_WORKERS``: DatasetPreps worked on at the same time (threads). Each look is a few
    API calls; more workers keep many resources moving when the API server is slow."""

    log_format: str = "text"
    """``DATASETPREP_LOG_FORMAT``: ``text`` (one line per decision, ``namespace/name: ...``) or ``json``
    (one JSON object per line with ``message``, ``severity``, ``timestamp`` and ``object``: the
    DatasetPrep's reference), for log shippers. ``datasetprep operator --log-format`` takes precedence."""

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
        if not 1 <= self.workers <= 256:
            raise ValueError(f"{ENV_PREFIX}WORKERS must be 1-256, got {self.workers}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"{ENV_PREFIX}LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        for name, value in self.job_env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: {name!r} is not a valid environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: {name} is set by the operator and cannot be overridden")
            if not isinstance(value, str):
                raise ValueError(f"{ENV_PREFIX}JOB_ENV: the value of {name} must be a string")

    @property
    def clusterwide(self) -> bool:
        """True when the configured scope is every namespace."""
        return not self.watch_namespaces or "*" in self.watch_namespaces

    @property
    def namespaces_are_exact(self) -> bool:
        """Namespaced, and every namespace is a plain name (no kopf glob or negation): then nothing needs
        the cluster's namespace list."""
        return not self.clusterwide and not any(set(ns) & set("*?[]!,") for ns in self.watch_namespaces)

    @property
    def scope_text(self) -> str:
        """The watch scope, for the start-up line."""
        return "watching every namespace" if self.clusterwide else f"watching {', '.join(self.watch_namespaces)}"

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
        if (value := get("LOG_FORMAT")) is not None:
            kwargs["log_format"] = value.lower()
        for name, field, kind in (("METRICS_PORT", "metrics_port", int), ("LOG_TAIL_LINES", "log_tail_lines", int),
                                  ("WORKERS", "workers", int)):
            if (value := get(name)) is not None:
                try:
                    kwargs[field] = kind(value)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{name} must be a number, got {value!r}") from None
        if (value := get("JOB_ENV")) is not None:
            kwargs["job_env"] = parse_job_env(value)
        resources, tmp = get("JOB_RESOURCES"), get("JOB_TMP_SIZE_LIMIT")
        if resources is not None or tmp is not None:
            kwargs["job_resources"] = parse_job_resources(resources, tmp)
        if (value := get("JOB_VOLUME_INIT")) is not None:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{ENV_PREFIX}JOB_VOLUME_INIT must be true or false, got {value!r}")
            kwargs["job_volume_init"] = value.lower() == "true"
        if kwargs.get("metrics_port") == 0:
            kwargs["metrics_port"] = None
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_job_resources(text: str | None, tmp_size_limit: str | None) -> ResourceDefaults:
    """``DATASETPREP_JOB_RESOURCES`` (JSON; unset: the defaults) and ``DATASETPREP_JOB_TMP_SIZE_LIMIT``.

    Raises:
        ValueError: malformed (the message names the variable).
    """
    try:
        doc = json.loads(text) if text is not None else {"requests": dict(DEFAULT_JOB_RESOURCES.requests),
                                                         "limits": dict(DEFAULT_JOB_RESOURCES.limits)}
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}JOB_RESOURCES must be JSON, e.g. "
                         f"'{{\"requests\": {{\"cpu\": \"1\"}}, \"limits\": {{\"memory\": \"4Gi\"}}}}': {exc}") from None
    if tmp_size_limit is not None:
        try:
            parse_quantity(tmp_size_limit)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}JOB_TMP_SIZE_LIMIT: {exc}") from None
    try:
        return ResourceDefaults.from_json(doc, tmp_size_limit or DEFAULT_JOB_RESOURCES.tmp_size_limit)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}JOB_RESOURCES: {exc}") from None


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
