"""The real Helm CLI for the chart tests: build it once (./build), run it, parse what it renders.

Loaded by path from tests/test_chart.py and tests/test_chart_cluster.py (this folder is a Go
module, not a Python package)::

    helmcli = _load("tests/helm/helmcli.py")
    helm = helmcli.helm_binary()
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "datasetprep-operator"
BUILD = HERE / "build"


class HelmUnavailable(RuntimeError):
    """Helm could not be built (no Go toolchain, no module proxy)."""


def helm_binary() -> str:
    """Path of the pinned helm binary, built by ./build if it is not cached yet.

    ``DATASETPREP_HELM`` may name a prebuilt binary (CI images that ship one).
    """
    override = os.environ.get("DATASETPREP_HELM")
    if override:
        return override
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise HelmUnavailable(f"tests/helm/build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    if not os.access(path, os.X_OK):
        raise HelmUnavailable(f"tests/helm/build printed {path!r}, which is not executable")
    return path


def isolated_env(home: Path) -> dict[str, str]:
    """Environment that keeps helm away from the user's config, cache and repositories."""
    env = dict(os.environ)
    for var, sub in (("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"), ("HELM_DATA_HOME", "data")):
        env[var] = str(home / sub)
    env.pop("HELM_KUBECONTEXT", None)
    env.pop("HELM_NAMESPACE", None)
    env.setdefault("KUBECONFIG", str(home / "no-kubeconfig"))
    return env


def run(helm: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run helm; on failure (check=True) raise with its stderr in the message."""
    proc = subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    """``{"a.b": 1}`` -> ``["--set-json", "a.b=1"]`` (JSON keeps types: lists, bools, ints)."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def split_documents(text: str) -> list[dict[str, Any]]:
    """YAML documents of a rendered manifest stream, empty ones dropped."""
    return [d for d in yaml.safe_load_all(text) if d]


def raw_documents(text: str) -> list[str]:
    """The rendered manifest stream cut at ``---`` lines, keeping comments (rule rationale)."""
    docs, cur = [], []
    for line in text.splitlines():
        if line.strip() == "---":
            if any(ln.strip() and not ln.lstrip().startswith("#") for ln in cur):
                docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if any(ln.strip() and not ln.lstrip().startswith("#") for ln in cur):
        docs.append("\n".join(cur))
    return docs
