#!/usr/bin/env python3
"""Start/stop the datasetprep Kubernetes test bed (see tests/cluster/README.md).

Control plane: etcd, kube-apiserver, kube-controller-manager (built by ``tests/cluster/build``
or taken from ``KUBEBUILDER_ASSETS``). Node, by ``DATASETPREP_TESTBED_NODE``:

* ``real`` (default): kube-scheduler, containerd + runc + CNI, kubelet and kube-proxy, all
  inside the bed's own PID/mount/network namespaces (``nodebed.py``);
* ``emulated`` (explicit opt-in, interim): ``podrunner.py`` plays kubelet and scheduler and
  runs pod commands as local processes.

    python3 tests/cluster/testbed.py up        # prints the KUBECONFIG path (last stdout line)
    python3 tests/cluster/testbed.py down      # stops everything `up` started, removes its cgroups/veth
    python3 tests/cluster/testbed.py status    # components, addresses, kubectl path
    python3 tests/cluster/testbed.py restart kubelet|containerd|kube-proxy|kube-scheduler|kube-apiserver|etcd
    python3 tests/cluster/testbed.py kill-container CONTAINER_ID...   # SIGKILL (real node)
    python3 tests/cluster/testbed.py import-images [DIR]              # default $DATASETPREP_TESTBED_IMAGES
    python3 tests/cluster/testbed.py exec CMD [ARGS...]               # run CMD inside the bed's namespaces
    python3 tests/cluster/testbed.py netpol on|off|status             # the NetworkPolicy enforcer (netpol.py)

Only the standard library is used here (plus openssl, iproute2, util-linux), so `up`/`down`
work before the test dependencies are importable; the pod runner needs `kubernetes`.

Environment:
    DATASETPREP_TESTBED_STATE   state dir (default tests/cluster/.state)
    DATASETPREP_TESTBED_NODE    real (default) | emulated
    DATASETPREP_TESTBED_IMAGES  dir with images.json + archives to import into the node
    DATASETPREP_TESTBED_CACHE   binary cache root (see ./build)
    KUBEBUILDER_ASSETS          dir holding etcd, kube-apiserver, kube-controller-manager
    USE_EXISTING_CLUSTER=true   start nothing; print $KUBECONFIG
    PYTHON                      interpreter for the pod runner (default: this one)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import netpol
import nodebed
import ociimage
from controlplane import SERVICE_CIDR, Plane
from pki import CLIENTS_EMULATED, CLIENTS_REAL, make_pki, write_kubeconfig
from procs import (
    free_port,
    http_code,
    https_get,
    insecure_get,
    kill_group,
    log,
    read_pidfile,
    spawn,
    wait_for,
    write_pidfile,
)

HERE = Path(__file__).resolve().parent
NODE_NAME = nodebed.NODE_NAME
NODE_MODES = ("real", "emulated")

# Processes in start order; `down` stops them in reverse.
COMPONENTS = {
    "emulated": ["etcd", "kube-apiserver", "kube-controller-manager", "podrunner"],
    "real": ["holder", "containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
             "kubelet", "kube-proxy"],
}
RESTARTABLE = ("kubelet", "containerd", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver",
               "etcd")


def state_dir() -> Path:
    return Path(os.environ.get("DATASETPREP_TESTBED_STATE") or HERE / ".state").resolve()


def use_existing() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


def node_mode() -> str:
    mode = os.environ.get("DATASETPREP_TESTBED_NODE", "").strip().lower() or "real"
    if mode not in NODE_MODES:
        raise RuntimeError(f"DATASETPREP_TESTBED_NODE={mode!r}: expected one of {', '.join(NODE_MODES)}")
    return mode


def load_info(st: Path) -> dict:
    try:
        return json.loads((st / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}


def save_info(st: Path, info: dict) -> None:
    (st / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")


def find_binaries() -> tuple[Path, Path]:
    """(control plane dir, node/tools dir): runs ./build (cached) once."""
    r = subprocess.run([str(HERE / "build")], stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"tests/cluster/build failed with exit code {r.returncode}")
    built = Path(r.stdout.strip().splitlines()[-1])
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return (Path(assets) if assets else built), built


def is_up(st: Path) -> bool:
    info = load_info(st)
    if not info:
        return False
    if any(read_pidfile(st / "pids" / f"{c}.pid") is None for c in info.get("components", [])):
        return False
    try:
        code, _ = https_get(info["server"] + "/readyz", st / "pki")
        return code == 200
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- up


def up() -> Path:
    if use_existing():
        kc = os.environ.get("KUBECONFIG")
        if not kc:
            raise RuntimeError("USE_EXISTING_CLUSTER=true needs KUBECONFIG")
        log("USE_EXISTING_CLUSTER=true: starting nothing")
        return Path(kc.split(os.pathsep)[0])

    st, mode = state_dir(), node_mode()
    if is_up(st):
        running = load_info(st).get("node")
        if running != mode:
            raise RuntimeError(f"a test bed with node={running} runs in {st}; stop it first "
                               f"(tests/cluster/down) or use another DATASETPREP_TESTBED_STATE")
        if mode == "real" and os.environ.get("DATASETPREP_TESTBED_IMAGES"):
            import_images(Path(os.environ["DATASETPREP_TESTBED_IMAGES"]))
        log(f"already up (state {st})")
        return st / "kubeconfig"
    down(quiet=True)
    t0 = time.monotonic()
    bins, node_bins = find_binaries()
    if st.exists():
        shutil.rmtree(st)
    for d in ("logs", "pids", "pki", "etcd-data", "pods", "kill", "run", "cmd"):
        (st / d).mkdir(parents=True, exist_ok=True)
    try:
        server = (_up_real if mode == "real" else _up_emulated)(st, bins, node_bins)
    except BaseException:
        log("start-up failed; stopping what was started")
        down(quiet=True)
        raise
    log(f"up in {time.monotonic() - t0:.1f}s: {server} (state {st}, node {mode})")
    return st / "kubeconfig"


def _base_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def _start(name: str, argv: list[str], st: Path, env: dict | None = None) -> int:
    """spawn + remember the command line for `restart`."""
    (st / "cmd" / f"{name}.json").write_text(json.dumps({"argv": argv}))
    return spawn(name, argv, st, env if env is not None else _base_env())


def _up_emulated(st: Path, bins: Path, _node_bins: Path) -> str:
    make_pki(st / "pki", [], CLIENTS_EMULATED)
    plane = Plane(st, bins, real=False, etcd_port=free_port(), etcd_peer_port=free_port(),
                  api_bind="127.0.0.1", api_advertise="127.0.0.1", api_port=free_port(),
                  kcm_bind="127.0.0.1", kcm_port=free_port())
    server = f"https://127.0.0.1:{plane.api_port}"
    for user in ("admin", "kube-controller-manager", "podrunner"):
        write_kubeconfig(st / ("kubeconfig" if user == "admin" else f"{user}.kubeconfig"), server, st / "pki", user)
    save_info(st, {
        "node": "emulated", "components": COMPONENTS["emulated"], "server": server, "etcd": plane.etcd_url,
        "kcm": f"https://127.0.0.1:{plane.kcm_port}", "node_name": NODE_NAME, "binaries": str(bins),
        "kubeconfig": str(st / "kubeconfig"), "admin_token": "testbed-admin-token",
        "host_ip": "127.0.0.1", "kubectl": None,
    })
    _start("etcd", plane.etcd(), st)
    wait_for("etcd /health", lambda: _etcd_ok(plane.etcd_url), 60, st, ["etcd"])
    _start("kube-apiserver", plane.apiserver(), st)
    wait_for("kube-apiserver /readyz", lambda: http_code(https_get(server + "/readyz", st / "pki")),
             120, st, ["etcd", "kube-apiserver"])
    _start("kube-controller-manager", plane.controller_manager(), st)
    runner_env = {**_base_env(), "KUBECONFIG": str(st / "podrunner.kubeconfig"),
                  "DATASETPREP_TESTBED_STATE": str(st), "PYTHONUNBUFFERED": "1"}
    python = os.environ.get("PYTHON") or sys.executable
    _start("podrunner", [python, str(HERE / "podrunner.py"), "--node-name", NODE_NAME,
                         "--state-dir", str(st), "--apiserver-port", str(plane.api_port)], st, runner_env)
    all_ = COMPONENTS["emulated"]
    wait_for("kube-controller-manager /healthz",
             lambda: http_code(insecure_get(f"https://127.0.0.1:{plane.kcm_port}/healthz")), 120, st, all_)
    _wait_cluster_ready(st, server, all_)
    return server


def _up_real(st: Path, bins: Path, node_bins: Path) -> str:
    ident, plane, files, info = _prepare_real(st, bins, node_bins)
    init = _start_namespaces(st, ident, bins, node_bins)
    ns = nodebed.ns_prefix(init)
    _start("containerd", ns + ["containerd", "--config", str(files["containerd"])], st)
    _start("etcd", ns + plane.etcd(), st)
    _start("kube-apiserver", ns + plane.apiserver(), st)
    archives = [Path(info["pause_archive"]), Path(info["test_archive"])]
    if os.environ.get("DATASETPREP_TESTBED_IMAGES"):
        archives += nodebed.listed_archives(Path(os.environ["DATASETPREP_TESTBED_IMAGES"]))
    loader = _Background(lambda: _import_when_ready(st, init, archives))  # while the API server starts
    wait_for("kube-apiserver /readyz", lambda: http_code(https_get(info["server"] + "/readyz", plane.pki)),
             120, st, ["holder", "etcd", "kube-apiserver"])
    _start("kube-controller-manager", ns + plane.controller_manager(), st)
    _start("kube-scheduler", ns + plane.scheduler(files["kube-scheduler"], node_bins), st)
    info["images"] = loader.result()
    save_info(st, info)
    _start("kubelet", ns + [
        str(node_bins / "kubelet"), f"--config={files['kubelet']}", f"--kubeconfig={st / 'kubelet.kubeconfig'}",
        f"--root-dir={st / 'node' / 'kubelet'}", f"--node-ip={ident.node_ip}", f"--hostname-override={NODE_NAME}",
        "--v=1",
    ], st)
    _start("kube-proxy", ns + [str(node_bins / "kube-proxy"), f"--config={files['kube-proxy']}", "--v=1"], st)
    all_ = COMPONENTS["real"]
    for name, port in (("kube-controller-manager", 10257), ("kube-scheduler", 10259)):
        wait_for(f"{name} /healthz", lambda port=port: http_code(insecure_get(f"https://{ident.node_ip}:{port}/healthz")),
                 120, st, all_)
    _wait_cluster_ready(st, info["server"], all_)
    wait_for("kube-proxy /healthz", lambda: _kube_proxy_ok(ident.node_ip), 60, st, all_)
    return info["server"]


def _prepare_real(st: Path, bins: Path, node_bins: Path) -> tuple[nodebed.BedIdentity, Plane, dict, dict]:
    """Identity (saved first, so `down` can always clean up), PKI, kubeconfigs, images,
    configuration files and cluster.json of a real-node bed."""
    ident = nodebed.BedIdentity.derive(st, nodebed.host_networks())
    ident.save(st)
    pki = st / "pki"
    make_pki(pki, [ident.node_ip], CLIENTS_REAL)
    plane = Plane(st, bins, real=True, etcd_port=2379, etcd_peer_port=2380,
                  api_bind="0.0.0.0", api_advertise=ident.node_ip, api_port=nodebed.APISERVER_PORT,
                  kcm_bind="0.0.0.0", kcm_port=10257)
    server = f"https://{ident.node_ip}:{plane.api_port}"
    inside = f"https://127.0.0.1:{plane.api_port}"  # loopback of the bed's network namespace
    for user, srv in (("admin", server), ("kube-controller-manager", inside), ("kube-scheduler", inside),
                      ("kubelet", server), ("kube-proxy", server)):
        write_kubeconfig(st / ("kubeconfig" if user == "admin" else f"{user}.kubeconfig"), srv, pki, user)
    pause_image, test_image = _tool_images(st, node_bins)
    files = nodebed.write_node_configs(st, ident, pki, pause_image["name"])
    info = {
        "node": "real", "components": COMPONENTS["real"], "server": server, "node_name": NODE_NAME,
        "binaries": str(bins), "node_binaries": str(node_bins), "kubectl": str(node_bins / "kubectl"),
        "kubeconfig": str(st / "kubeconfig"), "admin_token": "testbed-admin-token",
        "host_ip": ident.host_ip, "node_ip": ident.node_ip, "pod_cidr": nodebed.POD_CIDR,
        "bed": asdict(ident), "pause_image": pause_image["name"], "pause_archive": pause_image["archive"],
        "test_image": test_image["name"], "test_archive": test_image["archive"], "images": {},
    }
    save_info(st, info)
    return ident, plane, files, info


def _start_namespaces(st: Path, ident: nodebed.BedIdentity, bins: Path, node_bins: Path) -> int:
    """The bed's cgroup root, holder (namespaces) and veth link; returns the PID namespace's init."""
    nodebed.create_cgroup_root(ident.cgroup_root)
    script = st / "node" / "holder.sh"
    keep = nodebed.covered_paths([st, HERE.parent.parent, bins, node_bins, Path(tempfile.gettempdir()),
                                  Path(sys.prefix)])
    script.write_text(nodebed.holder_script(node_bins / "pause", keep))
    holder = _start("holder", nodebed.holder_argv(script), st)
    nodebed.wait_holder_ready(holder)
    init = nodebed.ns_init_pid(holder)
    write_pidfile(st / "pids" / "ns-init.pid", init)
    nodebed.setup_network(ident, init)
    return init


def _containerd_ok(init: int) -> tuple[bool, str]:
    r = nodebed.ns_run(init, ["ctr", "--address", nodebed.CONTAINERD_SOCK, "version"], check=False)
    return r.returncode == 0, r.stderr.strip()


def _import_when_ready(st: Path, init: int, archives: list[Path]) -> dict:
    wait_for("containerd", lambda: _containerd_ok(init), 60, st, ["containerd"])
    return nodebed.import_archives(init, archives, log)


class _Background:
    """Run fn in a thread; result() joins and returns its value or raises its exception."""

    def __init__(self, fn):
        self._out: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._out["error"] = e

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def _tool_images(st: Path, node_bins: Path) -> tuple[dict, dict]:
    """The sandbox (pause) and test (testbox) images, tagged by their binary's digest."""
    out = []
    for tool in ("pause", "testbox"):
        binary = node_bins / tool
        tag = ociimage.file_digest(binary)[:12]
        name = f"testbed.local/{tool}:{tag}"
        archive = st / "images" / f"{tool}.tar"
        image_id = ociimage.write_single_binary_image(binary, name, archive, f"/{tool}")
        out.append({"name": name, "archive": str(archive), "id": image_id})
    return out[0], out[1]


def _etcd_ok(url: str) -> tuple[bool, str]:
    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
        body = resp.read().decode()
    return resp.status == 200 and '"health":"true"' in body.replace(" ", ""), body


def _kube_proxy_ok(node_ip: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://{node_ip}:{nodebed.KUBE_PROXY_HEALTHZ_PORT}/healthz", timeout=2) as r:
            return r.status == 200, r.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"


def _wait_cluster_ready(st: Path, server: str, watch: list[str]) -> None:
    pki = st / "pki"
    wait_for("ServiceAccount default/default",
             lambda: http_code(https_get(server + "/api/v1/namespaces/default/serviceaccounts/default", pki)),
             120, st, watch)
    wait_for(f"Node {NODE_NAME} Ready", lambda: _node_ready(server, pki), 120, st, watch)


def _node_ready(server: str, pki: Path) -> tuple[bool, str]:
    code, body = https_get(f"{server}/api/v1/nodes/{NODE_NAME}", pki)
    if code != 200:
        return False, f"HTTP {code}"
    conds = json.loads(body).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds), str(conds)


# --------------------------------------------------------------------------- down / status


def down(quiet: bool = False) -> None:
    if use_existing():
        if not quiet:
            log("USE_EXISTING_CLUSTER=true: nothing to stop")
        return
    st = state_dir()
    stopped = []
    # real node: the holder's PID namespace takes every bed process (containers too) with it
    holder = read_pidfile(st / "pids" / "holder.pid")
    if holder is not None:
        kill_group(holder, "holder", grace=5.0)
        stopped.append("holder (all processes of the bed)")
    for name in [netpol.NAME, *reversed(COMPONENTS["real"] + COMPONENTS["emulated"])]:
        pf = st / "pids" / f"{name}.pid"
        pid = read_pidfile(pf)
        if pid is not None:
            kill_group(pid, name, grace=15.0 if name == "podrunner" else 10.0)
            stopped.append(name)
        pf.unlink(missing_ok=True)
    (st / "pids" / "ns-init.pid").unlink(missing_ok=True)
    if (st / "bed.json").exists():
        ident = nodebed.BedIdentity.load(st)
        left = nodebed.remove_cgroup_root(ident.cgroup_root)
        if left:
            log(f"could not remove cgroups: {', '.join(left)}")
        if nodebed.delete_veth(ident):
            stopped.append(f"veth {ident.veth}")
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
    info = load_info(st)
    for name in info.get("components", COMPONENTS[node_mode()]):
        pid = read_pidfile(st / "pids" / f"{name}.pid")
        print(f"{name:26s} {'running pid ' + str(pid) if pid else 'stopped'}")
    for key in ("node", "server", "kubeconfig", "kubectl", "host_ip", "node_ip", "pod_cidr", "test_image",
                "pause_image"):
        if info.get(key):
            print(f"{key:26s} {info[key]}")
    for name, image_id in (info.get("images") or {}).items():
        print(f"{'image':26s} {name} {image_id}")
    return 0 if is_up(st) else 1


# --------------------------------------------------------------------------- real-node operations


def _real_bed(st: Path) -> tuple[dict, int]:
    info = load_info(st)
    if info.get("node") != "real":
        raise RuntimeError(f"no real-node test bed in {st} (tests/cluster/up first)")
    init = read_pidfile(st / "pids" / "ns-init.pid")
    if init is None:
        raise RuntimeError(f"the test bed in {st} is not running")
    return info, init


def restart(name: str) -> None:
    """Stop a node component (SIGTERM, like `systemctl restart`) and start it again with the
    same command line; wait until it is healthy."""
    if name not in RESTARTABLE:
        raise RuntimeError(f"cannot restart {name!r}; one of {', '.join(RESTARTABLE)}")
    st = state_dir()
    info, init = _real_bed(st)
    argv = json.loads((st / "cmd" / f"{name}.json").read_text())["argv"]
    pid = read_pidfile(st / "pids" / f"{name}.pid")
    t0 = time.monotonic()
    if pid is not None:
        kill_group(pid, name, grace=10.0)
    node_ip = info["node_ip"]
    if name == "kube-apiserver":  # the old one's listener may outlive its process group's leader for a moment
        wait_for("port 6443 to be free", lambda: _port_free(node_ip, nodebed.APISERVER_PORT), 30, st, [])
    _start(name, argv, st)
    checks = {
        "kubelet": lambda: http_code(insecure_get(f"http://{node_ip}:{nodebed.KUBELET_HEALTHZ_PORT}/healthz")),
        "containerd": lambda: _containerd_ok(init),
        "kube-proxy": lambda: _kube_proxy_ok(node_ip),
        "kube-scheduler": lambda: http_code(insecure_get(f"https://{node_ip}:10259/healthz")),
        "kube-controller-manager": lambda: http_code(insecure_get(f"https://{node_ip}:10257/healthz")),
        # etcd listens on the bed's loopback only: it is back when the API server reads from it again
        "kube-apiserver": lambda: http_code(https_get(info["server"] + "/readyz", st / "pki")),
        "etcd": lambda: http_code(https_get(info["server"] + "/readyz/etcd", st / "pki")),
    }
    wait_for(f"{name} after restart", checks[name], 60, st, [name])
    log(f"restarted {name} in {time.monotonic() - t0:.1f}s")


def _port_free(host: str, port: int) -> tuple[bool, str]:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True, "refused"
    return False, f"{host}:{port} still accepts connections"


def kill_containers(ids: list[str]) -> None:
    """SIGKILL the init process of each container (containerd task), as the OOM killer or a
    crash would: the kubelet reports exit code 137."""
    _info, init = _real_bed(state_dir())
    for cid in ids:
        nodebed.ctr(init, "tasks", "kill", "--signal", "SIGKILL", cid.removeprefix("containerd://"))


def import_images(images_dir: Path) -> None:
    st = state_dir()
    info, init = _real_bed(st)
    info.setdefault("images", {}).update(nodebed.import_archives(init, nodebed.listed_archives(images_dir), log))
    save_info(st, info)


def _filter_rules(init: int) -> str:
    return nodebed.ns_run(init, ["iptables-save", "-t", "filter"]).stdout


def netpol_on() -> None:
    """Start kube-router's firewall in the bed (see netpol.py); returns once it has synced."""
    st = state_dir()
    info, init = _real_bed(st)
    if read_pidfile(st / "pids" / f"{netpol.NAME}.pid") is not None:
        log(f"{netpol.NAME} already runs")
        return
    t0 = time.monotonic()
    binary = Path(info["node_binaries"]) / netpol.NAME
    if not binary.is_file():
        raise RuntimeError(f"{binary} is missing: run tests/cluster/build")
    kubeconfig = st / f"{netpol.NAME}.kubeconfig"
    write_kubeconfig(kubeconfig, f"https://127.0.0.1:{nodebed.APISERVER_PORT}", st / "pki", "admin")
    _start(netpol.NAME, nodebed.ns_prefix(init) + netpol.argv(
        str(binary), str(kubeconfig), NODE_NAME, SERVICE_CIDR), st)
    node_ip = info["node_ip"]
    wait_for(f"{netpol.NAME} /healthz",
             lambda: http_code(insecure_get(f"http://{node_ip}:{netpol.HEALTH_PORT}/healthz")), 90, st, [netpol.NAME])
    wait_for(f"{netpol.NAME}'s rules", lambda: (netpol.synced(_filter_rules(init)), "no kube-router chains yet"),
             60, st, [netpol.NAME])
    log(f"{netpol.NAME} (NetworkPolicy firewall) up in {time.monotonic() - t0:.1f}s")


def netpol_off() -> None:
    """Stop kube-router and remove its chains and ipsets; fails if any is left."""
    st = state_dir()
    info, init = _real_bed(st)
    pf = st / "pids" / f"{netpol.NAME}.pid"
    pid = read_pidfile(pf)
    if pid is not None:
        kill_group(pid, netpol.NAME, grace=10.0)
    pf.unlink(missing_ok=True)
    script = netpol.cleanup_script(_filter_rules(init))
    r = subprocess.run(nodebed.ns_prefix(init) + ["iptables-restore", "--noflush"], input=script,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"removing {netpol.NAME}'s rules failed: {r.stderr.strip()}\n{script}")
    for name in netpol.leftovers("", nodebed.ns_run(init, ["ipset", "list", "-n"]).stdout):
        nodebed.ns_run(init, ["ipset", "destroy", name])
    left = netpol.leftovers(_filter_rules(init), nodebed.ns_run(init, ["ipset", "list", "-n"]).stdout)
    if left:
        raise RuntimeError(f"{netpol.NAME}'s chains or ipsets are left after its clean-up: {left}")
    log(f"{netpol.NAME} stopped; its rules and ipsets are gone")


def netpol_status() -> int:
    st = state_dir()
    _info, init = _real_bed(st)
    pid = read_pidfile(st / "pids" / f"{netpol.NAME}.pid")
    rules = _filter_rules(init)
    print(f"{netpol.NAME:26s} {'running pid ' + str(pid) if pid else 'stopped'}; "
          f"rules {'in place' if netpol.synced(rules) else 'absent'}")
    return 0 if pid else 1


def ns_exec(argv: list[str]) -> int:
    _info, init = _real_bed(state_dir())
    return subprocess.run(nodebed.ns_prefix(init) + argv).returncode


def main(argv: list[str]) -> int:
    cmd, args = (argv[1] if len(argv) > 1 else "up"), argv[2:]
    try:
        if cmd == "up":
            print(up())
        elif cmd == "down":
            down()
        elif cmd == "status":
            return status()
        elif cmd == "restart" and len(args) == 1:
            restart(args[0])
        elif cmd == "kill-container" and args:
            kill_containers(args)
        elif cmd == "import-images":
            d = args[0] if args else os.environ.get("DATASETPREP_TESTBED_IMAGES")
            if not d:
                raise RuntimeError("import-images needs a directory (or DATASETPREP_TESTBED_IMAGES)")
            import_images(Path(d))
        elif cmd == "exec" and args:
            return ns_exec(args)
        elif cmd == "netpol" and args in (["on"], ["off"], ["status"]):
            if args[0] == "status":
                return netpol_status()
            (netpol_on if args[0] == "on" else netpol_off)()
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except RuntimeError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
