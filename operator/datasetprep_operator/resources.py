"""Compute resources of the job pods: the operator's defaults (chart value ``jobResources``), overridden
per DatasetPrep (``spec.resources``), made into a container's ``resources`` that the API server accepts.

Pure functions. Kubernetes refuses a pod whose request of a resource is above its limit, and a Job
whose pods are refused just never starts: :func:`job_resources` resolves such a clash in favour of
what the DatasetPrep asked for (docs/security.md, "Resource bounds").
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from fractions import Fraction

from datasetprep.spec import QUANTITY, ResourcesSpec

_QUANTITY = re.compile(QUANTITY)
_SUFFIX = {"": 1, "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str) -> Fraction:
    """The value of a Kubernetes quantity (``500m`` = 1/2, ``4Gi`` = 4 * 2**30, ``1e3`` = 1000).

    Raises:
        ValueError: not a quantity.
    """
    text = text.strip()
    if not _QUANTITY.match(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    m = re.match(r"^([+-]?[0-9.]+)(.*)$", text)
    assert m is not None
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E") and len(suffix) > 1:  # an exponent ("E" alone is exa)
        return number * Fraction(10) ** int(Fraction(suffix[1:]))
    return number * _SUFFIX[suffix]


@dataclasses.dataclass(frozen=True)
class ResourceDefaults:
    """The operator's defaults for every job pod (``DATASETPREP_JOB_RESOURCES``, ``DATASETPREP_JOB_TMP_SIZE_LIMIT``)."""

    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    tmp_size_limit: str | None = None

    def __post_init__(self) -> None:
        for what, pairs in (("requests", self.requests), ("limits", self.limits)):
            for name, value in pairs:
                try:
                    parse_quantity(value)
                except ValueError as exc:
                    raise ValueError(f"{what}.{name}: {exc}") from None
        if self.tmp_size_limit is not None:
            parse_quantity(self.tmp_size_limit)
        limits = dict(self.limits)
        for name, value in self.requests:
            if name in limits and parse_quantity(value) > parse_quantity(limits[name]):
                raise ValueError(f"requests.{name} ({value}) is above limits.{name} ({limits[name]})")

    @classmethod
    def from_json(cls, doc: object, tmp_size_limit: str | None = None) -> "ResourceDefaults":
        """From ``{"requests": {...}, "limits": {...}}`` (what the chart passes).

        Raises:
            ValueError: another shape, or a value that is not a quantity.
        """
        if not isinstance(doc, Mapping) or set(doc) - {"requests", "limits"}:
            raise ValueError('must be a JSON object {"requests": {...}, "limits": {...}}')
        parts = {}
        for key in ("requests", "limits"):
            part = doc.get(key) or {}
            if not isinstance(part, Mapping) or not all(isinstance(v, (str, int, float)) for v in part.values()):
                raise ValueError(f"{key} must be an object of resource name: quantity")
            parts[key] = tuple(sorted((str(k), str(v)) for k, v in part.items()))
        return cls(requests=parts["requests"], limits=parts["limits"], tmp_size_limit=tmp_size_limit)


def job_resources(defaults: ResourceDefaults, spec: ResourcesSpec | None) -> tuple[dict[str, dict[str, str]], str | None]:
    """The job container's ``resources`` and the ``sizeLimit`` of its ``/tmp``.

    Each value the spec names replaces the default for that resource. Where a request ends up above
    its limit, the spec's value wins: a spec request above a default limit raises that limit to it, a
    spec limit below a default request lowers that request to it, and a spec that asks for both the
    wrong way round gets its request lowered to its limit.
    """
    requests, limits = dict(defaults.requests), dict(defaults.limits)
    own_requests = dict(spec.requests or {}) if spec else {}
    own_limits = dict(spec.limits or {}) if spec else {}
    requests.update(own_requests)
    limits.update(own_limits)
    for name in set(requests) & set(limits):
        if parse_quantity(requests[name]) <= parse_quantity(limits[name]):
            continue
        if name in own_requests and name not in own_limits:
            limits[name] = requests[name]
        else:
            requests[name] = limits[name]
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    tmp = (spec.tmp_size_limit if spec else None) or defaults.tmp_size_limit
    return resources, tmp
