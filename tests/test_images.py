"""The images built from jobimage/Dockerfile and operator/Dockerfile hold what their commands need.

``tests/cluster/images`` builds them (cached by the hash of their inputs); these tests run the
result with podman the way a Kubernetes pod of ours runs: uid 65532, read-only root filesystem,
all capabilities dropped, no network, ``/tmp`` a fresh tmpfs (the pod's emptyDir), data on mounted
volumes, ``/dev/termination-log`` a file of the host. A dependency missing from an image fails
here, not in a user's cluster. ``ctr`` (containerd) must accept the archives the node imports.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from paths import CORPUS_A, CORPUS_NULL, GOLDEN, HF_DIR, REPO, SP_MODEL

# The first test builds the images when they are not cached yet (cold: 7-13 min on 2 shared cores).
pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

IMAGES_SCRIPT = REPO / "tests" / "cluster" / "images"
JOB_TAG_KEY, OPERATOR_TAG_KEY = "datasetprep-job", "datasetprep-operator"
# What each image deliberately lacks, with the reason; every other import of its code must load.
NOT_IN_JOB_IMAGE = {
    # `datasetprep operator` only: the job image installs the engine without the operator extra.
    "datasetprep_operator", "kopf", "prometheus_client",
    # Progress reporting from job pods is being redesigned so that they need no API access
    # (issue 10); until then the job image has no Kubernetes client and the job runs without it.
    "kubernetes",
}


def _images_dir() -> Path:
    p = subprocess.run([str(IMAGES_SCRIPT)], capture_output=True, text=True, timeout=3300)
    assert p.returncode == 0, f"tests/cluster/images failed (exit {p.returncode}):\n{p.stderr[-4000:]}"
    return Path(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built() -> dict:
    folder = _images_dir()
    doc = json.loads((folder / "images.json").read_text())
    doc["dir"] = folder
    doc["by_name"] = {tag.rsplit("/", 1)[-1].split(":")[0]: tag for tag in doc["images"]}
    return doc


def _podman_env(built: dict) -> dict:
    return dict(os.environ, CONTAINERS_STORAGE_CONF=built["storage_conf"],
                CONTAINERS_REGISTRIES_CONF=built["registries_conf"], CONTAINERS_CONF=built["containers_conf"])


def _ulimits() -> list[str]:
    """Rlimits podman may set here. By default it asks for nofile/nproc far above the hard limits,
    which this machine's root may not raise (no CAP_SYS_RESOURCE): `error setting rlimit`. nofile:
    the hard limit. nproc (counted per user, machine-wide): 4096, plenty for a job, and below the
    limit podman's runtime itself runs with (32768 seen, lower than this process's)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
    out = ["--ulimit", f"nproc={nproc}:{nproc}"]
    if nofile != resource.RLIM_INFINITY:
        out += ["--ulimit", f"nofile={nofile}:{nofile}"]
    return out


def run_pod(built: dict, name: str, args: list[str] = (), *, entrypoint: str | None = None,
            env: dict | None = None, volumes: list[str] = (), user: str | None = "65532:65532",
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the image as our pods run: read-only root, no capabilities, no network, tmpfs /tmp."""
    cmd = ["podman", "run", "--rm", "--read-only", "--read-only-tmpfs=false", "--network=none",
           "--cap-drop=all", "--security-opt=no-new-privileges",
           "--tmpfs=/tmp:rw,mode=1777,size=256m", *_ulimits()]
    if user is not None:
        cmd.append(f"--user={user}")
    if entrypoint is not None:
        cmd.append(f"--entrypoint={entrypoint}")
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    for v in volumes:
        cmd += ["--volume", v]
    cmd += [built["by_name"][name], *args]
    return subprocess.run(cmd, env=_podman_env(built), capture_output=True, text=True, timeout=timeout)


def read_archive(archive: str | Path) -> tuple[dict, bytes]:
    """A docker-archive's manifest entry and image configuration (what containerd imports)."""
    with tarfile.open(archive) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        return manifest, tar.extractfile(manifest["Config"]).read()


def image_config(built: dict, name: str) -> dict:
    return json.loads(read_archive(built["dir"] / built["images"][built["by_name"][name]]["archive"])[1])["config"]


# ------------------------------------------------------------------------------ the interface
def _chart_tags() -> dict[str, str]:
    import yaml

    chart = yaml.safe_load((REPO / "charts/datasetprep-operator/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts/datasetprep-operator/values.yaml").read_text())
    return {key: f"{values[key]['repository']}:{values[key]['tag'] or chart['appVersion']}"
            for key in ("image", "jobImage")}


def test_images_json_names_the_chart_tags_and_docker_archives(built):
    tags = _chart_tags()
    assert set(built["images"]) == {tags["image"], tags["jobImage"]}
    for tag, rec in built["images"].items():
        archive = built["dir"] / rec["archive"]
        assert Path(rec["archive"]).name == rec["archive"] and archive.is_file(), rec  # in the folder
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", rec["id"]) and rec["format"] == "docker-archive"
        manifest, config = read_archive(archive)
        assert manifest["RepoTags"] == [tag]
        assert "sha256:" + hashlib.sha256(config).hexdigest() == rec["id"]
        assert json.loads(config)["config"]["Labels"]["org.opencontainers.image.version"] == tag.rsplit(":", 1)[1]


def test_the_base_images_are_labelled_stand_ins(built):
    """The stand-ins say what they are: the official name, and where they differ from it."""
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True, check=True).stdout.split()[1]
    wanted = {"docker.io/library/python:3.11.10-slim-bookworm": ("PYTHON_VERSION=3.11.2", "Debian's 3.11.2"),
              "docker.io/library/rust:1.89.0-slim-bookworm": (f"RUST_VERSION={rustc}", f"Rust {rustc}")}
    assert set(built["standins"]) == set(wanted)
    for tag, rec in built["images"].items():
        assert rec["base_images"] == {ref: built["standins"][ref]["id"] for ref in rec["base_images"]}
    for ref, (env, said) in wanted.items():
        manifest, config = read_archive(built["standins"][ref]["archive"])
        assert manifest["RepoTags"] == [ref] and "sha256:" + hashlib.sha256(config).hexdigest() == \
            built["standins"][ref]["id"]
        cfg = json.loads(config)["config"]
        labels = cfg["Labels"]
        assert labels["io.datasetprep.testbed.standin-for"] == ref
        assert labels["org.opencontainers.image.title"] == f"LOCAL STAND-IN for {ref}"
        assert "NOT the official image" in labels["org.opencontainers.image.description"]
        assert said in labels["org.opencontainers.image.description"] and env in cfg["Env"]


def test_a_second_run_builds_nothing(built):
    t0 = time.monotonic()
    assert _images_dir() == built["dir"]
    assert time.monotonic() - t0 < 60


def _ctr_ok() -> str:
    exe = shutil.which("ctr")
    assert exe and shutil.which("containerd"), "ctr/containerd not installed (tests/cluster/images installs them)"
    return exe


def test_containerd_imports_the_archives(built, tmp_path):
    """`ctr -n k8s.io images import` (what the node does) accepts each archive under its tag and
    keeps its image id, in a containerd of our own (no CRI, own root/state/socket)."""
    ctr = _ctr_ok()
    sock = tmp_path / "containerd.sock"
    (tmp_path / "config.toml").write_text(f"""version = 2
root = "{tmp_path / 'root'}"
state = "{tmp_path / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{tmp_path / 'ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
""")
    log = open(tmp_path / "containerd.log", "w")
    daemon = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "containerd", "--config",
                               str(tmp_path / "config.toml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "containerd.log").read_text()
            time.sleep(0.2)
        base = [ctr, "--address", str(sock), "-n", "k8s.io"]
        for tag, rec in built["images"].items():
            archive = built["dir"] / rec["archive"]
            p = subprocess.run([*base, "images", "import", str(archive)], capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, p.stdout + p.stderr
            assert tag in p.stdout, p.stdout
        listed = subprocess.run([*base, "images", "ls"], capture_output=True, text=True, check=True).stdout
        for tag, rec in built["images"].items():
            (row,) = [line.split() for line in listed.splitlines() if line.startswith(tag + " ")]
            manifest = json.loads(subprocess.run([*base, "content", "get", row[2]], capture_output=True,
                                                 check=True).stdout)
            assert manifest["config"]["digest"] == rec["id"], (tag, manifest["config"])
            check = subprocess.run([*base, "images", "check", f"name=={tag}"], capture_output=True, text=True,
                                   check=True).stdout
            assert "complete" in check, check
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
        shutil.rmtree(tmp_path / "root", ignore_errors=True)  # the unpacked layers: ~1.5 GB


# ---------------------------------------------------------------------------- image metadata
def test_image_configs_are_what_the_dockerfiles_say(built):
    for name in (JOB_TAG_KEY, OPERATOR_TAG_KEY):
        cfg = image_config(built, name)
        assert cfg["User"] == "65532:65532" and cfg["WorkingDir"] == "/home/nonroot"
        assert cfg["Entrypoint"] == ["datasetprep"]
        assert cfg["Healthcheck"]["Test"] == ["NONE"]  # kept: built in docker format
        labels = cfg["Labels"]
        assert labels["org.opencontainers.image.title"] == name
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"]), labels
        assert "PYTHONUNBUFFERED=1" in cfg["Env"]
    assert image_config(built, JOB_TAG_KEY)["Cmd"] == ["job"]
    op = image_config(built, OPERATOR_TAG_KEY)
    assert op["Cmd"][0] == "operator" and set(op["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}


def test_job_image_runs_as_nonroot_on_a_read_only_root(built):
    script = ("import os, sys\n"
              "print(os.getuid(), os.getgid())\n"
              "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print('root:', e.strerror)\n"
              "open('/tmp/probe', 'w').write('ok')\n"
              "import shutil\n"
              "print('tools:', [t for t in ('gcc', 'cc', 'cargo', 'rustc', 'maturin') if shutil.which(t)])\n"
              "print('wheels:', os.path.exists('/wheels'), os.path.exists('/dist'))\n")
    p = run_pod(built, JOB_TAG_KEY, ["-c", script], entrypoint="python", user=None)  # the image's own USER
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["65532 65532", "root: Read-only file system", "tools: []",
                                     "wheels: False False"]


# ------------------------------------------------------------------------ what the code imports
def third_party_imports(package_dir: Path) -> set[str]:
    """Every absolute import (top-level and inside functions) of the package that is not stdlib."""
    found = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update(n for n in names if n.split(".")[0] not in sys.stdlib_module_names)
    return found


def _import_all(built: dict, name: str, modules: list[str]) -> dict:
    script = ("import importlib, json, sys\nres = {}\n"
              f"for m in {modules!r}:\n"
              "    try:\n        importlib.import_module(m); res[m] = 'ok'\n"
              "    except Exception as e:\n        res[m] = f'{type(e).__name__}: {e}'\n"
              "print(json.dumps(res))\n")
    p = run_pod(built, name, ["-c", script], entrypoint="python", env={"HF_HOME": "/tmp/hf"})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_job_image_holds_every_module_the_engine_imports(built):
    wanted = sorted(m for m in third_party_imports(REPO / "jobimage" / "datasetprep")
                    if m.split(".")[0] not in NOT_IN_JOB_IMAGE)
    # what `datasetprep job` needs, named, so that a refactoring cannot shrink the list unnoticed
    for m in ("numpy", "pyarrow", "pyarrow.parquet", "zstandard", "orjson", "yaml", "pydantic",
              "sentencepiece", "tokenizers", "tiktoken", "datasetprep_native", "huggingface_hub", "rich.progress"):
        assert m in wanted, m
    res = _import_all(built, JOB_TAG_KEY, wanted + ["datasetprep.job", "datasetprep.hub", "pyarrow.ipc"])
    assert {m: r for m, r in res.items() if r != "ok"} == {}


def test_operator_image_holds_what_the_operator_imports_and_no_data_plane(built):
    """The operator image carries the operator and the light core (import-linter keeps the operator
    off the data plane), and none of the data plane's heavy dependencies."""
    wanted = sorted(third_party_imports(REPO / "operator" / "datasetprep_operator"))
    for m in ("kopf", "kubernetes", "prometheus_client", "datasetprep"):
        assert any(w.split(".")[0] == m for w in wanted), m
    core = ["datasetprep.spec", "datasetprep.contract", "datasetprep.hashes", "datasetprep.naming"]
    res = _import_all(built, OPERATOR_TAG_KEY, wanted + core + ["datasetprep_operator.handlers"])
    assert {m: r for m, r in res.items() if r != "ok"} == {}
    heavy = ["numpy", "pyarrow", "datasets", "tokenizers", "sentencepiece", "tiktoken", "huggingface_hub",
             "zstandard", "datasetprep_native"]
    res = _import_all(built, OPERATOR_TAG_KEY, heavy)
    assert {m: r for m, r in res.items() if r == "ok"} == {}, "the operator image carries data-plane packages"


def test_operator_image_help(built):
    p = run_pod(built, OPERATOR_TAG_KEY, ["operator", "--help"])
    assert p.returncode == 0, p.stderr
    assert "--all-namespaces" in p.stdout and "--liveness" in p.stdout, p.stdout
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------- a real job inside the image
def _golden(name: str) -> tuple[bytes, bytes]:
    p = GOLDEN / f"{name}_text_document"
    return p.with_suffix(".bin").read_bytes(), p.with_suffix(".idx").read_bytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The golden corpora in the other formats the readers take (same records, same order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from paths import read_texts
    from tokfiles import ranks_from_hf_bpe, write_ranks

    d = tmp_path_factory.mktemp("inputs")
    (d / "corpus_a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(CORPUS_A.read_bytes()))
    pq.write_table(pa.table({"text": read_texts(CORPUS_A)}), d / "corpus_a.parquet", row_group_size=100)
    table = pa.table({"text": read_texts(CORPUS_A)})
    with pa.ipc.new_stream(d / "corpus_a.arrow", table.schema) as w:
        w.write_table(table, max_chunksize=64)
    (d / "corpus_null.jsonl.gz").write_bytes(gzip.compress(CORPUS_NULL.read_bytes()))
    write_ranks(ranks_from_hf_bpe(), d / "tiktoken.model")
    shutil.copy(SP_MODEL, d / "sp.model")
    shutil.copytree(HF_DIR, d / "hf")
    for p in d.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    d.chmod(0o755)
    return d


def run_job(built: dict, tmp_path: Path, inputs: Path, source: str, tokenizer: dict) -> tuple[dict, Path]:
    """`datasetprep job` (the image's default command) with the operator's environment contract:
    inputs on a read-only claim, the output claim writable by 65532, the termination log a file."""
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 65532, 65532)
    term = tmp_path / "termination-log"
    term.touch()
    os.chown(term, 65532, 65532)
    spec = {"source": {"files": {"claimName": "inputs", "paths": [source]}, "textKeys": ["text"]},
            "tokenizer": tokenizer, "output": {"claimName": "data", "prefix": "ds/out", "mountPath": "/data"},
            "appendEod": True, "workers": 2}
    from datasetprep.contract import JobInputs, RunPlan
    from datasetprep.spec import parse_spec

    parsed = parse_spec(spec)
    work = JobInputs(spec=parsed, volumes={"inputs": "/inputs", "data": "/data"}, plan=RunPlan.stages(parsed)[0],
                     name="golden", namespace="default")
    env = dict(work.env()) | {"HF_HOME": "/tmp/hf"}  # exactly what the operator's Job manifest carries
    p = run_pod(built, JOB_TAG_KEY, [], env=env,
                volumes=[f"{inputs}:/inputs:ro", f"{out}:/data:rw", f"{term}:/dev/termination-log:rw"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stdout + p.stderr
    msg = json.loads(term.read_text())
    assert msg["ok"] is True, msg
    return msg, out / "ds"


@pytest.mark.parametrize("source,tokenizer,golden,engine", [
    ("corpus_a.jsonl.zst", {"type": "huggingface", "path": {"claimName": "inputs", "path": "hf"}},
     "a_hfbpe_eod", "native-bytelevel-bpe"),
    ("corpus_a.parquet", {"type": "sentencepiece", "path": {"claimName": "inputs", "path": "sp.model"}},
     "a_spbpe_eod", "native-sentencepiece-bpe"),
    ("corpus_a.arrow", {"type": "sentencepiece", "path": {"claimName": "inputs", "path": "sp.model"}},
     "a_spbpe_eod", "native-sentencepiece-bpe"),
    ("corpus_null.jsonl.gz", {"type": "null", "vocabSize": 65500}, "null_v65500_eod", "null"),
], ids=["hf-native-zst", "sentencepiece-parquet", "sentencepiece-arrow", "null-gz"])
def test_job_in_the_image_writes_the_golden_bytes(built, inputs, tmp_path, source, tokenizer, golden, engine):
    msg, ds = run_job(built, tmp_path, inputs, source, tokenizer)
    assert (msg["outputs"][0]["documents"], msg["outputs"][0]["prefix"]) == (
        json.loads((GOLDEN / f"{golden}_text_document.json").read_text())["document_count"], "ds/out_text_document")
    assert ((ds / "out_text_document.bin").read_bytes(), (ds / "out_text_document.idx").read_bytes()) == _golden(golden)
    manifest = json.loads((ds / "out.manifest.json").read_text())
    assert manifest["tokenizer"]["engine"] == engine


def test_job_in_the_image_tiktoken_matches_the_engine_here(built, inputs, tmp_path):
    """No golden vector for tiktoken: the image must give the bytes this checkout's engine gives."""
    from datasetprep import pipeline, tokenization

    msg, ds = run_job(built, tmp_path, inputs, "corpus_a.parquet",
                      {"type": "tiktoken", "path": {"claimName": "inputs", "path": "tiktoken.model"}, "eodId": 0})
    cfg = tokenization.resolve_config("tiktoken", inputs / "tiktoken.model", eod_id=0)
    pipeline.run(pipeline.Request(inputs=[CORPUS_A], output_prefix=str(tmp_path / "here"), tokenizer=cfg,
                                  append_eod=True, workers=1))
    assert (ds / "out_text_document.bin").read_bytes() == (tmp_path / "here_text_document.bin").read_bytes()
    assert (ds / "out_text_document.idx").read_bytes() == (tmp_path / "here_text_document.idx").read_bytes()
    assert json.loads((ds / "out.manifest.json").read_text())["tokenizer"]["engine"] == "native-tiktoken-bpe"
