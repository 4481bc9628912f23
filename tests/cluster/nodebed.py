"""The real node of the test bed: its namespaces, network, cgroups, configuration and images.

Every process of a real-node bed (etcd, the control plane, containerd, the kubelet,
kube-proxy and the containers) lives in namespaces held by one process, the *holder*:

* a PID namespace whose init is the holder (``tools/pause``): killing it kills everything
  in the bed, containers included, in one step — also after a crash of ``up``;
* a private mount namespace with tmpfs over ``/run``, ``/var/lib`` and ``/var/log``, so the
  fixed paths the kubelet and containerd use (``/run/containerd``,
  ``/var/lib/kubelet/device-plugins``, ``/var/log/containers``, ``/var/lib/cni``, ...) are
  the bed's own; the rest of the host file system (``/tmp``, the checkout, this state dir)
  is seen as it is, so hostPath volumes on host folders work at their real paths (a checkout,
  state dir or temporary folder under one of those three is bound back over the tmpfs);
* a network namespace with the CNI bridge ``cni0`` (pods, 10.244.0.0/24) and one end of a
  veth pair whose other end is on the host: host ``<host_ip>/30`` <-> bed ``<node_ip>/30``.

Components are started with ``nsenter --target <holder> --mount --net --pid`` (never
``ip netns exec``, which remounts /sys and hides the cgroup mounts from the kubelet).

Names and addresses derive from the state dir, so two beds on one machine never collide:
bed id = first 8 hex digits of sha256(state dir); host veth ``dsptb<id>``; link /30 in
100.64.0.0/16 (the next free one if the host already routes it); kubelet ``cgroupRoot``
``/datasetprep-testbed-<id>`` in every cgroup hierarchy. See tests/cluster/README.md.

Standard library only (it runs before the test dependencies are installed).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import resource
import shlex
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ociimage

NODE_NAME = "testbed-node"
POD_CIDR = "10.244.0.0/24"
LINK_POOL = ipaddress.ip_network("100.64.0.0/16")
APISERVER_PORT = 6443
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
# mounted over with tmpfs inside the bed: host data there is invisible to the node and its pods
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log")


@dataclass
class BedIdentity:
    """What names a bed on the host: recorded in $STATE/bed.json before anything is created,
    so ``down`` finds all of it again (also after a crash)."""

    bed_id: str
    veth: str
    host_ip: str
    node_ip: str
    cgroup_root: str

    @classmethod
    def derive(cls, st: Path, taken: list[ipaddress.IPv4Network] | None = None) -> "BedIdentity":
        bed_id = hashlib.sha256(str(st).encode()).hexdigest()[:8]
        n_links = LINK_POOL.num_addresses // 4
        start = int(bed_id, 16) % n_links
        for k in range(n_links):
            net = ipaddress.ip_network((int(LINK_POOL.network_address) + 4 * ((start + k) % n_links), 30))
            if not any(net.overlaps(t) for t in taken or []):
                break
        else:
            raise RuntimeError(f"no free /30 in {LINK_POOL} for the bed's veth link")
        host, node = list(net.hosts())
        return cls(bed_id, f"dsptb{bed_id}", str(host), str(node), f"/datasetprep-testbed-{bed_id}")

    @classmethod
    def load(cls, st: Path) -> "BedIdentity":
        try:
            return cls(**json.loads((st / "bed.json").read_text()))
        except (OSError, ValueError, TypeError):
            return cls.derive(st)  # names are deterministic; only the subnet could differ

    def save(self, st: Path) -> None:
        (st / "bed.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def host_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes or has addresses in (never reuse those)."""
    nets = []
    for args in (["-4", "-j", "route", "show", "table", "all"], ["-4", "-j", "addr"]):
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
        for entry in json.loads(r.stdout or "[]"):
            if "dst" in entry and entry["dst"] not in ("default", "0.0.0.0/0"):
                try:
                    nets.append(ipaddress.ip_network(entry["dst"], strict=False))
                except ValueError:
                    pass
            for a in entry.get("addr_info", []):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def covered_paths(paths: list[Path]) -> list[Path]:
    """The paths among ``paths`` that lie under PRIVATE_DIRS (a checkout in ``/var/lib/ci/...``, a
    state dir under ``/run``): the holder binds them back over its tmpfs, so the bed sees them at
    their real paths. Nested ones are dropped (binding the outer one carries them)."""
    under = sorted({Path(os.path.abspath(p)) for p in paths
                    if any(str(p) == d or str(p).startswith(d + "/") for d in PRIVATE_DIRS)})
    kept: list[Path] = []
    for p in under:
        if str(p) in PRIVATE_DIRS:
            raise RuntimeError(f"{p} is one of the folders the real node covers with its own tmpfs; "
                               f"set DATASETPREP_TESTBED_STATE to a folder below it or elsewhere")
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


# ------------------------------------------------------------------------------ holder / nsenter


def holder_script(pause: Path, keep: list[Path] = ()) -> str:
    """The holder's script. ``keep`` (see :func:`covered_paths`) are bound back over the tmpfs: the
    host's folders are first bound to a temporary mount point, which is dropped once they are back."""
    q = shlex.quote
    hold = [f"{d}" for d in PRIVATE_DIRS if any(str(k).startswith(d + "/") for k in keep)]
    before = ["hold=$(mktemp -d /tmp/.datasetprep-bed-hold.XXXXXX)"] if keep else []
    before += [f"mkdir -p \"$hold\"{q(d)} && mount --rbind {q(d)} \"$hold\"{q(d)}" for d in hold]
    mounts = [f"mount -t tmpfs -o mode=755,size=512m tmpfs {d}" for d in PRIVATE_DIRS]
    after = [f"mkdir -p {q(str(k))} && mount --rbind \"$hold\"{q(str(k))} {q(str(k))}" for k in keep]
    if keep:
        dirs = sorted({str(x) for d in hold for x in [Path(d), *Path(d).parents] if str(x) != "/"}, key=len, reverse=True)
        after += [f"umount -l \"$hold\"{q(d)}" for d in hold]  # detaches what lies below too
        after += [f"rmdir \"$hold\"{q(d)}" for d in dirs] + ['rmdir "$hold"']
    body = "\n".join(before + mounts + after)
    return f"""#!/bin/sh
# init of the bed's PID namespace (see nodebed.py); runs inside the new namespaces
set -eu
{body}
mkdir -p /run/containerd /var/log/containers /var/log/pods
ip link set lo up
exec {q(str(pause))}
"""


def holder_argv(script: Path) -> list[str]:
    # --kill-child: if this unshare process dies (down, or a crash), its child, the PID
    # namespace's init, gets SIGKILL, and with it every process of the bed
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--net",
            "--propagation", "private", "--", "/bin/sh", str(script)]


def ns_prefix(holder: int) -> list[str]:
    return ["nsenter", f"--target={holder}", "--mount", "--net", "--pid", "--"]


def ns_run(holder: int, argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(ns_prefix(holder) + argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (in the bed) failed with {r.returncode}: {r.stderr.strip()}")
    return r


def wait_holder_ready(holder: int, timeout: float = 20) -> None:
    """The holder's mounts are done once its init is the pause binary (the script exec'd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(holder)
        if kids and all(Path(f"/proc/{k}/exe").resolve().name == "pause" for k in kids):
            return
        time.sleep(0.05)
    raise RuntimeError("the bed's namespace holder did not come up (see logs/holder.log)")


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def ns_init_pid(holder_unshare: int) -> int:
    """Host pid of the PID namespace's init (the forked child of ``unshare --fork``)."""
    kids = _children(holder_unshare)
    if not kids:
        raise RuntimeError("the bed's namespace holder has no init process")
    return kids[0]


# ------------------------------------------------------------------------------ network


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def setup_network(ident: BedIdentity, init: int) -> None:
    """veth pair host <-> bed, addresses, forwarding inside the bed (its own sysctl)."""
    delete_veth(ident)
    _ip("link", "add", ident.veth, "type", "veth", "peer", "name", "eth0", "netns", str(init))
    _ip("addr", "add", f"{ident.host_ip}/30", "dev", ident.veth)
    _ip("link", "set", ident.veth, "up")
    ns_run(init, ["sh", "-c", f"ip addr add {ident.node_ip}/30 dev eth0 && ip link set eth0 up && "
                              "echo 1 > /proc/sys/net/ipv4/ip_forward"])


def delete_veth(ident: BedIdentity) -> bool:
    if _ip("link", "show", ident.veth, check=False).returncode == 0:
        _ip("link", "del", ident.veth, check=False)
        return True
    return False


# ------------------------------------------------------------------------------ cgroups


def cgroup_mounts() -> list[tuple[Path, list[str]]]:
    """(mount point, controllers) of every cgroup hierarchy (v1 and v2) of this host."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _src, opts = (post.split() + ["", "", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            ctrls = [o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")]
            out.append((Path(pre.split()[4]), ctrls if fstype == "cgroup" else ["cgroup2"]))
    return out


def create_cgroup_root(root: str) -> None:
    """The kubelet requires its cgroupRoot to exist in every hierarchy it uses."""
    for mnt, ctrls in cgroup_mounts():
        d = mnt / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if "cpuset" in ctrls:  # a new v1 cpuset starts empty: copy the parent's
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((mnt / f).read_text())


def remove_cgroup_root(root: str, timeout: float = 20) -> list[str]:
    """Kill what still runs in the bed's cgroups and remove them, leaves first. Returns the
    directories that could not be removed."""
    left: list[str] = []
    deadline = time.monotonic() + timeout
    for mnt, _ctrls in cgroup_mounts():
        top = mnt / root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((Path(dp) for dp, _dn, _fn in os.walk(top)), key=lambda p: -len(p.parts))
        for d in dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    for pid in _cgroup_pids(d):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.1)
    return left


def _cgroup_pids(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


# ------------------------------------------------------------------------------ configuration


def nofile_limit() -> int:
    """The kubelet raises RLIMIT_NOFILE to maxOpenFiles; without CAP_SYS_RESOURCE it must
    stay at or below the current hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1_000_000 if hard == resource.RLIM_INFINITY else hard


def write_node_configs(st: Path, ident: BedIdentity, pki: Path, pause_image: str) -> dict[str, Path]:
    """containerd, CNI, kubelet, kube-proxy and kube-scheduler configuration files."""
    node = st / "node"
    for d in ("containerd-root", "containerd-opt", "cni", "kubelet", "pod-logs", "volume-plugins"):
        (node / d).mkdir(parents=True, exist_ok=True)
    files = {
        "containerd": node / "containerd.toml",
        "cni": node / "cni" / "10-testbed.conflist",
        "resolv": node / "resolv.conf",
        "kubelet": node / "kubelet.yaml",
        "kube-proxy": node / "kube-proxy.yaml",
        "kube-scheduler": node / "kube-scheduler.yaml",
    }
    files["containerd"].write_text(f"""version = 2
root = "{node / 'containerd-root'}"
state = "/run/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{node / 'containerd-opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # the bed lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node / 'cni'}"
""")
    files["cni"].write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "testbed",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }, indent=2) + "\n")
    # no DNS server in the bed: KUBERNETES_SERVICE_HOST works, service names do not
    files["resolv"].write_text("# datasetprep test bed: no cluster DNS\nnameserver 127.0.0.1\n")
    files["kubelet"].write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": ident.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "failSwapOn": False, "resolvConf": str(files["resolv"]), "clusterDNS": [],
        "clusterDomain": "cluster.local",
        # never garbage-collect our images (there is no registry to pull them back from)
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {}, "evictionSoft": {}, "makeIPTablesUtilChains": False,
        "maxOpenFiles": nofile_limit(), "oomScoreAdj": 0,
        "podLogsDir": str(node / "pod-logs"), "volumePluginDir": str(node / "volume-plugins"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "healthzBindAddress": "0.0.0.0", "healthzPort": KUBELET_HEALTHZ_PORT, "readOnlyPort": 0,
        "serializeImagePulls": False, "rotateCertificates": False, "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
        "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s",
        "containerLogMaxSize": "10Mi", "containerLogMaxFiles": 2,
    }, indent=2) + "\n")
    files["kube-proxy"].write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(st / "kube-proxy.kubeconfig")},
        "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"0.0.0.0:{KUBE_PROXY_HEALTHZ_PORT}", "metricsBindAddress": "127.0.0.1:10249",
        "oomScoreAdj": 0,
        # 0 = leave the (partly host-global) conntrack sysctls alone
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "minSyncPeriod": "0s", "syncPeriod": "30s"},
    }, indent=2) + "\n")
    files["kube-scheduler"].write_text(json.dumps({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(st / "kube-scheduler.kubeconfig")},
        "leaderElection": {"leaderElect": False},
    }, indent=2) + "\n")
    return files


# ------------------------------------------------------------------------------ images


def ctr(holder: int, *args: str, timeout: float = 600) -> str:
    return ns_run(holder, ["ctr", "--address", CONTAINERD_SOCK, "-n", "k8s.io", *args], timeout=timeout).stdout


def present_images(holder: int) -> dict[str, str]:
    """Image name -> image id (config digest) of what containerd's k8s.io namespace holds."""
    out = {}
    for line in ctr(holder, "images", "ls").splitlines()[1:]:
        cols = line.split()
        if len(cols) < 3 or cols[0].startswith("sha256:"):
            continue
        name, digest = cols[0], cols[2]
        try:
            doc = json.loads(ctr(holder, "content", "get", digest))
        except (RuntimeError, ValueError):
            continue
        if "manifests" in doc:  # an index: the linux/amd64 manifest
            for m in doc["manifests"]:
                plat = m.get("platform") or {}
                if plat.get("os", "linux") == "linux" and plat.get("architecture", "amd64") == "amd64":
                    doc = json.loads(ctr(holder, "content", "get", m["digest"]))
                    break
        cfg = (doc.get("config") or {}).get("digest")
        if cfg:
            out[name] = cfg
    return out


def import_archives(holder: int, archives: list[Path], log) -> dict[str, str]:
    """Import each archive whose images are not all present with the same id. Returns the
    images of all archives (name -> id)."""
    have = present_images(holder)
    result: dict[str, str] = {}
    for arc in archives:
        want = ociimage.archive_images(arc)
        if not want:
            raise RuntimeError(f"{arc}: no named image in this archive (need index.json annotations "
                               "io.containerd.image.name / org.opencontainers.image.ref.name, or RepoTags)")
        result.update(want)
        if all(have.get(n) == i for n, i in want.items()):
            log(f"images: {', '.join(want)} already present")
            continue
        t0 = time.monotonic()
        ctr(holder, "images", "import", str(arc))
        have = present_images(holder)
        missing = [n for n, i in want.items() if have.get(n) != i]
        if missing:
            raise RuntimeError(f"{arc}: imported, but containerd does not list {missing} with the archive's "
                               f"image id; it lists {have}")
        log(f"images: imported {', '.join(want)} from {arc.name} in {time.monotonic() - t0:.1f}s")
    return result


def listed_archives(images_dir: Path) -> list[Path]:
    """Archives named by ``images.json`` in a directory made by tests/cluster/images. Accepted:
    a list, or ``{"images": [...]}``; entries are file names or objects with an ``archive``
    (or ``file``/``path``) key, relative to the directory."""
    index = images_dir / "images.json"
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"DATASETPREP_TESTBED_IMAGES={images_dir}: cannot read {index}: {e}") from e
    entries = doc.get("images", doc) if isinstance(doc, dict) else doc
    if isinstance(entries, dict):
        entries = list(entries.values())
    out = []
    for e in entries if isinstance(entries, list) else []:
        rel = e if isinstance(e, str) else next((e[k] for k in ("archive", "file", "path") if k in e), None)
        if not rel:
            raise RuntimeError(f"{index}: entry {e!r} names no archive (expected a key 'archive')")
        p = images_dir / rel
        if not p.is_file():
            raise RuntimeError(f"{index} lists {rel}, which is not a file in {images_dir}")
        out.append(p)
    if not out:
        raise RuntimeError(f"{index} lists no image archive")
    return out
