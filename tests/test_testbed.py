"""The test bed is a real cluster on a real node: the real API server (admission, validation,
RBAC), the real controllers, kube-scheduler placing pods, a kubelet running them in containerd
+ runc containers on a CNI bridge, kube-proxy routing the ``kubernetes`` Service
(tests/cluster/README.md). Pods run ``tests/cluster/tools/testbox`` from the bed's own test
image, so these tests depend on nothing but the bed."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bed import wait_for

pytestmark = pytest.mark.cluster

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
K8S_VERSION = "v1.37.2"


@pytest.fixture(scope="module", autouse=True)
def _real_node(kube_cluster):
    if kube_cluster.node != "real":
        pytest.skip(f"these tests check the real node; this session's node is {kube_cluster.node} "
                    "(DATASETPREP_TESTBED_NODE / USE_EXISTING_CLUSTER)")


@pytest.fixture
def api(kube_cluster):
    return kube_cluster.api_client()


# ----------------------------------------------------------------------------- helpers


def container(image: str, steps: list[str], **extra) -> dict:
    return {"name": "main", "image": image, "imagePullPolicy": "Never", "args": steps, **extra}


def pod_manifest(name: str, image: str, steps: list[str], *, volumes=None, mounts=None, spec=None,
                 **extra) -> client.V1Pod:
    return client.V1Pod.from_dict({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2, "volumes": volumes or [],
                 "containers": [container(image, steps, volumeMounts=mounts or [], **extra)], **(spec or {})}})


def job_manifest(name: str, image: str, steps: list[str], *, volumes=None, mounts=None, backoff_limit: int = 0,
                 restart_policy: str = "Never", container_extra=None, **spec) -> client.V1Job:
    body = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, **spec, "template": {"spec": {
            "restartPolicy": restart_policy, "terminationGracePeriodSeconds": 2,
            "containers": [container(image, steps, volumeMounts=mounts or [], **(container_extra or {}))],
            "volumes": volumes or []}}},
    }
    if "backoffLimitPerIndex" in spec:
        body["spec"].pop("backoffLimit")
    return client.V1Job.from_dict(body)


def pvc_volume(claim: str, path: str = "/data"):
    return [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}], [{"name": "data", "mountPath": path}]


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job}").items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


def wait_until(fn, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    return wait_for(fn, what, timeout, interval)


def wait_pod_done(core: client.CoreV1Api, ns: str, name: str, timeout: float = 90) -> client.V1Pod:
    return wait_until(lambda: (p := core.read_namespaced_pod(name, ns)).status.phase in ("Succeeded", "Failed") and p,
                      timeout, what=f"pod {name} to finish")


def running_container(core: client.CoreV1Api, ns: str, name: str):
    p = core.read_namespaced_pod(name, ns)
    cs = (p.status.container_statuses or [None])[0]
    return cs if cs is not None and cs.state.running else None


def complete(job) -> bool:
    return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])


# ----------------------------------------------------------------------------- the node


def test_node_is_a_real_kubelet_on_containerd(kube_cluster, api):
    node = client.CoreV1Api(api).read_node("testbed-node")
    info = node.status.node_info
    assert info.kubelet_version == K8S_VERSION
    assert info.container_runtime_version.startswith("containerd://1.")
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == kube_cluster.node_ip
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert not node.spec.taints
    assert client.VersionApi(api).get_code().git_version == K8S_VERSION


def test_job_writes_to_hostpath_pvc(kube_cluster, namespace, api, tmp_path):
    """Scheduled by kube-scheduler, run by containerd from our image, hostPath PV at its host path."""
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "hello", kube_cluster.test_image, ["write", "/data/out.txt", "hello", ";", "echo", "written"],
        volumes=vols, mounts=mounts))
    job = kube_cluster.wait_for_job(namespace, "hello")
    assert complete(job) and job.status.succeeded == 1
    assert (host / "out.txt").read_text() == "hello"
    core = client.CoreV1Api(api)
    (pod,) = job_pods(core, namespace, "hello")
    assert pod.spec.node_name == "testbed-node" and pod.status.phase == "Succeeded"
    cs = pod.status.container_statuses[0]
    assert cs.state.terminated.reason == "Completed"
    assert cs.container_id.startswith("containerd://")
    assert cs.image_id.endswith(kube_cluster.images[kube_cluster.test_image]), (cs.image_id, kube_cluster.images)
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
    assert any(e.reason == "Scheduled" and (e.reporting_component == "default-scheduler"
                                            or (e.source and e.source.component == "default-scheduler"))
               for e in events), [(e.reason, e.reporting_component) for e in events]
    assert kube_cluster.pod_log(namespace, pod.metadata.name) == "written\n"


PRODUCT_IMAGES = {  # image -> args after its ENTRYPOINT ["datasetprep"]
    "ghcr.io/datasetprep/datasetprep-job:0.1.0": ["--help"],
    "ghcr.io/datasetprep/datasetprep-operator:0.1.0": ["operator", "--help"],
}


@pytest.mark.parametrize("image", sorted(PRODUCT_IMAGES))
def test_product_images_run_on_the_node(kube_cluster, namespace, api, image):
    """Our images (tests/cluster/images, from our Dockerfiles) were imported and run under the
    kubelet: their ENTRYPOINT and USER 65532, a read-only root, no capabilities."""
    if image not in kube_cluster.images:
        pytest.fail(f"{image} was not imported into the node (tests/cluster/images or "
                    f"DATASETPREP_TESTBED_IMAGES); imported: {sorted(kube_cluster.images)}", pytrace=False)
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod_manifest(
        "product", image, PRODUCT_IMAGES[image],
        spec={"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}},
        securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"]}}))
    p = wait_pod_done(core, namespace, "product", timeout=120)
    out = kube_cluster.pod_log(namespace, "product")
    cs = p.status.container_statuses[0]
    assert p.status.phase == "Succeeded", (cs.state.terminated, out[-3000:])
    assert "usage: datasetprep" in out
    assert cs.image_id.endswith(kube_cluster.images[image]) and cs.container_id.startswith("containerd://")


def test_hardened_pod_uid_65532_read_only_root_no_capabilities(kube_cluster, namespace, api, tmp_path):
    """uid 65532, read-only root, RuntimeDefault seccomp, all capabilities dropped: writes only
    to its volume; a root-owned volume (like an NFS export; fsGroup does not apply to hostPath)
    refuses it."""
    core = client.CoreV1Api(api)
    mine = tmp_path / "mine"
    kube_cluster.create_hostpath_pvc(namespace, mine, name="mine", owner=(65532, 65532), mode=0o755)
    roots = tmp_path / "roots"
    kube_cluster.create_hostpath_pvc(namespace, roots, name="roots", owner=(0, 0), mode=0o755)
    steps = ["whoami", ";", "try-write", "/probe", ";", "try-write", "/roots/probe", ";",
             "write", "/mine/out", "from-65532"]
    core.create_namespaced_pod(namespace, pod_manifest(
        "hardened", kube_cluster.test_image, steps,
        volumes=[{"name": "mine", "persistentVolumeClaim": {"claimName": "mine"}},
                 {"name": "roots", "persistentVolumeClaim": {"claimName": "roots"}}],
        mounts=[{"name": "mine", "mountPath": "/mine"}, {"name": "roots", "mountPath": "/roots"}],
        spec={"securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True,
                                  "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}},
        securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"]}}))
    p = wait_pod_done(core, namespace, "hardened")
    out = kube_cluster.pod_log(namespace, "hardened")
    assert p.status.phase == "Succeeded", out
    assert "uid=65532 gid=65532" in out
    assert "CapEff: 0000000000000000" in out and "CapBnd: 0000000000000000" in out
    assert "Seccomp: 2" in out and "NoNewPrivs: 1" in out
    assert "/probe: open /probe: read-only file system" in out
    assert "/roots/probe: open /roots/probe: permission denied" in out
    assert (mine / "out").read_text() == "from-65532"
    assert (mine / "out").stat().st_uid == 65532
    assert not (roots / "probe").exists()


def test_kubectl_logs_with_the_beds_kubectl(kube_cluster, namespace, api):
    assert kube_cluster.kubectl is not None and kube_cluster.kubectl != Path("/usr/bin/kubectl")
    version = json.loads(kube_cluster.run_kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod_manifest(
        "talker", kube_cluster.test_image, ["echo", "line one", ";", "echo-err", "line two", ";", "echo", "line three"]))
    wait_pod_done(core, namespace, "talker")
    logs = kube_cluster.run_kubectl("logs", "-n", namespace, "talker").stdout
    lines = logs.splitlines()  # stdout and stderr are separate pipes: only each one keeps its order
    assert sorted(lines) == ["line one", "line three", "line two"]
    assert lines.index("line one") < lines.index("line three")
    pods = kube_cluster.run_kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout
    assert "talker" in pods and "Completed" in pods and "testbed-node" in pods


def test_failing_job_reports_exit_code_and_termination_message(kube_cluster, namespace, api):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    image = kube_cluster.test_image
    batch.create_namespaced_job(namespace, job_manifest(
        "fail-file", image, ["echo", "working", ";", "write", "/dev/termination-log", "disk on fire", ";", "exit", "3"]))
    batch.create_namespaced_job(namespace, job_manifest(
        "fail-logs", image, ["echo", "first line", ";", "echo", "last words from the log", ";", "exit", "3"],
        container_extra={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    for name in ("fail-file", "fail-logs"):
        job = kube_cluster.wait_for_job(namespace, name)
        failed = [c for c in job.status.conditions if c.type == "Failed" and c.status == "True"]
        assert failed and failed[0].reason == "BackoffLimitExceeded", job.status
        (pod,) = job_pods(core, namespace, name)
        assert pod.status.phase == "Failed"
        term = pod.status.container_statuses[0].state.terminated
        assert term.exit_code == 3 and term.reason == "Error"
        if name == "fail-file":
            assert term.message == "disk on fire"
            assert kube_cluster.pod_log(namespace, pod.metadata.name) == "working\n"
        else:
            assert term.message == "first line\nlast words from the log\n"


def test_memory_limit_is_enforced(kube_cluster, namespace, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod_manifest(
        "hog", kube_cluster.test_image, ["alloc", "256", ";", "echo", "survived"],
        resources={"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}))
    p = wait_pod_done(core, namespace, "hog")
    term = p.status.container_statuses[0].state.terminated
    assert p.status.phase == "Failed"
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)
    assert "survived" not in kube_cluster.pod_log(namespace, "hog")


def test_service_account_token_reaches_the_api_server_through_the_service(kube_cluster, namespace, api):
    """KUBERNETES_SERVICE_HOST=10.0.0.1 (the `kubernetes` Service), routed by kube-proxy to the
    API server; the pod authenticates with its projected token, under real RBAC."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="lister")))
    rbac.create_namespaced_role(namespace, client.V1Role.from_dict({
        "metadata": {"name": "pod-lister"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding.from_dict({
        "metadata": {"name": "lister"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-lister"},
        "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": namespace}]}))
    steps = ["echo", "service=$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)", ";",
             "api", f"/api/v1/namespaces/{namespace}/pods", ";",
             "api", f"/api/v1/namespaces/{namespace}/secrets"]
    core.create_namespaced_pod(namespace, pod_manifest("incluster", kube_cluster.test_image, steps,
                                                       spec={"serviceAccountName": "lister"}))
    p = wait_pod_done(core, namespace, "incluster")
    out = kube_cluster.pod_log(namespace, "incluster")
    assert "service=10.0.0.1:443" in out
    assert "HTTP 200" in out and '"name":"incluster"' in out.replace(" ", "")
    assert "HTTP 403" in out and f"system:serviceaccount:{namespace}:lister" in out
    assert p.status.container_statuses[0].state.terminated.exit_code == 1  # the 403 step failed


def test_indexed_job_with_backoff_limit_per_index(kube_cluster, namespace, api, tmp_path):
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    # index 1 fails once (the kubelet expands $(JOB_COMPLETION_INDEX)); backoffLimitPerIndex=1
    # lets the real Job controller retry just that index
    idx = "$(JOB_COMPLETION_INDEX)"
    steps = ["write", f"/data/idx-{idx}.txt", idx, ";", "once", f"/data/tried-{idx}", ";", "exit", f"1{idx}"]
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "indexed", kube_cluster.test_image, steps, volumes=vols, mounts=mounts,
        completions=4, parallelism=4, completionMode="Indexed", backoffLimitPerIndex=1))
    job = kube_cluster.wait_for_job(namespace, "indexed", timeout=180)
    # every index fails its first attempt ("once" runs "exit 1<i>" only then) and succeeds the second
    assert complete(job), job.status
    assert job.status.completed_indexes == "0-3" and not job.status.failed_indexes
    assert job.status.succeeded == 4 and job.status.failed == 4
    for i in range(4):
        assert (host / f"idx-{i}.txt").read_text() == str(i)
    pods = job_pods(client.CoreV1Api(api), namespace, "indexed")
    failed = sorted((p.metadata.annotations["batch.kubernetes.io/job-completion-index"],
                     p.status.container_statuses[0].state.terminated.exit_code)
                    for p in pods if p.status.phase == "Failed")
    assert failed == [("0", 10), ("1", 11), ("2", 12), ("3", 13)]


@contextlib.contextmanager
def host_server(kube_cluster) -> Iterator[tuple[str, list]]:
    """An HTTP server on the bed's host address: (URL of /probe, [(client address, path)] it saw)."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.client_address[0], self.path))
            body = b"hello from the host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((kube_cluster.host_ip, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{kube_cluster.host_ip}:{server.server_address[1]}/probe", seen
    finally:
        server.shutdown()
        server.server_close()


def test_pod_reaches_a_server_on_the_host(kube_cluster, namespace, api):
    """Pods reach servers the tests start on the host at kube_cluster.host_ip."""
    with host_server(kube_cluster) as (url, seen):
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(namespace, pod_manifest("caller", kube_cluster.test_image, ["get", url]))
        p = wait_pod_done(core, namespace, "caller")
        out = kube_cluster.pod_log(namespace, "caller")
        assert p.status.phase == "Succeeded", out
        assert "hello from the host" in out
        assert seen == [(kube_cluster.node_ip, "/probe")]  # pod traffic leaves the bed masqueraded


def test_network_policy_is_enforced_only_while_the_enforcer_runs(kube_cluster, namespace, api):
    """With the enforcer on (tests/cluster/netpol.py), a NetworkPolicy that allows no egress keeps a pod
    from the host; once it is off, the same pod reaches the host again and none of its rules is left."""
    core = client.CoreV1Api(api)
    net = client.NetworkingV1Api(api)
    pod = pod_manifest("caller", kube_cluster.test_image, ["sleep", "600"])
    pod.metadata.labels = {"app": "caller"}
    core.create_namespaced_pod(namespace, pod)
    net.create_namespaced_network_policy(namespace, {"metadata": {"name": "no-egress"}, "spec": {
        "podSelector": {"matchLabels": {"app": "caller"}}, "policyTypes": ["Egress"], "egress": []}})
    wait_until(lambda: running_container(core, namespace, "caller"), what="the pod to run")

    def call(url: str) -> subprocess.CompletedProcess:
        return kube_cluster.run_kubectl("exec", "-n", namespace, "caller", "--", "/testbox", "get", url, check=False)

    with host_server(kube_cluster) as (url, seen):
        with kube_cluster.network_policy_enforcer():
            wait_until(lambda: kube_cluster.network_policies_of(namespace, "caller") == {"no-egress"}, timeout=60,
                       interval=1, what="the enforcer's rules for the pod")
            blocked = call(url)
            assert blocked.returncode != 0 and "connection refused" in blocked.stderr, blocked
            assert seen == []
        assert kube_cluster.network_policies_of(namespace, "caller") is None  # its rules are gone
        allowed = call(url)
        assert allowed.returncode == 0 and "hello from the host" in allowed.stdout, allowed
        assert seen == [(kube_cluster.node_ip, "/probe")]


def test_secret_env_and_volumes_reach_the_process(kube_cluster, namespace, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cr3t", "file.txt": "from-volume"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings"), data={"MODE": "fast"}))
    steps = ["write", "/dev/termination-log", "$(API_TOKEN)|$(POD_NAME)|$(MODE)|", ";",
             "copy", "/etc/creds/file.txt", "/dev/termination-log", ";",
             "append", "/dev/termination-log", "|$(GREETING)"]
    core.create_namespaced_pod(namespace, client.V1Pod.from_dict({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envtest"},
        "spec": {"restartPolicy": "Never", "containers": [{
            **container(kube_cluster.test_image, steps),
            "env": [
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "hi-$(POD_NAME)"},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
        }], "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}]},
    }))
    done = wait_pod_done(core, namespace, "envtest")
    term = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", term
    assert term.message == "s3cr3t|envtest|fast|from-volume|hi-envtest"


def test_rbac_is_enforced(kube_cluster, namespace, api):
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    tr = core.create_namespaced_service_account_token("reader", namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)))
    admin_cfg = api.configuration
    cfg = client.Configuration(host=admin_cfg.host)
    cfg.ssl_ca_cert = admin_cfg.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {tr.status.token}"}
    as_sa = client.CoreV1Api(client.ApiClient(cfg))

    with pytest.raises(ApiException) as exc:
        as_sa.list_namespaced_pod(namespace)
    assert exc.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in exc.value.body

    rbac.create_namespaced_role(namespace, client.V1Role.from_dict({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding.from_dict({
        "metadata": {"name": "reader-can-read"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]}))

    def allowed():
        try:
            _data, status, _headers = as_sa.list_namespaced_pod_with_http_info(namespace)
            return status == 200
        except ApiException as e:
            assert e.status == 403
            return False
    wait_until(allowed, 30, what="RoleBinding to take effect")
    with pytest.raises(ApiException) as exc:  # still only what the Role grants
        as_sa.list_namespaced_secret(namespace)
    assert exc.value.status == 403


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_owner_reference_garbage_collection(kube_cluster, namespace, api, propagation):
    core = client.CoreV1Api(api)
    parent = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="parent"), data={"a": "1"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="child", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="parent", uid=parent.metadata.uid)]), data={"b": "2"}))
    core.delete_namespaced_config_map("parent", namespace, propagation_policy=propagation)

    def gone(name):
        try:
            core.read_namespaced_config_map(name, namespace)
            return False
        except ApiException as e:
            assert e.status == 404
            return True
    wait_until(lambda: gone("child"), 90, what="garbage collector to delete the child")
    wait_until(lambda: gone("parent"), 30, what="parent to be deleted")


# ----------------------------------------------------------------------------- faults


def test_killed_pod_is_failed_137_and_replaced(kube_cluster, namespace, api, tmp_path):
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    # the first attempt leaves a marker and hangs; the replacement sees the marker and succeeds
    steps = ["once", "/data/attempt1", ";", "sleep", "600", ";", "write", "/data/done", "second"]
    batch.create_namespaced_job(namespace, job_manifest("victim", kube_cluster.test_image, steps,
                                                        volumes=vols, mounts=mounts, backoff_limit=2))
    first = wait_until(lambda: (pods := job_pods(core, namespace, "victim"))
                       and running_container(core, namespace, pods[0].metadata.name) and pods[0],
                       60, what="first pod running")
    wait_until(lambda: (host / "attempt1").exists(), 30, what="first attempt to start")
    killed_ids = kube_cluster.kill_pod(namespace, first.metadata.name)

    killed = wait_until(lambda: (p := core.read_namespaced_pod(first.metadata.name, namespace)).status.phase
                        == "Failed" and p, 30, what="killed pod to be Failed")
    cs = killed.status.container_statuses[0]
    assert cs.container_id in killed_ids
    assert (cs.state.terminated.exit_code, cs.state.terminated.reason) == (137, "Error")

    job = kube_cluster.wait_for_job(namespace, "victim", timeout=120)
    assert complete(job), job.status
    assert job.status.failed == 1 and job.status.succeeded == 1
    pods = job_pods(core, namespace, "victim")
    assert len(pods) == 2 and pods[1].metadata.name != first.metadata.name
    assert (host / "done").read_text() == "second"


@pytest.mark.parametrize("component", ["kubelet", "containerd"])
def test_node_component_restart_mid_run_keeps_the_container(kube_cluster, namespace, api, tmp_path, component):
    """Restarting the kubelet or containerd mid-run does not touch running containers (runc
    shims keep them): the same container finishes, no restart, the Job completes."""
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    steps = ["write", "/data/started", "1", ";", "sleep", "12", ";", "write", "/data/done", "1"]
    batch.create_namespaced_job(namespace, job_manifest("longrun", kube_cluster.test_image, steps,
                                                        volumes=vols, mounts=mounts))
    pod = wait_until(lambda: (pods := job_pods(core, namespace, "longrun")) and (host / "started").exists()
                     and running_container(core, namespace, pods[0].metadata.name) and pods[0],
                     60, what="pod running")
    before = running_container(core, namespace, pod.metadata.name).container_id
    if component == "kubelet":
        kube_cluster.restart_kubelet()
    else:
        kube_cluster.restart_containerd()
    assert not (host / "done").exists(), "the run ended before the restart; make it longer"
    job = kube_cluster.wait_for_job(namespace, "longrun", timeout=120)
    assert complete(job), job.status
    (after,) = job_pods(core, namespace, "longrun")
    cs = after.status.container_statuses[0]
    assert after.metadata.uid == pod.metadata.uid and cs.container_id == before
    assert cs.restart_count == 0 and cs.state.terminated.exit_code == 0
    assert (host / "done").read_text() == "1"


def test_restart_policy_on_failure_restarts_in_place(kube_cluster, namespace, api):
    # the emptyDir survives the container restart (kubelet back-off: 10 s)
    steps = ["once", "/scratch/once", ";", "exit", "1", ";", "echo", "recovered"]
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "onfailure", kube_cluster.test_image, steps, restart_policy="OnFailure", backoff_limit=3,
        volumes=[{"name": "scratch", "emptyDir": {}}], mounts=[{"name": "scratch", "mountPath": "/scratch"}]))
    job = kube_cluster.wait_for_job(namespace, "onfailure", timeout=120)
    assert complete(job), job.status
    (pod,) = job_pods(client.CoreV1Api(api), namespace, "onfailure")
    cs = pod.status.container_statuses[0]
    assert cs.restart_count == 1
    assert cs.last_state.terminated.exit_code == 1
    assert cs.state.terminated.exit_code == 0
    assert kube_cluster.pod_log(namespace, pod.metadata.name) == "recovered\n"


def test_pod_deletion_stops_the_container(kube_cluster, namespace, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod_manifest("deleteme", kube_cluster.test_image, ["sleep", "600"]))
    cs = wait_until(lambda: running_container(core, namespace, "deleteme"), 60, what="pod running")
    cid = cs.container_id.removeprefix("containerd://")
    assert cid in _tasks(kube_cluster)
    core.delete_namespaced_pod("deleteme", namespace)

    def gone():
        try:
            core.read_namespaced_pod("deleteme", namespace)
            return False
        except ApiException as e:
            return e.status == 404
    wait_until(gone, 30, what="pod object removed")
    assert cid not in _tasks(kube_cluster)


def _tasks(kube_cluster) -> str:
    """containerd's task list inside the bed (`ctr tasks ls`)."""
    r = subprocess.run([sys.executable, str(CLUSTER_DIR / "testbed.py"), "exec", "ctr", "-n", "k8s.io",
                        "tasks", "ls"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DATASETPREP_TESTBED_STATE": str(kube_cluster.state_dir)})
    assert r.returncode == 0, r.stderr
    return "\n".join(line for line in r.stdout.splitlines() if "RUNNING" in line)


def test_many_pods_run_concurrently(kube_cluster, namespace, api):
    n = 10
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "wide", kube_cluster.test_image, ["sleep", "6"], completions=n, parallelism=n, completionMode="Indexed"))
    job = kube_cluster.wait_for_job(namespace, "wide", timeout=180)
    assert complete(job) and job.status.succeeded == n, job.status
    pods = job_pods(client.CoreV1Api(api), namespace, "wide")
    starts = sorted(p.status.container_statuses[0].state.terminated.started_at for p in pods)
    ends = sorted(p.status.container_statuses[0].state.terminated.finished_at for p in pods)
    # all ran at the same time: the last one started before the first one ended
    assert starts[-1] <= ends[0], (starts, ends)
    assert len({p.status.pod_ip for p in pods}) == n


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.testbed.datasetprep.io"},
    "spec": {"group": "testbed.datasetprep.io", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object",
                 "properties": {"spec": {
                     "type": "object", "required": ["replicas", "maxReplicas"],
                     "x-kubernetes-validations": [{"rule": "self.replicas <= self.maxReplicas",
                                                   "message": "replicas must not exceed maxReplicas"}],
                     "properties": {"replicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer"}}}}}}}]},
}


def test_crd_schema_and_cel_validation(kube_cluster, namespace, api):
    ext, custom = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    try:
        ext.create_custom_resource_definition(client.V1CustomResourceDefinition.from_dict(CRD))
    except ApiException as e:
        if e.status != 409:
            raise
    try:
        _check_crd(ext, custom, namespace)
    finally:
        ext.delete_custom_resource_definition(CRD["metadata"]["name"])


def _check_crd(ext, custom, namespace):

    def established():
        crd = ext.read_custom_resource_definition(CRD["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))
    wait_until(established, 60, what="CRD established")

    def widget(name, replicas, max_replicas):
        return {"apiVersion": "testbed.datasetprep.io/v1", "kind": "Widget", "metadata": {"name": name},
                "spec": {"replicas": replicas, "maxReplicas": max_replicas}}

    def create(body):
        return custom.create_namespaced_custom_object("testbed.datasetprep.io", "v1", namespace, "widgets", body)

    # a freshly established CRD can take a moment to be served
    wait_until(lambda: _try(lambda: create(widget("good", 1, 3))), 30, what="CR creation")
    with pytest.raises(ApiException) as exc:
        create(widget("too-many", 5, 3))
    assert exc.value.status == 422
    assert "replicas must not exceed maxReplicas" in exc.value.body
    with pytest.raises(ApiException) as exc:
        create(widget("negative", -1, 3))
    assert exc.value.status == 422
    assert "spec.replicas" in exc.value.body and "greater than or equal to 0" in exc.value.body


def _try(fn):
    try:
        fn()
        return True
    except ApiException as e:
        if e.status in (404, 503):
            return False
        raise


# ----------------------------------------------------------------------------- isolation and teardown


def _bed_env(st: Path) -> dict:
    env = {**os.environ, "DATASETPREP_TESTBED_STATE": str(st), "DATASETPREP_TESTBED_NODE": "real",
           "PYTHON": sys.executable}
    env.pop("DATASETPREP_TESTBED_IMAGES", None)
    env.pop("USE_EXISTING_CLUSTER", None)
    return env


def _leftovers(st: Path, ident: dict) -> list[str]:
    """Anything of the bed in `st` still on the machine: processes naming its state dir,
    its cgroups in any hierarchy, its host-side veth."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(st) in cmd and "pytest" not in cmd:
                found.append(f"process {proc.name}: {cmd[:200]}")
    for mnt in Path("/sys/fs/cgroup").iterdir():
        if (mnt / ident["cgroup_root"].lstrip("/")).exists():
            found.append(f"cgroup {mnt / ident['cgroup_root'].lstrip('/')}")
    if subprocess.run(["ip", "link", "show", ident["veth"]], capture_output=True).returncode == 0:
        found.append(f"veth {ident['veth']}")
    return found


def _testbed(st: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLUSTER_DIR / "testbed.py"), *args], env=_bed_env(st),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_second_bed_beside_this_one_and_down_leaves_nothing(kube_cluster, api, tmp_path):
    """Two beds on one machine do not collide, `down` after a crashed `up` and after a full
    one leaves no process, cgroup or interface behind."""
    st = tmp_path / "bed2"
    # `up` crashes (SIGKILL) while the control plane is starting: its children live on...
    proc = subprocess.Popen([sys.executable, str(CLUSTER_DIR / "testbed.py"), "up"], env=_bed_env(st),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: (st / "pids" / "kube-apiserver.pid").exists(), 120, what="bed 2 half-way up")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    ident = json.loads((st / "bed.json").read_text())
    assert _leftovers(st, ident), "the crashed `up` left nothing running: the check below proves nothing"
    # ... and `down` removes all of it
    r = _testbed(st, "down")
    assert r.returncode == 0, r.stderr
    assert _leftovers(st, ident) == []

    r = _testbed(st, "up")
    assert r.returncode == 0, r.stderr
    try:
        info2 = json.loads((st / "cluster.json").read_text())
        info1 = json.loads((kube_cluster.state_dir / "cluster.json").read_text())
        for key in ("veth", "cgroup_root", "host_ip", "node_ip"):
            assert info1["bed"][key] != info2["bed"][key], key
        # both answer, each with its own node
        r2 = subprocess.run([str(kube_cluster.kubectl), f"--kubeconfig={st / 'kubeconfig'}", "get", "nodes",
                             "-o", "jsonpath={.items[*].status.addresses[0].address}"],
                            capture_output=True, text=True, timeout=60)
        assert r2.stdout.strip() == info2["node_ip"], r2.stderr
        assert client.CoreV1Api(api).read_node("testbed-node").status.addresses[0].address == info1["node_ip"]
        # a second `up` finds the running bed
        again = _testbed(st, "up")
        assert again.returncode == 0 and "already up" in again.stderr
    finally:
        r = _testbed(st, "down")
    assert r.returncode == 0, r.stderr
    assert _leftovers(st, ident) == []
    # the session's bed is untouched
    assert client.CoreV1Api(api).read_node("testbed-node").status.node_info.kubelet_version == K8S_VERSION
