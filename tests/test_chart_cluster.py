"""The Helm chart against the real API server test bed (tests/cluster; marker `cluster`).

* every rendered manifest passes a server-side dry run (schema, CRD structural rules, RBAC,
  NetworkPolicies -- accepted here; tests/test_netpol_e2e.py runs an enforcer and proves what they
  allow and block);
* `helm install` in both watch modes, then the real authorizer is asked (SubjectAccessReview)
  exactly what the operator's and the job's ServiceAccounts may do -- no Secrets, nothing outside
  the watched namespaces in `namespaces` mode, nothing at all for the job pods;
* the operator runs as the chart deploys it: a pod from our operator image (tests/cluster/images)
  on the test bed's node, with its own service-account token (in-cluster config), its liveness and
  readiness probes run by the kubelet, and it takes a DatasetPrep to Ready with Megatron-LM's bytes
  through job pods of our job image, so the RBAC is proven sufficient, not just small;
* `helm upgrade` upgrades a CRD; `helm uninstall` keeps it (crds.keep) or removes it.

The shared DatasetPrep CRD is never deleted or changed in schema here: upgrade/uninstall tests run
on a copy of the chart whose CRD has a per-test API group.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bed import GOLDEN_PREFIX, assert_golden, golden_claim, imported_image
from chartbed import (CHART, CRD_FILE, CRD_NAME, adopt_crd, adopt_crds, can, chart_with_test_crd,
                      crd_established, delete_crd, helm_run, helmcli, installed, moved_crd_names, wait)
from datasetprep_operator import permissions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION, PLURAL = "datasetprep.io", "v1alpha1", "datasetpreps"
FIELD_MANAGER = "datasetprep-chart-test"


def _split(resource: str) -> tuple[str, str | None]:
    res, _, sub = resource.partition("/")
    return res, sub or None


# (group, resource, subresource, verbs) the operator must have in every watched namespace: the table
OPERATOR_NEEDS = [(group, *_split(res), sorted(verbs))
                  for (group, res), verbs in permissions.rules("namespaces", False, cluster=False).items()]
OPERATOR_CLUSTER_NEEDS = [(group, *_split(res), sorted(verbs))
                          for (group, res), verbs in permissions.rules("namespaces", False, cluster=True).items()]
# what it must never have (the verbs the code stopped using among them)
OPERATOR_MUST_NOT = [
    ("", "secrets", None, ["get", "list", "watch", "create"]),
    ("", "pods", None, ["get", "create", "delete", "patch"]),
    ("", "pods", "exec", ["create"]),
    ("", "serviceaccounts", "token", ["create"]),
    ("rbac.authorization.k8s.io", "roles", None, ["create", "bind", "escalate"]),
    ("datasetprep.io", "datasetpreps", None, ["create", "delete", "update"]),
    ("batch", "jobs", None, ["update", "patch"]),
    ("", "configmaps", None, ["list", "watch", "patch"]),
    ("", "events", None, ["patch", "update"]),
    ("events.k8s.io", "events", None, ["create", "patch"]),
    ("apiextensions.k8s.io", "customresourcedefinitions", None, ["get", "create", "update", "patch", "delete"]),
]


def assert_operator_rbac(k8s, user: str, allowed_ns: list[str], denied_ns: list[str]) -> None:
    problems = []
    for ns in allowed_ns:
        for group, res, sub, verbs in OPERATOR_NEEDS:
            for verb in verbs:
                if not can(k8s, user, verb, res, ns, group, sub):
                    problems.append(f"missing {verb} {group}/{res}{'/' + sub if sub else ''} in {ns}")
    for ns in allowed_ns + denied_ns:
        for group, res, sub, verbs in OPERATOR_MUST_NOT:
            for verb in verbs:
                if can(k8s, user, verb, res, ns, group, sub):
                    problems.append(f"unexpected {verb} {group}/{res}{'/' + sub if sub else ''} in {ns}")
    for ns in denied_ns:
        for group, res, sub, verbs in OPERATOR_NEEDS:
            for verb in verbs:
                if can(k8s, user, verb, res, ns, group, sub):
                    problems.append(f"unexpected {verb} {group}/{res} in unwatched namespace {ns}")
    for group, res, sub, verbs in OPERATOR_CLUSTER_NEEDS:
        for verb in verbs:
            if not can(k8s, user, verb, res, None, group, sub):
                problems.append(f"missing cluster-wide {verb} {group}/{res}")
    if can(k8s, user, "list", "secrets", None):
        problems.append("unexpected cluster-wide list secrets")
    assert not problems, "\n".join(problems)


def assert_job_rbac(k8s, user: str, ns: str, other_ns: str) -> None:
    """The job pods' identity may do nothing: not even read or patch a pod (its own or another's)."""
    for verb, group, res in (("get", "", "pods"), ("patch", "", "pods"), ("list", "", "pods"),
                             ("delete", "", "pods"), ("create", "", "pods"), ("get", "", "secrets"),
                             ("get", "", "configmaps"), ("create", "", "events"), ("create", "batch", "jobs"),
                             ("get", "datasetprep.io", "datasetpreps")):
        for where in (ns, other_ns):
            assert not can(k8s, user, verb, res, where, group), f"job SA may {verb} {group}/{res} in {where}"


# --------------------------------------------------------------------------------- dry run
def _render(helm, helm_env, release: str, namespace: str, values: dict[str, Any], chart: Path = CHART) -> list[dict]:
    out = helmcli.run(helm, "template", release, str(chart), "--namespace", namespace,
                      *helmcli.set_args(values), env=helm_env).stdout
    return helmcli.split_documents(out)


@pytest.mark.parametrize("mode", ["cluster", "namespaces", "namespaces-peering"])
def test_rendered_manifests_pass_server_side_dry_run(helm, helm_env, k8s, namespace, extra_namespace, mode):
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    values: dict[str, Any] = {"metrics.serviceMonitor.enabled": False}
    if mode.startswith("namespaces"):
        values.update({"watch.mode": "namespaces", "watch.namespaces": [namespace, extra_namespace]})
    else:
        values["jobServiceAccount.namespaces"] = [namespace, extra_namespace]
    if mode.endswith("peering"):
        values["replicaCount"] = 2
    docs = _render(helm, helm_env, f"dry{namespace[-5:]}", namespace, values)
    kinds = {d["kind"] for d in docs}
    # NetworkPolicies too: the API server validates and accepts them (enforced in tests/test_netpol_e2e.py;
    # tests/test_chart.py checks what they allow)
    assert {"Deployment", "ServiceAccount", "CustomResourceDefinition", "NetworkPolicy"} <= kinds
    skipped = []
    for doc in docs:
        try:
            res = k8s.dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:
            skipped.append(doc["kind"])  # a kind whose CRD is itself only being dry-run here
            continue
        k8s.dyn.server_side_apply(res, body=doc, namespace=doc["metadata"].get("namespace"),
                                  field_manager=FIELD_MANAGER, dry_run="All", force_conflicts=True)
    assert set(skipped) <= {"ClusterKopfPeering", "KopfPeering"}, skipped


# ----------------------------------------------------------------------------- installs
def test_install_cluster_mode_grants_exactly_the_documented_rbac(helm, helm_env, k8s, namespace, extra_namespace):
    release = f"c{namespace[-5:]}"
    adopt_crds(k8s, release, namespace)
    values = {"replicaCount": 0, "jobServiceAccount.namespaces": [extra_namespace]}
    with installed(helm, helm_env, release, namespace, values):
        full = f"{release}-datasetprep-operator"
        assert k8s.core.read_namespaced_service_account(full, namespace)
        assert k8s.core.read_namespaced_service_account(f"{full}-job", extra_namespace)
        assert crd_established(k8s, CRD_NAME)
        user = f"{namespace}:{full}"
        assert_operator_rbac(k8s, user, allowed_ns=[namespace, extra_namespace, "default"], denied_ns=[])
        assert_job_rbac(k8s, f"{extra_namespace}:{full}-job", extra_namespace, namespace)
        assert not can(k8s, user, "list", "clusterkopfpeerings", None, "kopf.dev")  # no peering, no rights
    # uninstall keeps the CRD (crds.keep defaults to true)
    assert crd_established(k8s, CRD_NAME)


def test_install_runs_the_operator_pod_which_takes_a_datasetprep_to_ready(
        helm, helm_env, k8s, kube_cluster, namespace, extra_namespace, tmp_path):
    """Install in watch.mode=namespaces with one replica: the operator is a pod of our operator image,
    Ready through its probes, logged in with its own ServiceAccount token (in-cluster config), and it
    takes a DatasetPrep to Ready with Megatron-LM's bytes, with no 403 on the way."""
    operator_tag, operator_id = imported_image(kube_cluster, "operator")
    job_tag, job_id = imported_image(kube_cluster, "job")
    release = f"n{namespace[-5:]}"
    full = f"{release}-datasetprep-operator"
    adopt_crds(k8s, release, namespace)
    data = golden_claim(kube_cluster, namespace, tmp_path / "pv")  # owned by the job pods' uid
    values = {"replicaCount": 1, "watch.mode": "namespaces", "watch.namespaces": [namespace]}
    with installed(helm, helm_env, release, namespace, values):
        user = f"{namespace}:{full}"
        assert_operator_rbac(k8s, user, allowed_ns=[namespace], denied_ns=[extra_namespace, "default"])
        assert_job_rbac(k8s, f"{namespace}:{full}-job", namespace, extra_namespace)
        wait(lambda: crd_established(k8s, CRD_NAME), "the DatasetPrep CRD")

        # The operator pod: our image, in containerd, Ready, with its own token and no kubeconfig.
        (pod,) = k8s.core.list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator").items
        (cs,) = pod.status.container_statuses
        assert pod.spec.containers[0].image == operator_tag and cs.image_id.endswith(operator_id)
        assert cs.container_id.startswith("containerd://") and cs.ready
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        assert pod.spec.service_account_name == full and pod.spec.automount_service_account_token is True
        assert not [e for e in pod.spec.containers[0].env or () if e.name == "KUBECONFIG"]
        # Its probes are HTTP GETs on kopf's /healthz that the kubelet ran (the kubelet's prober metrics).
        for probe in (pod.spec.containers[0].liveness_probe, pod.spec.containers[0].readiness_probe):
            assert probe.http_get.path == "/healthz" and probe.http_get.port == "health"
        wait(lambda: _probe_counts(kube_cluster, namespace, pod.metadata.name).get("Liveness", 0) >= 1,
              "a liveness probe run by the kubelet", timeout=60)
        counts = _probe_counts(kube_cluster, namespace, pod.metadata.name)
        assert counts["Readiness"] >= 1 and counts["Liveness"] >= 1, counts

        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
                "metadata": {"name": "wiki", "namespace": namespace},
                "spec": {"source": {"files": {"paths": ["corpus_a.jsonl"]}},
                         "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
                         "output": {"claimName": "data", "prefix": "out/llama"}}}
        k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        def operator_log() -> str:
            return kube_cluster.run_kubectl("logs", "-n", namespace, pod.metadata.name, "-c", "operator",
                                            check=False).stdout

        def ready():
            obj = k8s.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wiki")
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}
            if conds.get("Stalled", {}).get("status") == "True":
                pytest.fail(f"Stalled: {conds['Stalled'].get('message')}\n{operator_log()[-4000:]}")
            return obj if conds.get("Ready", {}).get("status") == "True" else None

        try:
            obj = wait(ready, "DatasetPrep wiki Ready", timeout=240)
        except TimeoutError:
            pytest.fail(f"not Ready; operator log:\n{operator_log()[-6000:]}\n{kube_cluster.debug_dump(namespace)}")
        log_text = operator_log()
        assert k8s.core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses[0].restart_count == 0
        # Namespaced with exact names, the operator asks for nothing it was not granted: not even
        # the cluster's namespace list (kopf's namespace discovery is off), so no 403 and no retry.
        denied = [line for line in log_text.splitlines()
                  if "Forbidden" in line or "check the operator's RBAC" in line or " 403" in line
                  or "permissions" in line or "Request attempt" in line]
        assert not denied, "\n".join(denied[-20:])
        # One line per decision, with the resource's namespace/name.
        assert f"{namespace}/wiki: JobCreated: Created Job wiki-" in log_text, log_text[-3000:]
        assert f"{namespace}/wiki: Succeeded: " in log_text, log_text[-3000:]
        # the work the chart's RBAC allowed: a Job, the training ConfigMap, status, events
        assert obj["status"]["phase"] == "Succeeded"
        assert_golden(data / "out" / "llama_text_document")
        assert obj["status"]["output"]["files"][0]["binSha256"] == json.loads(
            GOLDEN_PREFIX.with_suffix(".json").read_text())["sha256"]["bin"]
        assert k8s.core.read_namespaced_config_map("wiki-training", namespace).data["config.yaml"]
        jobs = k8s.batch.list_namespaced_job(namespace).items
        assert jobs and all(j.spec.template.spec.service_account_name == f"{full}-job" for j in jobs)
        assert all(j.spec.template.spec.containers[0].image == job_tag for j in jobs)
        job_pods = k8s.core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=job").items
        assert job_pods and all(p.status.container_statuses[0].image_id.endswith(job_id) for p in job_pods)
        assert all(p.spec.automount_service_account_token is False for p in job_pods)
        assert k8s.core.list_namespaced_event(namespace, field_selector="involvedObject.name=wiki").items
    # uninstall: the CRD and the DatasetPrep are kept
    assert crd_established(k8s, CRD_NAME)
    assert k8s.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wiki")


def _probe_counts(kube_cluster, namespace: str, pod: str) -> dict[str, float]:
    """Successful probes of the pod's container by type, from the kubelet's own prober metrics
    (``/metrics/probes`` through the API server's node proxy)."""
    text = kube_cluster.run_kubectl("get", "--raw", "/api/v1/nodes/testbed-node/proxy/metrics/probes").stdout
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prober_probe_total{") and f'pod="{pod}"' in line and f'namespace="{namespace}"' in line \
                and 'result="successful"' in line:
            kind = line.split('probe_type="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0) + float(line.rsplit(" ", 1)[1])
    return counts


# ---------------------------------------------------------------- CRD upgrade / keep / peering
def test_helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it(helm, helm_env, k8s, namespace, tmp_path):
    group = f"{namespace[-5:]}.upgrade.datasetprep.io"
    name = f"datasetpreps.{group}"
    chart = chart_with_test_crd(tmp_path, group)
    release = f"u{namespace[-5:]}"
    try:
        helm_run(helm, helm_env, "install", release, str(chart), "--namespace", namespace, "--set", "replicaCount=0")
        wait(lambda: crd_established(k8s, name), name)
        before = k8s.ext.read_custom_resource_definition(name)
        columns = [c.name for c in before.spec.versions[0].additional_printer_columns or []]
        assert "Shards" not in columns

        # a new chart version with a changed CRD: a printer column and a spec field added
        crd_path = chart / "files" / "crds" / CRD_FILE
        crd = yaml.safe_load(crd_path.read_text())
        version = crd["spec"]["versions"][0]
        version.setdefault("additionalPrinterColumns", []).append(
            {"name": "Shards", "type": "integer", "jsonPath": ".spec.shards"})
        spec_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"].setdefault("properties", {})
        spec_props["upgradeProbe"] = {"type": "string", "description": "added by the upgrade test"}
        crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
        helm_run(helm, helm_env, "upgrade", release, str(chart), "--namespace", namespace, "--set", "replicaCount=0")

        after = k8s.ext.read_custom_resource_definition(name)
        assert "Shards" in [c.name for c in after.spec.versions[0].additional_printer_columns]
        assert "upgradeProbe" in after.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties
        assert after.metadata.annotations["helm.sh/resource-policy"] == "keep"

        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait")
        assert crd_established(k8s, name), "crds.keep=true: the CRD must survive helm uninstall"
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, check=False)
        for crd in moved_crd_names(group):
            delete_crd(k8s, crd)


def test_uninstall_removes_the_crd_when_keep_is_false(helm, helm_env, k8s, namespace, tmp_path):
    group = f"{namespace[-5:]}.nokeep.datasetprep.io"
    name = f"datasetpreps.{group}"
    chart = chart_with_test_crd(tmp_path, group)
    release = f"k{namespace[-5:]}"
    try:
        helm_run(helm, helm_env, "install", release, str(chart), "--namespace", namespace,
              "--set", "replicaCount=0", "--set", "crds.keep=false")
        wait(lambda: crd_established(k8s, name), name)
        assert "helm.sh/resource-policy" not in (k8s.ext.read_custom_resource_definition(name).metadata.annotations or {})
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait")
        wait(lambda: not crd_established(k8s, name), f"{name} deleted", timeout=60)
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, check=False)
        for crd in moved_crd_names(group):
            delete_crd(k8s, crd)


def test_peering_objects_are_created_after_their_crds(helm, helm_env, k8s, namespace, extra_namespace, tmp_path):
    """Peering on (namespaces mode): the KopfPeering CRD is a template, the KopfPeering objects are
    post-install hooks -- a plain manifest could not be mapped before its CRD exists."""
    group = f"{namespace[-5:]}.peering.datasetprep.io"
    chart = chart_with_test_crd(tmp_path, group)
    release = f"p{namespace[-5:]}"
    peering_crds = ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
    preexisting = [crd for crd in peering_crds if crd_established(k8s, crd)]
    for crd in preexisting:
        adopt_crd(k8s, crd, release, namespace)
    values = {"replicaCount": 0, "peering.enabled": True, "watch.mode": "namespaces",
              "watch.namespaces": [namespace, extra_namespace]}
    try:
        helm_run(helm, helm_env, "install", release, str(chart), "--namespace", namespace, *helmcli.set_args(values))
        for ns in (namespace, extra_namespace):
            assert k8s.custom.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", "datasetprep")
        user = f"{namespace}:{release}-datasetprep-operator"
        for ns in (namespace, extra_namespace):
            for verb in sorted(permissions.rules("namespaces", True, cluster=False)[("kopf.dev", "kopfpeerings")]):
                assert can(k8s, user, verb, "kopfpeerings", ns, "kopf.dev")
        assert not can(k8s, user, "patch", "clusterkopfpeerings", None, "kopf.dev")
        # an upgrade re-runs the hooks (before-hook-creation) without failing on the existing objects
        helm_run(helm, helm_env, "upgrade", release, str(chart), "--namespace", namespace, *helmcli.set_args(values))
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, check=False)
        for crd in moved_crd_names(group):
            delete_crd(k8s, crd)
        for crd in set(peering_crds) - set(preexisting):  # leave the shared cluster as it was
            delete_crd(k8s, crd)
