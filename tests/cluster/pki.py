"""The test bed's PKI (openssl) and kubeconfig files. Standard library only."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

SERVICE_IP = "10.0.0.1"

# client certificates: name -> subject. O=system:masters is cluster-admin; the node's
# identity must be system:node:<name> in system:nodes for the Node authorizer.
CLIENTS_ALWAYS = {
    "admin": "/O=system:masters/CN=admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
}
CLIENTS_EMULATED = {"podrunner": "/O=system:masters/CN=testbed-podrunner"}
CLIENTS_REAL = {
    "kubelet": "/O=system:nodes/CN=system:node:testbed-node",
    "kube-scheduler": "/CN=system:kube-scheduler",
    "kube-proxy": "/CN=system:kube-proxy",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
}


# ECDSA P-256 keys: generated in milliseconds (RSA-2048 took seconds on a loaded 2-core machine)
NEWKEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def _leaf(pki: Path, name: str, subj: str, eku: str, san: str | None = None,
          ca: str = "ca") -> None:
    ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
           f"extendedKeyUsage={eku}"]
    if san:
        ext.append(f"subjectAltName={san}")
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    openssl("req", *NEWKEY, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subj, cwd=pki)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "3650", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)


def make_pki(pki: Path, ips: list[str], clients: dict[str, str]) -> None:
    """CA, API server serving certificate (SANs: 127.0.0.1, the service IP, ``ips``), the
    client certificates ``clients`` (name -> subject), a front-proxy CA + client
    (requestheader authn, as kubeadm sets it up) and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", *NEWKEY, "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=datasetprep-testbed-ca", cwd=pki)
    sans = ",".join([f"IP:{ip}" for ip in dict.fromkeys(["127.0.0.1", SERVICE_IP, *ips])] + [
        "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"])
    _leaf(pki, "apiserver", "/CN=kube-apiserver", "serverAuth", sans)
    for name, subj in {**CLIENTS_ALWAYS, **clients}.items():
        _leaf(pki, name, subj, "clientAuth")
    # without a requestheader CA, delegated authn in kube-controller-manager logs errors forever
    openssl("req", "-x509", *NEWKEY, "-nodes", "-keyout", "front-proxy-ca.key",
            "-out", "front-proxy-ca.crt", "-days", "3650", "-subj", "/CN=datasetprep-testbed-front-proxy-ca",
            cwd=pki)
    _leaf(pki, "front-proxy-client", "/CN=front-proxy-client", "clientAuth", ca="front-proxy-ca")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "sa.key", cwd=pki)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "tokens.csv").write_text("testbed-admin-token,admin,admin-uid,system:masters\n")
    for f in pki.iterdir():
        if f.suffix == ".key" or f.name == "tokens.csv":
            f.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {
            "server": server, "certificate-authority-data": b64(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(pki / f"{user}.crt"),
            "client-key-data": b64(pki / f"{user}.key")}}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": user}}],
        "current-context": "testbed",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is valid YAML
    path.chmod(0o600)
