"""docs/quickstart.md and docs/install.md, run as a reader would (issue 16 item 8): every shell block
extracted from the Markdown and run with bash on the test bed -- a real kubelet, the two images built
from this repository's Dockerfiles, the pinned helm, the bed's own kubectl -- with only the
substitutions the pages document (``docsmd.SUBSTITUTIONS``), in the order of a reader's path. Which
block runs in which step, and which do not run and why: ``docsmd.RUN`` / ``docsmd.NOT_RUN``
(tests/test_docs.py fails on a block listed in neither).

What the bed provides that a cluster would: volumes for the claims the examples make (hostPath
PersistentVolumes owned by uid/gid 65532, as a storage driver applying fsGroup gives them), and a Hub
(tests/hubserver.py, listening where pods reach this machine, laid out like wikitext, codeparrot and
meta-llama/Llama-3.1-8B). The bed does not enforce NetworkPolicy (no policy engine in its CNI
bridge), so the chart's policies are present but inert here.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

import docsmd
from bed import wait_for
from chartbed import CRD_NAME
from hubserver import GOOD_TOKEN, FakeHub
from paths import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

NAMESPACES = ("datasetprep-system", "ml-team", "research")
#: The claims the examples make, and the volume each gets.
CLAIMS = {("ml-team", "datasets"): "50Gi", ("ml-team", "corpus"): "20Gi"}


class Reader:
    """Runs the pages' blocks in a copy of the repository, as a reader's shell would."""

    def __init__(self, cluster, helm: str, work: Path, hub: FakeHub) -> None:
        self.cluster, self.work = cluster, work
        self.blocks = [b for page in docsmd.PAGES for b in docsmd.shell_blocks(REPO / "docs" / page)]
        self.by_key = {docsmd.block_key(b, self.blocks): b for b in self.blocks}
        self.ran: list[str] = []
        self.used: set[str] = set()
        tools = work / ".bin"
        tools.mkdir()
        (tools / "helm").symlink_to(helm)
        (tools / "kubectl").symlink_to(cluster.kubectl)
        hub_env = json.dumps([{"name": "DATASETPREP_JOB_ENV", "value": json.dumps({"HF_ENDPOINT": hub.endpoint})}])
        self.context = {"hub_env": f"'extraEnv={hub_env}'", "token": GOOD_TOKEN}
        self.env = {"PATH": os.pathsep.join([str(tools), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
                    "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(work / ".home"), "LANG": "C.UTF-8"}

    def edit(self, path: str) -> None:
        """What the pages tell the reader to do to a file (put the token, name the registry)."""
        f = self.work / path
        f.write_text(docsmd.substitute(f.read_text(), self.context, self.used))

    def run(self, key: str, step: str, timeout: float = 900) -> subprocess.CompletedProcess:
        assert docsmd.RUN[key] == step, f"{key} belongs to step {docsmd.RUN[key]!r}, not {step!r}"
        script = docsmd.substitute(textwrap.dedent(self.by_key[key].text), self.context, self.used)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        self.ran.append(key)
        if proc.returncode != 0:
            pytest.fail(f"{key} failed ({proc.returncode}):\n--- script\n{script}\n--- stdout\n{proc.stdout[-4000:]}"
                        f"\n--- stderr\n{proc.stderr[-4000:]}\n{self.cluster.debug_dump('ml-team')}", pytrace=False)
        return proc

    def files(self, page: str) -> None:
        for name, text in docsmd.named_files(REPO / "docs" / page).items():
            (self.work / name).write_text(text)


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    for part in ("charts", "crds", "examples", "deploy"):
        shutil.copytree(REPO / part, work / part, ignore=shutil.ignore_patterns("out"))
    (work / ".home").mkdir()
    return work


def _volumes(core, tmp_path: Path) -> list[str]:
    """hostPath volumes for the examples' claims, each bound in advance to its claim."""
    names = []
    for (ns, claim), size in CLAIMS.items():
        path = tmp_path / "volumes" / f"{ns}-{claim}"
        path.mkdir(parents=True)
        os.chown(path, 65532, 65532)
        name = f"docs-{ns}-{claim}"
        core.create_persistent_volume({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": claim}}})
        names.append(name)
    return names


def _fresh_namespaces(core, names=NAMESPACES, timeout: float = 180) -> None:
    for ns in names:
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)
    deadline = time.monotonic() + timeout
    while any(_exists(core, ns) for ns in names):
        assert time.monotonic() < deadline, f"namespaces {names} still there after {timeout}s"
        time.sleep(1)


def _exists(core, ns: str) -> bool:
    try:
        core.read_namespace(ns)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _listed(custom, ns: str, plural: str) -> list[dict]:
    return custom.list_namespaced_custom_object("datasetprep.io", "v1alpha1", ns, plural)["items"]


def _condition(custom, ns: str, name: str, type_: str) -> dict | None:
    obj = custom.get_namespaced_custom_object("datasetprep.io", "v1alpha1", ns, "datasetpreps", name)
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), None)


@pytest.fixture
def reader(kube_cluster, helm, tmp_path, _fake_hub_server):
    if kube_cluster.kubectl is None:
        pytest.fail("the docs are run with the bed's own kubectl: needs the real-node test bed", pytrace=False)
    api = kube_cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    _fresh_namespaces(core)
    hub = FakeHub(_fake_hub_server.data, host=kube_cluster.host_ip).start()
    volumes = _volumes(core, tmp_path)
    try:
        yield Reader(kube_cluster, helm, _workdir(tmp_path), hub)
    finally:
        subprocess.run([helm, "uninstall", "datasetprep", "-n", "datasetprep-system",
                        "--kubeconfig", str(kube_cluster.kubeconfig)], capture_output=True, timeout=300)
        _fresh_namespaces(core)
        for name in volumes:
            with contextlib.suppress(ApiException):
                core.delete_persistent_volume(name)
        hub.stop()


def test_the_quickstart_and_the_install_guide_work_as_written(reader, kube_cluster):
    api = kube_cluster.api_client()
    custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)

    # A cluster where an admin applied the CRDs by hand: install.md's adoption, then the quickstart.
    for crd in ("datasetprep.io_datasetpreps.yaml", "datasetprep.io_datasetblends.yaml"):
        kube_cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(reader.work / "crds" / crd))
    reader.run("install.md#Upgrading#1", "adopt the CRD")

    out = reader.run("quickstart.md#1. No cluster#0", "no cluster").stdout
    assert "devils_dictionary_text_document" in out or (reader.work / "examples/demo/out").is_dir()

    reader.run("quickstart.md#2. Install the operator (Helm)#0", "install")
    assert _exists(core, "ml-team")  # created by the chart
    reader.run("install.md#Check it#0", "check")
    rules = reader.run("install.md#What the chart grants (RBAC)#0", "check").stdout
    assert {"datasetpreps.datasetprep.io", "datasetblends.datasetprep.io"} <= set(rules.split()), rules
    assert "secrets" not in rules

    # the NeMo guide's case, through the Hub, with the Llama 3.1 layout
    reader.edit("examples/wikitext-llama31.yaml")
    out = reader.run("quickstart.md#3. A DatasetPrep with kubectl#0", "dataset").stdout
    assert "wikitext-llama31: Ready:" in out and "dataset_path" in out
    assert _condition(custom, "ml-team", "wikitext-llama31", "Ready")["status"] == "True"
    recipe = reader.run("quickstart.md#3. A DatasetPrep with kubectl#1", "dataset")
    assert "condition met" in recipe.stdout

    # the kubectl recipe on a failed run returns at once, non-zero, with the message
    spec = {"source": {"files": {"paths": ["missing/*.jsonl"]}}, "tokenizer": {"type": "null", "vocabSize": 100},
            "output": {"claimName": "datasets", "prefix": "broken"}, "backoffLimit": 0}
    custom.create_namespaced_custom_object("datasetprep.io", "v1alpha1", "ml-team", "datasetpreps", {
        "apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep", "metadata": {"name": "broken"}, "spec": spec})
    key = "quickstart.md#3. A DatasetPrep with kubectl#1"
    script = reader.by_key[key].text.replace("wikitext-llama31", "broken")
    start = time.monotonic()
    failed = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=reader.work, env=reader.env,
                            capture_output=True, text=True, timeout=600)
    stalled = _condition(custom, "ml-team", "broken", "Stalled")
    assert failed.returncode == 0 and stalled["status"] == "True", failed.stderr  # the `||` printed the reason
    assert stalled["message"] in failed.stdout and time.monotonic() - start < 300

    # a second DatasetPrep with the same tokenizer and a DatasetBlend of the two, waited for with dsb/
    out = reader.run("quickstart.md#A training mixture (DatasetBlend)#0", "blend").stdout
    assert "pretrain-mix: Ready:" in out and "ConfigMap pretrain-mix-training" in out, out
    assert "llama_dataset_text_document" in out and "code/llama_content_document" in out, out
    blend = custom.get_namespaced_custom_object("datasetprep.io", "v1alpha1", "ml-team", "datasetblends",
                                                "pretrain-mix")
    assert [c["datasetPrep"] for c in blend["status"]["components"]] == ["wikitext-llama31", "code-llama31"]
    # Deleted while the operator runs, as install.md says to: until DatasetBlends leave kopf's handlers (issue
    # 17) they carry its finalizer, which would hold ml-team's deletion below once the operator is uninstalled.
    custom.delete_namespaced_custom_object("datasetprep.io", "v1alpha1", "ml-team", "datasetblends", "pretrain-mix")
    wait_for(lambda: not _listed(custom, "ml-team", "datasetblends"), "DatasetBlend pretrain-mix deleted", timeout=120)

    # offline: claim and loader, copy, then the DatasetPrep
    reader.edit("examples/offline/1-claim-and-loader.yaml")
    out = reader.run("quickstart.md#4. Files on a volume (offline)#0", "offline").stdout
    assert "offline-corpus: Ready:" in out

    reader.run("install.md#Upgrading#0", "upgrade")
    reader.run("install.md#Uninstalling (the data stays)#0", "uninstall")
    assert custom.get_namespaced_custom_object("datasetprep.io", "v1alpha1", "ml-team", "datasetpreps",
                                               "wikitext-llama31")  # kept with the CRD
    assert kube_cluster.run_kubectl("get", "crd", CRD_NAME).returncode == 0

    # install.md's other ways in, each from scratch
    reader.run("install.md#Cluster-wide (default)#0", "cluster-wide")
    assert _exists(core, "research")
    reader.run("install.md#Check it#0", "check")
    reader.run("install.md#Uninstalling (the data stays)#0", "uninstall")
    reader.files("install.md")
    reader.run("install.md#Namespaced#0", "namespaced")
    reader.run("install.md#Check it#0", "check")
    reader.run("install.md#Uninstalling (the data stays)#0", "uninstall")
    _fresh_namespaces(core)  # "create them first": on a cluster that does not have them
    reader.run("install.md#Cluster-wide (default)#1", "namespaces first")
    reader.run("install.md#Check it#0", "check")

    assert set(reader.ran) == set(docsmd.RUN), f"blocks not run: {set(docsmd.RUN) - set(reader.ran)}"
    assert reader.used == {s.text for s in docsmd.SUBSTITUTIONS}
