"""The DatasetPrep CRD: generated from the pydantic model, structural, and as strict as the model.

* Drift: ``crds/`` and ``docs/crd-reference.md`` must equal what the generator prints now.
* Structure: no ``$ref``/``title``/``anyOf``, a description on every field, status declared.
* Agreement: one table of manifests goes through pydantic (here) and through a real API server
  (``cluster`` tests, server-side dry-run create); both must accept or both reject, for the same
  reason.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from datasetprep.spec import GROUP, PLURAL, VERSION, format_validation_error, parse_spec
from datasetprep_operator import crdgen

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "datasetprep.io_datasetpreps.yaml"
REFERENCE_FILE = REPO / "docs" / "crd-reference.md"


# --------------------------------------------------------------------------- drift


def test_crd_file_is_up_to_date():
    assert CRD_FILE.read_text() == crdgen.to_yaml(crdgen.crd()), (
        f"{CRD_FILE.relative_to(REPO)} is out of date with datasetprep/spec.py; regenerate it with:\n"
        "    python -m datasetprep_operator.crdgen > crds/datasetprep.io_datasetpreps.yaml")


def test_crd_reference_is_up_to_date():
    assert REFERENCE_FILE.read_text() == crdgen.markdown(), (
        f"{REFERENCE_FILE.relative_to(REPO)} is out of date; regenerate it with:\n"
        "    python -m datasetprep_operator.crdgen --markdown > docs/crd-reference.md")


def test_main_prints_both(capsys):
    assert crdgen.main([]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == "datasetpreps.datasetprep.io"
    assert crdgen.main(["--markdown"]) == 0
    assert capsys.readouterr().out.startswith("<!-- Generated")


# --------------------------------------------------------------------------- structure


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def fields(schema: dict, path: str = ""):
    """(path, schema) of every property and array item."""
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from fields(sub, f"{path}.{name}")
    if "items" in schema:
        yield from fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from fields(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def crd() -> dict:
    return crdgen.crd()


@pytest.fixture(scope="module")
def schema(crd) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_names_and_scope(crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert spec["scope"] == "Namespaced" and spec["group"] == "datasetprep.io"
    assert spec["names"]["kind"] == "DatasetPrep" and spec["names"]["shortNames"] == ["dsp"]
    assert spec["names"]["categories"] == ["datasetprep"]
    (version,) = spec["versions"]
    assert version["name"] == VERSION == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd):
    cols = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(cols) == ["Phase", "Progress", "Tokens", "Ready", "Age"]
    assert cols["Phase"]["jsonPath"] == ".status.phase"
    assert cols["Progress"]["jsonPath"] == ".status.progress.summary"
    assert cols["Tokens"] == {"name": "Tokens", "type": "integer", "jsonPath": ".status.output.tokens"}
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert cols["Age"]["type"] == "date"


def test_schema_is_structural(schema):
    for path, node in walk(schema):
        for bad in ("$ref", "$defs", "title", "anyOf", "allOf", "oneOf"):
            assert bad not in node or path.endswith("/properties"), f"{bad} at {path}"
        if node.get("additionalProperties") is False:
            pytest.fail(f"additionalProperties: false at {path}")
        if "properties" in node and isinstance(node["properties"], dict) and "type" in node:
            assert node["type"] == "object", path
    for path, node in fields(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"no type at {path}"


def test_every_field_has_a_description(schema):
    missing = [p for p, node in fields(schema) if not node.get("description") and not p.endswith(("[]", "{}"))
               and p not in (".metadata",)]
    assert missing == []


def test_constraints_and_defaults_are_carried_over(schema):
    spec = schema["properties"]["spec"]
    props = spec["properties"]
    assert spec["required"] == ["source", "tokenizer", "output"]
    assert props["workers"] == {**props["workers"], "type": "integer", "default": 2, "minimum": 1, "maximum": 256}
    assert props["appendEod"]["default"] is True
    assert props["source"]["properties"]["textKeys"]["default"] == ["text"]  # a default_factory
    assert props["trainingConfig"]["default"] == {}
    tok = props["tokenizer"]["properties"]
    assert tok["type"]["enum"] == ["auto", "sentencepiece", "huggingface", "tiktoken", "null"]
    assert tok["type"]["default"] == "auto"
    assert "default" not in tok["vocabSize"]  # Optional: no `default: null`
    out = props["output"]["properties"]
    assert out["claimName"]["pattern"].startswith("^[a-z0-9]")
    assert out["mountPath"]["default"] == "/data"
    requests = props["resources"]["properties"]["requests"]
    assert requests["type"] == "object" and requests["additionalProperties"] == {"type": "string"}


def test_cel_rules_mirror_the_validators(schema):
    spec = schema["properties"]["spec"]
    rules = lambda node: [r["rule"] for r in node.get("x-kubernetes-validations", [])]  # noqa: E731
    props = spec["properties"]
    assert rules(props["source"]) == ["has(self.hub) != has(self.files)"]
    assert len(rules(props["tokenizer"])) == 4
    assert rules(spec) == [r["rule"] for r in crdgen.RULES["spec"]] and len(rules(spec)) == 2
    from datasetprep.spec import CEL_RELATIVE_PATH

    for node in (props["output"]["properties"]["prefix"],
                 props["source"]["properties"]["files"]["properties"]["paths"]["items"],
                 props["tokenizer"]["properties"]["path"]["properties"]["path"]):
        assert CEL_RELATIVE_PATH in rules(node)
    assert props["source"]["properties"]["textKeys"]["x-kubernetes-list-type"] == "set"


def test_status_is_declared_with_kopf_storage(schema):
    status = schema["properties"]["status"]
    props = status["properties"]
    for key in ("phase", "observedGeneration", "conditions", "jobName", "configMapName", "startTime",
                "completionTime", "output", "progress"):
        assert key in props, key
    assert props["kopf"] == {"type": "object", "description": props["kopf"]["description"],
                             "x-kubernetes-preserve-unknown-fields": True}
    assert props["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed"]
    assert props["conditions"]["x-kubernetes-list-type"] == "map"
    assert props["conditions"]["items"]["required"] == ["type", "status"]
    files = props["output"]["properties"]["files"]["items"]
    assert files == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert not any("default" in node for _, node in fields(status))


# --------------------------------------------------------------------------- pydantic vs. CEL/schema

VALID_FILES = {
    "source": {"files": {"paths": ["corpus/*.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
}
VALID_HUB = {
    "source": {"hub": {"repo": "wikitext", "subset": "wikitext-103-v1"}},
    "tokenizer": {"type": "tiktoken", "hub": {"repo": "meta-llama/Llama-3.1-8B", "file": "tokenizer.model"}},
    "output": {"claimName": "data", "prefix": "llama_dataset"},
    "hfTokenSecretRef": {"name": "hf-token"},
}


def variant(base: dict, path: str, value: Any) -> dict:
    """A copy of ``base`` with ``path`` (dotted) set to ``value``, or removed for ``...``."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return data


# (id, spec, phrase pydantic must say, phrase the API server must say); None phrases: accepted.
CASES: list[tuple[str, dict, str | None, str | None]] = [
    ("valid-files", VALID_FILES, None, None),
    ("valid-hub", VALID_HUB, None, None),
    ("valid-null-tokenizer", variant(VALID_FILES, "tokenizer", {"type": "null", "vocabSize": 65500}), None, None),
    ("valid-dots-in-names", variant(VALID_FILES, "output.prefix", "a/b..c/...d"), None, None),
    ("valid-dot-slash", variant(VALID_FILES, "source.files.paths", ["./corpus.jsonl"]), None, None),
    ("valid-keep-shards", VALID_FILES | {"shards": 3, "keepShards": True}, None, None),
    ("valid-keep-shards-off", VALID_FILES | {"keepShards": False}, None, None),
    ("valid-parallelism", VALID_FILES | {"shards": 4, "parallelism": 4}, None, None),
    ("source-both", variant(VALID_FILES, "source.hub", {"repo": "wikitext"}),
     "exactly one of `hub` or `files`", "exactly one of `hub` or `files`"),
    ("source-neither", variant(VALID_FILES, "source.files", ...),
     "exactly one of `hub` or `files`", "exactly one of `hub` or `files`"),
    ("null-with-path", variant(VALID_FILES, "tokenizer", {"type": "null", "vocabSize": 10, "path": {"path": "t"}}),
     "takes no `hub` or `path`", "takes no `hub` or `path`"),
    ("null-without-vocab", variant(VALID_FILES, "tokenizer", {"type": "null"}),
     "needs `vocabSize`", "needs `vocabSize`"),
    ("tokenizer-both", variant(VALID_FILES, "tokenizer.hub", {"repo": "gpt2"}),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("tokenizer-neither", variant(VALID_FILES, "tokenizer.path", ...),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("tokenizer-auto-neither", variant(VALID_FILES, "tokenizer", {}),
     "exactly one of `hub` or `path`", "exactly one of `hub` or `path`"),
    ("vocab-for-sentencepiece", variant(VALID_FILES, "tokenizer.vocabSize", 8000),
     "only for type `null`", "only for type `null`"),
    ("prefix-absolute", variant(VALID_FILES, "output.prefix", "/data/x"), "relative path", "relative path"),
    ("prefix-dotdot", variant(VALID_FILES, "output.prefix", "a/../../x"), "'..'", "'..'"),
    ("prefix-dotdot-end", variant(VALID_FILES, "output.prefix", "a/.."), "'..'", "'..'"),
    ("prefix-dot", variant(VALID_FILES, "output.prefix", "./"), "must name a file or prefix",
     "must name a file or prefix"),
    ("paths-absolute", variant(VALID_FILES, "source.files.paths", ["ok.jsonl", "/etc/x.jsonl"]),
     "relative path", "relative path"),
    ("paths-dotdot", variant(VALID_FILES, "source.files.paths", ["../x.jsonl"]), "'..'", "'..'"),
    ("tokenizer-path-absolute", variant(VALID_FILES, "tokenizer.path.path", "/models/t.model"),
     "relative path", "relative path"),
    ("parallelism-over-shards", VALID_FILES | {"shards": 2, "parallelism": 3},
     "cannot exceed shards", "cannot exceed shards"),
    ("parallelism-over-default-shards", VALID_FILES | {"parallelism": 2},
     "cannot exceed shards", "cannot exceed shards"),
    ("keep-shards-one-shard", VALID_FILES | {"keepShards": True},
     "keepShards needs shards > 1", "keepShards needs shards > 1"),
    ("keep-shards-shards-1", VALID_FILES | {"shards": 1, "keepShards": True},
     "keepShards needs shards > 1", "keepShards needs shards > 1"),
    ("text-keys-duplicate", variant(VALID_FILES, "source.textKeys", ["text", "code", "text"]),
     "duplicates", "Duplicate value"),
    ("text-keys-charset", variant(VALID_FILES, "source.textKeys", ["te xt"]), "may only hold", "should match"),
    ("text-keys-empty", variant(VALID_FILES, "source.textKeys", []), "at least 1 item", "should have at least 1"),
    ("workers-zero", VALID_FILES | {"workers": 0}, "greater than or equal to 1", "greater than or equal to 1"),
    ("tokenizer-type-unknown", variant(VALID_FILES, "tokenizer.type", "bpe"), "'auto'", "Unsupported value"),
    ("claim-name-invalid", variant(VALID_FILES, "output.claimName", "Data_1"), "should match", "should match"),
    ("hub-repo-invalid", variant(VALID_HUB, "source.hub.repo", "a/b/c"), "should match", "should match"),
    ("missing-output", variant(VALID_FILES, "output", ...), "Field required", "Required value"),
    ("unknown-field", VALID_FILES | {"tokenizerPath": "x"}, "Extra inputs are not permitted", "unknown field"),
]


def pydantic_verdict(spec: dict) -> str | None:
    try:
        parse_spec(copy.deepcopy(spec))
    except ValidationError as exc:
        return format_validation_error(exc)
    return None


@pytest.mark.parametrize("case_id,spec,model_says,server_says", CASES, ids=[c[0] for c in CASES])
def test_pydantic_verdict(case_id, spec, model_says, server_says):
    verdict = pydantic_verdict(spec)
    if model_says is None:
        assert verdict is None, verdict
    else:
        assert verdict is not None, f"pydantic accepted {case_id}"
        assert model_says in verdict


# --------------------------------------------------------------------------- on the API server


def install_crd(api_client, timeout: float = 60.0) -> dict:
    """Create or update the CRD from crds/ and wait until it is Established and served."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    ext = kubernetes.client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(CRD_FILE.read_text())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while True:
        crd = ext.read_custom_resource_definition(name)
        conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
        if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established: {conds}")
        time.sleep(0.2)
    # Established can precede discovery by a moment.
    custom = kubernetes.client.CustomObjectsApi(api_client)
    while True:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
            return body
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def raw_get(api, path: str, accept: str = "application/json") -> dict:
    """GET any API path as JSON (what kubectl does for tables and for explain)."""
    method, url, headers, body, post = api.param_serialize("GET", path, header_params={"Accept": accept},
                                                           auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post)
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


@pytest.fixture(scope="module")
def crd_installed(kube_cluster):
    api = kube_cluster.api_client()
    install_crd(api)
    return api


def server_verdict(api, namespace: str, spec: dict) -> str | None:
    """Create the object with a server-side dry run (validation, defaulting, CEL; nothing stored)."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    custom = kubernetes.client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
            "metadata": {"name": "probe", "namespace": namespace}, "spec": spec}
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All",
                                               field_validation="Strict")
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return json.loads(exc.body).get("message", exc.body)
    return None


@pytest.mark.cluster
@pytest.mark.parametrize("case_id,spec,model_says,server_says", CASES, ids=[c[0] for c in CASES])
def test_api_server_agrees_with_pydantic(crd_installed, namespace, case_id, spec, model_says, server_says):
    verdict = server_verdict(crd_installed, namespace, spec)
    if server_says is None:
        assert verdict is None, f"the API server rejected {case_id}, pydantic accepts it: {verdict}"
    else:
        assert verdict is not None, f"the API server accepted {case_id}, pydantic rejects it: {pydantic_verdict(spec)}"
        assert server_says in verdict, verdict


@pytest.mark.cluster
def test_api_server_applies_the_defaults(crd_installed, namespace):
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(crd_installed)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
            "metadata": {"name": "defaults", "namespace": namespace}, "spec": VALID_HUB}
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    spec = stored["spec"]
    assert spec["appendEod"] is True and spec["workers"] == 2 and spec["shards"] == 1 and spec["backoffLimit"] == 2
    assert spec["source"]["textKeys"] == ["text"] and spec["source"]["hub"]["revision"] == "main"
    assert spec["tokenizer"]["addSpecialTokens"] is True and spec["output"]["mountPath"] == "/data"
    assert spec["hfTokenSecretRef"]["key"] == "token"
    # ... and the model reads the defaulted object exactly as it reads the sparse one.
    assert parse_spec(spec) == parse_spec(VALID_HUB)


@pytest.mark.cluster
def test_status_subresource_keeps_declared_fields_and_kopf_storage(crd_installed, namespace):
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(crd_installed)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
            "metadata": {"name": "status", "namespace": namespace}, "spec": VALID_FILES}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    status = {"phase": "Running", "jobName": "status-1", "undeclared": "pruned",
              "progress": {"summary": "1/2 shards"},
              "output": {"tokens": 5, "files": [{"key": "text", "anything": {"kept": True}}]},
              "kopf": {"progress": {"handler": {"retries": 1}}},
              "conditions": [{"type": "Ready", "status": "False", "reason": "Running", "message": "",
                              "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "status", {"status": status})
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "status")["status"]
    assert "undeclared" not in got
    assert got["kopf"] == {"progress": {"handler": {"retries": 1}}}
    assert got["output"]["files"][0]["anything"] == {"kept": True}
    assert got["phase"] == "Running" and got["progress"]["summary"] == "1/2 shards"
    # The status endpoint does not touch the spec, and the spec endpoint does not bump on status.
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "status")
    assert obj["metadata"]["generation"] == 1
    # Printer columns read the declared status (what `kubectl get dsp` shows).
    table = raw_get(crd_installed, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                    accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:6] == ["Name", "Phase", "Progress", "Tokens", "Ready", "Age"]
    row = table["rows"][0]["cells"]
    assert row[1:5] == ["Running", "1/2 shards", 5, "False"]


@pytest.mark.cluster
def test_explain_shows_the_descriptions(crd_installed):
    """What ``kubectl explain dsp.spec...`` prints comes from the published OpenAPI v3 document."""
    doc = raw_get(crd_installed, f"/openapi/v3/apis/{GROUP}/{VERSION}")
    schemas = doc["components"]["schemas"]
    (key,) = [k for k in schemas if k.endswith(".DatasetPrep")]
    spec = schemas[key]["properties"]["spec"]
    assert "Megatron-LM" in spec["description"]
    tok = spec["properties"]["tokenizer"]["properties"]
    assert "NullTokenizer" in tok["type"]["description"]
    assert "Repository id on the Hub" in tok["hub"]["properties"]["repo"]["description"]
    assert "ReadWriteMany" in spec["properties"]["output"]["properties"]["claimName"]["description"]


# --------------------------------------------------------------------------- examples

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def example_preps(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "DatasetPrep"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid_for_the_model(path):
    preps = example_preps(path)
    assert preps, f"{path.name} holds no DatasetPrep"
    for doc in preps:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
        parse_spec(doc["spec"])


@pytest.mark.cluster
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_by_the_api_server(crd_installed, namespace, path):
    for doc in example_preps(path):
        assert server_verdict(crd_installed, namespace, doc["spec"]) is None
