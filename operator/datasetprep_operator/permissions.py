"""What the operator asks of the API server, and why: the one table its RBAC is checked against.

Each row is a resource and the verbs the operator's code uses on it -- ``kube.py`` (Application)
or kopf as configured in ``handlers.py``/``runtime.py`` (Framework). Nothing reads this table at
run time; it states the operator's needs as data so that tests hold both sides to it:

* the Helm chart grants exactly these rules, in each watch mode (``tests/test_chart.py``), and the
  API server reports exactly these as the installed identity's effective permissions
  (``SelfSubjectRulesReview``, ``tests/test_operator_rbac_cluster.py``);
* the code uses exactly these: every method of :class:`~datasetprep_operator.kube.Kube` is
  exercised and the real operator runs a DatasetPrep on the test bed, as the chart's identity,
  while the API server's audit log records each request (``tests/test_operator_rbac_cluster.py``).
  A request no row allows is a missing rule; a row no request used is an unused rule.

Adding an API call (a new kind, a new Kube method) adds a row here, a rule with its
``Framework:``/``Application:`` comment to ``charts/datasetprep-operator/templates/rbac-operator.yaml``
and a line to docs/install.md's table; the tests name whichever is missing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

#: Who needs a rule: kopf itself, or datasetprep's own code.
FRAMEWORK = "Framework"
APPLICATION = "Application"


@dataclasses.dataclass(frozen=True)
class Permission:
    """Verbs on one resource (``resource/subresource`` for a subresource)."""

    group: str
    """API group; ``""`` is the core group."""
    resource: str
    verbs: tuple[str, ...]
    who: tuple[str, ...]
    """:data:`FRAMEWORK` and/or :data:`APPLICATION`."""
    why: str
    cluster: bool = False
    """Cluster-wide in both watch modes (a cluster-scoped resource); else in each watched namespace."""
    peering: bool | None = None
    """True: only with kopf peering on; None: always."""
    mode: str | None = None
    """``cluster`` or ``namespaces``: only in that watch mode; None: both."""
    admission: bool = False
    """Checked by an admission plugin on another request, never requested itself (so the audit log
    cannot show it); its own test proves it."""


PERMISSIONS: tuple[Permission, ...] = (
    Permission("datasetprep.io", "datasetpreps", ("get", "list", "watch", "patch"), (FRAMEWORK, APPLICATION),
               "kopf lists and watches DatasetPreps (and writes nothing on them); the runtime patches its finalizer "
               "onto deleteDataOnDelete ones only, conditional on the resourceVersion (patch), re-reads one after a "
               "conflict and the reconciler a reuse candidate (get); the deletion lists the namespace's DatasetPreps "
               "to keep data another one points at (list); the blend reconciler reads a component DatasetPrep it "
               "has no indexed summary of yet (get)"),
    Permission("datasetprep.io", "datasetpreps/status", ("patch",), (APPLICATION,),
               "phase, conditions, progress and outputs, conditional on the resourceVersion they were decided on"),
    Permission("datasetprep.io", "datasetpreps/finalizers", ("update",), (APPLICATION,),
               "Jobs and ConfigMaps carry an ownerReference with blockOwnerDeletion; the "
               "OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) checks this on their create",
               admission=True),
    Permission("datasetprep.io", "datasetblends", ("list", "watch", "patch"), (FRAMEWORK, APPLICATION),
               "kopf lists and watches DatasetBlends (and writes nothing on them); the runtime removes the finalizer "
               "older operator versions had kopf put on them, conditional on the resourceVersion (patch)"),
    Permission("datasetprep.io", "datasetblends/status", ("patch",), (APPLICATION,),
               "a blend's components, shares, epochs, files and conditions, conditional on the resourceVersion they "
               "were decided on"),
    Permission("datasetprep.io", "datasetblends/finalizers", ("update",), (APPLICATION,),
               "a blend's files Job and training ConfigMap carry an ownerReference with blockOwnerDeletion, which "
               "OwnerReferencesPermissionEnforcement checks on their create", admission=True),
    Permission("batch", "jobs", ("create", "get", "list", "watch", "delete"), (FRAMEWORK, APPLICATION),
               "the Job of each run (create, get), a watch-fed index of our Jobs (list, watch), older runs' and the "
               "delete-data Jobs removed (list, delete); a DatasetBlend's files Job per version, older versions' "
               "removed"),
    Permission("", "configmaps", ("create", "get", "update", "delete"), (APPLICATION,),
               "the training ConfigMap <name>-training of a DatasetPrep or a DatasetBlend: created, replaced when the output changes (update with "
               "the resourceVersion read), a renamed one's predecessor deleted"),
    Permission("", "pods", ("list", "watch"), (FRAMEWORK, APPLICATION),
               "a watch-fed index of the job pods (whose logs to read for progress), their termination messages "
               "when a Job (a run's or a blend's files Job) ends"),
    Permission("", "pods/log", ("get",), (APPLICATION,),
               "live progress (job pods have no API credentials and print it as log lines, read from each running "
               "pod's log tail), and the last log lines of a failed job pod that left no termination message"),
    Permission("", "persistentvolumeclaims", ("get",), (APPLICATION,),
               "the claims a spec names exist before a Job is started"),
    Permission("", "events", ("create", "list"), (APPLICATION,),
               "Events on the DatasetPrep or DatasetBlend, posted by the runtime through the core v1 API (create); "
               "the Job controller's FailedCreate events of a Job that has no pod, by the Job's uid (list)"),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"), (FRAMEWORK,),
               "kopf watches CRDs to notice the DatasetPrep and DatasetBlend CRDs being added, changed or removed "
               "(cluster mode only: with exact namespace names the operator turns kopf's scanning off, which "
               "also ends its CRD watch, and the chart's namespaced mode only takes exact names)",
               cluster=True, mode="cluster"),
    Permission("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch"), (FRAMEWORK,),
               "peering: each operator pod patches its heartbeat into the ClusterKopfPeering and watches the others'",
               cluster=True, peering=True, mode="cluster"),
    Permission("kopf.dev", "kopfpeerings", ("list", "watch", "patch"), (FRAMEWORK,),
               "peering: each operator pod patches its heartbeat into the KopfPeering of each watched namespace and "
               "watches the others'", peering=True, mode="namespaces"),
)

#: Requests the operator may make that are refused on purpose: (verb, group, resource, watch mode).
#: With exact namespace names the operator turns kopf's namespace discovery off, so it does not ask;
#: a glob in --namespace needs it (kopf then logs "Not enough permissions to list namespaces").
DENIED_ON_PURPOSE: tuple[tuple[str, str, str, str], ...] = (
    ("list", "", "namespaces", "namespaces"),
    ("watch", "", "namespaces", "namespaces"),
)

Rules = dict[tuple[str, str], set[str]]


def applies(p: Permission, mode: str, peering: bool) -> bool:
    """Whether ``p`` is granted in watch mode ``mode`` (``cluster``/``namespaces``) with/without peering."""
    return (p.peering is None or p.peering == peering) and (p.mode is None or p.mode == mode)


def rules(mode: str, peering: bool, *, cluster: bool, permissions: Iterable[Permission] = PERMISSIONS) -> Rules:
    """``{(group, resource): verbs}`` the operator needs cluster-wide (``cluster=True``) or in each
    watched namespace (``cluster=False``) in watch mode ``mode``."""
    if mode not in ("cluster", "namespaces"):
        raise ValueError(f"watch mode must be cluster or namespaces, got {mode!r}")
    out: Rules = {}
    for p in permissions:
        if applies(p, mode, peering) and p.cluster == cluster:
            out.setdefault((p.group, p.resource), set()).update(p.verbs)
    return out
