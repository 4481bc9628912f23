"""The test bed is a real cluster: real API server admission/validation/RBAC, the real Job,
garbage-collector and PV controllers, and pods that really run (tests/cluster/README.md)."""
from __future__ import annotations

import sysconfig
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster


# ----------------------------------------------------------------------------- helpers


def job_manifest(name: str, script: str, *, volumes=None, mounts=None, backoff_limit: int = 0,
                 restart_policy: str = "Never", **spec) -> client.V1Job:
    container = {"name": "main", "image": "testbed/sh", "command": ["sh", "-c", script],
                 "volumeMounts": mounts or []}
    container.update(spec.pop("container_extra", {}))
    body = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, **spec, "template": {"spec": {
            "restartPolicy": restart_policy, "containers": [container], "volumes": volumes or []}}},
    }
    if "backoffLimitPerIndex" in spec:
        body["spec"].pop("backoffLimit")
    return client.V1Job.from_dict(body)


def pvc_volume(claim: str):
    return [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}], [{"name": "data", "mountPath": "/data"}]


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job}").items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


def wait_until(fn, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        val = fn()
        if val:
            return val
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def api(kube_cluster):
    return kube_cluster.api_client()


# ----------------------------------------------------------------------------- tests


def test_job_writes_to_hostpath_pvc(kube_cluster, namespace, api, tmp_path):
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    client.BatchV1Api(api).create_namespaced_job(
        namespace, job_manifest("hello", "echo hello > /data/out.txt", volumes=vols, mounts=mounts))
    job = kube_cluster.wait_for_job(namespace, "hello")
    assert [c.type for c in job.status.conditions if c.status == "True"][-1] == "Complete"
    assert job.status.succeeded == 1
    assert (host / "out.txt").read_text() == "hello\n"
    (pod,) = job_pods(client.CoreV1Api(api), namespace, "hello")
    assert pod.spec.node_name == "testbed-node" or kube_cluster.state_dir is None
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.reason == "Completed"


def test_failing_job_reports_exit_code_and_termination_message(kube_cluster, namespace, api):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest(
        "fail-file", "echo working; echo 'disk on fire' > /dev/termination-log; exit 3"))
    batch.create_namespaced_job(namespace, job_manifest(
        "fail-logs", "echo first line; echo 'last words from the log'; exit 3",
        container_extra={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    for name, expected in (("fail-file", "disk on fire\n"), ("fail-logs", "last words from the log")):
        job = kube_cluster.wait_for_job(namespace, name)
        failed = [c for c in job.status.conditions if c.type == "Failed" and c.status == "True"]
        assert failed and failed[0].reason == "BackoffLimitExceeded", job.status
        (pod,) = job_pods(core, namespace, name)
        assert pod.status.phase == "Failed"
        term = pod.status.container_statuses[0].state.terminated
        assert term.exit_code == 3 and term.reason == "Error"
        if name == "fail-file":
            assert term.message == expected
        else:
            assert expected in term.message and "first line" in term.message
    assert "working" in kube_cluster.pod_log(namespace, job_pods(core, namespace, "fail-file")[0].metadata.name) \
        or kube_cluster.state_dir is None


def test_indexed_job_with_backoff_limit_per_index(kube_cluster, namespace, api, tmp_path):
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    # $(JOB_COMPLETION_INDEX) is expanded by the "kubelet", $JOB_COMPLETION_INDEX by sh.
    # Index 1 fails once; backoffLimitPerIndex=1 lets the real Job controller retry it.
    script = ("if [ $JOB_COMPLETION_INDEX = 1 ] && [ ! -e /data/failed-once ]; then touch /data/failed-once; exit 5; fi; "
              "echo $JOB_COMPLETION_INDEX > /data/idx-$(JOB_COMPLETION_INDEX).txt")
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "indexed", script, volumes=vols, mounts=mounts, completions=3, parallelism=3,
        completionMode="Indexed", backoffLimitPerIndex=1))
    job = kube_cluster.wait_for_job(namespace, "indexed", timeout=180)
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions), job.status
    assert job.status.completed_indexes == "0-2"
    assert job.status.succeeded == 3 and job.status.failed == 1
    assert not job.status.failed_indexes
    for i in range(3):
        assert (host / f"idx-{i}.txt").read_text() == f"{i}\n"
    pods = job_pods(client.CoreV1Api(api), namespace, "indexed")
    failed = [p for p in pods if p.status.phase == "Failed"]
    assert len(failed) == 1
    assert failed[0].metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1"
    assert failed[0].status.container_statuses[0].state.terminated.exit_code == 5


def test_secret_env_and_volumes_reach_the_process(kube_cluster, namespace, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cr3t", "file.txt": "from-volume"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings"), data={"MODE": "fast"}))
    script = ('printf "%s|%s|%s|%s|%s" "$API_TOKEN" "$POD_NAME" "$MODE" "$(cat /etc/creds/file.txt)" "$GREETING" '
              '> /dev/termination-log; echo "PATH=$PATH"')
    pod = client.V1Pod.from_dict({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envtest"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "testbed/sh", "command": ["sh", "-c", script],
            "env": [
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "hi-$(POD_NAME)"},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
        }], "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}]},
    })
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(lambda: (p := core.read_namespaced_pod("envtest", namespace)).status.phase
                      in ("Succeeded", "Failed") and p, 60, what="pod envtest to finish")
    term = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", term
    assert term.message == "s3cr3t|envtest|fast|from-volume|hi-envtest"
    if kube_cluster.state_dir is not None:
        assert f"PATH={sysconfig.get_path('scripts')}" in kube_cluster.pod_log(namespace, "envtest")


def test_rbac_is_enforced(kube_cluster, namespace, api):
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    tr = core.create_namespaced_service_account_token("reader", namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)))
    token = tr.status.token
    admin_cfg = api.configuration
    cfg = client.Configuration(host=admin_cfg.host)
    cfg.ssl_ca_cert = admin_cfg.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
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


def test_killed_pod_is_failed_137_and_replaced(kube_cluster, namespace, api, tmp_path):
    host = tmp_path / "pv"
    claim = kube_cluster.create_hostpath_pvc(namespace, host)
    vols, mounts = pvc_volume(claim)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    # first attempt leaves a marker and hangs; the replacement sees the marker and succeeds
    script = "if [ -e /data/attempt1 ]; then echo second > /data/done; exit 0; fi; touch /data/attempt1; sleep 600"
    batch.create_namespaced_job(namespace, job_manifest("victim", script, volumes=vols, mounts=mounts, backoff_limit=2))

    def running_pod():
        pods = job_pods(core, namespace, "victim")
        if pods and pods[0].status.container_statuses and pods[0].status.container_statuses[0].state.running:
            return pods[0]
        return None
    first = wait_until(running_pod, 60, what="first pod running")
    wait_until(lambda: (host / "attempt1").exists(), 30, what="first attempt to start")
    kube_cluster.kill_pod(namespace, first.metadata.name)

    def failed():
        p = core.read_namespaced_pod(first.metadata.name, namespace)
        return p.status.phase == "Failed" and p
    killed = wait_until(failed, 30, what="killed pod to be Failed")
    term = killed.status.container_statuses[0].state.terminated
    assert term.exit_code == 137 and term.reason == "Error"

    job = kube_cluster.wait_for_job(namespace, "victim", timeout=120)
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions), job.status
    assert job.status.failed == 1 and job.status.succeeded == 1
    pods = job_pods(core, namespace, "victim")
    assert len(pods) == 2 and pods[1].metadata.name != first.metadata.name
    assert (host / "done").read_text() == "second\n"


def test_kill_file_trigger(kube_cluster, namespace, api):
    if kube_cluster.state_dir is None:
        pytest.skip("the file trigger needs the test bed's state dir (existing cluster without one)")
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, client.V1Pod.from_dict({
        "metadata": {"name": "sleeper"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "testbed/sh", "command": ["sleep", "600"]}]}}))
    wait_until(lambda: core.read_namespaced_pod("sleeper", namespace).status.phase == "Running", 60,
               what="pod running")
    trigger = kube_cluster.state_dir / "kill" / namespace / "sleeper"
    trigger.parent.mkdir(parents=True, exist_ok=True)
    trigger.touch()
    p = wait_until(lambda: (p := core.read_namespaced_pod("sleeper", namespace)).status.phase == "Failed" and p, 30,
                   what="pod killed")
    assert p.status.container_statuses[0].state.terminated.exit_code == 137
    assert not trigger.exists()


def test_pod_deletion_stops_the_process(kube_cluster, namespace, api, tmp_path):
    if kube_cluster.state_dir is None:
        pytest.skip("inspects the pod runner's local processes (existing cluster without test bed)")
    core = client.CoreV1Api(api)
    marker = tmp_path / "pid"
    core.create_namespaced_pod(namespace, client.V1Pod.from_dict({
        "metadata": {"name": "deleteme"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                 "volumes": [{"name": "h", "hostPath": {"path": str(tmp_path)}}],
                 "containers": [{"name": "main", "image": "testbed/sh", "volumeMounts": [{"name": "h", "mountPath": "/out"}],
                                 "command": ["sh", "-c", "echo $$$$ > /out/pid; exec sleep 600"]}]}}))
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 60, what="pod to write its pid")
    pid = int(marker.read_text())
    core.delete_namespaced_pod("deleteme", namespace)

    def gone():
        try:
            core.read_namespaced_pod("deleteme", namespace)
            return False
        except ApiException as e:
            return e.status == 404
    wait_until(gone, 30, what="pod object removed")
    import os
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


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


def test_restart_policy_on_failure_restarts_in_place(kube_cluster, namespace, api):
    # the emptyDir survives the container restart, like on a real kubelet
    script = "if [ ! -e /scratch/once ]; then touch /scratch/once; exit 1; fi; echo recovered"
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "onfailure", script, restart_policy="OnFailure", backoff_limit=3,
        volumes=[{"name": "scratch", "emptyDir": {}}], mounts=[{"name": "scratch", "mountPath": "/scratch"}]))
    job = kube_cluster.wait_for_job(namespace, "onfailure")
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions), job.status
    (pod,) = job_pods(client.CoreV1Api(api), namespace, "onfailure")
    cs = pod.status.container_statuses[0]
    assert cs.restart_count == 1
    assert cs.last_state.terminated.exit_code == 1
    assert cs.state.terminated.exit_code == 0


def test_many_pods_run_concurrently(kube_cluster, namespace, api):
    n = 20
    t0 = time.monotonic()
    client.BatchV1Api(api).create_namespaced_job(namespace, job_manifest(
        "wide", "sleep 3", completions=n, parallelism=n, completionMode="Indexed"))
    job = kube_cluster.wait_for_job(namespace, "wide", timeout=180)
    elapsed = time.monotonic() - t0
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions), job.status
    assert job.status.succeeded == n
    pods = job_pods(client.CoreV1Api(api), namespace, "wide")
    starts = sorted(p.status.container_statuses[0].state.terminated.started_at for p in pods)
    ends = sorted(p.status.container_statuses[0].state.terminated.finished_at for p in pods)
    # all 20 were running at the same time: the last one started before the first one ended
    assert starts[-1] <= ends[0], (starts, ends)
    assert elapsed < 3 * n / 2, elapsed


IN_CLUSTER = """
import sys
from kubernetes import client, config
config.load_incluster_config()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
pods = client.CoreV1Api().list_namespaced_pod(ns).items
try:
    client.CoreV1Api().list_namespaced_secret(ns)
    verdict = "secrets-allowed"
except client.exceptions.ApiException as e:
    verdict = f"secrets-{e.status}"
open("/dev/termination-log", "w").write(f"{len(pods)} pods; {verdict}")
"""


def test_in_cluster_client_uses_pod_service_account(kube_cluster, namespace, api):
    """The automatic kube-api-access volume (TokenRequest token + kube-root-ca.crt) and
    KUBERNETES_SERVICE_HOST let a pod talk to the real API server as its ServiceAccount."""
    if kube_cluster.state_dir and (kube_cluster.state_dir / "mount-mode").read_text().startswith("rewrite"):
        pytest.skip("in-cluster config reads fixed paths; needs the mount-namespace mode")
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="lister")))
    rbac.create_namespaced_role(namespace, client.V1Role.from_dict({
        "metadata": {"name": "pod-lister"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding.from_dict({
        "metadata": {"name": "lister"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-lister"},
        "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": namespace}]}))
    core.create_namespaced_pod(namespace, client.V1Pod.from_dict({
        "metadata": {"name": "incluster"},
        "spec": {"restartPolicy": "Never", "serviceAccountName": "lister",
                 "containers": [{"name": "main", "image": "testbed/python",
                                 "command": ["python3", "-c", IN_CLUSTER]}]}}))
    p = wait_until(lambda: (p := core.read_namespaced_pod("incluster", namespace)).status.phase
                   in ("Succeeded", "Failed") and p, 60, what="pod to finish")
    term = p.status.container_statuses[0].state.terminated
    assert p.status.phase == "Succeeded", (term, kube_cluster.pod_log(namespace, "incluster"))
    assert term.message == "1 pods; secrets-403"
