"""The CRD on a real API server: it accepts and rejects exactly what the pydantic model does (server-side
dry-run create), applies the defaults, keeps declared status fields and kopf's storage, and serves the
descriptions to ``kubectl explain``."""
from __future__ import annotations

import pytest

from bed import install_crd, raw_get, server_verdict
from crdcases import CASES, EXAMPLES, VALID_FILES, VALID_HUB, example_preps, pydantic_verdict
from datasetprep.spec import GROUP, PLURAL, VERSION, parse_spec

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crd_installed(kube_cluster):
    api = kube_cluster.api_client()
    install_crd(api)
    return api


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
    # output.files is typed: a field the model does not declare is pruned there too
    assert got["output"]["files"] == [{"key": "text"}]
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


@pytest.mark.cluster
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_by_the_api_server(crd_installed, namespace, path):
    for doc in example_preps(path):
        assert server_verdict(crd_installed, namespace, doc["spec"]) is None
