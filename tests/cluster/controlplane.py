"""Command lines of the control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) for both kinds of node. Standard library only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers the test bed needs. Names as of Kubernetes >= 1.28 ("<name>-controller").
CONTROLLERS = [
    "job-controller",
    "garbage-collector-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "clusterrole-aggregation-controller",
    "ttl-after-finished-controller",
    "cronjob-controller",
    "pod-garbage-collector-controller",
    "replicaset-controller",
    "deployment-controller",
    "resourcequota-controller",
]
# a real node also needs Service endpoints (kube-proxy routes the `kubernetes` Service by
# them) and the node lifecycle (NotReady taints, pods on a lost node)
CONTROLLERS_REAL_NODE = [
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "ttl-controller",
]

# The API server's audit log (logs/audit.log): every request of a ServiceAccount outside
# kube-system, at Metadata level (who, verb, resource, response code; no bodies). Tests read it to
# learn what an identity really asks of the API server (tests/test_operator_rbac_cluster.py).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


@dataclass
class Plane:
    """Where the control plane listens; `real` = with a real node (Node authorizer,
    Service endpoints, kubelet client certificate)."""

    st: Path
    bins: Path
    real: bool
    etcd_port: int
    etcd_peer_port: int
    api_bind: str
    api_advertise: str
    api_port: int
    kcm_bind: str
    kcm_port: int

    @property
    def pki(self) -> Path:
        return self.st / "pki"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def etcd(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.bins / "etcd"), "--name=testbed", f"--data-dir={self.st / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testbed={peer}", "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296", "--log-level=warn",
        ]

    def apiserver(self) -> list[str]:
        """The API server's command line; writes its audit policy file into the state dir."""
        pki = self.pki
        policy = self.st / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        argv = [
            str(self.bins / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.api_bind}", f"--advertise-address={self.api_advertise}",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.st / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.st / 'logs' / 'audit.log'}",
            "--audit-log-format=json",
            "--v=1",
        ]
        # OwnerReferencesPermissionEnforcement, as on OpenShift: setting blockOwnerDeletion needs
        # update on the owner's finalizers (tests/test_operator_rbac_cluster.py proves that rule)
        if self.real:
            argv += [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            argv += [
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                # a loopback advertise address is invalid for the "kubernetes" Endpoints; pods reach
                # the API through KUBERNETES_SERVICE_HOST=127.0.0.1 set by the pod runner instead
                "--endpoint-reconciler-type=none",
            ]
        return argv

    def controller_manager(self) -> list[str]:
        kc = self.st / "kube-controller-manager.kubeconfig"
        controllers = CONTROLLERS + (CONTROLLERS_REAL_NODE if self.real else [])
        return [
            str(self.bins / "kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            f"--bind-address={self.kcm_bind}", f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.st / 'kcm-certs'}",
            f"--controllers={','.join(controllers)}",
            "--use-service-account-credentials=true",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--cluster-name=testbed",
            "--leader-elect=false",
            "--v=1",
        ]

    def scheduler(self, config: Path, node_bins: Path, port: int = 10259) -> list[str]:
        kc = self.st / "kube-scheduler.kubeconfig"
        return [
            str(node_bins / "kube-scheduler"), f"--config={config}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=0.0.0.0", f"--secure-port={port}", f"--cert-dir={self.st / 'scheduler-certs'}",
            "--v=1",
        ]
