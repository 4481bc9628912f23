"""The Helm chart (charts/datasetprep-operator), checked with the real helm CLI (tests/helm/build).

No cluster needed: `helm lint --strict`, `helm template` and assertions on what it renders.
Cluster tests (server-side dry run, install, upgrade): tests/test_chart_cluster.py.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from datasetprep_operator import permissions

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


helmcli = _load("datasetprep_helmcli", REPO / "tests" / "helm" / "helmcli.py")

CHART = REPO / "charts" / "datasetprep-operator"
CI = CHART / "ci"
CRD_FILE = "datasetprep.io_datasetpreps.yaml"
CRD_NAME = "datasetpreps.datasetprep.io"
BLEND_CRD_NAME = "datasetblends.datasetprep.io"
BLEND_CRD_FILE = "datasetprep.io_datasetblends.yaml"
RELEASE, NS = "dsp", "dsp-system"
FULL = "dsp-datasetprep-operator"

# ---------------------------------------------------------------------------------------------
# The exact operator RBAC: the table of what the code uses (datasetprep_operator.permissions),
# per watch mode. (apiGroup, resource) -> verbs
OPERATOR_NAMESPACED_RULES = permissions.rules("cluster", False, cluster=False)
OPERATOR_CRD_RULES = permissions.rules("cluster", False, cluster=True)
CLUSTER_PEERING_RULES = {k: v for k, v in permissions.rules("cluster", True, cluster=True).items()
                         if k not in OPERATOR_CRD_RULES}
NAMESPACED_PEERING_RULES = {k: v for k, v in permissions.rules("namespaces", True, cluster=False).items()
                            if k not in OPERATOR_NAMESPACED_RULES}

STANDARD_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of")


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def helm() -> str:
    try:
        return helmcli.helm_binary()
    except helmcli.HelmUnavailable as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"helm is not available: {exc}")


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict[str, str]:
    return helmcli.isolated_env(tmp_path_factory.mktemp("helm-home"))


class Rendered:
    """One `helm template` result: parsed documents and the raw text (with comments)."""

    def __init__(self, text: str):
        self.text = text
        self.docs = helmcli.split_documents(text)
        self.raw = helmcli.raw_documents(text)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of(kind)
                 if (name is None or d["metadata"]["name"] == name)
                 and (namespace is None or d["metadata"].get("namespace") == namespace)]
        assert len(found) == 1, f"expected one {kind} {name or ''} {namespace or ''}, got {len(found)}"
        return found[0]

    def raw_of(self, kind: str, name: str, namespace: str | None = None) -> str:
        for raw, doc in zip(self.raw, self.docs):
            if doc["kind"] == kind and doc["metadata"]["name"] == name and \
                    (namespace is None or doc["metadata"].get("namespace") == namespace):
                return raw
        raise AssertionError(f"no {kind} {name}")


@pytest.fixture(scope="session")
def render(helm, helm_env):
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None, *files: Path, namespace: str = NS) -> Rendered:
        key = json.dumps([values, [str(f) for f in files], namespace], sort_keys=True)
        if key not in cache:
            args = ["template", RELEASE, str(CHART), "--namespace", namespace]
            for f in files:
                args += ["-f", str(f)]
            args += helmcli.set_args(values)
            proc = helmcli.run(helm, *args, env=helm_env)
            cache[key] = Rendered(proc.stdout)
        return cache[key]

    return _render


def _template_fails(helm, helm_env, *extra: str) -> str:
    proc = helmcli.run(helm, "template", RELEASE, str(CHART), "--namespace", NS, *extra, env=helm_env, check=False)
    assert proc.returncode != 0, f"helm template {' '.join(extra)} unexpectedly succeeded"
    return proc.stderr


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _all_roles(r: Rendered) -> list[dict[str, Any]]:
    return r.of("ClusterRole") + r.of("Role")


# ----------------------------------------------------------------------------------- lint
@pytest.mark.parametrize("values_file", [None, CI / "namespaced-values.yaml", CI / "cluster-values.yaml"],
                         ids=["defaults", "namespaced", "cluster"])
def test_helm_lint_strict(helm, helm_env, values_file):
    args = ["lint", "--strict", str(CHART), "--namespace", NS]
    if values_file:
        args += ["-f", str(values_file)]
    proc = helmcli.run(helm, *args, env=helm_env)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_helm_version_is_the_pinned_one(helm, helm_env):
    pinned = next(line.split()[1] for line in (REPO / "tests/helm/go.mod").read_text().splitlines()
                  if line.strip().startswith("helm.sh/helm/v3 "))
    out = helmcli.run(helm, "version", "--short", env=helm_env).stdout
    assert out.startswith(pinned), (out, pinned)


# ------------------------------------------------------------------------- schema / values
@pytest.mark.parametrize("bad", [
    ["--set", "unknownTopLevel=1"],
    ["--set", "image.registry=docker.io"],
    ["--set", "crds.instal=true"],
    ["--set", "metrics.serviceMonitor.intervall=10s"],
    ["--set", "health.livenessProbe.initialDelay=3"],
    ["--set", "watch.mode=everywhere"],
    ["--set-json", 'watch.namespaces=["Not_A_Namespace"]'],
    ["--set", "replicaCount=-1"],
    ["--set", "jobImage.pullPolicy=Sometimes"],
    ["--set", "securityContext.runAsRoot=true"],
    ["--set", "networkPolicy.jobs.hubPort=8080"],
    ["--set-json", "networkPolicy.jobs.hubPorts=[0]"],
    ["--set-json", "networkPolicy.jobs.hubPorts=[]"],
    ["--set-json", 'networkPolicy.jobs.hubPeers=[{"ipBlock":{"except":["10.0.0.0/8"]}}]'],
    ["--set-json", 'networkPolicy.apiServer.peers=[{"ipblock":{"cidr":"10.0.0.1/32"}}]'],
    ["--set-json", 'networkPolicy.jobs.extraEgress=[{"to":[],"port":[{"port":3128}]}]'],
])
def test_schema_rejects_bad_values(helm, helm_env, bad):
    err = _template_fails(helm, helm_env, *bad)
    assert "schema" in err or "must be one of" in err or "additional properties" in err, err
    lint = helmcli.run(helm, "lint", "--strict", str(CHART), *bad, env=helm_env, check=False)
    assert lint.returncode != 0, lint.stdout


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _leaves(node: Any, path: tuple[str, ...] = ()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path


def _schema_at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node = schema
    for key in path:
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_values_yaml_is_valid_against_schema():
    import jsonschema

    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.Draft7Validator(_schema()).validate(_values())
    for f in CI.glob("*.yaml"):
        merged = _deep_merge(_values(), yaml.safe_load(f.read_text()))
        jsonschema.Draft7Validator(_schema()).validate(merged)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_every_values_leaf_is_in_the_schema():
    schema = _schema()
    missing = [".".join(p) for p in _leaves(_values()) if _schema_at(schema, p) is None]
    assert not missing, f"values.yaml keys missing from values.schema.json: {missing}"


# Kubernetes objects the chart passes through: the schema lists their common fields, values.yaml
# need not set all of them.
K8S_PASSTHROUGH = {("podSecurityContext",), ("securityContext",), ("securityContext", "capabilities"),
                   ("affinity",), ("resources",)}


def test_schema_and_values_have_the_same_keys():
    """Both directions: a schema property with no value in values.yaml is a stale or undocumented value."""
    values, schema = _values(), _schema()

    def walk(snode: dict[str, Any], vnode: Any, path: tuple[str, ...]):
        props = snode.get("properties")
        if not props or path in K8S_PASSTHROUGH:
            return
        assert isinstance(vnode, dict), f"{'.'.join(path)} is an object in the schema"
        assert set(props) == set(vnode), (
            f"{'.'.join(path) or '<top>'}: schema-only {sorted(set(props) - set(vnode))}, "
            f"values-only {sorted(set(vnode) - set(props))}")
        for key, sub in props.items():
            walk(sub, vnode[key], path + (key,))

    walk(schema, values, ())


def test_schema_closes_every_object():
    """Every object in the schema says what extra keys it takes: false for the chart's own
    structures; a value schema for maps (labels, annotations, quantities); true only for the
    few Kubernetes objects passed through verbatim (affinity terms, env valueFrom)."""
    loose: list[str] = []

    def walk(node: Any, where: str):
        if isinstance(node, dict):
            if node.get("type") == "object":
                ap = node.get("additionalProperties", "<unset>")
                if ap == "<unset>":
                    loose.append(where)
                elif "properties" in node and ap is not False:
                    loose.append(where + " (has properties but is open)")
                elif ap is True and "Kubernetes object, passed through" not in node.get("description", ""):
                    loose.append(where + " (open without being a pass-through)")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    schema = _schema()
    assert schema["additionalProperties"] is False
    walk(schema, "")
    assert not loose, loose


def test_every_value_is_documented():
    """Every key in values.yaml has a comment right above it, and every leaf an example."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        if i == 0 or not lines[i - 1].strip().startswith("#"):
            undocumented.append(f"line {i + 1}: {m.group(2)}")
    assert not undocumented, undocumented
    assert len(re.findall(r"# Example:", "\n".join(lines))) >= len(list(_leaves(_values())))


def test_every_value_is_used_by_a_template():
    """A value nobody reads is a lie in the documentation. A leaf counts as used when a template
    reads it, or passes one of its parents through whole (e.g. `toYaml .Values.resources`)."""
    text = "\n".join(p.read_text() for p in (CHART / "templates").iterdir() if p.is_file())
    unused = []
    for path in _leaves(_values()):
        prefixes = [".".join(path[:n]) for n in range(len(path), 0, -1)]
        if not any(re.search(r"\.Values\." + re.escape(p) + r"(?![\w.])", text) for p in prefixes):
            unused.append(".".join(path))
    assert not unused, f"values not referenced by any template: {unused}"


# ------------------------------------------------------------------------------ deployment
def test_deployment_security(render):
    d = render().one("Deployment", FULL, NS)
    pod = d["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532 and psc["runAsGroup"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    # the only writable path: an emptyDir at /tmp
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["serviceAccountName"] == FULL


def test_deployment_probes_resources_and_ports(render):
    c = render().one("Deployment", FULL, NS)["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert c["resources"]["limits"] == {"memory": "512Mi"}
    assert c["image"] == "ghcr.io/datasetprep/datasetprep-operator:0.1.0"


def test_deployment_env(render):
    c = render({"jobImage.tag": "9.9.9", "jobImage.pullPolicy": "Always"}).one("Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["DATASETPREP_JOB_IMAGE"] == "ghcr.io/datasetprep/datasetprep-job:9.9.9"
    assert env["DATASETPREP_JOB_IMAGE_PULL_POLICY"] == "Always"
    assert env["DATASETPREP_IMAGE_PULL_POLICY"] == "Always"
    assert env["DATASETPREP_JOB_SERVICE_ACCOUNT"] == f"{FULL}-job"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # nothing secret is handed to the operator
    assert not any("secretKeyRef" in json.dumps(e) for e in c["env"])
    assert "envFrom" not in c


def test_job_pod_settings_reach_the_operator_as_it_parses_them(render):
    """jobResources, jobTmpSizeLimit, jobVolumeInit: the chart's defaults are the operator's own."""
    from datasetprep_operator.config import DEFAULT_JOB_RESOURCES, OperatorConfig

    def config(values: dict) -> OperatorConfig:
        c = render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
        return OperatorConfig.from_env({e["name"]: e["value"] for e in c["env"] if "value" in e})

    default = config({})
    assert default.job_resources == DEFAULT_JOB_RESOURCES and default.job_volume_init is False
    custom = config({"jobResources.limits.memory": "16Gi", "jobTmpSizeLimit": "10Gi", "jobVolumeInit.enabled": True})
    assert dict(custom.job_resources.limits)["memory"] == "16Gi" and custom.job_resources.tmp_size_limit == "10Gi"
    assert custom.job_volume_init is True


def test_image_digest_wins_over_tag(render):
    digest = "sha256:" + "ab" * 32
    d = render({"image.digest": digest, "image.tag": "1.2.3", "jobImage.digest": digest}).one("Deployment")
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"ghcr.io/datasetprep/datasetprep-operator@{digest}"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DATASETPREP_JOB_IMAGE"] == f"ghcr.io/datasetprep/datasetprep-job@{digest}"


def test_args_cluster_mode_standalone(render):
    d = render().one("Deployment")
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["operator", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz",
                         "--metrics-port=9090"]  # no --peering: standalone
    assert "command" not in c  # the image's ENTRYPOINT ["datasetprep"]
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators at once


def test_args_namespaces_mode(render):
    c = render({"watch.mode": "namespaces", "watch.namespaces": ["a", "b"]}).one("Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["operator", "--namespace=a", "--namespace=b"]
    assert "--all-namespaces" not in c["args"]
    # empty list: the release namespace
    c = render({"watch.mode": "namespaces"}).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["operator", f"--namespace={NS}"]


def test_peering_with_replicas(render):
    r = render({"replicaCount": 3})
    d = r.one("Deployment")
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert d["spec"]["replicas"] == 3
    assert "--peering=datasetprep" in c["args"]
    # distinct priorities per pod: kopf pauses all operators that share a priority
    assert c["command"][:2] == ["/bin/sh", "-c"] and "--priority=" in c["command"][2]
    assert "$$(" in c["command"][2]  # Kubernetes' escape for a literal $(
    assert d["spec"]["strategy"]["type"] == "RollingUpdate"
    peering = r.one("ClusterKopfPeering", "datasetprep")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    crds = {x["metadata"]["name"] for x in r.of("CustomResourceDefinition")}
    assert crds == {CRD_NAME, BLEND_CRD_NAME, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert _rules(r.one("ClusterRole", FULL)) == {**OPERATOR_CRD_RULES, **OPERATOR_NAMESPACED_RULES,
                                                 **CLUSTER_PEERING_RULES}


def test_peering_namespaced(render):
    r = render({"replicaCount": 2, "watch.mode": "namespaces", "watch.namespaces": ["a", "b"],
                "peering.installCRDs": False})
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in r.of("KopfPeering")} == \
        {("a", "datasetprep"), ("b", "datasetprep")}
    assert not r.of("ClusterKopfPeering")
    assert {x["metadata"]["name"] for x in r.of("CustomResourceDefinition")} == {CRD_NAME, BLEND_CRD_NAME}
    for ns in ("a", "b"):
        assert _rules(r.one("Role", FULL, ns)) == {**OPERATOR_NAMESPACED_RULES, **NAMESPACED_PEERING_RULES}


def test_no_peering_objects_when_standalone(render):
    r = render()
    assert not r.of("ClusterKopfPeering") and not r.of("KopfPeering")
    assert {x["metadata"]["name"] for x in r.of("CustomResourceDefinition")} == {CRD_NAME, BLEND_CRD_NAME}


def test_invalid_watch_mode_is_refused_even_without_schema(helm, helm_env):
    # the schema catches it first; the template's own `fail` is the second line of defence
    err = _template_fails(helm, helm_env, "--set", "watch.mode=Cluster")
    assert "watch" in err


# ------------------------------------------------------------------------------------ RBAC
def test_rbac_cluster_mode_exact(render):
    r = render()
    assert _rules(r.one("ClusterRole", FULL)) == {**OPERATOR_CRD_RULES, **OPERATOR_NAMESPACED_RULES}
    crb = r.one("ClusterRoleBinding", FULL)
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULL}
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
    assert not r.of("Role")
    assert [b["metadata"]["name"] for b in r.of("ClusterRoleBinding")] == [FULL]  # job role is never bound cluster-wide


def test_rbac_namespaces_mode_exact(render):
    r = render({"watch.mode": "namespaces", "watch.namespaces": ["team-a", "team-b"]})
    # nothing cluster-wide (exact names: kopf's scanning and CRD watch are off; the job pods have no
    # permissions at all, so there is no job role to share)
    assert not r.of("ClusterRole")
    assert not r.of("ClusterRoleBinding")
    for ns in ("team-a", "team-b"):
        assert _rules(r.one("Role", FULL, ns)) == OPERATOR_NAMESPACED_RULES
        rb = r.one("RoleBinding", FULL, ns)
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULL}
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
    assert {rb["metadata"]["namespace"] for rb in r.of("Role")} == {"team-a", "team-b"}


@pytest.mark.parametrize("values", [
    {},
    {"watch.mode": "namespaces", "watch.namespaces": ["a", "b"]},
    {"replicaCount": 2},
    {"replicaCount": 2, "watch.mode": "namespaces"},
], ids=["cluster", "namespaces", "cluster-peering", "namespaces-peering"])
def test_rbac_never_secrets_nor_wildcards(render, values):
    r = render(values)
    roles = _all_roles(r)
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not any(res.startswith("secrets") for res in rule["resources"]), (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "nonResourceURLs" not in rule
            assert not ({"serviceaccounts/token", "roles", "rolebindings", "clusterroles", "clusterrolebindings"}
                        & set(rule["resources"])), rule


@pytest.mark.parametrize("values", [
    {}, {"watch.mode": "namespaces", "watch.namespaces": ["a"]}, {"replicaCount": 2},
    {"replicaCount": 2, "watch.mode": "namespaces"},
], ids=["cluster", "namespaces", "cluster-peering", "namespaces-peering"])
def test_every_rule_says_why(render, values):
    """Each rule is preceded by a comment starting with `Framework:` or `Application:`."""
    r = render(values)
    for role in _all_roles(r):
        raw = r.raw_of(role["kind"], role["metadata"]["name"], role["metadata"].get("namespace"))
        lines = raw.splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("- apiGroups:")]
        assert len(starts) == len(role["rules"])
        for i in starts:
            comment, j = [], i - 1
            while j >= 0 and lines[j].lstrip().startswith("#"):
                comment.insert(0, lines[j].strip())
                j -= 1
            assert comment and re.match(r"# (Framework|Application):", comment[0]), \
                f"{role['kind']}/{role['metadata']['name']}: rule without a Framework:/Application: reason:\n" \
                + "\n".join(lines[max(0, i - 3):i + 3])


MODES = [("cluster", False), ("namespaces", False), ("cluster", True), ("namespaces", True)]
MODE_IDS = ["cluster", "namespaces", "cluster-peering", "namespaces-peering"]


def _mode_values(mode: str, peering: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"replicaCount": 2 if peering else 1}
    if mode == "namespaces":
        values.update({"watch.mode": "namespaces", "watch.namespaces": ["a", "b"]})
    return values


def _merge(*rule_sets: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rules in rule_sets:
        for key, verbs in rules.items():
            out.setdefault(key, set()).update(verbs)
    return out


@pytest.mark.parametrize("mode,peering", MODES, ids=MODE_IDS)
def test_operator_rbac_is_exactly_the_table_of_what_the_code_uses(render, mode, peering):
    """The operator's roles grant the rows of datasetprep_operator.permissions that apply, nothing else."""
    r = render(_mode_values(mode, peering))
    cluster_wide = permissions.rules(mode, peering, cluster=True)
    per_namespace = permissions.rules(mode, peering, cluster=False)
    if mode == "cluster":  # one ClusterRole, bound cluster-wide: its namespaced rules apply everywhere
        assert _rules(r.one("ClusterRole", FULL)) == _merge(cluster_wide, per_namespace)
    else:
        assert cluster_wide == {} and not r.of("ClusterRoleBinding")  # nothing cluster-wide
        for ns in ("a", "b"):
            assert _rules(r.one("Role", FULL, ns)) == per_namespace


@pytest.mark.parametrize("mode,peering", MODES, ids=MODE_IDS)
def test_every_rule_names_who_needs_it_as_the_table_does(render, mode, peering):
    """The comment above each operator rule names each of the table's `who` (Framework/Application)
    for that resource, so the chart and the table tell the same story."""
    r = render(_mode_values(mode, peering))
    who = {(p.group, p.resource): set(p.who) for p in permissions.PERMISSIONS}
    roles = [role for role in _all_roles(r) if not role["metadata"]["name"].endswith("-job")]
    for role in roles:
        lines = r.raw_of(role["kind"], role["metadata"]["name"], role["metadata"].get("namespace")).splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("- apiGroups:")]
        for i, rule in zip(starts, role["rules"]):
            comment, j = [], i - 1
            while j >= 0 and lines[j].lstrip().startswith("#"):
                comment.insert(0, lines[j].strip())
                j -= 1
            said = set(re.findall(r"# (Framework|Application):", "\n".join(comment)))
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert said == who[(group, resource)], (
                        f"{role['metadata']['name']}: the comment of {group or 'core'}/{resource} names "
                        f"{sorted(said)}, the table {sorted(who[(group, resource)])}")


def _job_sa_bindings(r) -> list:
    """Every (Cluster)RoleBinding naming the job ServiceAccount."""
    return [b for b in r.of("RoleBinding") + r.of("ClusterRoleBinding")
            if any(s.get("name", "").endswith("-job") for s in b.get("subjects") or ())]


def test_job_service_account_has_no_rights_and_no_token_cluster_mode_defaults(render):
    r = render()
    sa = r.one("ServiceAccount", f"{FULL}-job")
    assert sa["metadata"]["namespace"] == NS and sa["automountServiceAccountToken"] is False
    assert not [c for c in r.of("ClusterRole") + r.of("Role") if c["metadata"]["name"].endswith("-job")]
    assert _job_sa_bindings(r) == []


def test_job_service_accounts_in_listed_namespaces(render):
    r = render({}, CI / "cluster-values.yaml")
    for ns in ("ml-data", "ml-train"):
        assert r.one("ServiceAccount", f"{FULL}-job", ns)["automountServiceAccountToken"] is False
    assert _job_sa_bindings(r) == []


def test_job_rbac_follows_watched_namespaces(render):
    r = render({"watch.mode": "namespaces", "watch.namespaces": ["x", "y"], "jobServiceAccount.name": "dsp-job"})
    assert {s["metadata"]["namespace"] for s in r.of("ServiceAccount") if s["metadata"]["name"] == "dsp-job"} == {"x", "y"}
    env = {e["name"]: e.get("value") for e in r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATASETPREP_JOB_SERVICE_ACCOUNT"] == "dsp-job"


def test_rbac_create_false(render):
    r = render({"rbac.create": False, "serviceAccount.create": False, "serviceAccount.name": "byo",
                "jobServiceAccount.create": False})
    assert not [d for d in r.docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]
    assert not r.of("ServiceAccount")
    assert r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "byo"


# ------------------------------------------------------------------------------------ CRDs
@pytest.mark.parametrize("name,file,short", [(CRD_NAME, CRD_FILE, "dsp"), (BLEND_CRD_NAME, BLEND_CRD_FILE, "dsb")])
def test_crd_installed_and_kept_by_default(render, name, file, short):
    crd = render().one("CustomResourceDefinition", name)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Delete=false,Prune=false"
    for label in STANDARD_LABELS:
        assert label in crd["metadata"]["labels"]
    source = yaml.safe_load((CHART / "files" / "crds" / file).read_text())
    # embedded verbatim: same structure and the same scalar types (no int turned into a float)
    assert json.dumps(crd["spec"], sort_keys=True) == json.dumps(source["spec"], sort_keys=True)
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["spec"]["names"]["shortNames"] == [short]


def test_crd_keep_off(render):
    crd = render({"crds.keep": False}).one("CustomResourceDefinition", CRD_NAME)
    annotations = crd["metadata"].get("annotations") or {}
    assert "helm.sh/resource-policy" not in annotations
    assert "argocd.argoproj.io/sync-options" not in annotations


def test_crd_not_installed(render):
    r = render({"crds.install": False, "replicaCount": 2})
    assert not r.of("CustomResourceDefinition")


@pytest.mark.parametrize("file", [CRD_FILE, BLEND_CRD_FILE])
def test_chart_crd_is_a_copy_of_crds_dir(file):
    """charts/.../files/crds/ must equal crds/ byte for byte (charts/sync-crds.sh copies it)."""
    src = REPO / "crds" / file
    if not src.exists():
        pytest.skip(f"{src.relative_to(REPO)} is not generated yet; the chart embeds a placeholder")
    dst = CHART / "files" / "crds" / file
    assert dst.read_bytes() == src.read_bytes(), "chart CRD is stale: run charts/sync-crds.sh"


# --------------------------------------------------------------------------------- metrics
def test_metrics_service(render):
    r = render()
    svc = r.one("Service", f"{FULL}-metrics", NS)
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert not r.of("ServiceMonitor")


def test_service_monitor_only_when_enabled(render, helm, helm_env):
    r = render({"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"release": "kps"}})
    sm = r.one("ServiceMonitor", FULL, NS)
    svc = r.one("Service", f"{FULL}-metrics")
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                        "scrapeTimeout": "10s"}]
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    _template_fails(helm, helm_env, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.enabled=false")
    assert not render({"metrics.enabled": False}).of("Service")


# ---------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("values", [{}, {"replicaCount": 2, "watch.mode": "namespaces", "watch.namespaces": ["a"]}])
def test_standard_labels_everywhere(render, values):
    r = render({**values, "commonLabels": {"team": "ml"}})
    for d in r.docs:
        labels = d["metadata"].get("labels") or {}
        missing = [lab for lab in STANDARD_LABELS if lab not in labels]
        assert not missing, (d["kind"], d["metadata"]["name"], missing)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["team"] == "ml"


def test_namespaced_objects_name_their_namespace(render):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering", "Namespace"}
    for d in render({"replicaCount": 2, "jobServiceAccount.namespaces": ["j"]}).docs:
        assert ("namespace" in d["metadata"]) != (d["kind"] in cluster_scoped), d["kind"]


def test_names_fit_dns_labels(render):
    """Services and the Deployment are DNS-1035/1123 labels (<= 63); the rest may be longer."""
    r = render({"fullnameOverride": "x" * 63})
    for d in r.of("Service") + r.of("Deployment") + r.of("ServiceAccount"):
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
        assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", d["metadata"]["name"])


# ------------------------------------------------------------- the CLI accepts what we pass
def _cli_accepts(argv: list[str]) -> str | None:
    """None if `datasetprep` parses argv, else argparse's complaint."""
    import contextlib
    import io

    from datasetprep import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            return err.getvalue() or f"exit {exc.code}"
    return None


@pytest.mark.parametrize("values", [
    {}, {"watch.mode": "namespaces", "watch.namespaces": ["a", "b"]}, {"extraArgs": []},
], ids=["cluster", "namespaces", "extra"])
def test_operator_cli_accepts_the_rendered_args(render, values):
    c = render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in c
    problem = _cli_accepts(c["args"])
    assert problem is None, problem


def test_operator_cli_accepts_the_peering_args(render):
    c = render({"replicaCount": 2}).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    argv = c["args"] + ["--priority=123"]  # what the shell wrapper appends
    problem = _cli_accepts(argv)
    assert problem is None, problem


# --------------------------------------------------------------------------- network policies
def _job_pod_labels() -> dict[str, str]:
    """The labels of a job pod as the operator builds its Job (the real builder, not a copy)."""
    from datasetprep.contract import RunPlan
    from datasetprep.spec import parse_spec
    from datasetprep_operator.config import OperatorConfig
    from datasetprep_operator.jobs import build_job

    spec = parse_spec({"source": {"files": {"paths": ["a.jsonl"]}}, "tokenizer": {"type": "null", "vocabSize": 9},
                       "output": {"claimName": "data", "prefix": "x"}})
    job = build_job(spec, RunPlan.stages(spec)[0], parent="x", namespace="ns", parent_uid="uid",
                    config=OperatorConfig())
    return job["spec"]["template"]["metadata"]["labels"]


def _blend_files_pod_labels() -> dict[str, str]:
    """The labels of a DatasetBlend's files Job pod, as the operator builds that Job."""
    from datasetprep.contract import BlendOrder
    from datasetprep_operator.blendjobs import build_files_job
    from datasetprep_operator.config import OperatorConfig

    order = BlendOrder(lists={"all": ()}, folder="blends/mix", version="0123abcd")
    job = build_files_job(order, blend="mix", namespace="ns", blend_uid="uid", mounts={"data": "/data"},
                          files_claim="data", config=OperatorConfig())
    return job["spec"]["template"]["metadata"]["labels"]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _ports(rule: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(p["port"], p["protocol"]) for p in rule["ports"]}


def test_network_policies_on_by_default(render):
    r = render({}, CI / "cluster-values.yaml")
    jobs = {p["metadata"]["namespace"]: p for p in r.of("NetworkPolicy") if p["metadata"]["name"] == f"{FULL}-job"}
    assert set(jobs) == {"ml-data", "ml-train"}  # where the job ServiceAccount is, the policy is
    operator = r.one("NetworkPolicy", FULL, NS)
    assert len(r.of("NetworkPolicy")) == 3
    for policy in [*jobs.values(), operator]:
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_job_pods_policy_no_ingress_egress_dns_and_hub(render):
    r = render()
    policy = r.one("NetworkPolicy", f"{FULL}-job", NS)
    assert _selects(policy, _job_pod_labels()), "the job pods' NetworkPolicy does not select the operator's job pods"
    assert _selects(policy, _blend_files_pod_labels()), "nor a DatasetBlend's files Job pods"
    assert not _selects(policy, r.one("Deployment")["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["ingress"] == []  # nothing may connect to a job pod
    egress = policy["spec"]["egress"]
    assert _ports(egress[0]) == {(53, "UDP"), (53, "TCP")} and "to" not in egress[0]
    assert _ports(egress[1]) == {(443, "TCP")} and "to" not in egress[1]
    # not the API server: job pods have no API credentials and no Role (progress goes to their log)
    assert len(egress) == 2
    assert not [c for c in r.of("ClusterRole") + r.of("Role") if c["metadata"]["name"].endswith("-job")]


def test_job_pods_policy_for_a_mirror_and_a_proxy(render):
    proxy = {"to": [{"ipBlock": {"cidr": "10.0.5.10/32"}}], "ports": [{"port": 3128, "protocol": "TCP"}]}
    dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    r = render({"networkPolicy.jobs.hubPorts": [443, 8080], "networkPolicy.jobs.hubPeers": [{"ipBlock": {
        "cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}}], "networkPolicy.jobs.dnsPeers": dns,
        "networkPolicy.jobs.extraEgress": [proxy]})
    egress = r.one("NetworkPolicy", f"{FULL}-job", NS)["spec"]["egress"]
    assert egress[0]["to"] == dns
    assert _ports(egress[1]) == {(443, "TCP"), (8080, "TCP")}
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}}]
    assert egress[-1] == proxy


def test_operator_policy_probes_and_scrapes_in_api_server_out(render):
    r = render({"networkPolicy.operator.metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "mon"}}}],
                "networkPolicy.apiServer.peers": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]})
    policy = r.one("NetworkPolicy", FULL, NS)
    pod = r.one("Deployment")["spec"]["template"]
    assert _selects(policy, pod["metadata"]["labels"]) and not _selects(policy, _job_pod_labels())
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    health, metrics = policy["spec"]["ingress"]
    assert _ports(health) == {("health", "TCP")} and "from" not in health  # the kubelet's probes
    assert _ports(metrics) == {("metrics", "TCP")} and metrics["from"] == [{"namespaceSelector": {"matchLabels": {
        "team": "mon"}}}]
    assert {port for rule in (health, metrics) for port, _ in _ports(rule)} <= container_ports
    (api,) = policy["spec"]["egress"]
    assert _ports(api) == {(443, "TCP"), (6443, "TCP")} and api["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    # no metrics: no metrics port open
    ingress = render({"metrics.enabled": False}).one("NetworkPolicy", FULL, NS)["spec"]["ingress"]
    assert [_ports(rule) for rule in ingress] == [{("health", "TCP")}]


def test_network_policies_follow_the_watched_namespaces_and_can_be_off(render):
    r = render({"watch.mode": "namespaces", "watch.namespaces": ["a", "b"]})
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in r.of("NetworkPolicy")} == {
        ("a", f"{FULL}-job"), ("b", f"{FULL}-job"), (NS, FULL)}
    assert not render({"networkPolicy.enabled": False}).of("NetworkPolicy")


# ------------------------------------------------------------------------------ namespaces
def test_namespaces_the_chart_needs_are_rendered_to_be_created_and_kept(render):
    """`helm template` cannot look namespaces up, so it renders every one the chart puts objects in
    (tests/test_chart_cluster.py: `helm install` creates only the missing ones)."""
    r = render({"namespaces.labels": {"pod-security.kubernetes.io/enforce": "baseline"}}, CI / "cluster-values.yaml")
    assert {n["metadata"]["name"] for n in r.of("Namespace")} == {"ml-data", "ml-train"}
    for ns in r.of("Namespace"):
        assert ns["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                                 "argocd.argoproj.io/sync-options": "Delete=false,Prune=false"}
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    r = render({"watch.mode": "namespaces", "watch.namespaces": ["a", NS], "jobServiceAccount.namespaces": ["c"]})
    assert {n["metadata"]["name"] for n in r.of("Namespace")} == {"a", "c"}  # never the release namespace: Helm's
    assert not render().of("Namespace")
    assert not render({"namespaces.create": False}, CI / "cluster-values.yaml").of("Namespace")
