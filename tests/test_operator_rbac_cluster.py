"""The operator's RBAC is exactly what its code uses -- checked on the test bed as the chart's own
identity, against the table in ``datasetprep_operator.permissions``.

1. **Effective permissions.** After ``helm install``, the operator ServiceAccount's own token asks
   the API server what it may do (SelfSubjectRulesReview, what ``kubectl auth can-i --list`` shows)
   in a watched and in an unwatched namespace: exactly the table's rows, in both watch modes.
2. **What the code uses.** As that identity, every method of ``Kube`` is called once, and the real
   operator takes a DatasetPrep through create, Ready and a ``deleteDataOnDelete`` deletion, and a
   DatasetBlend of it to Ready (its files Job and training ConfigMap) -- kopf's own calls included:
   watches, finalizer, status, events, peering. The API server's audit log records every
   request (tests/cluster/controlplane.py). A request no row allows is a missing rule (and a 403); a row
   that no request used is an unused rule. Both fail, with the row or request named.
3. **The rules no request shows**: ``datasetpreps/finalizers`` and ``datasetblends/finalizers`` update
   are checked by the OwnerReferencesPermissionEnforcement admission plugin (on in the test bed, as on
   OpenShift) when the operator creates a child with ``blockOwnerDeletion``; without the rule of the
   owner's kind that create is refused.

Cluster mode runs the operator paused by a live peer of higher priority (kopf peering), so that an
operator watching every namespace of the shared test bed handles nothing while its own requests
(watches, peering heartbeats) are recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from chartbed import (CRD_NAMES, AuditLog, Request, adopt_crd, adopt_crds, chart_operator, crd_established, delete_crd,
                      installed, own_rules, owner_kinds_mapped, token_kubeconfig, wait)
from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.contract import RunPlan
from datasetprep.spec import GROUP, PLURAL, VERSION, parse_spec
from datasetprep_operator import permissions
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.jobs import build_job
from datasetprep_operator.kube import Kube
from datasetprep_operator.naming import LABEL_OWNER_UID
from datasetprep_operator.trainingconfig import build_config_map
from paths import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TINY_SPEC = {"source": {"files": {"paths": ["corpus.jsonl"]}}, "tokenizer": {"type": "null", "vocabSize": 1000},
             "output": {"claimName": "data", "prefix": "out/tiny"}}
PEER_CRDS = ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")


def _values(mode: str, namespace: str) -> dict[str, Any]:
    """Chart values: no operator pod (the test runs it), peering on, `namespace` watched."""
    values: dict[str, Any] = {"replicaCount": 0, "peering.enabled": True}
    if mode == "namespaces":
        values.update({"watch.mode": "namespaces", "watch.namespaces": [namespace]})
    return values


def _expected(mode: str, watched: bool) -> dict[tuple[str, str], set[str]]:
    rules = permissions.rules(mode, True, cluster=True)
    if watched:
        for key, verbs in permissions.rules(mode, True, cluster=False).items():
            rules.setdefault(key, set()).update(verbs)
    return rules


def _adopt_shared_crds(k8s, release: str, namespace: str) -> list[str]:
    """Adopt the DatasetPrep CRD and the peering CRDs that exist; returns the peering CRDs that did
    not, which the release then creates (and the test deletes afterwards)."""
    adopt_crds(k8s, release, namespace)
    missing = []
    for crd in PEER_CRDS:
        if crd_established(k8s, crd):
            adopt_crd(k8s, crd, release, namespace)
        else:
            missing.append(crd)
    return missing


def _client_as(k8s, kube_cluster, namespace: str, sa: str, tmp_path: Path):
    """An API client authenticated as ServiceAccount ``sa`` of ``namespace`` (its own token)."""
    return kubernetes.config.new_client_from_config(config_file=str(token_kubeconfig(
        kube_cluster, namespace, sa, tmp_path / f"{sa}.kubeconfig")))


# ------------------------------------------------------------------ every Kube method, once
class Calls:
    """What the Kube exercises need: the identity's Kube, a namespace, a DatasetPrep to own things."""

    def __init__(self, kube: Kube, namespace: str, owner: dict[str, Any], blend: dict[str, Any]) -> None:
        self.kube, self.ns, self.owner, self.blend = kube, namespace, owner, blend
        spec = parse_spec(owner["spec"])
        self.job = build_job(spec, RunPlan.stages(spec)[0], parent=owner["metadata"]["name"], namespace=namespace,
                             parent_uid=owner["metadata"]["uid"], config=OperatorConfig())
        self.job["spec"]["suspend"] = True  # nothing runs: the call is what is exercised
        kopf.adopt(self.job, owner=owner, nested="spec.template")
        self.config_map = build_config_map("tiny-training", namespace, owner["metadata"]["uid"], {"a": "1"})
        kopf.adopt(self.config_map, owner=owner)

    def version(self) -> str:
        """The owner's resourceVersion now (the conditional writes need it)."""
        return self.kube.get_datasetprep(self.ns, self.owner["metadata"]["name"])["metadata"]["resourceVersion"]

    def blend_version(self) -> str:
        """The blend's resourceVersion now, as the last write answered (the operator never reads a blend)."""
        return self.blend["metadata"]["resourceVersion"]


#: One call of each public method of Kube, in an order where each finds what it needs. A new
#: method needs a line here (the test says so), and its request a row in permissions.PERMISSIONS.
EXERCISES: dict[str, Callable[[Calls], Any]] = {
    "get_datasetprep": lambda c: c.kube.get_datasetprep(c.ns, c.owner["metadata"]["name"]),
    "patch_datasetprep_status": lambda c: c.kube.patch_datasetprep_status(
        c.ns, c.owner["metadata"]["name"], c.version(), {"phase": "Pending"}),
    "patch_datasetprep_finalizers": lambda c: c.kube.patch_datasetprep_finalizers(
        c.ns, c.owner["metadata"]["name"], c.version(), []),
    "patch_datasetblend_status": lambda c: setattr(c, "blend", c.kube.patch_datasetblend_status(
        c.ns, c.blend["metadata"]["name"], c.blend_version(), {"message": "every Kube method, once"})),
    "patch_datasetblend_finalizers": lambda c: setattr(c, "blend", c.kube.patch_datasetblend_finalizers(
        c.ns, c.blend["metadata"]["name"], c.blend_version(), [])),
    "list_datasetpreps": lambda c: c.kube.list_datasetpreps(c.ns),
    "get_pvc": lambda c: c.kube.get_pvc(c.ns, "data"),
    "create_job": lambda c: c.kube.create_job(c.ns, c.job),
    "get_job": lambda c: c.kube.get_job(c.ns, c.job["metadata"]["name"]),
    "list_jobs": lambda c: c.kube.list_jobs(c.ns, {LABEL_OWNER_UID: c.owner["metadata"]["uid"]}),
    "list_pods": lambda c: c.kube.list_pods(c.ns, {LABEL_OWNER_UID: c.owner["metadata"]["uid"]}),
    "pod_log_tail": lambda c: c.kube.pod_log_tail(c.ns, "no-such-pod", 5),
    "list_events": lambda c: c.kube.list_events(c.ns, c.owner["metadata"]["uid"]),
    "post_event": lambda c: c.kube.post_event(c.owner, "Normal", "RbacCheck", "every Kube method, once"),
    "delete_job": lambda c: c.kube.delete_job(c.ns, c.job["metadata"]["name"]),
    "create_config_map": lambda c: c.kube.create_config_map(c.ns, c.config_map),
    "get_config_map": lambda c: c.kube.get_config_map(c.ns, "tiny-training"),
    "replace_config_map": lambda c: c.kube.replace_config_map(c.ns, {
        **c.config_map, "data": {"a": "2"},
        "metadata": {**c.config_map["metadata"],
                     "resourceVersion": c.kube.get_config_map(c.ns, "tiny-training")["metadata"]["resourceVersion"]}}),
    "delete_config_map": lambda c: c.kube.delete_config_map(c.ns, "tiny-training"),
}


def test_every_kube_method_has_an_exercise():
    methods = {name for name, _ in inspect.getmembers(Kube, inspect.isfunction) if not name.startswith("_")}
    assert methods == set(EXERCISES), (
        f"Kube methods without an exercise here: {sorted(methods - set(EXERCISES))}; "
        f"exercises of methods that are gone: {sorted(set(EXERCISES) - methods)}")


def test_every_kube_method_is_called_by_the_operator():
    """A Kube method nobody calls would keep its rule alive through its exercise alone."""
    code = "\n".join(p.read_text() for p in (REPO / "operator" / "datasetprep_operator").glob("*.py")
                     if p.name != "kube.py")
    unused = [name for name in EXERCISES if not re.search(rf"\.kube\.{name}\(", code)]
    assert not unused, f"Kube methods the operator never calls: {unused}"


# ------------------------------------------------------------------------------ the checks
def _audit_problems(requests: list[Request], mode: str) -> tuple[list[str], set[tuple[str, str, str]]]:
    """(requests no row allows, {(verb, group, resource)} of the allowed ones)."""
    granted = _expected(mode, watched=True)
    denied_ok = {(verb, group, res) for verb, group, res, m in permissions.DENIED_ON_PURPOSE if m == mode}
    problems, used = [], set()
    for req in requests:
        key = (req.verb, req.group, req.resource)
        if req.code == 403:
            if key not in denied_ok:
                problems.append(f"refused: {req} -- a missing rule")
            continue
        if req.verb not in granted.get((req.group, req.resource), ()):
            problems.append(f"not in the table: {req}")
        used.add(key)
    return problems, used


def _unused(used: set[tuple[str, str, str]], modes: list[str]) -> list[str]:
    unused = []
    for p in permissions.PERMISSIONS:
        if p.admission or not any(permissions.applies(p, mode, True) for mode in modes):
            continue
        for verb in p.verbs:
            if (verb, p.group, p.resource) not in used:
                unused.append(f"{verb} {p.group or 'core'}/{p.resource}")
    return unused


def _run_to_ready_and_delete(k8s, kube_cluster, namespace: str, full: str, tmp_path: Path) -> None:
    """The real operator, as the chart's identity: a DatasetPrep with deleteDataOnDelete to Ready, then deleted."""
    data = tmp_path / "pv"
    data.mkdir()
    (data / "corpus.jsonl").write_text("".join(json.dumps({"text": f"{i} {i + 1} {i + 2}"}) + "\n" for i in range(30)))
    # owned by the job pods' uid/gid, as a storage driver applying fsGroup gives a volume
    kube_cluster.create_hostpath_pvc(namespace, data, name="data", access_modes=("ReadWriteMany",),
                                     owner=(65532, 65532))
    log = tmp_path / "operator.log"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep", "metadata": {"name": "tiny"},
            "spec": {**TINY_SPEC, "deleteDataOnDelete": True}}

    def get():
        try:
            return k8s.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def ready():
        conds = {c["type"]: c for c in ((get() or {}).get("status") or {}).get("conditions") or ()}
        assert conds.get("Stalled", {}).get("status") != "True", f"{conds['Stalled']}\n{log.read_text()[-4000:]}"
        return conds.get("Ready", {}).get("status") == "True"

    def blend_ready():
        blend = k8s.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, "mix")
        conds = {c["type"]: c for c in (blend.get("status") or {}).get("conditions") or ()
                 if c.get("observedGeneration") == blend["metadata"]["generation"]}
        assert conds.get("Stalled", {}).get("status") != "True", f"{conds['Stalled']}\n{log.read_text()[-4000:]}"
        return conds.get("Ready", {}).get("status") == "True"

    with chart_operator(k8s, kube_cluster, namespace, full, log):
        k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        try:
            wait(ready, "DatasetPrep tiny Ready", timeout=240)
            assert (data / "out" / "tiny_text_document.bin").exists()
            # a DatasetBlend of it: the blend handlers, its files Job and its training ConfigMap
            k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend", "metadata": {"name": "mix"},
                "spec": {"components": [{"datasetPrep": "tiny", "weight": 1}], "splits": "90,10"}})
            wait(blend_ready, "DatasetBlend mix Ready", timeout=240)
            assert k8s.core.read_namespaced_config_map("mix-training", namespace).data
            k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, "mix")
            k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
            wait(lambda: get() is None, "DatasetPrep tiny deleted (the operator removes its finalizer)", timeout=120)
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log.read_text()[-6000:]}\n"
                                 f"{kube_cluster.debug_dump(namespace)}") from None
    assert not (data / "out" / "tiny_text_document.bin").exists(), "deleteDataOnDelete left the data"


@dataclasses.dataclass
class Installed:
    """The chart installed for a test: the operator's ServiceAccount and clients as it and as nobody."""

    full: str
    user: str
    api: Any
    nobody: Any


@contextlib.contextmanager
def _installed(helm, helm_env, k8s, kube_cluster, namespace: str, tmp_path: Path, mode: str) -> Iterator[Installed]:
    """The chart in ``mode`` (no operator pod, peering on) for the block; the CRDs it created removed after."""
    release = f"r{namespace[-5:]}"
    full = f"{release}-datasetprep-operator"
    created_crds = _adopt_shared_crds(k8s, release, namespace)
    try:
        with installed(helm, helm_env, release, namespace, _values(mode, namespace)):
            for crd in CRD_NAMES:
                wait(lambda crd=crd: crd_established(k8s, crd), crd)
            sa_api, nobody = (_client_as(k8s, kube_cluster, namespace, sa, tmp_path) for sa in (full, "default"))
            # Before the audit window opens: the admission's RESTMapping of our kinds (a 403 meanwhile is the
            # API server's start-up, not a missing rule; seen once 12 s after the CRD was first served).
            wait(lambda: owner_kinds_mapped(sa_api, namespace), "the owner-reference admission to map our kinds")
            yield Installed(full, f"system:serviceaccount:{namespace}:{full}", sa_api, nobody)
    finally:
        for crd in created_crds:
            delete_crd(k8s, crd)


def test_namespaces_mode_rbac_is_exactly_what_the_code_uses(helm, helm_env, k8s, kube_cluster, namespace,
                                                            extra_namespace, tmp_path):
    with _installed(helm, helm_env, k8s, kube_cluster, namespace, tmp_path, "namespaces") as chart:
        full, sa_api = chart.full, chart.api
        # 1. what the API server says the identity may do
        assert own_rules(sa_api, chart.nobody, namespace) == _expected("namespaces", watched=True)
        assert own_rules(sa_api, chart.nobody, extra_namespace) == _expected("namespaces", watched=False)

        audit = AuditLog(kube_cluster.audit_log)
        # 2a. every Kube method, as the operator's identity
        owner = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep", "metadata": {"name": "owner"},
            "spec": TINY_SPEC})
        k8s.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "none",
                                                   "resources": {"requests": {"storage": "1Mi"}}}})
        blend = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend", "metadata": {"name": "blend-owner"},
            "spec": {"components": [{"datasetPrep": "owner", "weight": 1}]}})
        calls = Calls(Kube(sa_api), namespace, owner, blend)
        for name, call in EXERCISES.items():
            try:
                call(calls)
            except ApiException as exc:
                pytest.fail(f"Kube.{name} as the operator's identity: {exc.status} {exc.reason}: {exc.body}")
        k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, "blend-owner")
        k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner")
        k8s.core.delete_namespaced_persistent_volume_claim("data", namespace)
        wait(lambda: not k8s.core.list_namespaced_persistent_volume_claim(namespace).items, "the test claim gone")

        # 2b. the real operator, kopf's calls included
        _run_to_ready_and_delete(k8s, kube_cluster, namespace, full, tmp_path)

        # 3. the admission-checked rule
        _finalizers_rule_is_needed(k8s, kube_cluster, namespace, full, tmp_path)
    problems, used = _audit_problems(audit.requests(chart.user), "namespaces")
    unused = [u for u in _unused(used, ["namespaces"])
              if not u.endswith("/clusterkopfpeerings")]  # cluster mode's, checked there
    assert not problems and not unused, "\n".join(
        problems + [f"granted but never used: {u} -- an unused rule" for u in unused])


def _finalizers_rule_is_needed(k8s, kube_cluster, namespace: str, full: str, tmp_path: Path) -> None:
    """For each kind that owns children (DatasetPrep, DatasetBlend): creating a Job whose ownerReference
    sets blockOwnerDeletion (what kopf.adopt writes) works as the operator, and is refused for an identity
    with every rule of the operator's Role but that kind's ``finalizers`` one."""
    prep = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep", "metadata": {"name": "owner2"}, "spec": TINY_SPEC})
    blend = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend", "metadata": {"name": "owner3"},
        "spec": {"components": [{"datasetPrep": "owner2", "weight": 1}]}})
    role = k8s.api.sanitize_for_serialization(k8s.rbac.read_namespaced_role(full, namespace))
    operator = Kube(_client_as(k8s, kube_cluster, namespace, full, tmp_path))
    for plural, owner in ((PLURAL, prep), (BLEND_PLURAL, blend)):
        sa = f"no-{plural}-finalizers"
        rules = [r for r in role["rules"] if f"{plural}/finalizers" not in r["resources"]]
        assert len(rules) == len(role["rules"]) - 1
        k8s.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
        k8s.rbac.create_namespaced_role(namespace, {"metadata": {"name": sa}, "rules": rules})
        k8s.rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})
        job = Calls(operator, namespace, prep, blend).job
        job["metadata"]["name"] = f"{owner['metadata']['name']}-probe"
        job["metadata"].pop("ownerReferences")
        kopf.adopt(job, owner=owner, nested="spec.template")
        assert job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        with pytest.raises(ApiException) as refused:
            Kube(_client_as(k8s, kube_cluster, namespace, sa, tmp_path)).create_job(namespace, job)
        assert refused.value.status == 403 and "finalizers" in refused.value.body, refused.value.body
        operator.create_job(namespace, job)
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, "owner3")
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner2")


def _peer(k8s, entry: dict[str, Any] | None) -> None:
    """Add (or with None remove) a fictitious operator in the cluster-wide peering "datasetprep"."""
    k8s.custom.patch_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "datasetprep",
                                           {"status": {"a-higher-peer": entry}})


def test_cluster_mode_rbac_is_exactly_what_the_code_uses(helm, helm_env, k8s, kube_cluster, namespace,
                                                         extra_namespace, tmp_path):
    with _installed(helm, helm_env, k8s, kube_cluster, namespace, tmp_path, "cluster") as chart:
        for ns in (namespace, extra_namespace):
            assert own_rules(chart.api, chart.nobody, ns) == _expected("cluster", watched=True)

        # a live peer of higher priority pauses our operator: it handles nothing of the shared bed
        now = datetime.datetime.now(datetime.timezone.utc)
        _peer(k8s, {"priority": 1000, "lifetime": 3600, "lastseen": now.isoformat()})
        audit = AuditLog(kube_cluster.audit_log)
        log = tmp_path / "operator.log"
        try:
            with chart_operator(k8s, kube_cluster, namespace, chart.full, log, "--priority=1"):
                wait(lambda: {("list", "customresourcedefinitions"), ("watch", "customresourcedefinitions"),
                              ("watch", "clusterkopfpeerings"), ("patch", "clusterkopfpeerings")}
                     <= {(r.verb, r.resource) for r in audit.requests(chart.user)},
                     "the operator's CRD watch and a peering heartbeat", timeout=60)
                time.sleep(5)  # what else it would do, it does now
        finally:
            _peer(k8s, None)
    requests = audit.requests(chart.user)
    writes = [r for r in requests if r.verb not in ("get", "list", "watch") and r.resource != "clusterkopfpeerings"]
    assert not writes, f"the paused operator changed something: {writes}"
    problems, used = _audit_problems(requests, "cluster")
    expected_used = {("list", "apiextensions.k8s.io", "customresourcedefinitions"),
                     ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
                     ("list", "kopf.dev", "clusterkopfpeerings"), ("watch", "kopf.dev", "clusterkopfpeerings"),
                     ("patch", "kopf.dev", "clusterkopfpeerings")}
    assert not problems and expected_used <= used, "\n".join(
        problems + [f"not used: {u}" for u in sorted(expected_used - used)] + [log.read_text()[-3000:]])
