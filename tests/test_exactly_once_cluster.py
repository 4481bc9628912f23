"""Exactly once on the test bed's real node (issue 17): every effect of a run happens once, whatever the
operators and the API server do; and a restarted operator costs a few requests, however many resources it
finds Ready.

1. Three DatasetPreps are created while two standalone operators (no peering: both decide on every change)
   watch the namespace through a proxy that delivers every watch event 3 s late and answers every request
   late (tests/apiproxy.py) -- so each operator keeps seeing its own and the other's writes come back long
   after it made them, the stale replays that published finished runs several times before. One operator is
   stopped while the runs are in flight and a fresh one started in its place (a restart). The Job pods are
   our job image under the real kubelet.

   What must hold, per DatasetPrep: one Job created (the API server's 201s, counted at the proxy), one write
   of its training ConfigMap, one JobCreated and one Succeeded event, the golden output -- and its status
   writes, read back from the proxy, are exactly its transitions (Running with the Job's name, then
   Succeeded) plus live-progress updates. The number of progress updates varies with how long the pod runs
   and how often each replica reads its log (at most every 5 s each): that, and nothing else, is why the
   total count varied (6 or 7); a progress update writes ``status.progress`` alone and is no effect. A
   duplicated transition fails the test, whatever the timing.

2. A restart with everything Ready: DatasetPreps and a DatasetBlend of them made Ready, the operator stopped
   and started again behind a counting proxy: it lists each watched kind once, reads nothing per resource
   (kopf hands it the objects once the Job and pod indexes hold their first listing) and writes nothing.
   Then more DatasetPreps are made Ready and the restart is repeated: the same requests, whatever N.

3. DatasetBlends, on the same queue: in (1) a blend of two of the DatasetPreps is written once (one files
   Job, one ConfigMap write, one event per transition) by the two replicas and the restart; with no operator
   running it is deleted at once (no finalizer). In (2) a blend carrying the finalizer older operator versions
   had kopf put on blends loses it when the operator sees it, and is then deleted without an operator.
"""
from __future__ import annotations

import collections
import time

import kubernetes
import pytest

from apiproxy import ApiProxy
from bed import assert_golden, files_spec, own_for_job_pods, running_operator
from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.spec import GROUP, VERSION
from datasetprep_operator.runtime import KOPF_FINALIZER

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
NAMES = ("one", "two", "three")


def _slow(method: str, path: str) -> float:
    """A loaded API server: writes take 0.7 s, reads 0.3 s (watches are delayed per event instead)."""
    return 0.3 if method == "GET" else 0.7


def status_writes(requests: list[dict], name: str, kind: str = "datasetpreps/status") -> list[dict]:
    """What each successful status write of ``name`` wrote (the merge patch's ``status``), in order."""
    return [(r.get("patch") or {}).get("status") or {} for r in requests
            if r["kind"] == kind and r["method"] == "PATCH" and r["status"] == 200 and r["name"] == name]


def is_progress(write: dict) -> bool:
    """A live-progress update: it writes ``status.progress`` and nothing else."""
    return set(write) == {"progress"}


def test_two_replicas_a_restart_and_stale_replays_give_one_of_each_effect(bed, job_image, monkeypatch):
    own_for_job_pods(bed.data)
    with ApiProxy(bed.cluster.kubeconfig, latency=_slow, watch_delay=3.0) as proxy:
        monkeypatch.setenv("KUBECONFIG", str(proxy.kubeconfig))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(proxy.kubeconfig))
        uids = {}
        with running_operator(bed.ns):  # replica A, the whole time
            with running_operator(bed.ns):  # replica B, stopped while the runs are in flight
                for name in NAMES:
                    uids[name] = bed.create(name, files_spec(f"{name}/ds"))["metadata"]["uid"]
                _blend(bed, "mix", list(NAMES[:2]))  # waits for its components, then writes its files once
                bed.wait(lambda: all((bed.get(n).get("status") or {}).get("jobName") for n in NAMES),
                         "a Job for every DatasetPrep", timeout=120)
            with running_operator(bed.ns):  # replica B restarted: it knows nothing but what it lists
                for name in NAMES:
                    bed.wait_ready(name, timeout=300)
                bed.wait(lambda: _blend_ready(bed, "mix"), "DatasetBlend mix Ready", timeout=240)
            time.sleep(4)  # late watch events still arrive: a replay they set off would show now
        requests = proxy.snapshot()
    _assert_blend_once(bed, requests, "mix")
    # no operator runs now: a blend carries no finalizer, so it goes all the same
    bed.custom.delete_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, "mix")
    bed.wait(lambda: not _blends(bed), "DatasetBlend mix gone without an operator", timeout=30)

    created = collections.Counter(r["name"] for r in requests
                                  if r["method"] == "POST" and r["kind"] == "jobs" and r["status"] == 201)
    cm_writes = collections.Counter(r["name"] for r in requests if r["kind"] == "configmaps"
                                    and r["method"] in ("POST", "PUT", "PATCH") and r["status"] in (200, 201))
    conflicts = sum(1 for r in requests if r["status"] == 409)
    print(f"\n409s: {conflicts}; requests: {len(requests)} ({sum(1 for r in requests if r['watch'])} watches)")
    for name in NAMES:
        obj = bed.get(name)
        job = obj["status"]["jobName"]
        assert created[job] == 1, f"{name}: Job {job} created {created[job]} times ({dict(created)})"
        assert [j.metadata.name for j in bed.jobs(uids[name])] in ([job], []), "a second Job of one run"
        assert cm_writes[f"{name}-training"] == 1, f"{name}: training ConfigMap written {dict(cm_writes)}"
        events = [e for e in bed.events(name) if e.involved_object.kind == "DatasetPrep"]
        reasons = collections.Counter(e.reason for e in events)
        assert reasons["JobCreated"] == 1 and reasons["Succeeded"] == 1, f"{name}: events {dict(reasons)}"
        assert all(n == 1 for n in reasons.values()), f"{name}: an event repeated {dict(reasons)}"
        assert "finalizers" not in obj["metadata"], obj["metadata"]  # no deleteDataOnDelete: no finalizer

        writes = status_writes(requests, name)
        moves = [w for w in writes if not is_progress(w)]
        phases = [w.get("phase") for w in moves]
        print(f"{name}: {len(writes)} status writes = {len(moves)} transitions {phases} + "
              f"{len(writes) - len(moves)} progress updates")
        # Each transition once: Running (naming the Job), then Succeeded. A pod that cannot start for a while
        # (the loaded bed) adds Pending and back to Running, each Pending with its Warning event.
        blocked = phases.count("Pending")
        assert phases == ["Running"] + ["Pending", "Running"] * blocked + ["Succeeded"], f"{name}: {moves}"
        assert blocked <= sum(1 for e in events if e.type == "Warning"), f"{name}: {moves}"
        assert moves[0].get("jobName") == job and moves[-1].get("configMapName") == f"{name}-training"
        assert_golden(bed.data / name / "ds_text_document")
    assert len([job for job in created if not job.startswith("mix-files-")]) == len(NAMES), dict(created)


def _assert_blend_once(bed, requests: list[dict], name: str) -> None:
    """One files Job (one version), one ConfigMap write, one event per transition, no finalizer."""
    blend = bed.custom.get_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, name)
    files_job = blend["status"]["filesJob"]
    created = [r for r in requests if r["method"] == "POST" and r["kind"] == "jobs" and r["status"] == 201
               and r["name"].startswith(f"{name}-files-")]
    assert [r["name"] for r in created] == [files_job], created
    cm_writes = [r for r in requests if r["kind"] == "configmaps" and r["name"] == f"{name}-training"
                 and r["method"] in ("POST", "PUT", "PATCH") and r["status"] in (200, 201)]
    assert len(cm_writes) == 1, cm_writes
    reasons = collections.Counter(e.reason for e in bed.events(name) if e.involved_object.kind == "DatasetBlend")
    assert reasons["FilesJobCreated"] == 1 and reasons["BlendReady"] == 1, dict(reasons)
    assert all(n == 1 for n in reasons.values()), f"{name}: an event repeated {dict(reasons)}"
    writes = status_writes(requests, name, "datasetblends/status")
    ready = [w for w in writes if any(c.get("type") == "Ready" and c.get("status") == "True"
                                      for c in w.get("conditions") or ())]
    print(f"DatasetBlend {name}: {len(writes)} status writes, {len(ready)} of them Ready; events {dict(reasons)}")
    assert len(ready) == 1, ready
    assert "finalizers" not in blend["metadata"], blend["metadata"]


def _blends(bed) -> list[str]:
    return [b["metadata"]["name"] for b in
            bed.custom.list_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL)["items"]]


# --------------------------------------------------------------------------- a restart, everything Ready


def _restart_requests(bed, monkeypatch, settle: float = 8.0) -> list[dict]:
    """The requests of an operator started behind a counting proxy, until it has been quiet for ``settle`` s."""
    with ApiProxy(bed.cluster.kubeconfig) as proxy, monkeypatch.context() as patched:
        patched.setenv("KUBECONFIG", str(proxy.kubeconfig))
        patched.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(proxy.kubeconfig))
        with running_operator(bed.ns):
            last, quiet_since = -1, time.monotonic()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                count = len(proxy.snapshot())
                if count != last:
                    last, quiet_since = count, time.monotonic()
                elif last > 0 and time.monotonic() - quiet_since >= settle:
                    break
                time.sleep(0.5)
        return [r for r in proxy.snapshot() if not r["watch"]]


def _blend(bed, name: str, components: list[str], finalizers: list[str] | None = None) -> None:
    bed.custom.create_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend",
        "metadata": {"name": name, **({"finalizers": finalizers} if finalizers else {})},
        "spec": {"components": [{"datasetPrep": c, "weight": 1} for c in components], "splits": "90,10"}})


def _blend_ready(bed, name: str) -> dict | None:
    blend = bed.custom.get_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, name)
    conds = {c["type"]: c for c in (blend.get("status") or {}).get("conditions") or ()
             if c.get("observedGeneration") == blend["metadata"]["generation"]}
    assert conds.get("Stalled", {}).get("status") != "True", conds
    return blend if conds.get("Ready", {}).get("status") == "True" else None


def test_a_restart_with_everything_ready_lists_each_kind_once_and_writes_nothing(bed, job_image, monkeypatch):
    own_for_job_pods(bed.data)
    costs = {}
    names: list[str] = []
    for n in (2, 5):
        with running_operator(bed.ns):
            for i in range(len(names), n):
                names.append(f"r{i}")
                bed.create(names[-1], files_spec(f"{names[-1]}/ds"))
            if n == 2:
                _blend(bed, "mix", names)
            for name in names:
                bed.wait_ready(name, timeout=300)
            bed.wait(lambda: _blend_ready(bed, "mix"), "DatasetBlend mix Ready", timeout=240)
        events = len(bed.core.list_namespaced_event(bed.ns).items)
        requests = _restart_requests(bed, monkeypatch)
        costs[n] = collections.Counter(f"{r['method']} {r['kind']}" for r in requests)
        print(f"\nrestart with {n} DatasetPreps and 1 DatasetBlend Ready: {len(requests)} requests {dict(costs[n])}")
        assert not [r for r in requests if r["method"] != "GET"], "a restart wrote something"
        assert len(bed.core.list_namespaced_event(bed.ns).items) == events, "a restart posted an event"
        per_kind = {k: v for k, v in costs[n].items()
                    if k.split()[1] in ("datasetpreps", "datasetblends", "jobs", "pods")}
        assert per_kind == {"GET datasetpreps": 1, "GET datasetblends": 1, "GET jobs": 1, "GET pods": 1}, costs[n]
    assert costs[2] == costs[5], f"a restart's cost grew with N: {costs}"

    # A blend an older operator version made carries kopf's finalizer: the operator removes it on sight, and
    # the blend is then deleted without an operator.
    _blend(bed, "legacy", names[:1], finalizers=[KOPF_FINALIZER])
    with running_operator(bed.ns):
        bed.wait(lambda: not bed.custom.get_namespaced_custom_object(
            GROUP, VERSION, bed.ns, BLEND_PLURAL, "legacy")["metadata"].get("finalizers"),
            "the older version's finalizer removed", timeout=60)
    bed.custom.delete_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, "legacy")
    bed.wait(lambda: "legacy" not in _blends(bed), "DatasetBlend legacy gone without an operator", timeout=30)
