"""Pytest fixtures for the Kubernetes test bed (tests/cluster, see README.md there).

Loaded by tests/conftest.py. Fixtures:

* ``kube_cluster`` (session): builds the binaries (cached) and starts the bed via
  ``tests/cluster/up`` — by default with the **real node** (kubelet + containerd + kube-proxy
  + kube-scheduler); with ``DATASETPREP_TESTBED_NODE=emulated`` with the pod runner instead.
  With ``USE_EXISTING_CLUSTER=true`` it uses ``$KUBECONFIG`` and starts nothing. Yields a
  :class:`KubeCluster`; ``tests/cluster/down`` runs at session end, also when tests fail. If
  the binaries cannot be built or the bed cannot start, every test using it FAILS with the
  build/start output (never skips).
* ``namespace`` (function): a fresh namespace (its ``default`` ServiceAccount and
  ``kube-root-ca.crt`` exist), deleted after the test together with the hostPath
  PersistentVolumes created for it.

Images: for the real node, ``DATASETPREP_TESTBED_IMAGES`` (a directory with ``images.json``)
names image archives ``up`` imports. If it is unset and ``tests/cluster/images`` exists, that
script is run before the first test and its last stdout line is used.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
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
_IMAGES_RESULT: dict = {}


def use_existing_cluster() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


def session_node_mode() -> str:
    """The node of ``kube_cluster``: ``real`` unless DATASETPREP_TESTBED_NODE=emulated."""
    mode = os.environ.get("DATASETPREP_TESTBED_NODE", "").strip().lower() or "real"
    if mode not in ("real", "emulated"):
        raise pytest.UsageError(f"DATASETPREP_TESTBED_NODE={mode!r}: expected 'real' or 'emulated'")
    return mode


def _run(cmd: list[str], env: dict | None = None, stream: bool = False) -> tuple[int, str]:
    """Run a test-bed script; returns (rc, combined output). With stream=True the
    output also goes to the terminal (the cold build takes minutes)."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = []
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            out.append(line)
            if stream:
                sys.stderr.write(line)
                sys.stderr.flush()
    return proc.wait(), "".join(out)


def build_binaries(stream: bool = True) -> dict:
    """Build (or find cached) the test-bed binaries once per session."""
    if not _BUILD_RESULT:
        if use_existing_cluster():
            _BUILD_RESULT.update(rc=0, output="USE_EXISTING_CLUSTER=true", seconds=0.0)
        else:
            t0 = time.monotonic()
            rc, out = _run([str(CLUSTER_DIR / "build")], stream=stream)
            _BUILD_RESULT.update(rc=rc, output=out, seconds=time.monotonic() - t0)
    return _BUILD_RESULT


def build_images(stream: bool = True) -> dict:
    """The image directory for the real node: $DATASETPREP_TESTBED_IMAGES, else the output of
    tests/cluster/images if that script exists, else none."""
    if not _IMAGES_RESULT:
        given = os.environ.get("DATASETPREP_TESTBED_IMAGES")
        script = CLUSTER_DIR / "images"
        if given or not script.exists() or use_existing_cluster():
            _IMAGES_RESULT.update(rc=0, output="", seconds=0.0, dir=given or None)
        else:
            t0 = time.monotonic()
            rc, out = _run([str(script)], stream=stream)
            lines = out.strip().splitlines()
            _IMAGES_RESULT.update(rc=rc, output=out, seconds=time.monotonic() - t0,
                                  dir=lines[-1].strip() if rc == 0 and lines else None)
    return _IMAGES_RESULT


@dataclass
class KubeCluster:
    """Handle on the running test bed (or an existing cluster)."""

    kubeconfig: Path
    state_dir: Path | None  # None for an existing cluster not started by tests/cluster/up
    existing: bool = False  # USE_EXISTING_CLUSTER=true: nothing was started, nothing is stopped
    node: str = "unknown"  # "real", "emulated" ("unknown": an existing cluster of someone else)
    kubectl: Path | None = None  # the bed's own kubectl (same version as the API server)
    host_ip: str = "127.0.0.1"  # address at which pods reach servers the tests start on the host
    node_ip: str | None = None
    test_image: str | None = None  # tests/cluster/tools/testbox as an image (real node)
    images: dict = field(default_factory=dict)  # image name -> id imported into the node
    _pvs: dict = field(default_factory=dict)  # namespace -> [pv names]

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, existing: bool) -> KubeCluster:
        state = kubeconfig.parent if (kubeconfig.parent / "cluster.json").exists() else None
        if state is None:
            return cls(kubeconfig=kubeconfig, state_dir=None, existing=existing)
        info = json.loads((state / "cluster.json").read_text())
        return cls(kubeconfig=kubeconfig, state_dir=state, existing=existing, node=info.get("node", "emulated"),
                   kubectl=Path(info["kubectl"]) if info.get("kubectl") else None,
                   host_ip=info.get("host_ip", "127.0.0.1"), node_ip=info.get("node_ip"),
                   test_image=info.get("test_image"), images=info.get("images") or {})

    @property
    def log_dir(self) -> Path | None:
        """Component logs (etcd.log, kube-apiserver.log, kubelet.log, ...)."""
        return self.state_dir / "logs" if self.state_dir else None

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (JSON lines; ServiceAccount requests, see controlplane.py), if any."""
        path = self.log_dir / "audit.log" if self.log_dir else None
        return path if path is not None and path.exists() else None

    def api_client(self):
        """A new ``kubernetes.client.ApiClient`` for the admin (system:masters) credential."""
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def run_kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                    input: str | None = None) -> subprocess.CompletedProcess:
        """Run the bed's own kubectl with this cluster's kubeconfig."""
        if self.kubectl is None:
            raise RuntimeError("this test bed has no kubectl of its own (emulated node or foreign cluster)")
        return subprocess.run([str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args], capture_output=True,
                              text=True, timeout=timeout, check=check, input=input)

    def _testbed(self, *args: str, timeout: float = 300) -> str:
        if self.state_dir is None:
            raise RuntimeError("needs the test bed's state dir (a cluster started by tests/cluster/up)")
        r = subprocess.run([sys.executable, str(CLUSTER_DIR / "testbed.py"), *args], capture_output=True,
                           text=True, timeout=timeout,
                           env={**os.environ, "DATASETPREP_TESTBED_STATE": str(self.state_dir)})
        if r.returncode != 0:
            raise RuntimeError(f"testbed.py {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r.stdout + r.stderr

    def _require_real(self, what: str) -> None:
        if self.node != "real":
            raise RuntimeError(f"{what} needs the real node (this bed's node: {self.node})")

    # ------------------------------------------------------------------ node faults
    def restart_kubelet(self) -> None:
        """SIGTERM the kubelet and start it again (containers keep running); returns once its
        /healthz answers."""
        self._require_real("restart_kubelet")
        self._testbed("restart", "kubelet")

    def restart_containerd(self) -> None:
        """SIGTERM containerd and start it again (the runc shims, and so the containers, keep
        running); returns once it answers again."""
        self._require_real("restart_containerd")
        self._testbed("restart", "containerd")

    def restart_apiserver(self) -> None:
        """SIGTERM kube-apiserver and start it again; every client's watches and connections break.
        Returns once ``/readyz`` answers 200."""
        self._require_real("restart_apiserver")
        self._testbed("restart", "kube-apiserver")

    def restart_etcd(self) -> None:
        """SIGTERM etcd and start it again on the same data dir; the API server answers 5xx meanwhile.
        Returns once the API server's ``/readyz/etcd`` answers 200."""
        self._require_real("restart_etcd")
        self._testbed("restart", "etcd")

    # ------------------------------------------------------------------ network policy
    @contextlib.contextmanager
    def network_policy_enforcer(self):
        """NetworkPolicies are enforced in the bed for the block: kube-router's firewall runs on the node
        (tests/cluster/netpol.py); after the block it is stopped and its rules and ipsets are removed."""
        self._require_real("network_policy_enforcer")
        self._testbed("netpol", "on")
        try:
            yield self
        finally:
            self._testbed("netpol", "off")

    def network_policies_of(self, namespace: str, pod: str) -> set[str] | None:
        """Names of the NetworkPolicies the enforcer applies to the pod, read from the node's iptables
        rules; None while it has no rules for the pod yet."""
        self._require_real("network_policies_of")
        return _netpol().pod_policies(self._testbed("exec", "iptables-save", "-t", "filter"), namespace, pod)

    # ------------------------------------------------------------------ storage
    def create_hostpath_pvc(self, namespace: str, host_dir, name: str = "data", size: str = "1Gi",
                            access_modes=("ReadWriteOnce",), timeout: float = 60.0,
                            owner: tuple[int, int] | None = None, mode: int | None = None) -> str:
        """Create a hostPath PersistentVolume for ``host_dir`` (created if missing; ``owner``
        (uid, gid) and ``mode`` applied if given, e.g. ``owner=(0, 0), mode=0o755`` for a
        root-owned export where fsGroup does not apply) and a PVC ``name`` in ``namespace``
        pre-bound to it; wait until the PV controller reports the claim Bound. Returns the PVC
        name. The PV is deleted with the namespace fixture."""
        import kubernetes

        host_dir = Path(host_dir).resolve()
        host_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(host_dir, *owner)
        if mode is not None:
            host_dir.chmod(mode)
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
    def kill_pod(self, namespace: str, pod: str, value: str | None = None) -> list[str]:
        """Fault injection: SIGKILL every running container of the pod (real node: the
        container's init process through containerd, so the kubelet reports exitCode 137,
        reason Error; emulated node: through the pod runner's kill annotation, each new
        ``value`` fires once). Returns the killed container IDs (real node)."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        if self.node != "real":
            core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {
                KILL_ANNOTATION: value or uuid.uuid4().hex[:8]}}})
            return []
        p = core.read_namespaced_pod(pod, namespace)
        ids = [s.container_id for s in (p.status.container_statuses or [])
               if s.state and s.state.running and s.container_id]
        if not ids:
            raise RuntimeError(f"pod {namespace}/{pod} has no running container to kill")
        self._testbed("kill-container", *ids)
        return ids

    def pod_log(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """Container output. Real node / foreign cluster: the kubelet's log API (one
        container, or each container of the pod in spec order, concatenated; ``previous``:
        the last terminated attempt). Emulated node: the pod runner's files (all attempts)."""
        import kubernetes

        if self.node == "emulated" and self.state_dir is not None:
            d = self.state_dir / "logs" / "pods" / namespace / pod
            files = [d / f"{container}.log"] if container else sorted(d.glob("*.log"))
            return "".join(f.read_text(errors="replace") for f in files if f.exists())
        core = kubernetes.client.CoreV1Api(self.api_client())
        names = [container] if container else [c.name for c in core.read_namespaced_pod(pod, namespace).spec.containers]
        return "".join(core.read_namespaced_pod_log(pod, namespace, container=n, previous=previous) for n in names)

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
        """Pod phases/container states, recent events, and node/controller log tails."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        lines = []
        try:
            for p in core.list_namespaced_pod(namespace).items:
                states = [(s.name, s.state.to_dict() if s.state else None) for s in (p.status.container_statuses or [])]
                lines.append(f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} {states}")
            for e in core.list_namespaced_event(namespace).items[-30:]:
                lines.append(f"event {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}")
        except Exception as e:  # noqa: BLE001
            lines.append(f"(listing pods/events failed: {e})")
        if self.log_dir:
            comps = ("podrunner", "kube-controller-manager") if self.node == "emulated" else (
                "kubelet", "containerd", "kube-scheduler", "kube-controller-manager")
            for comp in comps:
                f = self.log_dir / f"{comp}.log"
                if f.exists():
                    lines.append(f"--- {comp}.log tail")
                    lines.extend(f.read_text(errors="replace").splitlines()[-30:])
        return "\n".join(lines)


def _netpol():
    """tests/cluster/netpol.py (loaded by path, as this module is)."""
    spec = importlib.util.spec_from_file_location("datasetprep_testbed_netpol", CLUSTER_DIR / "netpol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# ---------------------------------------------------------------------------- beds


def _state_for(mode: str) -> Path:
    base = Path(os.environ.get("DATASETPREP_TESTBED_STATE") or CLUSTER_DIR / ".state").resolve()
    return base if mode == session_node_mode() else base.with_name(f"{base.name}-{mode}")


def start_cluster(mode: str | None = None) -> KubeCluster:
    mode = mode or session_node_mode()
    if use_existing_cluster():
        kc = os.environ.get("KUBECONFIG")
        if not kc:
            pytest.fail("USE_EXISTING_CLUSTER=true requires KUBECONFIG", pytrace=False)
        return KubeCluster.from_kubeconfig(Path(kc.split(os.pathsep)[0]).resolve(), existing=True)
    b = build_binaries()
    if b["rc"] != 0:
        pytest.fail(f"building the test-bed binaries failed (tests/cluster/build, rc={b['rc']}):\n"
                    f"{b['output'][-8000:]}", pytrace=False)
    env = {"DATASETPREP_TESTBED_NODE": mode, "DATASETPREP_TESTBED_STATE": str(_state_for(mode))}
    if mode == "real":
        im = build_images()
        if im["rc"] != 0:
            pytest.fail(f"building the images failed (tests/cluster/images, rc={im['rc']}):\n"
                        f"{im['output'][-8000:]}", pytrace=False)
        if im.get("dir"):
            env["DATASETPREP_TESTBED_IMAGES"] = im["dir"]
    rc, out = _run([str(CLUSTER_DIR / "up")], env=env)
    if rc != 0:
        _run([str(CLUSTER_DIR / "down")], env=env)
        pytest.fail(f"tests/cluster/up failed (rc={rc}, node {mode}):\n{out[-8000:]}", pytrace=False)
    return KubeCluster.from_kubeconfig(Path(out.strip().splitlines()[-1]), existing=False)


def stop_cluster(cluster: KubeCluster) -> None:
    if cluster.existing or cluster.state_dir is None:
        return
    rc, out = _run([str(CLUSTER_DIR / "down")], env={"DATASETPREP_TESTBED_STATE": str(cluster.state_dir)})
    if rc != 0:
        sys.stderr.write(f"tests/cluster/down failed:\n{out}\n")


@pytest.fixture(scope="session")
def _testbeds():
    """The beds started in this session (node mode -> KubeCluster), stopped at its end."""
    beds: dict[str, KubeCluster] = {}
    try:
        yield beds
    finally:
        for cluster in beds.values():
            stop_cluster(cluster)


def _bed(beds: dict, mode: str) -> KubeCluster:
    if mode not in beds:
        beds[mode] = start_cluster(mode)
    return beds[mode]


@pytest.fixture(scope="session")
def kube_cluster(_testbeds):
    """The running test bed (real node unless DATASETPREP_TESTBED_NODE=emulated)."""
    return _bed(_testbeds, session_node_mode())


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
    """Build the binaries (and the images, for the real node) before any test runs, so the cold
    build (minutes) does not count against the per-test timeout of the first cluster test."""
    if not any(item.get_closest_marker("cluster") for item in session.items) or use_existing_cluster():
        return
    if session.config.option.collectonly:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if tr:
            tr.write_line(line)

    say("datasetprep test bed: building/checking binaries (tests/cluster/build)...")
    b = build_binaries(stream=False)
    for line in b["output"].splitlines():
        say(f"  {line}")
    say(f"datasetprep test bed: build rc={b['rc']} in {b['seconds']:.0f}s")
    # the images only matter if some test runs pods on the node
    real_node_tests = any(item.get_closest_marker("cluster") and "kube_cluster" in getattr(item, "fixturenames", ())
                          for item in session.items)
    if session_node_mode() == "real" and real_node_tests and (CLUSTER_DIR / "images").exists():
        say("datasetprep test bed: building/checking images (tests/cluster/images)...")
        im = build_images(stream=False)
        for line in im["output"].splitlines()[-20:]:
            say(f"  {line}")
        say(f"datasetprep test bed: images rc={im['rc']} in {im['seconds']:.0f}s -> {im.get('dir')}")
