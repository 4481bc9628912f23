"""The DatasetPrep CRD: generated from the pydantic model, structural, and as strict as the model.

* Drift: ``crds/`` and ``docs/crd-reference.md`` must equal what the generator prints now.
* Structure: no ``$ref``/``title``/``anyOf``, a description on every field, status declared.
* Agreement: one table of manifests goes through pydantic (here) and through a real API server
  (``cluster`` tests, server-side dry-run create); both must accept or both reject, for the same
  reason.
"""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from crdcases import CASES, EXAMPLES, example_preps, pydantic_verdict
from datasetprep.spec import GROUP, PLURAL, VERSION, parse_spec
from datasetprep_operator import crdgen
from paths import REPO


CRD_FILE = REPO / "crds" / "datasetprep.io_datasetpreps.yaml"


REFERENCE_FILE = REPO / "docs" / "crd-reference.md"


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
    from datasetprep.spec import QUANTITY

    assert requests["type"] == "object" and requests["additionalProperties"] == {
        "type": "string", "pattern": QUANTITY, "maxLength": 64}


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
    # typed: a field the operator writes but the model lacks would be pruned by the API server
    assert "x-kubernetes-preserve-unknown-fields" not in files and files["required"] == ["key"]
    assert {"key", "prefix", "binSha256", "idxSha256", "blendFile", "shards", "shardTokens"} <= set(files["properties"])
    assert not any("default" in node for _, node in fields(status))


@pytest.mark.parametrize("case_id,spec,model_says,server_says", CASES, ids=[c[0] for c in CASES])
def test_pydantic_verdict(case_id, spec, model_says, server_says):
    verdict = pydantic_verdict(spec)
    if model_says is None:
        assert verdict is None, verdict
    else:
        assert verdict is not None, f"pydantic accepted {case_id}"
        assert model_says in verdict


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid_for_the_model(path):
    preps = example_preps(path)
    assert preps, f"{path.name} holds no DatasetPrep"
    for doc in preps:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
        parse_spec(doc["spec"])
