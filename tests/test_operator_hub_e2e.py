"""End to end on the real API server: a DatasetPrep whose dataset AND gated tokenizer come from the
local fake Hub (real huggingface_hub client code in the job pod), with the token only in a Secret.

Asserts the bytes (equal to a local run of the same spec against the same Hub), the recorded
revision, and that the token string appears in no status, event, ConfigMap, Job/Pod spec, pod log
or file written to the volume."""
from __future__ import annotations

import json

import pytest

from datasetprep.runner import run_spec
from datasetprep.spec import parse_spec
from hubserver import GOOD_TOKEN, _fake_hub_server, fake_hub  # noqa: F401  (fixtures)
from test_operator_e2e import bed, crd, operator_env, running_operator  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SPEC = {
    "source": {"hub": {"repo": "acme/tiny-corpus", "subset": "en", "split": "train"}, "textKeys": ["text"]},
    "tokenizer": {"type": "auto", "hub": {"repo": "acme/gated-llama"}},
    "output": {"claimName": "data", "prefix": "hub/tiny"},
    "appendEod": True,
    "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
}


def test_hub_source_and_gated_tokenizer_through_the_operator(bed, fake_hub, monkeypatch, tmp_path):  # noqa: F811
    # what a local run of the same spec against the same Hub writes
    expected = tmp_path / "expected"
    expected.mkdir()
    local = run_spec(parse_spec(SPEC), {"data": expected}, token=GOOD_TOKEN)
    fake_hub.reset()

    env = {"HF_ENDPOINT": fake_hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps(env))
    bed.core.create_namespaced_secret(bed.ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": GOOD_TOKEN}})
    with running_operator(bed.ns):
        bed.create("hubprep", SPEC)
        obj = bed.wait_ready("hubprep", timeout=240)

    status = obj["status"]
    assert status["resolvedRevision"] == local["resolved_revision"]
    for ext in ("bin", "idx"):
        assert (bed.data / f"hub/tiny_text_document.{ext}").read_bytes() == \
            (expected / f"hub/tiny_text_document.{ext}").read_bytes()
    assert fake_hub.file_downloads("acme/tiny-corpus") > 0  # the pod really went to the Hub
    # the token was sent to the Hub (the gated tokenizer needed it) ...
    assert fake_hub.count(contains="gated-llama", status=200) > 0
    # ... and is nowhere else
    cm = bed.config_map(status["configMapName"])
    job = bed.batch.read_namespaced_job(status["jobName"], bed.ns)
    pods = bed.core.list_namespaced_pod(bed.ns).items
    container = job.spec.template.spec.containers[0]
    token_env = [e for e in container.env if e.name == "HF_TOKEN"]
    assert token_env and token_env[0].value is None
    assert token_env[0].value_from.secret_key_ref.name == "hf-token"
    api = bed.core.api_client
    texts = [json.dumps(obj), json.dumps(cm.data), json.dumps(api.sanitize_for_serialization(job)),
             json.dumps([api.sanitize_for_serialization(p) for p in pods]),
             json.dumps([api.sanitize_for_serialization(e) for e in bed.events("hubprep")])]
    for p in pods:
        for c in p.spec.containers:
            texts.append(bed.cluster.pod_log(bed.ns, p.metadata.name, c.name))
    for f in bed.data.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt", ".yaml", ".log", ""):
            texts.append(f.read_text(errors="replace"))
    leaks = [t[:200] for t in texts if GOOD_TOKEN in t]
    assert not leaks, leaks
