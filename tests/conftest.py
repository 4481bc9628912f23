"""Shared pytest configuration.

Cluster fixtures (``kube_cluster``, ``namespace``) live in tests/cluster/fixtures.py;
see tests/cluster/README.md. They are loaded by file path so that the module does not
depend on how pytest sets up sys.path (no tests/__init__.py)."""
import importlib.util
import sys
from pathlib import Path

_name = "datasetprep_testbed_fixtures"
if _name not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_name, Path(__file__).parent / "cluster" / "fixtures.py")
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _mod
    _spec.loader.exec_module(_mod)
_fx = sys.modules[_name]

kube_cluster = _fx.kube_cluster
namespace = _fx.namespace
pytest_collection_finish = _fx.pytest_collection_finish
KubeCluster = _fx.KubeCluster
