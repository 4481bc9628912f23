"""The DatasetBlend CRD on a real API server: it accepts and rejects exactly what the pydantic model does
(server-side dry-run create: schema, CEL rules and their cost limits), and keeps the declared status."""
from __future__ import annotations

import kubernetes
import pytest

from bed import server_verdict
from blendcases import BLEND_CASES, WEIGHTS
from datasetprep.blendspec import BLEND_PLURAL, DatasetBlendStatus
from datasetprep.spec import GROUP, VERSION

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crd_installed(kube_cluster, crd):
    return kube_cluster.api_client()


@pytest.mark.parametrize("case_id,spec,model_says,server_says", BLEND_CASES, ids=[c[0] for c in BLEND_CASES])
def test_api_server_agrees_with_pydantic(crd_installed, namespace, case_id, spec, model_says, server_says):
    verdict = server_verdict(crd_installed, namespace, spec, "DatasetBlend", BLEND_PLURAL)
    if server_says is None:
        assert verdict is None, f"the API server rejected {case_id}, pydantic accepts it: {verdict}"
    else:
        assert verdict is not None, f"the API server accepted {case_id}, pydantic rejects it"
        assert server_says in verdict, verdict


def test_status_fields_are_kept(crd_installed, namespace):
    """Everything the operator writes through DatasetBlendStatus survives the API server's pruning."""
    custom = kubernetes.client.CustomObjectsApi(crd_installed)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend",
            "metadata": {"name": "mix", "namespace": namespace}, "spec": WEIGHTS}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BLEND_PLURAL, body)
    status = DatasetBlendStatus.model_validate({
        "observedGeneration": 1, "componentCount": 2, "tokens": 1000, "datasets": 3, "message": "m",
        "components": [{"split": "all", "datasetPrep": "wiki", "textKey": "text", "generation": 2, "claimName": "data",
                        "prefix": "/data/w", "datasets": 1, "documents": 5, "sequences": 5, "tokens": 700,
                        "weight": 3.0, "share": 0.75, "trainTokens": 678, "epochs": 1.5, "note": "n"}],
        "claims": [{"claimName": "data", "mountPath": "/data"}],
        "files": {"claimName": "data", "folder": "/data/b/v", "dataArgs": "/data/b/v/data-args.txt",
                  "sequences": "/data/b/v/s.json", "digest": "ab" * 8, "datasets": 3},
        "filesJob": "mix-files-abababab", "configMapName": "mix-training", "notes": ["x"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                        "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}).to_patch()
    stored = custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, BLEND_PLURAL, "mix",
                                                          {"status": status})
    assert stored["status"] == status
