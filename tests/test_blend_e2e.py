"""DatasetBlend end to end on the test bed's real node: the real operator (KopfRunner), Job pods from our job
image under the kubelet, a training-side check in a pod from the same image.

Two DatasetPreps of different corpora (one merged, one with kept shards) blend into a Ready DatasetBlend whose
files Job checks every dataset and writes the trainers' files onto the volume; a pod that mounts the training
ConfigMap and the claim the way docs/blends.md says reads every format as its trainer does and opens every
dataset with the index reader -- and fails on a ConfigMap with a wrong path. A third component with another
tokenizer stalls the blend with a message naming it; a component's spec change re-runs it, the blend waits with
its previous ConfigMap, then follows with the new generation.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from bed import JOB_UID, files_spec, imported_image, running_operator
from datasetprep import blendformats as fmt
from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.indexed import IndexedDataset
from datasetprep.spec import GROUP, VERSION
from paths import CORPUS_A, HF_DIR

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


class Blends:
    def __init__(self, bed) -> None:
        self.bed = bed

    def create(self, name: str, spec: dict) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend",
                "metadata": {"name": name, "namespace": self.bed.ns}, "spec": spec}
        return self.bed.custom.create_namespaced_custom_object(GROUP, VERSION, self.bed.ns, BLEND_PLURAL, body)

    def get(self, name: str) -> dict:
        return self.bed.custom.get_namespaced_custom_object(GROUP, VERSION, self.bed.ns, BLEND_PLURAL, name)

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, self.bed.ns, BLEND_PLURAL, name,
                                                              {"spec": spec})

    def condition(self, name: str, type_: str, status: str = "True") -> dict | None:
        obj = self.get(name)
        for c in (obj.get("status") or {}).get("conditions") or ():
            if (c["type"], c["status"]) == (type_, status) and c.get("observedGeneration") == \
                    obj["metadata"]["generation"]:
                return obj
        return None

    def wait(self, name: str, type_: str, timeout: float = 300, check=lambda obj: True) -> dict:
        def done():
            obj = self.condition(name, type_)
            return obj if obj is not None and check(obj) else None
        return self.bed.wait(done, f"DatasetBlend {name} {type_}", timeout=timeout, interval=0.5)


def check_pod(bed, name: str, config_map: str, image: str) -> tuple[str, str]:
    """A pod from the job image that mounts the training ConfigMap and the claim as the training Job does and
    runs ``datasetprep check-training-config``; returns (phase, log)."""
    bed.core.create_namespaced_pod(bed.ns, {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": JOB_UID, "runAsGroup": JOB_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "check", "image": image, "imagePullPolicy": "Never",
                "command": ["datasetprep", "check-training-config", "/etc/datasetprep"],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True},
                                 {"name": "training-config", "mountPath": "/etc/datasetprep", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}},
                        {"name": "training-config", "configMap": {"name": config_map}},
                        {"name": "tmp", "emptyDir": {}}]}})

    def finished():
        p = bed.core.read_namespaced_pod(name, bed.ns)
        return p if p.status.phase in ("Succeeded", "Failed") else None
    pod = bed.wait(finished, f"pod {name} to finish", timeout=180, interval=0.5)
    return pod.status.phase, bed.cluster.pod_log(bed.ns, name)


def test_blend_of_two_datasets_follows_them_and_trains_from_a_pod(bed, monkeypatch):
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps({"DATASETPREP_CHUNK_MIB": "0.1"}))  # both shards hold data
    lines = [line + b"\n" for line in CORPUS_A.read_bytes().split(b"\n") if line]  # JSON Lines: split on \n only
    (bed.data / "corpus_b.jsonl").write_bytes(b"".join(lines[1::2]))  # another corpus
    shutil.copytree(HF_DIR, bed.data / "hf")
    job_image = imported_image(bed.cluster, "job")[0]  # what the operator's Jobs run (conftest's operator_env)
    blends = Blends(bed)
    with running_operator(bed.ns):
        bed.create("wiki", files_spec("wiki/ds"))
        bed.create("code", files_spec("code/ds", paths=["corpus_b.jsonl"], shards=2, keepShards=True))
        blends.create("mix", {"components": [{"datasetPrep": "wiki", "weight": 3},
                                             {"datasetPrep": "code", "weight": 1}],
                              "splits": "98,2", "totalTokens": 2_000_000, "maxEpochs": 2})
        mix = blends.wait("mix", "Ready")
        status = mix["status"]
        wiki_out = bed.get("wiki")["status"]["output"]
        code_out = bed.get("code")["status"]["output"]

        # token arithmetic shown
        assert status["componentCount"] == 2 and status["tokens"] == wiki_out["tokens"] + code_out["tokens"]
        wiki, code = status["components"]
        assert (wiki["generation"], wiki["share"], code["share"], code["datasets"]) == (1, 0.75, 0.25, 2)
        assert code["epochs"] == round(0.25 * 2_000_000 / int(code_out["tokens"] * 0.98), 3) > 2
        assert status["notes"] == [code["note"]] and "repeated" in code["note"]
        assert "RepeatedData" in {e.reason for e in bed.events("mix")}

        # the files, on the volume, as the training pods will read them
        files = status["files"]
        folder = bed.data / Path(files["folder"]).relative_to("/data")
        listing = (folder / fmt.DATA_ARGS_FILE).read_text()
        prefixes, weights = fmt.blend_from_list(listing.split())
        assert prefixes == ["/data/wiki/ds_text_document", "/data/code/ds_shard00000_text_document",
                            "/data/code/ds_shard00001_text_document"]
        shard_tokens = code_out["files"][0]["shardTokens"]
        assert weights == [0.75] + [0.25 * t / sum(shard_tokens) for t in shard_tokens]
        sequences = yaml.safe_load((folder / fmt.SEQUENCES_FILE).read_text())
        for p in prefixes:
            ds = IndexedDataset(bed.data / Path(p).relative_to("/data"))
            assert sequences[p] == [ds.num_sequences, ds.num_documents + 1]
        cm = bed.config_map("mix-training")
        args = cm.data["megatron-args.txt"].split()
        assert args[:6] == ["--data-args-path", files["dataArgs"], "--split", "98,2", "--per-dataset-sequences-path",
                            files["sequences"]]
        assert [r.kind for r in cm.metadata.owner_references] == ["DatasetBlend"]

        # the training side, in a pod from our image: every format parsed, every dataset opened
        phase, log = check_pod(bed, "check", "mix-training", job_image)
        assert phase == "Succeeded", log
        assert "3 datasets" in log and "megatron-args.txt, nemo2-data.yaml, megatron-bridge.yaml, config.yaml" in log
        # a ConfigMap with a wrong path fails the check, not a GPU job
        broken = dict(cm.data)
        broken["megatron-args.txt"] = broken["megatron-args.txt"].replace(files["dataArgs"],
                                                                          files["dataArgs"] + ".typo")
        bed.core.create_namespaced_config_map(bed.ns, {"metadata": {"name": "mix-broken"}, "data": broken})
        phase, log = check_pod(bed, "check-broken", "mix-broken", job_image)
        assert phase == "Failed" and "data-args.txt.typo" in log, log

        # a third component with another tokenizer: Stalled, naming it and what differs; the ConfigMap stays
        bed.create("gpt", files_spec("gpt/ds", tokenizer={"type": "huggingface", "path": {"path": "hf"}}))
        bed.wait_ready("gpt", timeout=300)
        before = bed.config_map("mix-training").data
        blends.patch_spec("mix", {"components": mix["spec"]["components"] + [{"datasetPrep": "gpt", "weight": 1}]})
        stalled = blends.wait("mix", "Stalled")
        message = next(c["message"] for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
        assert "different tokenizers" in message and "gpt/text uses huggingface tokenizer" in message, message
        assert bed.config_map("mix-training").data == before

        # back to two; then wiki changes: it re-runs, the blend waits with its ConfigMap, then follows
        blends.patch_spec("mix", {"components": mix["spec"]["components"]})
        blends.wait("mix", "Ready")
        (bed.data / "corpus_c.jsonl").write_bytes(b"".join(lines[::3]))
        bed.patch_spec("wiki", {"source": {"files": {"paths": ["corpus_c.jsonl"]}}})
        waiting = blends.wait("mix", "Reconciling", timeout=60)
        assert waiting["status"]["components"][0]["generation"] == 1  # what the ConfigMap still holds
        assert "keeps the previous blend" in waiting["status"]["message"]
        followed = blends.wait("mix", "Ready", check=lambda o: o["status"]["components"][0]["generation"] == 2)
        new_wiki = bed.get("wiki")["status"]["output"]
        assert followed["status"]["components"][0]["tokens"] == new_wiki["tokens"] != wiki_out["tokens"]
        assert followed["status"]["files"]["digest"] != files["digest"]
        after = bed.config_map("mix-training").data
        assert after["megatron-args.txt"] != before["megatron-args.txt"]
        assert "BlendUpdated" in {e.reason for e in bed.events("mix")}
        phase, log = check_pod(bed, "check-after", "mix-training", job_image)
        assert phase == "Succeeded", log
