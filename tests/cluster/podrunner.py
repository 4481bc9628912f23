#!/usr/bin/env python3
"""Test-only kubelet + scheduler for the datasetprep test bed.

Registers one Ready Node, binds every schedulable Pending pod to it (pods/binding) and runs
the pod's containers as local processes (init containers first, in order; then the regular
containers in parallel), reporting status through pods/status so that the real Job
controller counts successes and failures. See tests/cluster/README.md for what is and is
not emulated.

Fault injection ("kill API"):
  * annotate a pod with ``testbed.datasetprep.io/kill=<anything but "false">``: every
    running container of the pod gets SIGKILL (reported as exitCode 137, reason Error).
    Each distinct annotation value triggers once.
  * or create the file ``$STATE/kill/<namespace>/<pod>``: same, the file is removed
    once handled.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import kubernetes

log = logging.getLogger("podrunner")

KILL_ANNOTATION = "testbed.datasetprep.io/kill"
MOUNT_MODE_ANNOTATION = "testbed.datasetprep.io/mount-mode"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TERM_MSG_MAX = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
RESTART_BACKOFF_START = float(os.environ.get("DATASETPREP_TESTBED_RESTART_BACKOFF", "1"))
RESTART_BACKOFF_MAX = 30.0


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================ API access


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str):
        self.status = status
        self.body = body
        try:
            self.message = json.loads(body).get("message", body)
        except ValueError:
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


class Kube:
    """Thin JSON-over-HTTPS layer on the kubernetes client's connection pool.

    Raw dicts instead of generated models: the runner must round-trip fields its
    client version may not know, and it only needs a handful of endpoints."""

    def __init__(self, kubeconfig: str):
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 64
        self.cfg = cfg
        self.api = kubernetes.client.ApiClient(cfg)
        self.pool = self.api.rest_client.pool_manager
        self.host = cfg.host.rstrip("/")

    def _headers(self, content_type: str | None) -> dict:
        h = {"Accept": "application/json", "User-Agent": "datasetprep-testbed-podrunner"}
        if content_type:
            h["Content-Type"] = content_type
        if self.cfg.refresh_api_key_hook:
            self.cfg.refresh_api_key_hook(self.cfg)
        auth = (self.cfg.api_key or {}).get("authorization") or (self.cfg.api_key or {}).get("BearerToken")
        if auth:
            h["Authorization"] = auth if " " in auth else f"Bearer {auth}"
        return h

    def request(self, method: str, path: str, body=None, query: dict | None = None,
                content_type: str = "application/json", timeout: float = 30.0, ok404: bool = False):
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        r = self.pool.request(method, url, body=data, headers=self._headers(content_type if data else None),
                              timeout=timeout, preload_content=True, retries=False)
        if r.status == 404 and ok404:
            return None
        if r.status >= 300:
            raise ApiError(r.status, r.data.decode(errors="replace"), f"{method} {path}")
        return json.loads(r.data) if r.data else None

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def stream(self, path: str, query: dict, timeout: float):
        """Yield JSON lines of a watch."""
        url = self.host + path + "?" + urllib.parse.urlencode(query)
        r = self.pool.request("GET", url, headers=self._headers(None), timeout=timeout,
                              preload_content=False, retries=False)
        try:
            if r.status != 200:
                raise ApiError(r.status, r.read().decode(errors="replace"), f"WATCH {path}")
            buf = b""
            for chunk in r.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            r.release_conn()


# ============================================================================ helpers

_QTY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(q) -> float:
    m = _QTY.match(str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def expand(s: str, env: dict) -> str:
    """Kubernetes $(VAR) expansion (third_party/forked/golang/expansion): $$ -> $,
    $(NAME) -> value if defined else left as is; anything else literal."""
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c == "$" and i + 1 < n:
            nxt = s[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                j = s.find(")", i + 2)
                if j == -1:
                    out.append(s[i:])
                    break
                name = s[i + 2 : j]
                out.append(env[name] if name in env else s[i : j + 1])
                i = j + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


_FIELD = re.compile(r"^metadata\.(labels|annotations)\[['\"](.+)['\"]\]$")


def field_ref(pod: dict, path: str) -> str:
    md, spec = pod["metadata"], pod["spec"]
    m = _FIELD.match(path)
    if m:
        return (md.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        d = md.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
    raise ValueError(f"unsupported fieldRef {path!r}")


def resource_ref(container: dict, ref: dict, node_alloc: dict) -> str:
    res = ref["resource"]
    kind, _, name = res.partition(".")
    val = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if val is None:  # kubelet: no limit -> node allocatable
        val = node_alloc.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(int(math.ceil(parse_quantity(val) / divisor)))


def b64d(s: str) -> bytes:
    return base64.b64decode(s or "")


class StartError(Exception):
    """A container could not be configured (kubelet: CreateContainerConfigError)."""


class VolumeError(Exception):
    """A volume could not be set up (kubelet keeps the pod in ContainerCreating)."""


# ============================================================================ mount points


LEFTOVER = "<leftover>"


class MountPoints:
    """Creates missing mount-point placeholders on the host (a bind mount needs an existing
    target, e.g. /data) and removes them when the last container using them has ended.

    Reference counts live in a host-wide registry guarded by flock, so that several test
    beds (or pod runners) on one machine never remove a placeholder another one still has
    a container mounted on."""

    def __init__(self, registry: Path | None = None):
        self.dir = Path(registry or os.environ.get("DATASETPREP_TESTBED_MOUNTPOINT_REGISTRY")
                        or "/tmp/datasetprep-testbed-mountpoints")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "registry.json"
        self.tlock = threading.Lock()
        self.me = f"{os.getpid()}:{_start_time(os.getpid())}"

    def _locked(self, fn):
        import fcntl

        with self.tlock, open(self.dir / "registry.lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                reg = json.loads(self.file.read_text()) if self.file.exists() else {}
            except ValueError:
                reg = {}
            for t in [t for t in reg if t != LEFTOVER]:  # drop holders that died without releasing
                entry = reg[t]
                entry["holders"] = {h: n for h, n in entry["holders"].items() if _alive(h)}
                if not entry["holders"]:
                    reg.setdefault(LEFTOVER, {"created": [], "holders": {}})["created"] += entry["created"]
                    del reg[t]
            result = fn(reg)
            tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(reg))
            tmp.replace(self.file)
            return result

    def acquire(self, target: str, is_file: bool) -> None:
        def op(reg):
            entry = reg.setdefault(target, {"created": [], "holders": {}})
            missing, p = [], target
            while p not in ("/", "") and not os.path.lexists(p):
                missing.append(p)
                p = os.path.dirname(p)
            made = []
            try:
                for q in reversed(missing):
                    if q == target and is_file:
                        open(q, "a").close()
                    else:
                        os.mkdir(q)
                    made.append(q)
            except OSError as e:
                log.warning("cannot create mount point %s: %s", target, e)
            entry["created"] = list(reversed(made)) + [q for q in entry["created"] if q not in made]
            entry["holders"][self.me] = entry["holders"].get(self.me, 0) + 1

        self._locked(op)

    def release(self, target: str) -> None:
        def op(reg):
            entry = reg.get(target)
            if entry is None:
                return
            n = entry["holders"].get(self.me, 0) - 1
            if n > 0:
                entry["holders"][self.me] = n
            else:
                entry["holders"].pop(self.me, None)
            if entry["holders"]:
                return
            del reg[target]
            # placeholders of this target plus those an earlier release had to leave behind
            pending = set(entry["created"]) | set(reg.pop(LEFTOVER, {"created": []})["created"])
            live = [t for t, e in reg.items() if e["holders"]]
            keep = []
            for q in sorted(pending, key=lambda x: -x.count("/")):  # deepest first
                if any(t == q or t.startswith(q.rstrip("/") + "/") for t in live):
                    keep.append(q)  # another live mount target sits on or under it
                    continue
                try:
                    if os.path.isdir(q) and not os.path.islink(q):
                        os.rmdir(q)  # only if empty
                    elif os.path.isfile(q) and os.path.getsize(q) == 0:
                        os.unlink(q)
                except OSError:
                    pass  # not empty (or gone): leave it alone for good
            if keep:
                reg[LEFTOVER] = {"created": keep, "holders": {}}

        self._locked(op)


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return "Z" if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError, ValueError):
        return "?"


def _alive(holder: str) -> bool:
    pid, _, start = holder.partition(":")
    try:
        return _start_time(int(pid)) == start
    except ValueError:
        return False


def _protected_host_paths() -> list[str]:
    """Host folders a container's process needs to see as they are: this checkout (editable
    installs point into it) and the Python installation running the tests."""
    import site

    paths = {str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix, sys.exec_prefix}
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - virtualenv without getsitepackages
        pass
    return sorted(os.path.normpath(os.path.realpath(p)) for p in paths)


PROTECTED_HOST_PATHS = _protected_host_paths()


def order_mounts(mounts: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    """Order bind mounts so that none hides the source of a later one (e.g. an emptyDir at /tmp
    when the state dir, and so a termination file or hostPath source, lives under /tmp); otherwise
    parents before children."""
    def under(p: str, d: str) -> bool:
        return p == d or p.startswith(d.rstrip("/") + "/")

    remaining = sorted(mounts, key=lambda t: t[1].count("/"))
    ordered = []
    while remaining:
        for i, m in enumerate(remaining):
            if not any(under(o[0], m[1]) for o in remaining if o is not m):
                ordered.append(remaining.pop(i))
                break
        else:  # a cycle: keep the depth order
            ordered.append(remaining.pop(0))
    return ordered


def probe_mount_namespace(tmp: Path) -> tuple[bool, str]:
    if os.environ.get("DATASETPREP_TESTBED_MOUNTNS", "").lower() in ("0", "false", "no", "off"):
        return False, "disabled by DATASETPREP_TESTBED_MOUNTNS"
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if not unshare or not mount:
        return False, "unshare/mount not installed"
    src, dst = tmp / "probe-src", tmp / "probe-dst"
    src.mkdir(parents=True, exist_ok=True)
    dst.mkdir(parents=True, exist_ok=True)
    (src / "ok").write_text("ok")
    script = f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))} && cat {shlex.quote(str(dst / 'ok'))}"
    try:
        r = subprocess.run([unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"probe failed: {e}"
    leaked = (dst / "ok").exists()
    shutil.rmtree(src, ignore_errors=True)
    if not leaked:
        shutil.rmtree(dst, ignore_errors=True)
    if r.returncode == 0 and r.stdout.strip() == "ok" and not leaked:
        return True, "unshare --mount works"
    return False, f"probe failed (rc={r.returncode}): {r.stderr.strip()[:300]}"


# ============================================================================ container run


class Container:
    """One container of a pod and its kubelet-visible state."""

    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.sidecar = init and spec.get("restartPolicy") == "Always"
        self.state: dict = {"waiting": {"reason": "PodInitializing"}}
        self.last_state: dict = {}
        self.restart_count = 0
        self.proc: subprocess.Popen | None = None
        self.started_at: str | None = None
        self.attempt = 0
        self.next_start = 0.0  # monotonic time of the next (re)start
        self.backoff = RESTART_BACKOFF_START
        self.done = False  # terminated and will not restart
        self.exit_code: int | None = None
        self.term_file: Path | None = None
        self.log_offset = 0
        self.mount_targets: list[str] = []

    @property
    def running(self) -> bool:
        return self.proc is not None

    def status(self) -> dict:
        image = self.spec.get("image") or "testbed/none"
        st = {
            "name": self.name,
            "image": image,
            "imageID": f"testbed://{image}",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.running and (not self.init or self.sidecar),
            "restartCount": self.restart_count,
            "started": self.running,
        }
        if self.attempt:
            st["containerID"] = f"testbed://{self.name}-{self.attempt}"
        return st


class PodWorker(threading.Thread):
    def __init__(self, runner: "Runner", pod: dict):
        md = pod["metadata"]
        super().__init__(name=f"pod-{md['namespace']}/{md['name']}", daemon=True)
        self.runner = runner
        self.kube = runner.kube
        self.pod = pod
        self.ns, self.pod_name, self.uid = md["namespace"], md["name"], md["uid"]
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.deleting = False
        self.kill_seen: str | None = None
        self.kill_pending = False
        self.finished = False
        self.dir = runner.state / "pods" / self.ns / f"{self.pod_name}-{self.uid[:8]}"
        self.log_dir = runner.state / "logs" / "pods" / self.ns / self.pod_name
        self.volumes: dict[str, dict] = {}
        self.inits: list[Container] = []
        self.mains: list[Container] = []
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time: str | None = None
        self.cond_times: dict[str, tuple[str, str]] = {}
        self.ready_to_start = False
        self.last_pushed: str | None = None
        self._note(pod)

    # ------------------------------------------------------------------ events
    def update(self, pod: dict) -> None:
        with self.lock:
            self.pod = pod
        self._note(pod)
        self.wake.set()

    def _note(self, pod: dict) -> None:
        md = pod["metadata"]
        if md.get("deletionTimestamp"):
            self.deleting = True
        val = (md.get("annotations") or {}).get(KILL_ANNOTATION)
        if val and val.lower() != "false" and val != self.kill_seen:
            self.kill_seen = val
            self.kill_pending = True

    def gone(self) -> None:
        """The pod object was removed from the API."""
        self.deleting = True
        self.wake.set()

    # ------------------------------------------------------------------ main
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - never crash the runner on one pod
            log.exception("%s/%s: pod worker failed", self.ns, self.pod_name)
            self._kill_all(signal.SIGKILL)
            if not self.deleting and self.phase not in ("Succeeded", "Failed"):
                self.phase, self.reason, self.message = "Failed", "TestbedError", f"pod runner error: {e}"[:1000]
                for c in self.inits + self.mains:
                    if "terminated" not in c.state:
                        c.state = {"terminated": {"exitCode": 128, "reason": "StartError",
                                                  "message": str(e)[:1000], "finishedAt": now()}}
                self._push(force=True)
        finally:
            self._release_mounts()
            self.finished = True
            if self.deleting:
                self._finalize_delete()

    def _run(self) -> None:
        spec = self.pod["spec"]
        if not spec.get("nodeName"):
            if not self._bind():
                return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.inits = [Container(c, True) for c in spec.get("initContainers") or []]
        self.mains = [Container(c, False) for c in spec.get("containers") or []]
        for c in self.mains:
            c.state = {"waiting": {"reason": "PodInitializing" if self.inits else "ContainerCreating"}}
        self.start_time = now()
        self._push(force=True)

        # volumes: retried until they can be set up (kubelet: ContainerCreating)
        while True:
            if self.deleting:
                return self._terminate_for_deletion()
            try:
                self._setup_volumes()
                break
            except (VolumeError, ApiError) as e:
                msg = str(e)[:500]
                for c in self.inits[:1] or self.mains:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": msg}}
                self._push()
                self.wake.wait(1.0)
                self.wake.clear()
        self.ready_to_start = True
        self._push()

        deadline = spec.get("activeDeadlineSeconds")
        t_start = time.monotonic()
        init_idx = 0
        while True:
            if self.deleting:
                return self._terminate_for_deletion()
            if deadline is not None and time.monotonic() - t_start > deadline:
                self._kill_and_wait()
                self.phase, self.reason = "Failed", "DeadlineExceeded"
                self.message = "Pod was active on the node longer than the specified deadline"
                self._push(force=True)
                return
            self._check_file_trigger()
            if self.kill_pending:
                n = self._kill_all(signal.SIGKILL)
                if n:  # otherwise stay armed until a container is running
                    self.kill_pending = False
                    log.info("%s/%s: kill trigger -> SIGKILL %d container(s)", self.ns, self.pod_name, n)

            self._reap_all()

            # init containers, one at a time (sidecars keep running)
            while init_idx < len(self.inits):
                c = self.inits[init_idx]
                if c.sidecar:  # restartPolicy: Always init container: start it and move on
                    if not c.running and not c.done:
                        self._maybe_start(c)
                    if c.attempt:
                        init_idx += 1
                        continue
                    break
                if c.done and c.exit_code == 0:
                    init_idx += 1
                    continue
                if c.done:  # failed, no restart
                    break
                if not c.running:
                    self._maybe_start(c)
                break
            init_failed = any(c.done and c.exit_code != 0 and not c.sidecar for c in self.inits)
            if init_failed:
                self._kill_and_wait()
                self.phase = "Failed"
                self._push(force=True)
                return
            if init_idx >= len(self.inits):
                for c in self.mains:
                    if not c.running and not c.done:
                        self._maybe_start(c)
                for c in self.inits:  # restart sidecars
                    if c.sidecar and not c.running and not self._mains_done():
                        self._maybe_start(c)
            if self.mains and self._mains_done():
                self._kill_sidecars()
                self.phase = "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
                self._push(force=True)
                return
            if any(c.running for c in self.mains):
                self.phase = "Running"
            self._push()
            self.wake.wait(0.2)
            self.wake.clear()

    def _mains_done(self) -> bool:
        return all(c.done for c in self.mains)

    # ------------------------------------------------------------------ binding
    def _bind(self) -> bool:
        """Bind like the scheduler would, once the pod's PVCs are bound."""
        while True:
            if self.deleting:
                return False
            with self.lock:
                pod = self.pod
            if pod["spec"].get("nodeName"):
                return True
            if pod["spec"].get("schedulingGates"):
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            pending = self._unbound_claims(pod)
            if not pending:
                try:
                    self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/binding", {
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": self.pod_name, "uid": self.uid},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": self.runner.node},
                    })
                    log.info("%s/%s: bound to %s", self.ns, self.pod_name, self.runner.node)
                    with self.lock:
                        self.pod["spec"]["nodeName"] = self.runner.node
                    return True
                except ApiError as e:
                    if e.status == 404:
                        return False
                    log.warning("%s/%s: binding failed: %s", self.ns, self.pod_name, e)
            self.wake.wait(1.0)
            self.wake.clear()

    def _unbound_claims(self, pod: dict) -> list[str]:
        out = []
        for v in pod["spec"].get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            pvc = self.kube.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}", ok404=True)
            if not pvc or (pvc.get("status") or {}).get("phase") != "Bound" or not pvc["spec"].get("volumeName"):
                out.append(claim)
        return out

    # ------------------------------------------------------------------ volumes
    def _setup_volumes(self) -> None:
        pod = self.pod
        vols: dict[str, dict] = {}
        vroot = self.dir / "volumes"
        for v in pod["spec"].get("volumes") or []:
            name = v["name"]
            if "hostPath" in v:
                hp = v["hostPath"]
                path, typ = hp["path"], hp.get("type") or ""
                if not os.path.lexists(path):
                    if typ == "FileOrCreate":
                        Path(path).parent.mkdir(parents=True, exist_ok=True)
                        Path(path).touch()
                    elif typ in ("", "DirectoryOrCreate"):
                        Path(path).mkdir(parents=True, exist_ok=True)
                    else:
                        raise VolumeError(f"hostPath type check failed: {path} is not a {typ}")
                vols[name] = {"path": path}
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self.kube.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}", ok404=True)
                if not pvc or not pvc["spec"].get("volumeName"):
                    raise VolumeError(f"persistentvolumeclaim {claim!r} not found or not bound")
                pv = self.kube.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}", ok404=True)
                if not pv:
                    raise VolumeError(f"persistentvolume {pvc['spec']['volumeName']!r} not found")
                src = (pv["spec"].get("hostPath") or {}).get("path") or (pv["spec"].get("local") or {}).get("path")
                if not src:
                    raise VolumeError(f"persistentvolume {pv['metadata']['name']}: only hostPath/local PVs supported")
                Path(src).mkdir(parents=True, exist_ok=True)
                vols[name] = {"path": src, "readOnly": bool(v["persistentVolumeClaim"].get("readOnly"))}
            elif "emptyDir" in v:
                d = vroot / "empty-dir" / name
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o777)
                vols[name] = {"path": str(d), "scratch": True}
            elif "configMap" in v or "secret" in v or "downwardAPI" in v or "projected" in v:
                d = vroot / "files" / name
                self._materialise(v, d)
                vols[name] = {"path": str(d), "readOnly": True}
            elif "ephemeral" in v:
                d = vroot / "ephemeral" / name
                d.mkdir(parents=True, exist_ok=True)
                vols[name] = {"path": str(d)}
            else:
                kinds = [k for k in v if k != "name"]
                raise VolumeError(f"volume {name!r}: unsupported volume type {kinds}")
        self.volumes = vols

    def _write_files(self, d: Path, files: dict[str, tuple[bytes, int]]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        for rel, (data, mode) in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(mode & 0o777)
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)

    def _source_files(self, kind: str, src: dict, default_mode: int) -> dict[str, tuple[bytes, int]]:
        if kind in ("configMap", "secret"):
            name = src.get("name") or src.get("secretName")
            path = "configmaps" if kind == "configMap" else "secrets"
            obj = self.kube.get(f"/api/v1/namespaces/{self.ns}/{path}/{name}", ok404=True)
            if obj is None:
                if src.get("optional"):
                    return {}
                raise VolumeError(f"{kind} {name!r} not found")
            if kind == "secret":
                data = {k: b64d(v) for k, v in (obj.get("data") or {}).items()}
            else:
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                data.update({k: b64d(v) for k, v in (obj.get("binaryData") or {}).items()})
            items = src.get("items")
            if items:
                out = {}
                for it in items:
                    if it["key"] not in data:
                        if src.get("optional"):
                            continue
                        raise VolumeError(f"{kind} {name!r} has no key {it['key']!r}")
                    out[it["path"]] = (data[it["key"]], it.get("mode", default_mode))
                return out
            return {k: (v, default_mode) for k, v in data.items()}
        if kind == "downwardAPI":
            out = {}
            for it in src.get("items") or []:
                if "fieldRef" in it:
                    val = field_ref(self.pod, it["fieldRef"]["fieldPath"])
                else:
                    cname = it["resourceFieldRef"].get("containerName")
                    cont = next((c for c in self.pod["spec"]["containers"] if c["name"] == cname),
                                self.pod["spec"]["containers"][0])
                    val = resource_ref(cont, it["resourceFieldRef"], self.runner.allocatable)
                out[it["path"]] = (val.encode(), it.get("mode", default_mode))
            return out
        if kind == "serviceAccountToken":
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": [src["audience"]] if src.get("audience") else [],
                "expirationSeconds": src.get("expirationSeconds", 3607),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid}}}
            tr = self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
            return {src["path"]: (tr["status"]["token"].encode(), default_mode)}
        if kind == "clusterTrustBundle":
            raise VolumeError("clusterTrustBundle projections are not supported by the test bed")
        raise VolumeError(f"unsupported projection {kind}")

    def _materialise(self, v: dict, d: Path) -> None:
        d.parent.mkdir(parents=True, exist_ok=True)
        files: dict[str, tuple[bytes, int]] = {}
        for kind in ("configMap", "secret", "downwardAPI"):
            if kind in v:
                files = self._source_files(kind, v[kind], v[kind].get("defaultMode", 0o644))
        if "projected" in v:
            mode = v["projected"].get("defaultMode", 0o644)
            for source in v["projected"].get("sources") or []:
                for kind, src in source.items():
                    files.update(self._source_files(kind, src, src.get("mode", mode) if isinstance(src, dict) else mode))
        self._write_files(d, files)

    # ------------------------------------------------------------------ env
    def _lookup(self, kind: str, name: str, key: str, optional: bool) -> str | None:
        path = "configmaps" if kind == "configMap" else "secrets"
        obj = self.kube.get(f"/api/v1/namespaces/{self.ns}/{path}/{name}", ok404=True)
        if obj is None:
            if optional:
                return None
            raise StartError(f'{kind} "{name}" not found')
        if kind == "secret":
            if key in (obj.get("data") or {}):
                return b64d(obj["data"][key]).decode(errors="replace")
        else:
            if key in (obj.get("data") or {}):
                return obj["data"][key]
            if key in (obj.get("binaryData") or {}):
                return b64d(obj["binaryData"][key]).decode(errors="replace")
        if optional:
            return None
        raise StartError(f"couldn't find key {key} in {kind} {self.ns}/{name}")

    def _build_env(self, c: dict) -> dict[str, str]:
        base = {
            "PATH": self.runner.path,
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": self.pod["spec"].get("hostname") or self.pod_name,
        }
        for k in self.runner.passthrough:
            if k in os.environ:
                base[k] = os.environ[k]
        port = str(self.runner.api_port)
        service = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://127.0.0.1:{port}",
        } if self.runner.api_port else {}
        env: dict[str, str] = {}
        for ef in c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            for kind, key in (("configMap", "configMapRef"), ("secret", "secretRef")):
                if key not in ef:
                    continue
                ref = ef[key]
                path = "configmaps" if kind == "configMap" else "secrets"
                obj = self.kube.get(f"/api/v1/namespaces/{self.ns}/{path}/{ref['name']}", ok404=True)
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise StartError(f'{kind} "{ref["name"]}" not found')
                for k, val in (obj.get("data") or {}).items():
                    env[prefix + k] = b64d(val).decode(errors="replace") if kind == "secret" else val
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(e.get("value", ""), {**service, **env})
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = field_ref(self.pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = resource_ref(c, vf["resourceFieldRef"], self.runner.allocatable)
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configMap"
                ref = vf["secretKeyRef" if kind == "secret" else "configMapKeyRef"]
                val = self._lookup(kind, ref["name"], ref["key"], bool(ref.get("optional")))
                if val is not None:
                    env[name] = val
            else:
                raise StartError(f"env {name}: unsupported valueFrom {list(vf)}")
        return {**base, **service, **env}

    # ------------------------------------------------------------------ processes
    def _mounts_for(self, c: dict, env: dict) -> list[tuple[str, str, bool]]:
        out = []
        for m in c.get("volumeMounts") or []:
            vol = self.volumes.get(m["name"])
            if vol is None:
                raise StartError(f"volume {m['name']!r} not found for mount {m['mountPath']}")
            src = vol["path"]
            sub = m.get("subPath") or (expand(m["subPathExpr"], env) if m.get("subPathExpr") else "")
            if sub:
                src = os.path.join(src, sub)
                if not os.path.lexists(src):
                    os.makedirs(src, exist_ok=True)
            ro = bool(m.get("readOnly") or vol.get("readOnly"))
            dst = os.path.normpath(m["mountPath"])
            hidden = [p for p in PROTECTED_HOST_PATHS if p == dst or p.startswith(dst.rstrip("/") + "/")]
            if vol.get("scratch") and hidden and self.runner.mountns:
                # An emptyDir over e.g. /tmp would hide this checkout or the Python installation
                # (a CI clone under /tmp): the container then uses the host's folder there.
                log.info("%s/%s: emptyDir %s not mounted at %s: it would hide %s", self.ns, self.pod_name,
                         m["name"], dst, hidden[0])
                continue
            out.append((src, dst, ro))
        return sorted(out, key=lambda t: t[1].count("/"))

    def _start(self, c: Container) -> None:
        spec = c.spec
        c.attempt += 1
        try:
            env = self._build_env(spec)
            mounts = self._mounts_for(spec, env)
        except (StartError, ApiError, ValueError) as e:
            c.attempt -= 1
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)[:1000]}}
            c.next_start = time.monotonic() + 1.0
            log.info("%s/%s[%s]: %s", self.ns, self.pod_name, c.name, e)
            return
        argv = [expand(a, env) for a in (spec.get("command") or []) + (spec.get("args") or [])]
        if not spec.get("command"):
            entry = self.runner.entrypoint_for(spec.get("image", ""))
            argv = [expand(a, env) for a in entry] + argv
        log_path = self.log_dir / f"{c.name}.log"
        logf = open(log_path, "ab")
        logf.write(f"# testbed: {now()} start {c.name} attempt {c.attempt}\n".encode())
        logf.flush()
        c.log_offset = logf.tell()
        c.term_file = self.dir / "termination" / f"{c.name}-{c.attempt}"
        c.term_file.parent.mkdir(parents=True, exist_ok=True)
        c.term_file.write_bytes(b"")
        term_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        workdir = spec.get("workingDir") or ""
        scratch = self.dir / "cwd" / c.name
        scratch.mkdir(parents=True, exist_ok=True)
        err = None
        if not argv:
            err = "no command given and no entrypoint known for image " + repr(spec.get("image"))
        elif "/" not in argv[0] and not shutil.which(argv[0], path=env.get("PATH", "")):
            err = f'exec: "{argv[0]}": executable file not found in $PATH'
        if err is None:
            if self.runner.mountns:
                term_dst = os.path.normpath(term_path)
                mounts = order_mounts(mounts + [(str(c.term_file), term_dst, False)])
                lines = []
                for src, dst, ro in mounts:
                    is_file = os.path.isfile(src)
                    if not self._nested(dst, mounts):
                        self.runner.mountpoints.acquire(dst, is_file)
                        c.mount_targets.append(dst)
                    q, qs = shlex.quote(dst), shlex.quote(src)
                    if is_file:
                        step = f"{{ [ -e {q} ] || {{ mkdir -p $(dirname {q}) && : > {q}; }}; }} && mount --bind {qs} {q}"
                    else:
                        step = f"{{ [ -e {q} ] || mkdir -p {q}; }} && mount --bind {qs} {q}"
                    if ro:
                        step += f" && mount -o remount,bind,ro {q}"
                    if dst == term_dst:  # best effort: no termination file if the path cannot be mounted
                        step = f"{{ {step}; }} 2>/dev/null || true"
                    else:
                        msg = shlex.quote(f"testbed: cannot bind-mount {src} at {dst}")
                        step = f"{{ {step}; }} || {{ echo {msg} >&2; exit 128; }}"
                    lines.append(step)
                cwd = workdir or str(scratch)
                lines.append(f"mkdir -p {shlex.quote(cwd)} && cd {shlex.quote(cwd)} || exit 128")
                lines.append('exec "$@"')
                full = [self.runner.unshare, "--mount", "--propagation", "private", "--",
                        "/bin/sh", "-c", "\n".join(lines), "sh", *argv]
                cwd_arg = "/"
            else:
                rewrite = sorted(((dst, src) for src, dst, _ in mounts), key=lambda t: -len(t[0]))
                rewrite.append((os.path.normpath(term_path), str(c.term_file)))
                argv = [rewrite_paths(a, rewrite) for a in argv]
                env = {k: rewrite_paths(v, rewrite) for k, v in env.items()}
                cwd_arg = rewrite_paths(workdir, rewrite) if workdir else str(scratch)
                os.makedirs(cwd_arg, exist_ok=True)
                full = argv
            try:
                c.proc = subprocess.Popen(full, env=env, cwd=cwd_arg, stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                err = str(e)
        logf.close()
        if err is not None:
            with open(log_path, "ab") as f:
                f.write(f"# testbed: start error: {err}\n".encode())
            self._release_container_mounts(c)
            c.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": err[:1000],
                                      "startedAt": now(), "finishedAt": now(),
                                      "containerID": f"testbed://{c.name}-{c.attempt}"}}
            self._after_exit(c, 128)
            return
        c.started_at = now()
        c.state = {"running": {"startedAt": c.started_at}}
        write_pid(self.runner.state / "run" / f"{self.uid}_{c.name}.pid", c.proc.pid)
        log.info("%s/%s[%s]: started pid %d: %s", self.ns, self.pod_name, c.name, c.proc.pid, shlex.join(argv)[:300])

    @staticmethod
    def _nested(dst: str, mounts) -> bool:
        return any(d != dst and dst.startswith(d.rstrip("/") + "/") for _, d, _ in mounts)

    def _maybe_start(self, c: Container) -> None:
        if time.monotonic() >= c.next_start:
            self._start(c)

    def _reap_all(self) -> None:
        for c in self.inits + self.mains:
            if c.proc is None:
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            code = 128 - rc if rc < 0 else rc  # killed by signal n -> 128+n, like the runtime
            self._record_exit(c, code)

    def _record_exit(self, c: Container, code: int) -> None:
        (self.runner.state / "run" / f"{self.uid}_{c.name}.pid").unlink(missing_ok=True)
        c.proc = None
        self._release_container_mounts(c)
        msg = ""
        try:
            msg = c.term_file.read_bytes()[:TERM_MSG_MAX].decode(errors="replace") if c.term_file else ""
        except OSError:
            pass
        policy = c.spec.get("terminationMessagePolicy", "File")
        if not msg and code != 0 and policy == "FallbackToLogsOnError":
            msg = self._log_tail(c)
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.started_at or now(), "finishedAt": now(),
                "containerID": f"testbed://{c.name}-{c.attempt}"}
        if msg:
            term["message"] = msg
        c.state = {"terminated": term}
        log.info("%s/%s[%s]: exited %d", self.ns, self.pod_name, c.name, code)
        self._after_exit(c, code)

    def _after_exit(self, c: Container, code: int) -> None:
        c.exit_code = code
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if c.sidecar:
            restart = not self._mains_done() and not self.deleting
        elif self.deleting:
            restart = False
        elif c.init:  # init containers only re-run after a failure, unless restartPolicy is Never
            restart = policy != "Never" and code != 0
        else:
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if restart:
            c.last_state = c.state
            c.restart_count += 1
            c.next_start = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, RESTART_BACKOFF_MAX)
            c.state = {"waiting": {"reason": "CrashLoopBackOff" if code != 0 else "Completed",
                                   "message": f"back-off restarting container {c.name}"}}
        else:
            c.done = True

    def _log_tail(self, c: Container) -> str:
        try:
            with open(self.log_dir / f"{c.name}.log", "rb") as f:
                f.seek(c.log_offset)
                data = f.read()
        except OSError:
            return ""
        lines = data.splitlines()[-FALLBACK_LOG_LINES:]
        return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")

    def _kill_all(self, sig: int) -> int:
        n = 0
        for c in self.inits + self.mains:
            if c.proc is not None and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, sig)
                    n += 1
                except ProcessLookupError:
                    pass
        return n

    def _kill_and_wait(self) -> None:
        """SIGKILL every running container and record its exit (137)."""
        self._kill_all(signal.SIGKILL)
        for c in self.inits + self.mains:
            if c.proc is not None:
                c.proc.wait()
        self._reap_all()

    def _kill_sidecars(self) -> None:
        for c in self.inits:
            if c.sidecar and c.proc is not None:
                try:
                    os.killpg(c.proc.pid, signal.SIGTERM)
                    c.proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.wait()
                self._reap_all()

    def _check_file_trigger(self) -> None:
        f = self.runner.state / "kill" / self.ns / self.pod_name
        if f.exists():
            try:
                f.unlink()
            except OSError:
                pass
            self.kill_pending = True

    def _terminate_for_deletion(self) -> None:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = max(0, min(int(grace), 30))
        if self._kill_all(signal.SIGTERM):
            end = time.monotonic() + grace
            while time.monotonic() < end and any(c.proc and c.proc.poll() is None for c in self.inits + self.mains):
                time.sleep(0.1)
            self._kill_all(signal.SIGKILL)
            for c in self.inits + self.mains:
                if c.proc is not None:
                    c.proc.wait()
            self._reap_all()
        for c in self.inits + self.mains:
            if "terminated" not in c.state and c.attempt == 0 and "waiting" in c.state:
                c.done = True
        if self.phase not in ("Succeeded", "Failed") and self.pod["spec"].get("nodeName"):
            ok = self.mains and all(c.done and c.exit_code == 0 for c in self.mains)
            self.phase = "Succeeded" if ok else "Failed"
            self._push(force=True)

    def _finalize_delete(self) -> None:
        """kubelet's last step: remove the pod object with grace period 0."""
        try:
            self.kube.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                              {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": self.uid}}, ok404=True)
        except ApiError as e:
            if e.status != 409:
                log.warning("%s/%s: final delete failed: %s", self.ns, self.pod_name, e)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    def _release_container_mounts(self, c: Container) -> None:
        for t in c.mount_targets:
            self.runner.mountpoints.release(t)
        c.mount_targets = []

    def _release_mounts(self) -> None:
        for c in self.inits + self.mains:
            if c.proc is not None and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait()
            if c.proc is not None:
                (self.runner.state / "run" / f"{self.uid}_{c.name}.pid").unlink(missing_ok=True)
            self._release_container_mounts(c)

    # ------------------------------------------------------------------ status
    def _cond(self, typ: str, ok: bool, reason: str | None = None, message: str | None = None) -> dict:
        status = "True" if ok else "False"
        prev = self.cond_times.get(typ)
        if not prev or prev[0] != status:
            self.cond_times[typ] = (status, now())
        return {"type": typ, "status": status, "lastProbeTime": None,
                "lastTransitionTime": self.cond_times[typ][1], "reason": reason, "message": message}

    def _status(self) -> dict:
        terminal = self.phase in ("Succeeded", "Failed")
        init_ok = all((c.sidecar and (c.running or c.done)) or (c.done and c.exit_code == 0) for c in self.inits)
        if terminal and self.phase == "Succeeded":
            init_ok = True
        unready = [c.name for c in self.mains if not c.running]
        ready = not terminal and not unready
        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        msg = None if ready or terminal else f"containers with unready status: [{' '.join(unready)}]"
        conds = [
            self._cond("PodReadyToStartContainers", self.ready_to_start and not (terminal and self.deleting)),
            self._cond("Initialized", init_ok, None if init_ok else "ContainersNotInitialized",
                       None if init_ok else "containers with incomplete status: ["
                       + " ".join(c.name for c in self.inits if not (c.done and c.exit_code == 0)) + "]"),
            self._cond("Ready", ready, None if ready else not_ready_reason, msg),
            self._cond("ContainersReady", ready, None if ready else not_ready_reason, msg),
            self._cond("PodScheduled", True),
        ]
        st = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.mains],
            # strategic merge patch: explicit nulls drop stale fields
            "reason": self.reason,
            "message": self.message,
        }
        if self.inits:
            st["initContainerStatuses"] = [c.status() for c in self.inits]
        for cs in st["containerStatuses"] + st.get("initContainerStatuses", []):
            for k in ("state", "lastState"):
                cs[k] = {s: cs[k].get(s) for s in ("waiting", "running", "terminated")}
        return st

    def _push(self, force: bool = False) -> None:
        st = self._status()
        key = json.dumps(st, sort_keys=True)
        if key == self.last_pushed and not force:
            return
        for attempt in range(5):
            try:
                self.kube.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status",
                                  {"status": st}, content_type="application/strategic-merge-patch+json")
                self.last_pushed = key
                return
            except ApiError as e:
                if e.status == 404:
                    self.deleting = True
                    return
                if e.status in (409, 429, 500, 503) and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                log.warning("%s/%s: status update failed: %s", self.ns, self.pod_name, e)
                return
            except Exception as e:  # noqa: BLE001 - connection errors
                if attempt < 4:
                    time.sleep(0.5)
                    continue
                log.warning("%s/%s: status update failed: %s", self.ns, self.pod_name, e)


def rewrite_paths(s: str, mapping: list[tuple[str, str]]) -> str:
    """Fallback without mount namespaces: rewrite container paths to host paths."""
    for dst, src in mapping:
        s = re.sub(r"(?<![\w./-])" + re.escape(dst) + r"(?=/|$|[^\w.-])", lambda _m, src=src: src, s)
    return s


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_start_time(pid)}\n")


# ============================================================================ runner


class Runner:
    def __init__(self, kube: Kube, node: str, state: Path, api_port: int | None):
        self.kube = kube
        self.node = node
        self.state = state
        self.api_port = api_port
        self.workers: dict[str, PodWorker] = {}
        self.wlock = threading.Lock()
        self.stop = threading.Event()
        self.mountpoints = MountPoints()
        (state / "run").mkdir(parents=True, exist_ok=True)
        (state / "kill").mkdir(parents=True, exist_ok=True)
        self.mountns, why = probe_mount_namespace(state / "run")
        log.info("mount namespaces: %s (%s)", "yes" if self.mountns else "no, rewriting paths", why)
        (state / "mount-mode").write_text(("mountns" if self.mountns else "rewrite") + f"\n{why}\n")
        self.unshare = shutil.which("unshare") or "unshare"
        dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable),
                "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        self.path = os.pathsep.join(dict.fromkeys(d for d in dirs if d))
        self.passthrough = [x for x in os.environ.get(
            "DATASETPREP_TESTBED_PASSTHROUGH_ENV", "PYTHONPATH,VIRTUAL_ENV,LANG,LC_ALL,TZ").split(",") if x]
        try:
            self.entrypoints = json.loads(os.environ.get("DATASETPREP_TESTBED_ENTRYPOINTS") or "{}")
        except ValueError:
            log.warning("ignoring malformed DATASETPREP_TESTBED_ENTRYPOINTS")
            self.entrypoints = {}
        mem_kib = 0
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
        except OSError:
            mem_kib = 8 * 2**20
        self.allocatable = {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki", "pods": "250",
                            "ephemeral-storage": f"{shutil.disk_usage(state).total // 1024}Ki"}

    def entrypoint_for(self, image: str) -> list[str]:
        """Image ENTRYPOINT for containers without `command` (there are no images here)."""
        best = ""
        for prefix in self.entrypoints:
            if image.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return list(self.entrypoints.get(best, [])) if best else []

    # ------------------------------------------------------------------ node
    def register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": self.node,
            "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "testbed",
                       "testbed.datasetprep.io/node": "true"},
            "annotations": {MOUNT_MODE_ANNOTATION: "mountns" if self.mountns else "rewrite"}}}
        try:
            self.kube.request("POST", "/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
        # TaintNodesByCondition adds not-ready taints at creation; the node is ready now.
        self.kube.request("PATCH", f"/api/v1/nodes/{self.node}", {"spec": {"taints": None}},
                          content_type="application/merge-patch+json")
        self.heartbeat()
        log.info("node %s registered and Ready", self.node)

    def heartbeat(self) -> None:
        t = now()
        conds = [{"type": typ, "status": "False", "reason": f"KubeletHas{r}", "message": m,
                  "lastHeartbeatTime": t, "lastTransitionTime": t}
                 for typ, r, m in (("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                                   ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                                   ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"))]
        conds.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                      "message": "testbed pod runner is posting ready status",
                      "lastHeartbeatTime": t, "lastTransitionTime": t})
        status = {"capacity": self.allocatable, "allocatable": self.allocatable, "conditions": conds,
                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                {"type": "Hostname", "address": self.node}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                  "nodeInfo": {"machineID": "testbed", "systemUUID": "testbed", "bootID": "testbed",
                               "kernelVersion": os.uname().release, "osImage": "datasetprep test bed",
                               "containerRuntimeVersion": "testbed://0.1", "kubeletVersion": "v0.0.0-testbed",
                               "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}
        self.kube.request("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": status},
                          content_type="application/strategic-merge-patch+json")

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(20):
            try:
                self.heartbeat()
            except Exception as e:  # noqa: BLE001
                log.warning("node heartbeat failed: %s", e)

    # ------------------------------------------------------------------ pods
    def handle(self, typ: str, pod: dict) -> None:
        md, spec = pod["metadata"], pod.get("spec") or {}
        uid = md["uid"]
        node = spec.get("nodeName")
        if node and node != self.node:
            return
        with self.wlock:
            w = self.workers.get(uid)
            if typ == "DELETED":
                if w is not None:
                    w.gone()
                    self.workers.pop(uid, None)
                    if w.finished:
                        shutil.rmtree(w.dir / "volumes", ignore_errors=True)
                return
            if w is not None:
                if w.finished:
                    if md.get("deletionTimestamp") and not getattr(w, "finalizing", False):
                        w.finalizing = True
                        threading.Thread(target=w._finalize_delete, daemon=True).start()
                    return
                w.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if md.get("deletionTimestamp") and node:
                    threading.Thread(target=PodWorker(self, pod)._finalize_delete, daemon=True).start()
                return
            if md.get("deletionTimestamp") and not node:
                return  # the API server deletes unscheduled pods immediately
            w = PodWorker(self, pod)
            self.workers[uid] = w
            w.start()

    def sync_missing(self, uids: set[str]) -> None:
        with self.wlock:
            for uid in list(self.workers):
                if uid not in uids:
                    w = self.workers.pop(uid)
                    w.gone()

    def watch_loop(self) -> None:
        while not self.stop.is_set():
            try:
                lst = self.kube.get("/api/v1/pods", timeout=60)
                rv = lst["metadata"]["resourceVersion"]
                for p in lst.get("items") or []:
                    self.handle("SYNC", p)
                self.sync_missing({p["metadata"]["uid"] for p in lst.get("items") or []})
                while not self.stop.is_set():
                    q = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "60", "allowWatchBookmarks": "true"}
                    for ev in self.kube.stream("/api/v1/pods", q, timeout=90):
                        typ, obj = ev.get("type"), ev.get("object") or {}
                        if typ == "ERROR":
                            raise ApiError(obj.get("code", 500), json.dumps(obj), "watch pods")
                        rv = obj["metadata"]["resourceVersion"]
                        if typ == "BOOKMARK":
                            continue
                        try:
                            self.handle(typ, obj)
                        except Exception:  # noqa: BLE001
                            log.exception("handling %s event failed", typ)
            except Exception as e:  # noqa: BLE001 - relist on any error (410 Gone, disconnect, ...)
                if not self.stop.is_set():
                    log.info("pod watch restarting: %s", e)
                    time.sleep(0.5)

    def shutdown(self, *_args) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        log.info("shutting down: killing container processes")
        with self.wlock:
            workers = list(self.workers.values())
        for w in workers:
            w._kill_all(signal.SIGKILL)
        for w in workers:
            w._release_mounts()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node-name", default="testbed-node")
    ap.add_argument("--state-dir", default=os.environ.get("DATASETPREP_TESTBED_STATE", "."))
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--apiserver-port", type=int, default=None,
                    help="port of the API server on 127.0.0.1, exported as KUBERNETES_SERVICE_* to containers")
    ap.add_argument("--probe-mountns", action="store_true", help="only report whether mount namespaces work")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    state = Path(args.state_dir).resolve()
    if args.probe_mountns:
        ok, why = probe_mount_namespace(Path(tempfile.mkdtemp()))
        print(("mountns" if ok else "rewrite") + ": " + why)
        return 0
    kube = Kube(args.kubeconfig)
    runner = Runner(kube, args.node_name, state, args.apiserver_port)
    done = threading.Event()

    def on_signal(*_a):
        runner.shutdown()
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for attempt in range(60):
        try:
            runner.register_node()
            break
        except Exception as e:  # noqa: BLE001
            if attempt == 59:
                raise
            log.info("node registration failed (%s); retrying", e)
            time.sleep(1)
    threading.Thread(target=runner.heartbeat_loop, name="heartbeat", daemon=True).start()
    threading.Thread(target=runner.watch_loop, name="watch", daemon=True).start()
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
