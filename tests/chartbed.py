"""Helpers of the tests that install the Helm chart on the API server test bed (``*_cluster.py``):
the real helm CLI against the bed, a release for a block, access reviews, the chart's identities'
own tokens, the operator run as a process, and the API server's audit log.

The fixtures that use them (``helm``, ``helm_env``, ``k8s``, ``extra_namespace``) are in conftest.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bed import token_kubeconfig, wait_for
from paths import REPO

CHART = REPO / "charts" / "datasetprep-operator"
CRD_FILE = "datasetprep.io_datasetpreps.yaml"
CRD_NAME = "datasetpreps.datasetprep.io"
BLEND_CRD_FILE = "datasetprep.io_datasetblends.yaml"
#: The CRDs the chart installs (files/crds/), by name.
CRD_FILES = {CRD_NAME: CRD_FILE, "datasetblends.datasetprep.io": BLEND_CRD_FILE}
CRD_NAMES = tuple(CRD_FILES)


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


#: tests/helm/helmcli.py (that folder is a Go module, not a Python package)
helmcli = _load("datasetprep_helmcli", REPO / "tests" / "helm" / "helmcli.py")


# ------------------------------------------------------------------------------------ helm
def helm_run(helm: str, helm_env: dict[str, str], *args: str, check: bool = True, timeout: float = 300):
    """``helm ARGS`` against the test bed (``helm_env["KUBECONFIG"]``)."""
    return helmcli.run(helm, *args, "--kubeconfig", helm_env["KUBECONFIG"], env=helm_env, check=check,
                       timeout=timeout)


@contextlib.contextmanager
def installed(helm: str, helm_env: dict[str, str], release: str, namespace: str, values: dict[str, Any],
              chart: Path = CHART) -> Iterator[None]:
    """`helm install` for the block; `helm uninstall` after it (also when the test fails)."""
    helm_run(helm, helm_env, "install", release, str(chart), "--namespace", namespace, "--wait",
             "--timeout", "120s", *helmcli.set_args(values))
    try:
        yield
    finally:
        helm_run(helm, helm_env, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s",
                 check=False)


def adopt_crd(k8s, name: str, release: str, namespace: str) -> None:
    """Let `release` take over an existing CRD (as `helm install` requires for objects it did not create).

    The shared DatasetPrep CRD may already exist (other tests apply crds/ directly, or an earlier
    release kept it). Helm adopts an object carrying its ownership labels and annotations.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        k8s.ext.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    k8s.ext.patch_custom_resource_definition(name, {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace}}})


def adopt_crds(k8s, release: str, namespace: str) -> None:
    """:func:`adopt_crd` for each CRD the chart installs (DatasetPrep and DatasetBlend)."""
    for name in CRD_NAMES:
        adopt_crd(k8s, name, release, namespace)


def chart_with_test_crd(tmp_path: Path, group: str) -> Path:
    """A copy of the chart whose CRDs (DatasetPrep and DatasetBlend) are the real ones moved to API
    group ``group``, so a test can install, upgrade and delete them without touching the shared
    ones. :func:`moved_crd_names` names them."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    for file in CRD_FILES.values():
        crd = yaml.safe_load((CHART / "files" / "crds" / file).read_text())
        crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        crd["spec"]["group"] = group
        (chart / "files" / "crds" / file).write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def moved_crd_names(group: str) -> list[str]:
    """The CRDs a :func:`chart_with_test_crd` chart of ``group`` installs."""
    return [f"{name.split('.', 1)[0]}.{group}" for name in CRD_NAMES]


def gone_ok(delete, *args, **kwargs) -> None:
    """``delete(*args, **kwargs)``; an object that is already gone (404) is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        delete(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_crd(k8s, name: str) -> None:
    gone_ok(k8s.ext.delete_custom_resource_definition, name)


def crd_established(k8s, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        crd = k8s.ext.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
    return conds.get("Established") == "True"


def wait(fn, what: str, timeout: float = 120.0, interval: float = 0.3):
    return wait_for(fn, what, timeout, interval)


# ----------------------------------------------------------------------- access reviews
def can(k8s, user: str, verb: str, resource: str, namespace: str | None = None, group: str = "",
        subresource: str | None = None) -> bool:
    """The real authorizer's answer (SubjectAccessReview) for ServiceAccount ``user`` = ``"ns:name"``."""
    import kubernetes

    ra: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        ra["namespace"] = namespace
    if subresource:
        ra["subresource"] = subresource
    ns, sa = user.split(":")
    body = kubernetes.client.V1SubjectAccessReview.from_dict({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{ns}:{sa}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                 "resourceAttributes": ra}})
    return bool(k8s.authz.create_subject_access_review(body).status.allowed)


def rules_review(api_client, namespace: str) -> dict[tuple[str, str], set[str]]:
    """``{(group, resource): verbs}`` the client's own identity may use in ``namespace``, as the API
    server reports it (SelfSubjectRulesReview, what ``kubectl auth can-i --list`` shows), cluster-wide
    grants included."""
    import kubernetes

    review = kubernetes.client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
        kubernetes.client.V1SelfSubjectRulesReview(spec=kubernetes.client.V1SelfSubjectRulesReviewSpec(
            namespace=namespace)))
    assert not review.status.incomplete, review.status.evaluation_error
    out: dict[tuple[str, str], set[str]] = {}
    for rule in review.status.resource_rules:
        assert not rule.resource_names, rule
        for group in rule.api_groups or [""]:
            for resource in rule.resources or []:
                out.setdefault((group, resource), set()).update(rule.verbs)
    return out


def own_rules(api_client, baseline_client, namespace: str) -> dict[tuple[str, str], set[str]]:
    """:func:`rules_review` of ``api_client``'s identity, without what the cluster gives every
    ServiceAccount (``baseline_client``: a ServiceAccount with no bindings of its own, e.g. the
    namespace's ``default``): a resource is left out only when the verbs are exactly the baseline's."""
    baseline = rules_review(baseline_client, namespace)
    return {key: verbs for key, verbs in rules_review(api_client, namespace).items() if baseline.get(key) != verbs}


# ------------------------------------------------------------------------- the operator
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def chart_operator(k8s, kube_cluster, namespace: str, deployment: str, log_path: Path,
                   *extra_args: str) -> Iterator[subprocess.Popen]:
    """The real operator for the block, as the chart's Deployment ``deployment`` in ``namespace``
    configures it (its arguments and plain environment) and with its ServiceAccount's own token;
    run on this machine, its liveness endpoint on a free loopback port, no metrics port.
    Returns once ``/healthz`` answers."""
    body = k8s.apps.read_namespaced_deployment(deployment, namespace).to_dict()
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = free_port()
    args = [f"--liveness=http://127.0.0.1:{port}/healthz" if a.startswith("--liveness=")
            else "--metrics-port=0" if a.startswith("--metrics-port=") else a for a in container["args"]]
    kubeconfig = token_kubeconfig(kube_cluster, namespace, pod["service_account_name"],
                                  log_path.with_suffix(".kubeconfig"))
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"] if e.get("value") is not None},
           "KUBECONFIG": str(kubeconfig)}
    for var in ("DATASETPREP_WATCH_NAMESPACES", "DATASETPREP_METRICS_PORT"):
        env.pop(var, None)
    argv = [sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())", *args,
            *extra_args]
    with open(log_path, "w") as log, process(argv, env, log) as proc:
        try:
            wait(lambda: healthz(port) or proc.poll() is not None, "the operator's /healthz", timeout=60)
        except TimeoutError:
            raise AssertionError(f"the operator did not come up:\n{log_path.read_text()[-4000:]}") from None
        assert proc.poll() is None, f"the operator exited:\n{log_path.read_text()[-4000:]}"
        yield proc


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -------------------------------------------------------------------------- the audit log
@dataclasses.dataclass(frozen=True)
class Request:
    """One API request as the API server's audit log recorded it."""

    verb: str
    group: str
    resource: str
    """``resource`` or ``resource/subresource``."""
    namespaced: bool
    code: int

    def __str__(self) -> str:
        where = "in a namespace" if self.namespaced else "cluster-wide"
        return f"{self.verb} {self.group or 'core'}/{self.resource} {where} (HTTP {self.code})"


def owner_kinds_mapped(api, namespace: str, kinds: tuple[str, ...] = ("DatasetPrep", "DatasetBlend")) -> bool:
    """Whether the API server's OwnerReferencesPermissionEnforcement admission can map our kinds yet.

    For some seconds after a CRD is first served, creating an object whose ownerReference (with
    blockOwnerDeletion) names one of its kinds is refused with 403 "cannot find RESTMapping" (the
    admission's discovery is refreshed on its own schedule). The operator retries such a create;
    a test that counts every 403 as a missing RBAC rule waits for this first (a server-side dry run,
    so nothing is stored).
    """
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    core = kubernetes.client.CoreV1Api(api)
    for kind in kinds:
        ref = {"apiVersion": "datasetprep.io/v1alpha1", "kind": kind, "name": "mapping-probe",
               "uid": "00000000-0000-0000-0000-000000000000", "controller": True, "blockOwnerDeletion": True}
        body = {"metadata": {"name": "mapping-probe", "ownerReferences": [ref]}}
        try:
            core.create_namespaced_config_map(namespace, body, dry_run="All")
        except ApiException as exc:
            if exc.status == 403 and "RESTMapping" in (exc.body or ""):
                return False
            raise
    return True


class AuditLog:
    """The requests of one identity in the test bed's audit log, from a given point on."""

    def __init__(self, path: Path | None) -> None:
        assert path is not None, "the test bed writes no audit log (tests/cluster/controlplane.py: AUDIT_POLICY)"
        self.path = path
        self.start = path.stat().st_size

    def requests(self, username: str) -> list[Request]:
        """Resource requests of ``username`` since this object was made (discovery left out).

        A watch is recorded when its response starts, and again when it ends; both count once.
        """
        seen: dict[str, Request] = {}
        with open(self.path, "rb") as f:
            f.seek(self.start)
            for line in f:
                event = json.loads(line)
                obj = event.get("objectRef")
                if event["user"]["username"] != username or not obj or not obj.get("resource"):
                    continue
                resource = obj["resource"] + (f"/{obj['subresource']}" if obj.get("subresource") else "")
                seen[event["auditID"]] = Request(event["verb"], obj.get("apiGroup", ""), resource,
                                                 bool(obj.get("namespace")),
                                                 int((event.get("responseStatus") or {}).get("code", 0)))
        return list(seen.values())
