"""Load on the control plane (issue 17): N DatasetPreps at once, then rest, then 1,000 foreign pods, then a
restart -- with the operator's every request counted (and optionally slowed) by a proxy in front of the API
server, and the effects of every run counted on the cluster.

    python bench/bench_load.py --n 100                     # on the test bed (started and stopped here)
    python bench/bench_load.py --n 100 --watch-delay 3 --write-latency 0.7   # a slow, loaded API server

Prints, per phase: time to all-Ready; effects per resource (Jobs created, status writes, finalizer writes,
training-ConfigMap writes, events by reason) with the worst resource; metrics vs the truth
(``datasetprep_runs_succeeded_total`` and ``datasetprep_tokens_produced_total`` against the runs and the sum of
``status.output.tokens``); the operator's requests per resource (watches left out), its RSS and CPU
seconds; at rest and with 1,000 foreign pods (Pending, in the watched namespace) its requests, CPU and RSS
growth; after a restart its requests and writes. Exits 1 if any effect happened more than once.

The operator is ``datasetprep operator`` as a subprocess (its RSS and CPU are read from /proc); the job pods
run on the bed's node (``--node emulated``: as local processes, the default and what issue 17 measured
with; ``--node real``: the job image under the kubelet). Note the machine's load (printed) beside the figures.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "cluster")]

import kubernetes  # noqa: E402
import urllib3  # noqa: E402

from apiproxy import ApiProxy  # noqa: E402
from bed import chart_images, files_spec, free_port, install_crd, own_for_job_pods, raw_get  # noqa: E402
from datasetprep.spec import GROUP, PLURAL, VERSION  # noqa: E402
from paths import CORPUS_A, SP_MODEL  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Proc:
    """The operator subprocess: start, RSS and CPU seconds from /proc, stop."""

    def __init__(self, env: dict[str, str], namespace: str, log: Path) -> None:
        self.log = log.open("ab")
        self.p = subprocess.Popen([str(Path(sys.executable).parent / "datasetprep"), "operator", "--namespace", namespace,
                                   "--liveness", "", "--metrics-port", env["DATASETPREP_METRICS_PORT"]],
                                  env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(datasetprep_\w+_total) ([0-9.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_for(fn, what: str, timeout: float, interval: float = 1.0):
    """``fn()``'s first true value; a failed look (a loaded API server drops connections) is tried again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (OSError, kubernetes.client.exceptions.ApiException, urllib3.exceptions.HTTPError) as exc:
            print(f"  (look failed, trying again: {exc.__class__.__name__})", flush=True)
            value = None
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def namespace_with_claim(cluster, api, namespace: str, tmp: Path) -> Path:
    """The CRD installed; ``namespace`` made, with a claim ``data`` (a hostPath folder under ``tmp``, owned by
    the job pods' uid) holding the golden corpus and tokenizer model. Returns the folder."""
    core = kubernetes.client.CoreV1Api(api)
    install_crd(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: [s for s in core.list_namespaced_service_account(namespace).items if s.metadata.name == "default"],
             "the default ServiceAccount", 60)
    data = tmp / "pv"
    data.mkdir()
    shutil.copy(CORPUS_A, data / "corpus_a.jsonl")
    shutil.copy(SP_MODEL, data / "tokenizer.model")
    own_for_job_pods(data)  # (the emulated node's processes run as root: no harm there)
    cluster.create_hostpath_pvc(namespace, data, name="data", access_modes=("ReadWriteMany",))
    return data


def effects(requests: list[dict], names: list[str], events: list) -> dict[str, dict[str, int]]:
    """Per resource: writes the proxy saw succeed, events by reason."""
    per = {n: collections.Counter() for n in names}
    jobs_of: dict[str, str] = {}
    for r in requests:
        ok = r["status"] in (200, 201)
        if not ok or r["method"] == "GET":
            continue
        name = r.get("name") or ""
        if r["kind"] == "datasetpreps/status" and name in per:
            per[name]["status writes"] += 1
        elif r["kind"] == "datasetpreps" and r["method"] == "PATCH" and name in per:
            per[name]["finalizer writes"] += 1
        elif r["kind"] == "jobs" and r["method"] == "POST":
            owner = name.rsplit("-", 1)[0]
            jobs_of[name] = owner
            if owner in per:
                per[owner]["Jobs created"] += 1
        elif r["kind"] == "configmaps" and name.endswith("-training") and name[:-9] in per:
            per[name[:-9]]["ConfigMap writes"] += 1
    for e in events:
        if e.involved_object.kind == "DatasetPrep" and e.involved_object.name in per:
            per[e.involved_object.name][f"event {e.reason}"] += 1
    return {n: dict(c) for n, c in per.items()}


def summarize(per: dict[str, dict[str, int]]) -> tuple[str, bool]:
    keys = sorted({k for c in per.values() for k in c})
    lines, duplicate = [], False
    for k in keys:
        values = [c.get(k, 0) for c in per.values()]
        worst = max(per, key=lambda n: per[n].get(k, 0))
        lines.append(f"  {k:<24} total {sum(values):>5}  per resource {sum(values) / len(values):5.2f}  "
                     f"max {max(values)} ({worst})")
        once = k in ("Jobs created", "ConfigMap writes", "event JobCreated", "event Succeeded", "event Reused",
                     "event Failed")
        duplicate |= once and max(values) > 1
    return "\n".join(lines), duplicate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="DatasetPreps created at once")
    ap.add_argument("--foreign-pods", type=int, default=1000, help="unrelated pods created at rest (0: skip)")
    ap.add_argument("--rest", type=float, default=60.0, help="seconds at rest after all-Ready")
    ap.add_argument("--watch-delay", type=float, default=0.0, help="seconds each watch event reaches the operator late")
    ap.add_argument("--write-latency", type=float, default=0.0, help="seconds added to each non-GET request")
    ap.add_argument("--read-latency", type=float, default=0.0, help="seconds added to each GET (not watches)")
    ap.add_argument("--node", choices=("emulated", "real"), default="emulated")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--spec-changes", type=int, default=10, metavar="K",
                    help="at the end, change the spec of K resources (a new run each) and time it (0: skip)")
    ap.add_argument("--ready-at-rest", type=int, default=0, metavar="N",
                    help="instead: N Ready resources (one Job, the others reuse its output), at rest, restarted")
    ap.add_argument("--show-restart", action="store_true", help="print every request of the restarted operator")
    a = ap.parse_args()
    if a.ready_at_rest:
        return ready_at_rest(a)

    os.environ.setdefault("DATASETPREP_TESTBED_NODE", a.node)
    import fixtures as bedfx  # tests/cluster/fixtures.py: start_cluster / stop_cluster

    print(f"bench_load: n={a.n} node={a.node} watch_delay={a.watch_delay}s write_latency={a.write_latency}s "
          f"read_latency={a.read_latency}s; load {load()}", flush=True)
    cluster = bedfx.start_cluster(a.node)
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    proc: Proc | None = None
    try:
        api = cluster.api_client()
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        ns = "bench-load"
        namespace_with_claim(cluster, api, ns, tmp)
        latency = lambda method, path: a.read_latency if method == "GET" else a.write_latency  # noqa: E731
        with ApiProxy(cluster.kubeconfig, latency=latency, watch_delay=a.watch_delay) as proxy:
            port = free_port()
            env = {**os.environ, "KUBECONFIG": str(proxy.kubeconfig), "DATASETPREP_METRICS_PORT": str(port),
                   "DATASETPREP_JOB_IMAGE": job_image(cluster, a.node)}
            if a.node == "real":
                env["DATASETPREP_JOB_IMAGE_PULL_POLICY"] = "Never"
            proc = Proc(env, ns, tmp / "operator.log")
            wait_for(lambda: _get(port), "the operator's metrics endpoint", 120, 0.5)
            idle_rss = proc.rss_mib()
            names = [f"load-{i:03d}" for i in range(a.n)]
            timeline = Timeline(api, ns).start()
            wait_for(lambda: any(r["kind"] == "datasetpreps" and r["watch"] for r in proxy.snapshot()),
                     "the operator's DatasetPrep watch", 120, 0.5)  # else the first latencies include its start
            t0, cpu0 = time.time(), proc.cpu_s()
            for name in names:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
                    "metadata": {"name": name, "namespace": ns}, "spec": files_spec(f"{name}/ds")})
            peak = [0.0]

            def all_ready():
                peak[0] = max(peak[0], proc.rss_mib())
                items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
                phases = collections.Counter((i.get("status") or {}).get("phase") for i in items)
                failed = [i["metadata"]["name"] for i in items if (i.get("status") or {}).get("phase") == "Failed"]
                if failed:
                    raise SystemExit(f"runs failed: {failed[:5]}; see {tmp / 'operator.log'}")
                return items if phases.get("Succeeded") == a.n else None
            items = wait_for(all_ready, f"{a.n} DatasetPreps Ready", a.timeout, 2.0)
            ready_s = time.time() - t0
            time.sleep(max(5.0, 2 * a.watch_delay))  # late watch events still arrive: let them be seen
            busy_cpu = proc.cpu_s() - cpu0
            reqs = proxy.snapshot()
            events = core.list_namespaced_event(ns).items
            per = effects(reqs, names, events)
            table, duplicate = summarize(per)
            m = metrics(port)
            # A resource created once another is Ready reuses its output (reuse: IfIdentical): no run of its own.
            ran = [i for i in items if not i["status"]["output"].get("reusedFrom")]
            truth_tokens = sum(int(i["status"]["output"]["tokens"]) for i in ran)
            plain = [r for r in reqs if not r["watch"]]
            print(f"\n== {a.n} at once: all Ready in {ready_s:.1f} s (load {load()})")
            print(f"effects per resource:\n{table}")
            print(f"metrics vs truth: runs_succeeded {m.get('datasetprep_runs_succeeded_total', 0):.0f} / {len(ran)} "
                  f"({a.n - len(ran)} reused an output), "
                  f"tokens_produced {m.get('datasetprep_tokens_produced_total', 0):.0f} / {truth_tokens}")
            print(f"operator requests: {len(plain)} ({len(plain) / a.n:.1f} per resource; 409s: "
                  f"{sum(1 for r in plain if r['status'] == 409)}); by kind: "
                  f"{dict(collections.Counter(r['method'] + ' ' + r['kind'] for r in plain).most_common(12))}")
            print(f"operator: RSS idle {idle_rss:.0f} MiB, peak {peak[0]:.0f} MiB; CPU {busy_cpu:.1f} s")
            print(f"latency (seen by the benchmark's own watches, straight at the API server):\n{timeline.report(names)}")
            print(f"the operator's requests as it waited for them, at the proxy:\n{request_latency(plain)}")
            bad = duplicate or m.get("datasetprep_runs_succeeded_total", 0) != len(ran) \
                or m.get("datasetprep_tokens_produced_total", 0) != truth_tokens

            # at rest
            t1, cpu1 = time.time(), proc.cpu_s()
            time.sleep(a.rest)
            rest = [r for r in proxy.snapshot() if r["t"] >= t1 and not r["watch"]]
            print(f"\n== at rest {a.rest:.0f} s: {len(rest)} requests, CPU {proc.cpu_s() - cpu1:.2f} s, "
                  f"RSS {proc.rss_mib():.0f} MiB")

            if a.foreign_pods:
                rss2, cpu2, t2 = proc.rss_mib(), proc.cpu_s(), time.time()
                for i in range(a.foreign_pods):  # Pending for good (a scheduling gate); labelled like a trainer's
                    core.create_namespaced_pod(ns, {  # the watched namespace
                        "metadata": {"name": f"trainer-{i:04d}", "labels": {"app": "trainer", "job-name": "x"}},
                        "spec": {"schedulingGates": [{"name": "bench.datasetprep.io/hold"}],
                                 "containers": [{"name": "c", "image": "none"}]}})
                create_s = time.time() - t2
                time.sleep(15)
                foreign = [r for r in proxy.snapshot() if r["t"] >= t2 and not r["watch"]]
                print(f"\n== {a.foreign_pods} foreign pods (created in {create_s:.0f} s, then 15 s): operator "
                      f"{len(foreign)} requests, CPU {proc.cpu_s() - cpu2:.2f} s, RSS {rss2:.0f} -> "
                      f"{proc.rss_mib():.0f} MiB")

            # restart
            proc.stop()
            t3 = time.time()
            proc = Proc(env, ns, tmp / "operator.log")
            wait_for(lambda: _get(port), "the restarted operator", 120, 0.5)
            time.sleep(max(20.0, 3 * a.watch_delay))
            after = [r for r in proxy.snapshot() if r["t"] >= t3 and not r["watch"]]
            writes = [r for r in after if r["method"] != "GET" and r["status"] in (200, 201)]
            events_after = [e for e in core.list_namespaced_event(ns).items if e.involved_object.kind == "DatasetPrep"]
            print(f"\n== restart: {len(after)} requests in {time.time() - t3:.0f} s "
                  f"({dict(collections.Counter(r['method'] + ' ' + r['kind'] for r in after).most_common(6))}), "
                  f"{len(writes)} writes "
                  f"({dict(collections.Counter(r['method'] + ' ' + r['kind'] for r in writes))}); DatasetPrep events "
                  f"before {sum(1 for e in events if e.involved_object.kind == 'DatasetPrep')}, after "
                  f"{len(events_after)}")
            if a.show_restart:
                for r in after:
                    print(f"  {r['method']} {r['path']}?{r['query']} -> {r['status']}")
            bad |= len(events_after) != sum(1 for e in events if e.involved_object.kind == "DatasetPrep")
            if a.spec_changes:
                change_specs(custom, api, ns, names[:a.spec_changes], timeline, a.timeout)
            timeline.stop()
        print(f"\nverdict: {'DUPLICATE EFFECTS' if bad else 'every effect once'}; operator log {tmp / 'operator.log'}")
        return 1 if bad else 0
    finally:
        if proc is not None and proc.p.poll() is None:
            proc.stop()
        bedfx.stop_cluster(cluster)


# --------------------------------------------------------------------------- latency of each transition (issue 11)


def distribution(values: list[float]) -> str:
    """``n=… p50 … p99 … max …`` (nearest rank), in seconds."""
    if not values:
        return "n=0"
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, -(-len(ordered) * p // 100) - 1)]

    return f"n={len(ordered)} p50 {rank(50):.2f} s, p99 {rank(99):.2f} s, max {ordered[-1]:.2f} s"


def request_latency(requests: list[dict], top: int = 6) -> str:
    """Seconds per request (sent to answered, at the proxy), by kind, for the commonest kinds."""
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for r in requests:
        if "seconds" in r:
            by_kind[f"{r['method']} {r['kind']}"].append(r["seconds"])
    common = sorted(by_kind, key=lambda k: -len(by_kind[k]))[:top]
    return "\n".join(f"  {kind:<36} {distribution(by_kind[kind])}" for kind in common)


def json_lines(response) -> Iterator[dict]:
    """The JSON objects of a streamed response, one per line (a watch)."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


class Watcher(threading.Thread):
    """One collection of the namespace, listed and then watched by the benchmark itself, straight at the
    API server (not through the operator's proxy, so never delayed by it): ``seen(type, object, t)`` with
    each event's arrival time. A watch that ends is resumed at its last resourceVersion; an expired one
    (410) is listed again. What a user's ``kubectl get -w`` sees, and when."""

    def __init__(self, api, path: str, seen: Callable[[str, dict, float], None]) -> None:
        super().__init__(name=f"watch {path}", daemon=True)
        self.api, self.path, self.seen = api, path, seen
        self.stopping = threading.Event()
        self.listed = threading.Event()

    def _get(self, query: list[tuple[str, str]]):
        method, url, headers, body, post = self.api.param_serialize(
            "GET", self.path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        return self.api.call_api(method, url, headers, body, post, _request_timeout=(10, 60))

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = json.loads(self._get([]).read())
                now = time.time()
                for item in listing.get("items") or []:
                    self.seen("LISTED", item, now)
                self.listed.set()
                rv = listing["metadata"]["resourceVersion"]
                while rv and not self.stopping.is_set():
                    response = self._get([("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "20"),
                                          ("allowWatchBookmarks", "true")]).response
                    try:
                        for event in json_lines(response):
                            if event.get("type") == "ERROR":  # 410 Gone: list again
                                rv = None
                                break
                            rv = event["object"]["metadata"].get("resourceVersion") or rv
                            if event.get("type") != "BOOKMARK":
                                self.seen(event["type"], event["object"], time.time())
                    finally:
                        response.release_conn()
            except (OSError, ValueError, KeyError, kubernetes.client.exceptions.ApiException,
                    urllib3.exceptions.HTTPError):
                time.sleep(1)

    def stop(self) -> None:
        self.stopping.set()


class Timeline:
    """When the benchmark's watches first saw each DatasetPrep and Job in each state:

    * a DatasetPrep (generation g) -- :attr:`generations` ``{(name, g): t}`` (ADDED for g = 1, the spec
      change for g > 1);
    * a Job -- :attr:`jobs` ``{job: (owner, t created)}``, :attr:`complete` ``{job: t}`` (condition Complete);
    * a DatasetPrep Ready with that Job's output -- :attr:`ready` ``{(name, job): t}`` (``status.phase``
      Succeeded for its current generation; ``job`` is ``None`` for a reused output).
    """

    def __init__(self, api, namespace: str) -> None:
        self.generations: dict[tuple[str, int], float] = {}
        self.jobs: dict[str, tuple[str, float]] = {}
        self.complete: dict[str, float] = {}
        self.ready: dict[tuple[str, str | None], float] = {}
        self._lock = threading.Lock()
        self.watchers = [Watcher(api, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", self._prep),
                         Watcher(api, f"/apis/batch/v1/namespaces/{namespace}/jobs", self._job)]

    def start(self) -> "Timeline":
        for w in self.watchers:
            w.start()
        for w in self.watchers:
            w.listed.wait(60)
        return self

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()

    def _prep(self, kind: str, obj: dict, t: float) -> None:
        if kind == "DELETED":
            return
        meta, status = obj["metadata"], obj.get("status") or {}
        with self._lock:
            self.generations.setdefault((meta["name"], meta.get("generation") or 1), t)
            if status.get("phase") == "Succeeded" and status.get("observedGeneration") == meta.get("generation"):
                self.ready.setdefault((meta["name"], status.get("jobName")), t)

    def _job(self, kind: str, obj: dict, t: float) -> None:
        if kind == "DELETED":
            return
        meta = obj["metadata"]
        owner = next((r["name"] for r in meta.get("ownerReferences") or [] if r.get("kind") == "DatasetPrep"), "")
        with self._lock:
            self.jobs.setdefault(meta["name"], (owner, t))
            if any(c.get("type") == "Complete" and c.get("status") == "True"
                   for c in (obj.get("status") or {}).get("conditions") or []):
                self.complete.setdefault(meta["name"], t)

    def to_job(self, names: Collection[str], generation: int = 1) -> list[float]:
        """Seconds from each DatasetPrep's ``generation`` (created: 1) to the first Job created after it."""
        with self._lock:
            out = []
            for name in names:
                start = self.generations.get((name, generation))
                later = [t for owner, t in self.jobs.values() if owner == name and start is not None and t >= start]
                if later:
                    out.append(min(later) - start)
            return out

    def to_ready(self, names: Collection[str], since: float = 0.0) -> list[float]:
        """Seconds from each Job's Complete (Jobs created since ``since``) to its DatasetPrep being Ready with
        that Job's output."""
        with self._lock:
            out = []
            for job, done in self.complete.items():
                owner, created = self.jobs.get(job, ("", 0.0))
                if owner in names and created >= since and (owner, job) in self.ready:
                    out.append(self.ready[(owner, job)] - done)
            return out

    def report(self, names: Collection[str], generation: int = 1, since: float = 0.0) -> str:
        what = "DatasetPrep created" if generation == 1 else "spec changed"
        return (f"  {what + ' -> its Job created:':<36} {distribution(self.to_job(names, generation))}\n"
                f"  {'Job Complete -> DatasetPrep Ready:':<36} {distribution(self.to_ready(names, since))}")


# --------------------------------------------------------------------------- many Ready resources at rest (issue 11)


def job_image(cluster, node: str) -> str:
    """The image of the operator's Job pods: our job image imported into the real node, else the emulated
    node's stand-in name."""
    if node != "real":
        return "datasetprep:e2e"
    tag = chart_images()["job"]
    if tag not in cluster.images:
        raise SystemExit(f"{tag} is not imported into the node (tests/cluster/images); imported: {sorted(cluster.images)}")
    return tag


def by_kind(requests: list[dict], top: int = 8) -> dict[str, int]:
    return dict(collections.Counter(f"{r['method']} {r['kind']}" for r in requests).most_common(top))


def ready_count(api, namespace: str) -> tuple[int, list[dict]]:
    """DatasetPreps Ready for their current generation (one raw list: no model objects for 1,000 items)."""
    items = raw_get(api, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")["items"]
    failed = [i["metadata"]["name"] for i in items if (i.get("status") or {}).get("phase") == "Failed"]
    if failed:
        raise SystemExit(f"runs failed: {failed[:5]}")
    ready = [i for i in items if (i.get("status") or {}).get("phase") == "Succeeded"
             and i["status"].get("observedGeneration") == i["metadata"].get("generation")]
    return len(ready), items


def ready_at_rest(a: argparse.Namespace) -> int:
    """``--ready-at-rest N``: N Ready DatasetPreps through the real operator -- the first runs a Job, the
    others (same source, tokenizer and claim; another prefix) reuse its output (``reuse: IfIdentical``, the
    default), so no pod runs for them -- then the operator at rest, then a restart. Prints, with the load:
    the fill (time, requests per resource, RSS per resource), at rest (requests/s with watches left out,
    CPU, RSS), the restart (time to its first listing, requests until quiet, writes, CPU, RSS), at rest again.
    Exits 1 if the operator asks anything per resource at rest, or a restart writes."""
    os.environ.setdefault("DATASETPREP_TESTBED_NODE", a.node)
    import fixtures as bedfx

    n = a.ready_at_rest
    print(f"bench_load --ready-at-rest {n}: node={a.node} rest={a.rest:.0f}s; load {load()}", flush=True)
    cluster = bedfx.start_cluster(a.node)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rest-"))
    proc: Proc | None = None
    try:
        api = cluster.api_client()
        custom = kubernetes.client.CustomObjectsApi(api)
        ns = "bench-rest"
        namespace_with_claim(cluster, api, ns, tmp)
        with ApiProxy(cluster.kubeconfig) as proxy:
            port = free_port()
            env = {**os.environ, "KUBECONFIG": str(proxy.kubeconfig), "DATASETPREP_METRICS_PORT": str(port),
                   "DATASETPREP_JOB_IMAGE": job_image(cluster, a.node), "DATASETPREP_JOB_IMAGE_PULL_POLICY": "Never"}
            proc = Proc(env, ns, tmp / "operator.log")
            wait_for(lambda: _get(port), "the operator's metrics endpoint", 120, 0.5)
            time.sleep(5)
            idle_rss = proc.rss_mib()
            names = [f"rest-{i:04d}" for i in range(n)]

            def create(name: str) -> None:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
                    "metadata": {"name": name, "namespace": ns}, "spec": files_spec(f"{name}/ds")})

            t0 = time.time()
            create(names[0])
            wait_for(lambda: ready_count(api, ns)[0] == 1, f"{names[0]} Ready (its Job)", a.timeout, 2.0)
            source_s, rss_one, t1, cpu1 = time.time() - t0, proc.rss_mib(), time.time(), proc.cpu_s()
            for name in names[1:]:
                create(name)
            create_s = time.time() - t1
            peak = [0.0]

            def all_ready() -> list[dict] | None:
                peak[0] = max(peak[0], proc.rss_mib())
                count, items = ready_count(api, ns)
                return items if count == n else None

            items = wait_for(all_ready, f"{n} DatasetPreps Ready", a.timeout, 5.0)
            fill_s = time.time() - t1
            settle = proxy.wait_quiet(10.0, 300.0)
            fill = proxy.since(t1)
            fill_cpu, rss_full = proc.cpu_s() - cpu1, proc.rss_mib()
            reused = sum(1 for i in items if ((i["status"].get("output") or {}).get("reusedFrom")) == names[0])
            jobs = sum(1 for r in proxy.snapshot() if r["method"] == "POST" and r["kind"] == "jobs" and r["status"] == 201)
            print(f"\n== {n} Ready: {names[0]} through its Job in {source_s:.1f} s; the other {n - 1} created in "
                  f"{create_s:.1f} s, all Ready {fill_s:.1f} s after the first create (load {load()})")
            print(f"  reused {names[0]}'s output: {reused} of {n - 1}; Jobs created: {jobs}")
            print(f"  operator requests for the {n - 1}: {len(fill)} ({len(fill) / max(1, n - 1):.1f} per resource; "
                  f"409s {sum(1 for r in fill if r['status'] == 409)}); {by_kind(fill)}")
            print(f"  operator CPU {fill_cpu:.1f} s; RSS idle {idle_rss:.0f} MiB, with 1 {rss_one:.0f} MiB, peak "
                  f"{peak[0]:.0f} MiB, with {n} {rss_full:.0f} MiB ({(rss_full - idle_rss) * 1024 / n:.1f} KiB per "
                  f"resource); quiet {settle:.0f} s after the last Ready")
            bad = reused != n - 1 or jobs != 1

            def at_rest(what: str) -> bool:
                t, cpu, rss = time.time(), proc.cpu_s(), proc.rss_mib()
                time.sleep(a.rest)
                rest = proxy.since(t)
                watches = [r for r in proxy.snapshot() if r["watch"] and r["t"] >= t]
                print(f"\n== {what}, {a.rest:.0f} s with {n} Ready (load {load()}): {len(rest)} requests "
                      f"({len(rest) / a.rest:.3f}/s) {by_kind(rest)}; {len(watches)} watch (re)connects; "
                      f"CPU {proc.cpu_s() - cpu:.2f} s; RSS {rss:.0f} -> {proc.rss_mib():.0f} MiB")
                return any(r.get("name") in set(names) for r in rest) or len(rest) > 2

            bad |= at_rest("at rest")

            # restart with n Ready
            events_before = len(raw_get(api, f"/api/v1/namespaces/{ns}/events")["items"])
            proc.stop()
            t3 = time.time()
            proc = Proc(env, ns, tmp / "operator.log")
            wait_for(lambda: _get(port), "the restarted operator", 120, 0.5)
            up_s = time.time() - t3
            quiet_s = proxy.wait_quiet(10.0, 600.0)
            after = proxy.since(t3)
            writes = [r for r in after if r["method"] != "GET" and r["status"] in (200, 201)]
            events_after = len(raw_get(api, f"/api/v1/namespaces/{ns}/events")["items"])
            print(f"\n== restart with {n} Ready (load {load()}): metrics up in {up_s:.1f} s, quiet {quiet_s:.0f} s "
                  f"after the start (10 s without a request); {len(after)} requests {by_kind(after)}; {len(writes)} "
                  f"writes; events {events_before} -> {events_after}; CPU {proc.cpu_s():.1f} s; RSS "
                  f"{proc.rss_mib():.0f} MiB")
            bad |= bool(writes) or events_after != events_before
            bad |= at_rest("at rest after the restart")
        print(f"\nverdict: {'PER-RESOURCE COST AT REST OR A RESTART THAT WRITES' if bad else 'nothing per resource at rest'}"
              f"; operator log {tmp / 'operator.log'}")
        return 1 if bad else 0
    finally:
        if proc is not None and proc.p.poll() is None:
            proc.stop()
        bedfx.stop_cluster(cluster)


def change_specs(custom, api, namespace: str, names: list[str], timeline: Timeline, timeout: float) -> None:
    """Change the spec of each of ``names`` (another prefix, ``reuse: Never``: a new run, a new Job) and wait
    until each is Ready again; print the latency of the transitions."""
    t = time.time()
    for name in names:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                              {"spec": {"reuse": "Never", "output": {"prefix": f"{name}/ds2"}}})

    def done() -> bool:
        items = {i["metadata"]["name"]: i for i in ready_count(api, namespace)[1]}
        return all(items[n]["metadata"].get("generation") == 2 and (items[n].get("status") or {}).get("phase")
                   == "Succeeded" and items[n]["status"].get("observedGeneration") == 2 for n in names)

    wait_for(done, f"{len(names)} changed DatasetPreps Ready again", timeout, 2.0)
    time.sleep(2)  # the benchmark's own watch sees the last status a moment after the list does
    print(f"\n== {len(names)} specs changed (another prefix, reuse: Never): all Ready again in {time.time() - t:.1f} s "
          f"(load {load()})\n{timeline.report(names, generation=2, since=t)}")


def _get(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
