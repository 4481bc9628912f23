"""Many Ready DatasetPreps cost nothing at rest (issue 11 "Load", issue 17): the operator follows its
resources through watches, never by polling each one, so with N Ready resources it sends no request at
all while nothing changes; and a restart with N Ready resources writes nothing.

On the real API server and node: the first DatasetPrep runs a Job (our job image under the kubelet); the
others name the same source, tokenizer and claim under another prefix, so the operator's reuse path
(``reuse: IfIdentical``, the default) points them at its output without a pod -- N Ready resources
through the real operator for the cost of one run. The operator's requests are counted by a proxy in
front of the API server (tests/apiproxy.py). bench/bench_load.py ``--ready-at-rest 1000`` measures the
same at scale (figures in bench/RESULTS.md).
"""
from __future__ import annotations

import collections
import time

import kubernetes
import pytest

from apiproxy import ApiProxy
from bed import files_spec, own_for_job_pods, raw_get, running_operator
from datasetprep.spec import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
N = 50
REST_SECONDS = 30.0


def _ready(bed) -> list[dict]:
    items = raw_get(bed.custom.api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{bed.ns}/{PLURAL}")["items"]
    failed = [(i["metadata"]["name"], i["status"].get("message")) for i in items
              if (i.get("status") or {}).get("phase") == "Failed"]
    assert not failed, failed
    return [i for i in items if (i.get("status") or {}).get("phase") == "Succeeded"
            and i["status"].get("observedGeneration") == i["metadata"]["generation"]]


def _kinds(requests: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(f"{r['method']} {r['kind']} {r.get('name') or ''}".strip() for r in requests))


def test_many_ready_resources_cost_no_request_at_rest_and_a_restart_writes_nothing(bed, job_image, monkeypatch):
    own_for_job_pods(bed.data)
    names = [f"rest-{i:02d}" for i in range(N)]
    with ApiProxy(bed.cluster.kubeconfig) as proxy:
        monkeypatch.setenv("KUBECONFIG", str(proxy.kubeconfig))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(proxy.kubeconfig))
        with running_operator(bed.ns):
            bed.create(names[0], files_spec(f"{names[0]}/ds"))
            bed.wait_ready(names[0], timeout=300)
            for name in names[1:]:
                bed.create(name, files_spec(f"{name}/ds"))
            items = bed.wait(lambda: (lambda r: r if len(r) == N else None)(_ready(bed)), f"{N} Ready", timeout=300,
                             interval=2.0)
            reused = [i["metadata"]["name"] for i in items if (i["status"].get("output") or {}).get("reusedFrom")]
            assert sorted(reused) == names[1:], f"not all reused {names[0]}'s output: {reused}"
            proxy.wait_quiet(5.0, 120.0)
            t = time.time()
            time.sleep(REST_SECONDS)
            at_rest = proxy.since(t)
        events = len(bed.core.list_namespaced_event(bed.ns).items)
        t = time.time()
        with running_operator(bed.ns):  # a restart: it lists everything and looks at each resource again
            time.sleep(3)
            proxy.wait_quiet(5.0, 120.0)
        restart = proxy.since(t)

    jobs = [r for r in proxy.snapshot() if r["method"] == "POST" and r["kind"] == "jobs" and r["status"] == 201]
    assert len(jobs) == 1, f"{len(jobs)} Jobs created for {N} identical DatasetPreps"
    print(f"\n{N} Ready, {REST_SECONDS:.0f} s at rest: {len(at_rest)} requests {_kinds(at_rest)}; restart: "
          f"{len(restart)} requests {dict(collections.Counter(r['method'] + ' ' + r['kind'] for r in restart))}")
    # At rest: nothing (watches stay open; a watch re-established is no request counted here).
    assert at_rest == [], f"requests at rest with {N} Ready resources: {_kinds(at_rest)}"
    writes = [r for r in restart if r["method"] != "GET"]
    assert writes == [], f"a restart with {N} Ready resources wrote: {_kinds(writes)}"
    assert len(bed.core.list_namespaced_event(bed.ns).items) == events, "a restart posted events"
    # Not one request about any one DatasetPrep (a GET or a status read per resource would scale with N).
    per_resource = [r for r in restart if r.get("name") in set(names) or r["kind"].startswith("datasetpreps/")]
    assert per_resource == [], f"a restart asked per resource: {_kinds(per_resource)}"
    # One listing of each watched collection (a list that keeps failing is listed again and again: the
    # proxy once handed kopf gzipped lists as plain ones, and a restart cost 900 lists of 50 resources).
    lists = collections.Counter(r["path"] for r in restart if r["method"] == "GET")
    assert max(lists.values()) <= 2, f"a restart listed something again and again: {lists.most_common(3)}"
