"""The docs against the real API server, with the test bed's own kubectl (same version as the server):

* the messages of the API server that docs/troubleshooting.md quotes (CEL rules, schema) are the
  ones ``kubectl apply`` prints for the manifests that break those rules -- a captured run, since
  the API server, not our code, words them;
* every manifest of ``examples/`` and of the Argo CD example app passes a server-side dry run.
"""
from __future__ import annotations

import re

import pytest
import yaml

import docsmd
from paths import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TINY = {"source": {"files": {"paths": ["a.jsonl"]}}, "tokenizer": {"type": "null", "vocabSize": 5},
        "output": {"claimName": "d", "prefix": "x"}}
#: Manifests that break the rules troubleshooting.md quotes the API server on.
BROKEN = {
    "both sources": {**TINY, "source": {"files": {"paths": ["a"]}, "hub": {"repo": "x"}}},
    "prefix outside the volume": {**TINY, "output": {"claimName": "d", "prefix": "../x"}},
    "more parallelism than shards": {**TINY, "shards": 2, "parallelism": 3},
    "a misspelt field": {**TINY, "shard": 2},
}


def _kubectl_apply(kube_cluster, namespace: str, manifest: str, *extra: str):
    return kube_cluster.run_kubectl("apply", "-n", namespace, "--dry-run=server", *extra, "-f", "-",
                                    input=manifest, check=False)


def test_the_api_server_messages_troubleshooting_quotes_are_what_kubectl_prints(kube_cluster, crd, namespace):
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    paragraph = text[text.index("The API server itself refuses"):].split("\n\n")[0]
    quotes = [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", paragraph, re.S)]
    quotes = [re.sub(r"\s+", " ", q) for q in quotes if "Invalid value" in q or "invalid" in q or "unknown" in q]
    assert len(quotes) >= 4, quotes
    printed = []
    for name, spec in BROKEN.items():
        body = {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep", "metadata": {"name": "bad"},
                "spec": spec}
        proc = _kubectl_apply(kube_cluster, namespace, yaml.safe_dump(body))
        assert proc.returncode != 0, f"{name}: the API server accepted it"
        printed.append(re.sub(r"\s+", " ", proc.stderr))
    wrong = {q: docsmd.unmatched_fragments(q, printed, share=0.9) for q in quotes}
    assert not any(wrong.values()), f"quoted, but kubectl printed {printed}: {wrong}"


def _manifests() -> list[tuple[str, str]]:
    context = {"hub_env": "", "token": "hf_example"}
    paths = sorted((REPO / "examples").rglob("*.yaml")) + sorted((REPO / "deploy" / "argocd" / "example-app").glob("*.yaml"))
    return [(str(p.relative_to(REPO)), docsmd.substitute(p.read_text(), context)) for p in paths
            if p.name != "kustomization.yaml"]


@pytest.mark.parametrize("path,manifest", _manifests(), ids=[p for p, _ in _manifests()])
def test_every_example_passes_a_server_side_dry_run(kube_cluster, crd, namespace, path, manifest):
    proc = _kubectl_apply(kube_cluster, namespace, manifest)
    assert proc.returncode == 0, f"{path}:\n{proc.stdout}{proc.stderr}"
    assert "(server dry run)" in proc.stdout
