"""Pytest fixtures for the real-API-server test bed (tests/cluster).

Loaded by tests/conftest.py. Fixtures:

* ``kube_cluster`` (session): builds the binaries (cached) and starts etcd,
  kube-apiserver, kube-controller-manager and the pod runner via ``tests/cluster/up``
  - or, with ``USE_EXISTING_CLUSTER=true``, uses ``$KUBECONFIG`` and starts nothing.
  Yields a :class:`KubeCluster`. ``tests/cluster/down`` runs at session end, also when
  tests fail. If the binaries cannot be built or the cluster cannot start, every test
  using the fixture FAILS with the build/start output (never skips).
* ``namespace`` (function): a fresh namespace (its ``default`` ServiceAccount and
  ``kube-root-ca.crt`` exist), deleted after the test together with the hostPath
  PersistentVolumes created for it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent
KILL_ANNOTATION = "testbed.datasetprep.io/kill"
_BUILD_RESULT: dict = {}


def use_existing_cluster() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


def _run(cmd: list[str], env: dict | None = None, stream: bool = False) -> tuple[int, str]:
    """Run a test-bed script; returns (rc, combined output). With stream=True the
    output also goes to the terminal (the cold build takes minutes)."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if stream:
            sys.stderr.write(line)
            sys.stderr.flush()
    return proc.wait(), "".join(out)


def build_binaries(stream: bool = True) -> dict:
    """Build (or find cached) etcd/kube-apiserver/kube-controller-manager once per session."""
    if not _BUILD_RESULT:
        if use_existing_cluster():
            _BUILD_RESULT.update(rc=0, output="USE_EXISTING_CLUSTER=true", seconds=0.0)
        else:
            t0 = time.monotonic()
            rc, out = _run([str(CLUSTER_DIR / "build")], stream=stream)
            _BUILD_RESULT.update(rc=rc, output=out, seconds=time.monotonic() - t0)
    return _BUILD_RESULT


@dataclass
class KubeCluster:
    """Handle on the running test bed (or an existing cluster)."""

    kubeconfig: Path
    state_dir: Path | None  # None for an existing cluster not started by tests/cluster/up
    existing: bool = False  # USE_EXISTING_CLUSTER=true: nothing was started, nothing is stopped
    _pvs: dict = field(default_factory=dict)  # namespace -> [pv names]

    @property
    def log_dir(self) -> Path | None:
        """Component logs (etcd.log, kube-apiserver.log, ...); pod logs under ``pods/``."""
        return self.state_dir / "logs" if self.state_dir else None

    def api_client(self):
        """A new ``kubernetes.client.ApiClient`` for the admin (system:masters) credential."""
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    # ------------------------------------------------------------------ storage
    def create_hostpath_pvc(self, namespace: str, host_dir, name: str = "data", size: str = "1Gi",
                            access_modes=("ReadWriteOnce",), timeout: float = 60.0) -> str:
        """Create a hostPath PersistentVolume for ``host_dir`` (created if missing) and a
        PVC ``name`` in ``namespace`` pre-bound to it; wait until the real PV controller
        reports the claim Bound. Returns the PVC name. The PV is deleted with the namespace
        fixture."""
        import kubernetes

        host_dir = Path(host_dir).resolve()
        host_dir.mkdir(parents=True, exist_ok=True)
        pv_name = f"{namespace}-{name}"[:253]
        core = kubernetes.client.CoreV1Api(self.api_client())
        pv = kubernetes.client.V1PersistentVolume(
            metadata=kubernetes.client.V1ObjectMeta(
                name=pv_name, labels={"testbed.datasetprep.io/namespace": namespace}),
            spec=kubernetes.client.V1PersistentVolumeSpec(
                capacity={"storage": size},
                access_modes=list(access_modes),
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                host_path=kubernetes.client.V1HostPathVolumeSource(path=str(host_dir), type="DirectoryOrCreate"),
                claim_ref=kubernetes.client.V1ObjectReference(namespace=namespace, name=name),
            ),
        )
        core.create_persistent_volume(pv)
        self._pvs.setdefault(namespace, []).append(pv_name)
        pvc = kubernetes.client.V1PersistentVolumeClaim(
            metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=namespace),
            spec=kubernetes.client.V1PersistentVolumeClaimSpec(
                access_modes=list(access_modes),
                resources=kubernetes.client.V1VolumeResourceRequirements(requests={"storage": size}),
                storage_class_name="",
                volume_name=pv_name,
            ),
        )
        core.create_namespaced_persistent_volume_claim(namespace, pvc)
        deadline = time.monotonic() + timeout
        while True:
            phase = core.read_namespaced_persistent_volume_claim(name, namespace).status.phase
            if phase == "Bound":
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"PVC {namespace}/{name} not Bound after {timeout}s (phase {phase})")
            time.sleep(0.2)

    # ------------------------------------------------------------------ pods & jobs
    def kill_pod(self, namespace: str, pod: str, value: str | None = None) -> None:
        """Fault injection: the pod runner SIGKILLs the pod's running containers
        (reported as exitCode 137, reason Error). Each new annotation value fires once."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {
            KILL_ANNOTATION: value or uuid.uuid4().hex[:8]}}})

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """Container output captured by the pod runner (all attempts, appended)."""
        if self.state_dir is None:
            import kubernetes

            core = kubernetes.client.CoreV1Api(self.api_client())
            kw = {"container": container} if container else {}
            return core.read_namespaced_pod_log(pod, namespace, **kw)
        d = self.state_dir / "logs" / "pods" / namespace / pod
        files = [d / f"{container}.log"] if container else sorted(d.glob("*.log"))
        return "".join(f.read_text(errors="replace") for f in files if f.exists())

    def wait_for_job(self, namespace: str, name: str, timeout: float = 120.0,
                     conditions=("Complete", "Failed")):
        """Wait until the Job has one of ``conditions`` True; returns the V1Job."""
        import kubernetes

        batch = kubernetes.client.BatchV1Api(self.api_client())
        deadline = time.monotonic() + timeout
        while True:
            job = batch.read_namespaced_job(name, namespace)
            for c in (job.status.conditions or []) if job.status else []:
                if c.type in conditions and c.status == "True":
                    return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"Job {namespace}/{name} reached none of {conditions} in {timeout}s; "
                                   f"status={job.status}\n{self.debug_dump(namespace)}")
            time.sleep(0.3)

    def debug_dump(self, namespace: str) -> str:
        """Pod phases/container states plus runner and controller-manager log tails."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        lines = []
        try:
            for p in core.list_namespaced_pod(namespace).items:
                states = [(s.name, s.state.to_dict() if s.state else None) for s in (p.status.container_statuses or [])]
                lines.append(f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} {states}")
        except Exception as e:  # noqa: BLE001
            lines.append(f"(listing pods failed: {e})")
        if self.log_dir:
            for comp in ("podrunner", "kube-controller-manager"):
                f = self.log_dir / f"{comp}.log"
                if f.exists():
                    lines.append(f"--- {comp}.log tail")
                    lines.extend(f.read_text(errors="replace").splitlines()[-30:])
        return "\n".join(lines)


def start_cluster() -> KubeCluster:
    if use_existing_cluster():
        kc = os.environ.get("KUBECONFIG")
        if not kc:
            pytest.fail("USE_EXISTING_CLUSTER=true requires KUBECONFIG", pytrace=False)
        kubeconfig = Path(kc.split(os.pathsep)[0]).resolve()
        # a bed started earlier with tests/cluster/up: its state dir (logs, kill triggers) is usable
        state = kubeconfig.parent if (kubeconfig.parent / "cluster.json").exists() else None
        return KubeCluster(kubeconfig=kubeconfig, state_dir=state, existing=True)
    b = build_binaries()
    if b["rc"] != 0:
        pytest.fail(f"building the test-bed binaries failed (tests/cluster/build, rc={b['rc']}):\n"
                    f"{b['output'][-8000:]}", pytrace=False)
    rc, out = _run([str(CLUSTER_DIR / "up")])
    if rc != 0:
        _run([str(CLUSTER_DIR / "down")])
        pytest.fail(f"tests/cluster/up failed (rc={rc}):\n{out[-8000:]}", pytrace=False)
    kubeconfig = Path(out.strip().splitlines()[-1])
    return KubeCluster(kubeconfig=kubeconfig, state_dir=kubeconfig.parent)


@pytest.fixture(scope="session")
def kube_cluster():
    """The running test bed; see module docstring."""
    cluster = None
    try:
        cluster = start_cluster()
        yield cluster
    finally:
        if cluster is not None and not cluster.existing:
            rc, out = _run([str(CLUSTER_DIR / "down")])
            if rc != 0:
                sys.stderr.write(f"tests/cluster/down failed:\n{out}\n")


def _ns_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(kube_cluster, request):
    """A fresh namespace for one test (name derived from the test name)."""
    import kubernetes

    name = _ns_name(request.node.name)
    api = kube_cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(
        name=name, labels={"testbed.datasetprep.io/test": "true"})))
    deadline = time.monotonic() + 60
    while True:  # pods are rejected until the ServiceAccount controller made "default"
        try:
            core.read_namespaced_service_account("default", name)
            core.read_namespaced_config_map("kube-root-ca.crt", name)
            break
        except kubernetes.client.exceptions.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except kubernetes.client.exceptions.ApiException as e:
            if e.status != 404:
                raise
        for pv in kube_cluster._pvs.pop(name, []):
            try:
                core.delete_persistent_volume(pv)
            except kubernetes.client.exceptions.ApiException as e:
                if e.status != 404:
                    raise


def pytest_collection_finish(session):
    """Build the binaries before any test runs, so the cold build (minutes) does not count
    against the per-test timeout of the first cluster test."""
    if any(item.get_closest_marker("cluster") for item in session.items) and not use_existing_cluster():
        if session.config.option.collectonly:
            return
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr:
            tr.write_line("datasetprep test bed: building/checking binaries (tests/cluster/build)...")
        b = build_binaries(stream=False)
        if tr:
            for line in b["output"].splitlines():
                tr.write_line(f"  {line}")
            tr.write_line(f"datasetprep test bed: build rc={b['rc']} in {b['seconds']:.0f}s")
