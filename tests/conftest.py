"""Shared pytest configuration and fixtures.

Layers, by file (checked at collection, see :func:`pytest_collection_modifyitems`):

* pure -- no API server: the builders, the contract, the data plane (most files);
* fake API -- the reconciler with an in-memory API (``test_operator_reconcile*.py``,
  ``test_operator_deletion.py``; the fake is ``fakeapi.py``), the Hub client against a local Hub
  endpoint (``hubserver.py``);
* cluster -- a real kube-apiserver test bed (``*_e2e.py``, ``*_cluster.py``, ``test_testbed.py``),
  marked ``cluster``; their helpers are in ``bed.py``.

Cluster fixtures (``kube_cluster``, ``namespace``) live in tests/cluster/fixtures.py; see
tests/cluster/README.md. They are loaded by file path so that the module does not depend on how
pytest sets up sys.path (no tests/__init__.py). Shared helpers live in modules of their own
(``paths.py``, ``specs.py``, ``fakeapi.py``, ``bed.py``, ``hubserver.py``, ``tokfiles.py``), never in
test files.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest

from bed import Bed, golden_claim, imported_image, install_crd
from datasetprep import contract
from datasetprep.contract import RunPlan
from datasetprep.spec import parse_spec
from hubserver import _fake_hub_server, fake_hub  # noqa: F401 - fixtures, used by name

_name = "datasetprep_testbed_fixtures"
if _name not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_name, Path(__file__).parent / "cluster" / "fixtures.py")
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _mod
    _spec.loader.exec_module(_mod)
_fx = sys.modules[_name]

_testbeds = _fx._testbeds
kube_cluster = _fx.kube_cluster
namespace = _fx.namespace
pytest_collection_finish = _fx.pytest_collection_finish
KubeCluster = _fx.KubeCluster

#: Files whose tests need the test bed; every test there is marked ``cluster``, and no other is.
CLUSTER_FILES = ("_e2e.py", "_cluster.py", "test_testbed.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the layers apart: cluster tests only in their own files, and marked."""
    wrong = [item.nodeid for item in items
             if item.path.name.endswith(CLUSTER_FILES) != (item.get_closest_marker("cluster") is not None)]
    if wrong:
        raise pytest.UsageError("cluster tests belong in *_e2e.py / *_cluster.py files, marked `cluster`, and "
                                f"only there: {wrong[:5]}")


# --------------------------------------------------------------------------- the test bed


@pytest.fixture(scope="module")
def crd(kube_cluster):
    install_crd(kube_cluster.api_client())


@pytest.fixture
def operator_env(kube_cluster, monkeypatch):
    """The operator reads its settings (and the API credentials) from the environment. Its Job pods
    run our job image (tests/cluster/images), imported into the node: pull policy Never."""
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    # kopf logs in through the kubernetes client, which read $KUBECONFIG when it was imported.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE", imported_image(kube_cluster, "job")[0])
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE_PULL_POLICY", "Never")
    for var in ("DATASETPREP_WATCH_NAMESPACES", "DATASETPREP_METRICS_PORT", "DATASETPREP_JOB_SERVICE_ACCOUNT",
                "DATASETPREP_IMAGE_PULL_POLICY", "DATASETPREP_JOB_ENV"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bed(kube_cluster, namespace, crd, operator_env, tmp_path) -> Bed:
    """A fresh namespace with a hostPath-backed claim ``data`` holding the golden corpus and model; the
    folder belongs to the job pods' uid (hostPath ignores fsGroup; a root-owned export has its own test)."""
    return Bed(kube_cluster, namespace, golden_claim(kube_cluster, namespace, tmp_path / "pv"))


# --------------------------------------------------------------------------- the chart on the test bed
# (helpers: chartbed.py; tests/test_chart.py has its own cluster-less `helm` and `helm_env`)


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm CLI (tests/helm/build)."""
    from chartbed import helmcli

    try:
        return helmcli.helm_binary()
    except helmcli.HelmUnavailable as exc:
        pytest.fail(f"helm could not be built: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory, kube_cluster) -> dict[str, str]:
    """helm's environment: its own config/cache folders, the test bed's kubeconfig."""
    from chartbed import helmcli

    env = helmcli.isolated_env(tmp_path_factory.mktemp("helm-home"))
    env["KUBECONFIG"] = str(kube_cluster.kubeconfig)
    return env


@pytest.fixture
def k8s(kube_cluster):
    """The API groups the chart tests talk to, as the admin."""
    api = kube_cluster.api_client()
    return type("K8s", (), {
        "api": api,
        "core": kubernetes.client.CoreV1Api(api),
        "apps": kubernetes.client.AppsV1Api(api),
        "rbac": kubernetes.client.RbacAuthorizationV1Api(api),
        "ext": kubernetes.client.ApiextensionsV1Api(api),
        "authz": kubernetes.client.AuthorizationV1Api(api),
        "custom": kubernetes.client.CustomObjectsApi(api),
        "batch": kubernetes.client.BatchV1Api(api),
        "net": kubernetes.client.NetworkingV1Api(api),
        "dyn": kubernetes.dynamic.DynamicClient(api),
    })


@pytest.fixture
def extra_namespace(kube_cluster):
    """A second namespace (outside the watched one, or a second watched one)."""
    core = kubernetes.client.CoreV1Api(kube_cluster.api_client())
    name = f"x-{os.urandom(3).hex()}"
    core.create_namespace({"metadata": {"name": name, "labels": {"testbed.datasetprep.io/test": "true"}}})
    yield name
    with contextlib.suppress(Exception):
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def job_image(kube_cluster, monkeypatch) -> str:
    """The operator starts Job pods from our job image, on the real node (no pull: it is imported; the
    ``operator_env`` fixture sets the same)."""
    image = imported_image(kube_cluster, "job")[0]
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE", image)
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE_PULL_POLICY", "Never")
    return image


# --------------------------------------------------------------------------- the job entrypoint


@pytest.fixture
def run_job():
    """Run ``datasetprep job`` as a Job pod does: the work order in the environment, named through the
    contract, and the result read back from the termination log. Returns ``(process, result dict)``.

    ``plan``: a :class:`RunPlan`, or ``"first"``/``"merge"``/``"delete"`` for that step of the spec's
    run; ``index`` is the pod's ``JOB_COMPLETION_INDEX``.
    """
    def run(volume, spec: dict, plan: RunPlan | str = "first", *, index: int | None = None,
            env: dict[str, str] | None = None):
        if isinstance(plan, str):
            stages = RunPlan.stages(parse_spec(spec))
            plan = {"first": stages[0], "merge": stages[-1], "delete": RunPlan.cleanup()}[plan]
        term = volume / "termination-log"
        full = {"PATH": "/usr/bin:/bin", contract.ENV_SPEC: json.dumps(spec),
                contract.ENV_VOLUMES: json.dumps({"data": str(volume)}), contract.ENV_RUN: plan.to_json(),
                "DATASETPREP_TERMINATION_LOG": str(term), **(env or {})}
        if index is not None:
            full[contract.ENV_COMPLETION_INDEX] = str(index)
        p = subprocess.run([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())",
                            "job"], env=full, capture_output=True, text=True, timeout=300)
        return p, json.loads(term.read_text())
    return run
