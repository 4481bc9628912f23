"""`helm install` where a cluster is not fresh or not ready, with the real helm CLI on the test bed
(issue 16 item 6; what docs/install.md says about each case).

* By default (``namespaces.create``) the chart creates the namespaces the values name when they are
  missing, leaves existing ones alone, keeps the ones it created on ``helm uninstall`` (they hold the
  datasets) and adopts them again on a reinstall.
* With ``namespaces.create=false`` a missing namespace fails the install as Kubernetes says it, and
  the recovery docs/install.md gives (create the namespace, then ``helm upgrade --install``) works
  on the failed release.
* The CRD kept by ``helm uninstall`` is adopted again by a reinstall of the same release; only a
  CRD applied by hand (or kept from a release of another name) makes ``helm install`` fail, and the
  documented labels/annotations let the release take it over.
"""
from __future__ import annotations

import os
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from chartbed import (CHART, adopt_crds, chart_with_test_crd, delete_crd, gone_ok, helm_run, helmcli,
                      moved_crd_names, wait)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def missing_namespace(k8s):
    """A namespace name that does not exist; deleted after the test if something created it."""
    name = f"m-{os.urandom(3).hex()}"
    yield name
    gone_ok(k8s.core.delete_namespace, name)


def _namespace(k8s, name: str) -> Any:
    try:
        return k8s.core.read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _manifest_kinds(helm, helm_env, release: str, namespace: str) -> set[tuple[str, str]]:
    out = helm_run(helm, helm_env, "get", "manifest", release, "--namespace", namespace).stdout
    return {(d["kind"], d["metadata"]["name"]) for d in helmcli.split_documents(out)}


def test_install_creates_the_missing_namespaces_keeps_them_and_leaves_others_alone(
        helm, helm_env, k8s, namespace, extra_namespace, missing_namespace):
    release = f"ns{namespace[-5:]}"
    adopt_crds(k8s, release, namespace)
    values = {"replicaCount": 0, "jobServiceAccount.namespaces": [missing_namespace, extra_namespace, namespace]}
    install = ["install", release, str(CHART), "--namespace", namespace, "--wait", *helmcli.set_args(values)]
    try:
        helm_run(helm, helm_env, *install)
        created = _namespace(k8s, missing_namespace)
        assert created is not None and created.metadata.annotations["helm.sh/resource-policy"] == "keep"
        job_sa = f"{release}-datasetprep-operator-job"
        for ns in (missing_namespace, extra_namespace, namespace):
            assert k8s.core.read_namespaced_service_account(job_sa, ns)
        # the namespaces that existed are not the release's
        assert "meta.helm.sh/release-name" not in (_namespace(k8s, extra_namespace).metadata.annotations or {})
        kinds = _manifest_kinds(helm, helm_env, release, namespace)
        assert {name for kind, name in kinds if kind == "Namespace"} == {missing_namespace}
        # an upgrade keeps the namespace it created in its manifest (it looks it up and finds it its own)
        helm_run(helm, helm_env, "upgrade", *install[1:])
        assert ("Namespace", missing_namespace) in _manifest_kinds(helm, helm_env, release, namespace)

        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait")
        kept = _namespace(k8s, missing_namespace)
        assert kept is not None and kept.status.phase == "Active", "helm uninstall deleted a namespace it created"
        wait(lambda: not k8s.core.list_namespaced_service_account(
            missing_namespace, field_selector=f"metadata.name={job_sa}").items, "the job ServiceAccount removed")

        # a second install of the release takes it over again
        adopt_crds(k8s, release, namespace)
        helm_run(helm, helm_env, *install)
        assert ("Namespace", missing_namespace) in _manifest_kinds(helm, helm_env, release, namespace)
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait", check=False)


def test_without_namespace_creation_a_missing_namespace_fails_and_the_documented_recovery_works(
        helm, helm_env, k8s, namespace, missing_namespace):
    release = f"nc{namespace[-5:]}"
    adopt_crds(k8s, release, namespace)
    values = {"replicaCount": 0, "namespaces.create": False, "jobServiceAccount.namespaces": [missing_namespace]}
    install = ["install", release, str(CHART), "--namespace", namespace, *helmcli.set_args(values)]
    try:
        failed = helm_run(helm, helm_env, *install, check=False)
        assert failed.returncode != 0 and f'namespaces "{missing_namespace}" not found' in failed.stderr, failed.stderr
        # the failed release is in the way of a plain retry ...
        again = helm_run(helm, helm_env, *install, check=False)
        assert again.returncode != 0 and "cannot re-use a name that is still in use" in again.stderr, again.stderr
        # ... and docs/install.md's recovery: create the namespace, then upgrade --install the failed release
        k8s.core.create_namespace({"metadata": {"name": missing_namespace}})  # kubectl create namespace
        helm_run(helm, helm_env, "upgrade", "--install", *install[1:], "--wait")
        assert k8s.core.read_namespaced_service_account(f"{release}-datasetprep-operator-job", missing_namespace)
        status = helm_run(helm, helm_env, "status", release, "--namespace", namespace).stdout
        assert "STATUS: deployed" in status, status
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait", check=False)


def test_a_kept_crd_is_adopted_by_the_same_release_and_only_a_foreign_one_needs_the_documented_fix(
        helm, helm_env, k8s, namespace, tmp_path):
    group = f"{namespace[-5:]}.adopt.datasetprep.io"
    name = f"datasetpreps.{group}"
    chart = str(chart_with_test_crd(tmp_path, group))
    release, other = f"a{namespace[-5:]}", f"b{namespace[-5:]}"
    args = ["--namespace", namespace, "--set", "replicaCount=0"]
    try:
        helm_run(helm, helm_env, "install", release, chart, *args)
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait")
        assert k8s.ext.read_custom_resource_definition(name)  # kept (crds.keep)
        helm_run(helm, helm_env, "install", release, chart, *args)  # the same release: adopted, no error
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait")

        refused = helm_run(helm, helm_env, "install", other, chart, *args, check=False)
        assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr
        helm_run(helm, helm_env, "uninstall", other, "--namespace", namespace, check=False)
        # docs/install.md: label and annotate the CRDs for the release, then install
        for crd in moved_crd_names(group):
            k8s.ext.patch_custom_resource_definition(crd, {"metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": other, "meta.helm.sh/release-namespace": namespace}}})
        helm_run(helm, helm_env, "install", other, chart, *args)
    finally:
        for rel in (release, other):
            helm_run(helm, helm_env, "uninstall", rel, "--namespace", namespace, check=False)
        for crd in moved_crd_names(group):
            delete_crd(k8s, crd)
