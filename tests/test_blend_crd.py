"""The DatasetBlend CRD: generated from its pydantic model (no drift), structural, and as strict as the model
(the same cases go through a real API server in test_blend_crd_cluster.py)."""
from __future__ import annotations

import pytest
import yaml

from blendcases import BLEND_CASES, blend_verdict
from datasetprep.blendspec import BLEND_PLURAL, parse_blend_spec
from datasetprep.spec import GROUP
from datasetprep_operator import crdgen
from paths import REPO

CRD_FILE = REPO / "crds" / "datasetprep.io_datasetblends.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    return crdgen.blend_crd()


def test_crd_file_is_up_to_date(crd):
    assert CRD_FILE.read_text() == crdgen.to_yaml(crd), (
        "crds/datasetprep.io_datasetblends.yaml is out of date with datasetprep/blendspec.py; regenerate it with:\n"
        "    python -m datasetprep_operator.crdgen --blend > crds/datasetprep.io_datasetblends.yaml")


def test_main_prints_the_blend_crd(capsys):
    assert crdgen.main(["--blend"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == f"{BLEND_PLURAL}.{GROUP}"


def test_names_columns_and_status(crd):
    names = crd["spec"]["names"]
    assert (names["kind"], names["shortNames"], names["plural"]) == ("DatasetBlend", ["dsb"], "datasetblends")
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Components", "Tokens", "Ready", "Age"]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    cond = status["properties"]["conditions"]["items"]["properties"]
    assert "observedGeneration" in cond


def test_openapi_v3_exclusive_bounds_are_booleans(crd):
    weight = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "components"]["items"]["properties"]["weight"]
    assert weight["exclusiveMinimum"] is True and weight["minimum"] == 0


def test_reference_documents_both_kinds():
    text = (REPO / "docs" / "crd-reference.md").read_text()
    assert text == crdgen.markdown()
    assert "# DatasetBlend reference" in text and "`kubectl get dsb` columns: Components, Tokens, Ready, Age." in text


@pytest.mark.parametrize("case_id,spec,model_says,server_says", BLEND_CASES, ids=[c[0] for c in BLEND_CASES])
def test_pydantic_verdicts(case_id, spec, model_says, server_says):
    verdict = blend_verdict(spec)
    if model_says is None:
        assert verdict is None, verdict
    else:
        assert verdict is not None and model_says in verdict, verdict


def test_example_blend_is_valid():
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "blend.yaml").read_text()) if d]
    blends = [d for d in docs if d["kind"] == "DatasetBlend"]
    assert blends
    for b in blends:
        parse_blend_spec(b["spec"])
