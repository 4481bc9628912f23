"""The chart's NetworkPolicies, enforced on the test bed's real node: they let through what the product
needs and block the rest.

For this module the node runs a NetworkPolicy enforcer, kube-router's firewall (tests/cluster/netpol.py:
iptables and ipsets in the bed's network namespace, on its CNI bridge). The chart is installed with the
real helm (policies on, as by default); the operator is a pod of our operator image, and the job pods it
starts are of our job image. Connections are tried from inside those very pods (``kubectl exec``), and
the same targets from *probers*: pods of the job image that no policy selects, in the release namespace
and in the namespace the operator's metrics policy admits -- so a refusal is the policy's, not the
network's. A listener started inside a pod shows that what the others cannot reach is there.

* a job pod: DNS (a UDP query to a resolver on port 53) is answered and the Hub's ports (tests/hubserver.py,
  its API and its storage origin) are open; another port of the same host, the API server (the
  ``kubernetes`` Service and its endpoint) and the operator pod are not; nothing connects to it;
  the run, whose dataset and gated tokenizer come from the Hub, completes with the policies on; with
  the Hub on a port ``networkPolicy.jobs.hubPorts`` does not open, it stalls, naming that setting;
* the operator pod: its health port is open to every pod, its metrics port only to the namespace
  ``networkPolicy.operator.metricsFrom`` names, another port of it to nobody; its egress reaches the API
  server (the run above went Ready through it) and nothing else.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import kubernetes
import pytest

from bed import Bed, golden_claim, imported_image, running_pods, wait_for
from chartbed import adopt_crds, installed, process
from datasetprep.runner import run_spec
from datasetprep.spec import parse_spec
from hubserver import GOOD_TOKEN, POD_RUN_SPEC as SPEC, FakeHub, HubData, point_clients_at

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

API_SERVICE = ("10.0.0.1", 443)  # the `kubernetes` Service (tests/cluster/controlplane.py: SERVICE_CIDR)
LISTEN_PORT = 8099  # a port nothing in the chart uses; listeners are started on it inside pods
DNS_ANSWER = "203.0.113.7"  # what the test's resolver answers for every name
#: What a probe sees where a policy blocks: REJECT (kube-router's way) or DROP (other enforcers').
BLOCKED = ("refused", "timeout")

#: Run in a pod: try each target, print {name: "open" | "refused" | "timeout" | "answer <A>" | ...}.
PROBE = r"""
import json, socket, struct, sys
def tcp(s, host, port):
    s.connect((host, port))
    return "open"
def dns(s, host, port, name):
    q = struct.pack(">HHHHHH", 0x2a2a, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s.sendto(q, (host, port))
    data = s.recvfrom(512)[0]
    if data[:2] != q[:2] or struct.unpack(">H", data[6:8])[0] < 1:
        return "no answer"
    return "answer " + socket.inet_ntoa(data[-4:])
def attempt(target):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if len(target) == 3 else socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        return (dns if len(target) == 3 else tcp)(s, *target)
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error: %s" % (e.strerror or e)
    finally:
        s.close()
print(json.dumps({name: attempt(t) for name, t in json.loads(sys.argv[1]).items()}, sort_keys=True))
"""

#: Run in a pod: accept connections on LISTEN_PORT for a while.
LISTEN = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {LISTEN_PORT}))
s.listen(16)
s.settimeout(1)
end = time.time() + 240
while time.time() < end:
    try:
        c = s.accept()[0]
        c.close()
    except OSError:
        pass
"""


# ------------------------------------------------------------------------------------ host side
class Resolver:
    """A DNS resolver on port 53 of the bed's host address: answers every A query with DNS_ANSWER."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, 53))
        except OSError as exc:
            pytest.fail(f"cannot listen on {host}:53/udp for the test's resolver: {exc}", pytrace=False)
        self.queries = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return
            end = query.index(b"\0", 12) + 5  # the question: name, type, class
            self.queries += 1
            answer = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], 0x8180, 1, 1, 0, 0) + query[12:end]
            answer += struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(DNS_ANSWER)
            self.sock.sendto(answer, peer)

    def close(self) -> None:
        self.sock.close()


class Listener:
    """A TCP port on the bed's host address that accepts every connection (a service the policies do not name)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.sock.accept()[0].close()
            except OSError:
                return


@pytest.fixture(scope="module")
def enforced(kube_cluster):
    """NetworkPolicies are enforced on the node while this module runs."""
    with kube_cluster.network_policy_enforcer():
        yield kube_cluster


@pytest.fixture(scope="module")
def host_services(kube_cluster, tmp_path_factory) -> Iterator[dict]:
    """The Hub endpoint (API and storage origin), a resolver and an unrelated port, on the bed's host address."""
    hub = FakeHub(HubData(tmp_path_factory.mktemp("netpol-hub")), host=kube_cluster.host_ip).start()
    resolver, other = Resolver(kube_cluster.host_ip), Listener(kube_cluster.host_ip)
    try:
        yield {"hub": hub, "resolver": resolver, "other": other}
    finally:
        resolver.close()
        other.sock.close()
        hub.stop()


# ------------------------------------------------------------------------------------ in pods
def probe(cluster, ns: str, pod: str, container: str, targets: dict) -> dict[str, str]:
    r = cluster.run_kubectl("exec", "-n", ns, pod, "-c", container, "--", "python", "-c", PROBE, json.dumps(targets),
                            timeout=120, check=False)
    assert r.returncode == 0, f"probe in {ns}/{pod} failed: {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def listener(cluster, ns: str, pod: str, container: str, ip: str) -> Iterator[None]:
    """LISTEN in the pod, through a ``kubectl exec`` that lives for the block; returns once the pod
    itself (``ip``, its own address) connects to it."""
    argv = [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "exec", "-n", ns, pod, "-c", container,
            "--", "python", "-c", LISTEN]
    with process(argv, dict(os.environ), subprocess.DEVNULL):
        wait_for(lambda: probe(cluster, ns, pod, container, {"self": [ip, LISTEN_PORT]})["self"] == "open",
                 f"a listener in {ns}/{pod}")
        yield


def start_prober(core, ns: str, image: str) -> None:
    """A pod of the job image that no NetworkPolicy selects (no labels), idle until deleted."""
    core.create_namespaced_pod(ns, {"metadata": {"name": "prober"}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "probe", "image": image, "imagePullPolicy": "Never",
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}]}})


def pod_ip(core, ns: str, name: str) -> str:
    return wait_for(lambda: (p := core.read_namespaced_pod(name, ns)).status.phase == "Running" and p.status.pod_ip,
                    f"pod {ns}/{name} running", timeout=120)


def wait_enforced(cluster, ns: str, pod: str, policies: set[str]) -> None:
    """Until the enforcer's rules for the pod are in place, applying exactly ``policies``."""
    wait_for(lambda: cluster.network_policies_of(ns, pod) == policies,
             f"the enforcer's rules for {ns}/{pod} ({sorted(policies) or 'no policy'})", timeout=60, interval=1)


class Release:
    """The chart installed with helm in ``ns`` (watching it), its policies on; probers in ``ns`` and ``mon``."""

    def __init__(self, cluster, ns: str, mon: str) -> None:
        self.cluster, self.ns, self.mon = cluster, ns, mon
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())
        self.name = f"np{ns[-5:]}"  # the helm release
        self.full = f"{self.name}-datasetprep-operator"

    def values(self, hub: FakeHub, hub_ports: list[int] | None = None, job_env: dict | None = None) -> dict:
        """The chart's values: the Hub's two ports open to job pods unless ``hub_ports`` says otherwise."""
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(job_env or {})}
        return {"replicaCount": 1, "watch.mode": "namespaces", "watch.namespaces": [self.ns],
                "networkPolicy.enabled": True,
                "networkPolicy.jobs.hubPorts": hub_ports or [hub.port, urlsplit(hub.cdn).port],
                "networkPolicy.operator.metricsFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.mon}}}],
                "extraEnv": [{"name": "DATASETPREP_JOB_ENV", "value": json.dumps(env)}]}

    def operator_pod(self):
        (pod,) = self.core.list_namespaced_pod(
            self.ns, label_selector=f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator").items
        return pod

    def targets(self, services: dict, operator_ip: str) -> dict:
        node_ip, host_ip, hub = self.cluster.node_ip, self.cluster.host_ip, services["hub"]
        return {"dns": [host_ip, 53, "huggingface.co"], "hub": [host_ip, hub.port],
                "hub-storage": [host_ip, urlsplit(hub.cdn).port], "other-port": [host_ip, services["other"].port],
                "api-service": list(API_SERVICE), "api-endpoint": [node_ip, 6443],
                "operator-health": [operator_ip, 8080]}


@pytest.fixture
def release_overrides() -> dict:
    """Arguments of :meth:`Release.values` (a test parametrizes this fixture to change them)."""
    return {}


@pytest.fixture
def release(enforced, helm, helm_env, k8s, namespace, extra_namespace, host_services,
            release_overrides) -> Iterator[Release]:
    rel = Release(enforced, namespace, extra_namespace)
    job_image = imported_image(enforced, "job")[0]
    imported_image(enforced, "operator")
    adopt_crds(k8s, rel.name, namespace)
    with installed(helm, helm_env, rel.name, namespace, rel.values(host_services["hub"], **release_overrides)):
        for ns in (namespace, extra_namespace):
            start_prober(rel.core, ns, job_image)
        yield rel


def test_a_job_pod_reaches_dns_and_the_hub_only_nothing_reaches_it_and_its_run_completes(
        release, host_services, monkeypatch, tmp_path):
    cluster, ns, mon, core = release.cluster, release.ns, release.mon, release.core
    hub: FakeHub = host_services["hub"]
    # what a local run of the same spec against the same Hub writes
    hub.reset()
    point_clients_at(hub, tmp_path / "hf-home", monkeypatch)
    (tmp_path / "expected").mkdir()
    local = run_spec(parse_spec(SPEC), {"data": tmp_path / "expected"}, token=GOOD_TOKEN)
    hub.reset()

    bed = Bed(cluster, ns, golden_claim(cluster, ns, tmp_path / "pv"))
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": GOOD_TOKEN}})
    gate = hub.hold(r"^/datasets/acme/tiny-corpus/resolve/")  # holds the job pod mid-run, for a look inside
    try:
        bed.create("netpol", SPEC)
        job = bed.wait(lambda: (bed.get("netpol").get("status") or {}).get("jobName"), "a Job")
        (pod,) = bed.wait(lambda: running_pods(bed, job), "the job pod to run")
        job_pod, job_ip = pod.metadata.name, pod.status.pod_ip
        bed.wait(lambda: hub.held, "the job pod's first dataset download", timeout=180)
        operator_ip = release.operator_pod().status.pod_ip
        prober_ip, mon_ip = pod_ip(core, ns, "prober"), pod_ip(core, mon, "prober")
        wait_enforced(cluster, ns, job_pod, {f"{release.full}-job"})
        for where in (ns, mon):
            wait_enforced(cluster, where, "prober", set())

        # Egress: DNS and the Hub's two ports, nothing else -- all of which an unselected pod reaches.
        targets = release.targets(host_services, operator_ip)
        seen = probe(cluster, ns, job_pod, "datasetprep", targets)
        control = probe(cluster, ns, "prober", "probe", targets)
        assert control == {**{k: "open" for k in targets}, "dns": f"answer {DNS_ANSWER}"}, control
        assert seen["dns"] == f"answer {DNS_ANSWER}" and seen["hub"] == seen["hub-storage"] == "open", seen
        blocked = {k: v for k, v in seen.items() if k not in ("dns", "hub", "hub-storage")}
        assert len(blocked) == 4 and all(v in BLOCKED for v in blocked.values()), seen

        # Ingress: nothing. A listener in the job pod answers the pod itself; one in the prober answers
        # the other prober; the job pod's answers neither.
        with listener(cluster, ns, job_pod, "datasetprep", job_ip), listener(cluster, ns, "prober", "probe", prober_ip):
            from_mon = probe(cluster, mon, "prober", "probe",
                             {"job": [job_ip, LISTEN_PORT], "prober": [prober_ip, LISTEN_PORT]})
            from_ns = probe(cluster, ns, "prober", "probe", {"job": [job_ip, LISTEN_PORT]})
        assert from_mon["prober"] == "open", from_mon
        assert from_mon["job"] in BLOCKED and from_ns["job"] in BLOCKED, (from_mon, from_ns)
        assert cluster.network_policies_of(ns, job_pod) == {f"{release.full}-job"}  # still enforced throughout
    finally:
        gate.set()

    # The run completes with the policies on, as a local run writes it.
    obj = bed.wait_ready("netpol", timeout=240)
    assert obj["status"]["resolvedRevision"] == local.resolved_revision
    for ext in ("bin", "idx"):
        assert (bed.data / f"hub/tiny_text_document.{ext}").read_bytes() == \
            (tmp_path / "expected" / f"hub/tiny_text_document.{ext}").read_bytes()
    assert hub.file_downloads("acme/tiny-corpus") > 0 and host_services["resolver"].queries >= 2


def test_the_operator_pod_takes_probes_and_scrapes_as_the_policy_says_and_reaches_only_the_api_server(
        release, host_services):
    cluster, ns, mon, core = release.cluster, release.ns, release.mon, release.core
    pod = release.operator_pod()
    op, op_ip = pod.metadata.name, pod.status.pod_ip
    prober_ip = pod_ip(core, ns, "prober")
    pod_ip(core, mon, "prober")
    wait_enforced(cluster, ns, op, {release.full})
    for where in (ns, mon):
        wait_enforced(cluster, where, "prober", set())

    with listener(cluster, ns, op, "operator", op_ip):
        ports = {"health": [op_ip, 8080], "metrics": [op_ip, 9090], "other": [op_ip, LISTEN_PORT]}
        from_mon = probe(cluster, mon, "prober", "probe", ports)
        from_ns = probe(cluster, ns, "prober", "probe", ports)
        # health: anyone (the kubelet's probes); metrics: the metricsFrom namespace only; other: no one
        assert from_mon["health"] == "open" and from_mon["metrics"] == "open", from_mon
        assert from_ns["health"] == "open" and from_ns["metrics"] in BLOCKED, from_ns
        assert from_mon["other"] in BLOCKED and from_ns["other"] in BLOCKED, (from_mon, from_ns)

    # Egress: the API server (Service and endpoint), nothing else -- what the prober reaches.
    targets = {k: v for k, v in release.targets(host_services, op_ip).items() if k != "operator-health"}
    targets["prober"] = [prober_ip, LISTEN_PORT]
    with listener(cluster, ns, "prober", "probe", prober_ip):
        seen = probe(cluster, ns, op, "operator", targets)
        control = probe(cluster, mon, "prober", "probe", targets)
    assert control == {**{k: "open" for k in targets}, "dns": f"answer {DNS_ANSWER}"}, control
    assert seen["api-service"] == seen["api-endpoint"] == "open", seen
    assert all(v in BLOCKED for k, v in seen.items() if not k.startswith("api-")), seen
    # and it works: Ready through the kubelet's probes, no restart
    pod = core.read_namespaced_pod(op, ns)
    assert pod.status.container_statuses[0].ready and pod.status.container_statuses[0].restart_count == 0


@pytest.mark.parametrize("release_overrides", [{"hub_ports": [443], "job_env": {"DATASETPREP_HUB_MAX_ATTEMPTS": "1"}}],
                         ids=["hubPorts-default"])
def test_a_hub_port_the_policy_does_not_open_stalls_the_run_naming_the_setting(release, host_services, tmp_path):
    """HF_ENDPOINT on a port that networkPolicy.jobs.hubPorts lacks (443 only, the default): the job pod
    cannot connect, and the DatasetPrep stalls with the job's message naming the chart's setting."""
    cluster, ns, core = release.cluster, release.ns, release.core
    hub: FakeHub = host_services["hub"]
    hub.reset()
    bed = Bed(cluster, ns, golden_claim(cluster, ns, tmp_path / "pv"))
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": GOOD_TOKEN}})
    bed.create("blocked", {**SPEC, "backoffLimit": 0})
    _, stalled = bed.wait_stalled("blocked", timeout=240)
    message = stalled["message"]
    assert f"cannot reach the Hub at {hub.endpoint}" in message and "refused the connection" in message, message
    assert "networkPolicy.jobs.hubPorts" in message, message
    assert hub.count() == 0, [r.path for r in hub.requests]  # not one request got through
    # the port itself is open: a pod that no policy selects reaches it
    pod_ip(core, ns, "prober")
    assert probe(cluster, ns, "prober", "probe", {"hub": [cluster.host_ip, hub.port]}) == {"hub": "open"}
