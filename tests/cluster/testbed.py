#!/usr/bin/env python3
"""Start/stop the datasetprep Kubernetes test bed.

A real etcd + kube-apiserver + kube-controller-manager (built by ``tests/cluster/build``
or taken from ``KUBEBUILDER_ASSETS``) plus ``podrunner.py``, which plays kubelet and
scheduler for a single Node by running pod containers as local processes.

    python3 tests/cluster/testbed.py up      # prints the KUBECONFIG path (last stdout line)
    python3 tests/cluster/testbed.py down    # stops everything `up` started
    python3 tests/cluster/testbed.py status

Only the standard library is used here (plus openssl for the PKI), so `up`/`down`
work before the test dependencies are importable; the pod runner needs `kubernetes`.

Environment:
    DATASETPREP_TESTBED_STATE  state dir (default tests/cluster/.state)
    DATASETPREP_TESTBED_CACHE  binary cache root (see ./build)
    KUBEBUILDER_ASSETS         dir holding etcd, kube-apiserver, kube-controller-manager
    USE_EXISTING_CLUSTER=true  start nothing; print $KUBECONFIG
    PYTHON                     interpreter for the pod runner (default: this one)
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_NAME = "testbed-node"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
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

# Processes in start order; `down` stops them in reverse.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "podrunner"]


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def state_dir() -> Path:
    return Path(os.environ.get("DATASETPREP_TESTBED_STATE") or HERE / ".state").resolve()


def use_existing() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of pid, or None if gone / zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_proc_start_time(pid) or '?'}\n")


def read_pidfile(path: Path) -> int | None:
    """pid from a pidfile if that very process (same start time) is still alive."""
    try:
        pid_s, start = path.read_text().split()[:2]
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    now = _proc_start_time(pid)
    if now is None or (start != "?" and now != start):
        return None
    return pid


def kill_group(pid: int, name: str, grace: float = 10.0) -> None:
    """SIGTERM the process group led by pid, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if _proc_start_time(pid) is None:
                # leader gone; make sure no straggler in the group survives
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log(f"{name} (pid {pid}) ignored SIGTERM; sending SIGKILL")


def spawn(name: str, argv: list[str], st: Path, env: dict | None = None) -> int:
    logf = open(st / "logs" / f"{name}.log", "ab")
    logf.write(f"# {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
    logf.flush()
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: `down` kills the whole group
        env=env,
        cwd=st,
    )
    logf.close()
    write_pidfile(st / "pids" / f"{name}.pid", p.pid)
    return p.pid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- PKI


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=datasetprep-testbed-ca", cwd=pki)
    sans = ",".join([
        "IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    certs = {
        "apiserver": ("/CN=kube-apiserver", "serverAuth", sans),
        "admin": ("/O=system:masters/CN=admin", "clientAuth", None),
        "kube-controller-manager": ("/CN=system:kube-controller-manager", "clientAuth", None),
        "podrunner": ("/O=system:masters/CN=testbed-podrunner", "clientAuth", None),
    }
    for name, (subj, eku, san) in certs.items():
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               f"extendedKeyUsage={eku}"]
        if san:
            ext.append(f"subjectAltName={san}")
        (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subj, cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "3650", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    # front proxy (aggregation layer / requestheader authn, as kubeadm sets it up): without a
    # requestheader CA, delegated authn in kube-controller-manager logs errors forever
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "front-proxy-ca.key",
            "-out", "front-proxy-ca.crt", "-days", "3650", "-subj", "/CN=datasetprep-testbed-front-proxy-ca",
            cwd=pki)
    (pki / "front-proxy-client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "front-proxy-client.key", "-out",
            "front-proxy-client.csr", "-subj", "/CN=front-proxy-client", cwd=pki)
    openssl("x509", "-req", "-in", "front-proxy-client.csr", "-CA", "front-proxy-ca.crt", "-CAkey",
            "front-proxy-ca.key", "-CAcreateserial", "-days", "3650", "-extfile", "front-proxy-client.ext",
            "-out", "front-proxy-client.crt", cwd=pki)
    # service-account signing key pair
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for f in pki.iterdir():
        if f.suffix in (".key",):
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


# --------------------------------------------------------------------------- readiness


def https_get(url: str, pki: Path, timeout: float = 5.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def insecure_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(what: str, check, timeout: float, st: Path, watch: list[str]) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name in watch:
            if read_pidfile(st / "pids" / f"{name}.pid") is None:
                raise RuntimeError(f"{name} exited while waiting for {what}; log tail:\n"
                                   + tail(st / "logs" / f"{name}.log"))
        try:
            ok, last = check()
            if ok:
                return
        except Exception as e:  # noqa: BLE001 - connection refused while starting etc.
            last = repr(e)
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}: {last}\n"
                       + "\n".join(f"--- {n} log tail:\n{tail(st / 'logs' / f'{n}.log')}" for n in watch))


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- up/down


def find_binaries() -> Path:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        d = Path(assets)
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager")
                   if not os.access(d / b, os.X_OK)]
        if missing:
            raise RuntimeError(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        return d
    r = subprocess.run([str(HERE / "build")], stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"tests/cluster/build failed with exit code {r.returncode}")
    return Path(r.stdout.strip().splitlines()[-1])


def is_up(st: Path) -> bool:
    info = st / "cluster.json"
    if not info.exists():
        return False
    if any(read_pidfile(st / "pids" / f"{c}.pid") is None for c in COMPONENTS):
        return False
    try:
        data = json.loads(info.read_text())
        code, _ = https_get(data["server"] + "/readyz", st / "pki")
        return code == 200
    except Exception:  # noqa: BLE001
        return False


def up() -> Path:
    if use_existing():
        kc = os.environ.get("KUBECONFIG")
        if not kc:
            raise RuntimeError("USE_EXISTING_CLUSTER=true needs KUBECONFIG")
        log("USE_EXISTING_CLUSTER=true: starting nothing")
        return Path(kc.split(os.pathsep)[0])

    st = state_dir()
    if is_up(st):
        log(f"already up (state {st})")
        return st / "kubeconfig"
    down(quiet=True)
    t0 = time.monotonic()
    bins = find_binaries()
    if st.exists():
        shutil.rmtree(st)
    for d in ("logs", "pids", "pki", "etcd-data", "pods", "kill", "run"):
        (st / d).mkdir(parents=True, exist_ok=True)
    pki = st / "pki"
    make_pki(pki)
    (pki / "tokens.csv").write_text("testbed-admin-token,admin,admin-uid,system:masters\n")
    (pki / "tokens.csv").chmod(0o600)

    etcd_port, etcd_peer, api_port, kcm_port = (free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    write_kubeconfig(st / "kubeconfig", server, pki, "admin")
    write_kubeconfig(st / "kube-controller-manager.kubeconfig", server, pki, "kube-controller-manager")
    write_kubeconfig(st / "podrunner.kubeconfig", server, pki, "podrunner")
    (st / "cluster.json").write_text(json.dumps({
        "server": server, "etcd": f"http://127.0.0.1:{etcd_port}", "kcm": f"https://127.0.0.1:{kcm_port}",
        "node": NODE_NAME, "binaries": str(bins), "kubeconfig": str(st / "kubeconfig"),
        "admin_token": "testbed-admin-token",
    }, indent=2) + "\n")
    base_env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}

    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        spawn("etcd", [
            str(bins / "etcd"), "--name=testbed", f"--data-dir={st / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}", "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296", "--log-level=warn",
        ], st, base_env)
        wait_for("etcd /health", lambda: _ok(urllib.request.urlopen(etcd_url + "/health", timeout=2)),
                 60, st, ["etcd"])

        spawn("kube-apiserver", [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={st / 'apiserver-certs'}",
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
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # a loopback advertise address is invalid for the "kubernetes" Endpoints; pods reach
            # the API through KUBERNETES_SERVICE_HOST=127.0.0.1 set by the pod runner instead
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ], st, base_env)
        wait_for("kube-apiserver /readyz", lambda: _code(https_get(server + "/readyz", pki)),
                 120, st, ["etcd", "kube-apiserver"])

        kcm_kc = st / "kube-controller-manager.kubeconfig"
        spawn("kube-controller-manager", [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={st / 'kcm-certs'}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--cluster-name=testbed",
            "--leader-elect=false",
            "--v=1",
        ], st, base_env)

        runner_env = dict(base_env)
        runner_env.update({
            "KUBECONFIG": str(st / "podrunner.kubeconfig"),
            "DATASETPREP_TESTBED_STATE": str(st),
            "PYTHONUNBUFFERED": "1",
        })
        python = os.environ.get("PYTHON") or sys.executable
        spawn("podrunner", [python, str(HERE / "podrunner.py"), "--node-name", NODE_NAME,
                            "--state-dir", str(st), "--apiserver-port", str(api_port)], st, runner_env)

        all_ = ["etcd", "kube-apiserver", "kube-controller-manager", "podrunner"]
        wait_for("kube-controller-manager /healthz",
                 lambda: _code(insecure_get(f"https://127.0.0.1:{kcm_port}/healthz")), 120, st, all_)
        wait_for("ServiceAccount default/default",
                 lambda: _code(https_get(server + "/api/v1/namespaces/default/serviceaccounts/default", pki)),
                 120, st, all_)
        wait_for(f"Node {NODE_NAME} Ready", lambda: _node_ready(server, pki), 60, st, all_)
    except BaseException:
        log("start-up failed; stopping what was started")
        down(quiet=True)
        raise
    log(f"up in {time.monotonic() - t0:.1f}s: {server} (state {st})")
    return st / "kubeconfig"


def _ok(resp) -> tuple[bool, str]:
    body = resp.read().decode()
    return resp.status == 200 and '"health":"true"' in body.replace(" ", ""), body


def _code(res: tuple[int, str]) -> tuple[bool, str]:
    return res[0] == 200, f"HTTP {res[0]}: {res[1][:500]}"


def _node_ready(server: str, pki: Path) -> tuple[bool, str]:
    code, body = https_get(f"{server}/api/v1/nodes/{NODE_NAME}", pki)
    if code != 200:
        return False, f"HTTP {code}"
    conds = json.loads(body).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds), str(conds)


def down(quiet: bool = False) -> None:
    if use_existing():
        if not quiet:
            log("USE_EXISTING_CLUSTER=true: nothing to stop")
        return
    st = state_dir()
    stopped = []
    for name in reversed(COMPONENTS):
        pf = st / "pids" / f"{name}.pid"
        pid = read_pidfile(pf)
        if pid is not None:
            kill_group(pid, name, grace=15.0 if name == "podrunner" else 10.0)
            stopped.append(name)
        pf.unlink(missing_ok=True)
    # container processes the pod runner left behind (e.g. it was SIGKILLed)
    run = st / "run"
    if run.is_dir():
        for pf in run.glob("*.pid"):
            pid = read_pidfile(pf)
            if pid is not None:
                kill_group(pid, pf.stem, grace=2.0)
                stopped.append(pf.stem)
            pf.unlink(missing_ok=True)
    if not quiet:
        log(f"stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")


def status() -> int:
    st = state_dir()
    for name in COMPONENTS:
        pid = read_pidfile(st / "pids" / f"{name}.pid")
        print(f"{name:26s} {'running pid ' + str(pid) if pid else 'stopped'}")
    return 0 if is_up(st) else 1


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "up"
    try:
        if cmd == "up":
            print(up())
        elif cmd == "down":
            down()
        elif cmd == "status":
            return status()
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except RuntimeError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
