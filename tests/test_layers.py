"""The layers hold: the import contracts of pyproject.toml (import-linter), and the operator -- its
install, its CLI, its CRD generator -- without any data-plane package."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from paths import REPO

#: What the job needs and the operator must not: its image does not carry them.
DATA_PLANE = ("numpy", "pyarrow", "datasets", "tokenizers", "sentencepiece", "tiktoken", "huggingface_hub",
              "zstandard", "orjson", "rich", "datasetprep_native")

#: Run before the code under test: a data-plane package is absent, as in the operator's image
#: (``import`` fails, ``importlib.util.find_spec`` finds nothing).
WITHOUT_DATA_PLANE = f"""
import sys
for name in {DATA_PLANE!r}:
    sys.modules[name] = None
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    """Core light, operator without data plane, data plane without operator, and both layered."""
    p = _python("import sys; from importlinter.cli import lint_imports; "
                "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout and "5 kept" in p.stdout, p.stdout


def test_the_operator_runs_without_the_data_plane():
    p = _python(WITHOUT_DATA_PLANE + """
import contextlib, io
import datasetprep_operator.handlers, datasetprep_operator.cli
from datasetprep_operator import crdgen
assert crdgen.crd()["kind"] == "CustomResourceDefinition"
from datasetprep.cli import main
for argv in (["--help"], ["operator", "--help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert "usage: datasetprep" in out.getvalue(), argv
print("operator ok")
""")
    assert p.returncode == 0 and "operator ok" in p.stdout, p.stdout + p.stderr


def test_the_blocker_really_blocks():
    """The test above would pass vacuously if the blocker let data-plane packages through."""
    p = _python(WITHOUT_DATA_PLANE + "import datasetprep.pipeline")
    assert p.returncode != 0 and "ModuleNotFoundError: import of numpy halted" in p.stderr, p.stderr


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_operator_extra_is_the_operators_whole_install():
    """The operator's image installs the package with --no-deps and exactly the `operator` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    operator = _names(project["optional-dependencies"]["operator"])
    assert not operator & {d.replace("_", "-") for d in DATA_PLANE}, operator
    assert {"pydantic", "pyyaml", "kopf", "kubernetes", "prometheus-client"} == operator
    # the core's own needs are the same in both installs
    assert {"pydantic", "pyyaml"} <= _names(project["dependencies"])
    # the engine needs its data plane when installed plainly (`pip install -e .` runs the demo)
    assert {"numpy", "pyarrow", "tokenizers", "sentencepiece", "datasets"} <= _names(project["dependencies"])
