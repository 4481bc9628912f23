"""The DatasetBlend reconciler against the in-memory API (fakeapi.py), with components made Ready by the real
DatasetPrep reconciler: its decisions, events, Job manifest and ConfigMap; and the runtime that queues it and
writes its decisions (each effect once, no finalizer). The same life runs on the test bed in
test_blend_e2e.py."""
from __future__ import annotations

import copy
import hashlib
import json

import kopf
import pytest
import yaml

from datasetprep import blendformats as fmt
from datasetprep.contract import BlendOrder, BlendWritten, encode_result
from datasetprep_operator.blendreconcile import BlendSeen, reconcile_blend
from datasetprep_operator.naming import LABEL_OWNER_UID
from datasetprep_operator.reconcile import Resource, Seen
from datasetprep_operator.runtime import KOPF_FINALIZER, BlendKey, Runtime, Stale, pod_summary
from fakeapi import FakeKube, Tally, World, merge, pod
from specs import RESULT, SPEC


def ready_prep(name: str, uid: str, *, result: dict | None = None, spec: dict | None = None) -> dict:
    """A DatasetPrep made Ready by the real reconciler, its job having reported ``result``."""
    w = World(copy.deepcopy(spec or SPEC), name=name, uid=uid)
    w.kube.pods = [pod("Succeeded", json.dumps(result or RESULT), 0, "T2")]
    for _ in range(3):  # the Job, or the shards' Job then the merge Job
        w.run()
        for job in w.kube.jobs.values():
            job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completedIndexes": "0-2"}
    assert w.body["status"]["phase"] == "Succeeded", w.body["status"]
    return w.body


def result_of(prefix: str, tokens: int, sequences: int, *, tokenizer: dict | None = None) -> dict:
    r = copy.deepcopy(RESULT)
    r["outputs"][0].update(prefix=f"{prefix}_text_document", tokens=tokens, sequences=sequences, documents=sequences)
    if tokenizer:
        r["tokenizer"] = tokenizer
    return r


OTHER_TOKENIZER = {"type": "huggingface", "path": "gpt2/tokenizer.json", "vocab_size": 50257, "eod_id": 50256,
                   "fingerprint": "h" * 64}
BLEND = {"components": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}],
         "totalTokens": 1_000_000}


class BlendWorld:
    """One DatasetBlend, its components and the fake API."""

    def __init__(self, spec: dict | None = None) -> None:
        self.kube = FakeKube()
        self.world = World()
        self.world.kube = self.kube
        self.world.ctx.kube = self.kube
        self.ctx = self.world.ctx
        self.preps: dict[str, dict] = {}
        self.kube.get_datasetprep = lambda ns, name: copy.deepcopy(self.preps.get(name))
        self.body = {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetBlend",
                     "metadata": {"name": "mix", "namespace": "ml", "uid": "blend-uid", "generation": 1},
                     "spec": copy.deepcopy(spec or BLEND), "status": {}}
        self.events: list = []

    def add(self, name: str, tokens: int, sequences: int = 100, **kw) -> None:
        self.preps[name] = ready_prep(name, f"uid-{name}", result=result_of(name, tokens, sequences, **kw))

    def watched(self) -> Seen:
        """An up-to-date watch: the fake's Jobs and pods (as the operator's indexes keep them)."""
        return Seen(job=lambda ns, name: copy.deepcopy(self.kube.jobs.get(name)),
                    jobs_of=lambda ns, uid: [copy.deepcopy(j) for j in self.kube.jobs.values()
                                             if j["metadata"].get("labels", {}).get(LABEL_OWNER_UID) == uid],
                    pods=lambda ns, job: [pod_summary(p) for p in self.kube.pods])

    def run(self):
        watched = self.watched()
        outcome = reconcile_blend(Resource(copy.deepcopy(self.body)), self.ctx,
                                  BlendSeen(job=watched.job, jobs_of=watched.jobs_of, pods=watched.pods))
        self.body["status"] = merge(self.body["status"], outcome.status)
        self.events += outcome.events
        return outcome

    def files_job(self) -> dict:
        (job,) = [j for j in self.kube.jobs.values()
                  if j["metadata"]["labels"].get("app.kubernetes.io/component") == "blend-files"]
        return job

    def order(self) -> BlendOrder:
        env = self.files_job()["spec"]["template"]["spec"]["containers"][0]["env"]
        return BlendOrder.model_validate_json(next(e["value"] for e in env if e["name"] == "DATASETPREP_BLEND"))

    def finish_files(self, *, ok: bool = True, listing: str | None = None, error: str = "") -> BlendWritten:
        order = self.order()
        job = self.files_job()
        folder = f"{order.folder}/{order.version}"
        if listing is None:
            listing = fmt.data_args_text([(s.share, s.prefix) for s in order.lists["all"]])
        written = BlendWritten(blend_folder=folder, data_args=f"{folder}/data-args.txt",
                               sequences=f"{folder}/sequences-per-dataset.json", datasets=len(order.lists["all"]),
                               listing_sha256=hashlib.sha256(listing.encode()).hexdigest())
        job["status"] = {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True"}]}
        message = encode_result(written) if ok else json.dumps({"ok": False, "error": error})
        self.kube.pods = [pod("Succeeded" if ok else "Failed", message, 0 if ok else 1, "T3")]
        return written

    def cond(self, type_: str) -> dict:
        return {c["type"]: c for c in self.body["status"]["conditions"]}[type_]

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


@pytest.fixture
def bw() -> BlendWorld:
    w = BlendWorld()
    w.add("wiki", 900_000, 500)
    w.add("code", 100_000, 50)
    return w


def test_two_ready_components_become_a_ready_blend(bw):
    bw.run()
    assert bw.cond("Reconciling")["status"] == "True" and bw.cond("Reconciling")["reason"] == "WritingFiles"
    status = bw.body["status"]
    assert (status["componentCount"], status["tokens"], status["datasets"]) == (2, 1_000_000, 2)
    wiki, code = status["components"]
    assert (wiki["datasetPrep"], wiki["generation"], wiki["share"], wiki["tokens"]) == ("wiki", 1, 0.75, 900_000)
    assert wiki["trainTokens"] == int(900_000 * 0.969) and wiki["epochs"] == round(0.75e6 / int(900_000 * 0.969), 3)
    assert status["claims"] == [{"claimName": "data", "mountPath": "/data"}]

    job = bw.files_job()
    assert [r["uid"] for r in job["metadata"]["ownerReferences"]] == ["blend-uid"]
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    # the operator's resource bounds, as for the DatasetPrep Jobs
    assert pod_spec["containers"][0]["resources"]["limits"] == {"ephemeral-storage": "4Gi", "memory": "4Gi"}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in pod_spec["volumes"]
    assert pod_spec["containers"][0]["volumeMounts"][0] == {"name": "claim-0", "mountPath": "/data", "readOnly": False}
    order = bw.order()
    assert [(s.prefix, s.share, s.sequences) for s in order.lists["all"]] == [
        ("/data/wiki_text_document", 0.75, 500), ("/data/code_text_document", 0.25, 50)]
    assert order.folder == "/data/datasetprep-blends/mix"

    bw.finish_files()
    bw.run()
    assert bw.cond("Ready")["status"] == "True" and bw.cond("Ready")["observedGeneration"] == 1
    assert bw.cond("Stalled")["status"] == "False" and bw.cond("Reconciling")["status"] == "False"
    assert "generations wiki@1, code@1" in bw.cond("Ready")["message"]
    data = bw.kube.config_maps["mix-training"]["data"]
    args = data["megatron-args.txt"].split()
    assert args[:4] == ["--data-args-path", f"/data/datasetprep-blends/mix/{order.version}/data-args.txt",
                        "--split", "969,30,1"]
    assert "--per-dataset-sequences-path" in args
    assert fmt.nemo_blends(yaml.safe_load(data["nemo2-data.yaml"])["paths"])[0] == (
        ["/data/wiki_text_document", "/data/code_text_document"], [0.75, 0.25])
    assert bw.body["status"]["files"]["digest"] == order.version
    assert bw.body["status"]["configMapName"] == "mix-training" and "BlendReady" in bw.reasons()

    bw.kube.calls.clear()
    assert bw.run().status == {} and bw.kube.calls == [] and len(bw.events) == 2  # nothing to do, no API call


def test_a_rerunning_component_keeps_the_blend_then_it_follows(bw):
    bw.run()
    bw.finish_files()
    bw.run()
    before = copy.deepcopy(bw.kube.config_maps["mix-training"])
    first_job = bw.files_job()["metadata"]["name"]
    # wiki's spec changes: its new run is Running, its old output still in status
    wiki = bw.preps["wiki"]
    wiki["metadata"]["generation"] = 2
    wiki["status"]["phase"] = "Running"
    bw.run()
    assert bw.cond("Ready")["status"] == "False" and bw.cond("Reconciling")["reason"] == "WaitingForComponents"
    assert "DatasetPrep wiki is not Ready for generation 2 (Running" in bw.cond("Reconciling")["message"]
    assert "ConfigMap mix-training keeps the previous blend" in bw.cond("Reconciling")["message"]
    assert bw.kube.config_maps["mix-training"] == before
    assert bw.body["status"]["components"][0]["generation"] == 1  # what the ConfigMap still uses
    # its new output is Ready: the blend follows with a new version of the files
    bw.preps["wiki"] = ready_prep("wiki", "uid-wiki", result=result_of("wiki", 1_200_000, 700))
    bw.preps["wiki"]["metadata"]["generation"] = 2
    bw.preps["wiki"]["status"]["observedGeneration"] = 2
    for c in bw.preps["wiki"]["status"]["conditions"]:
        c["observedGeneration"] = 2
    first_version = bw.body["status"]["files"]["digest"]
    bw.run()
    new_job = [j for j in bw.kube.jobs.values() if j["metadata"]["labels"].get("app.kubernetes.io/component")
               == "blend-files" and j["metadata"]["name"] != first_job]
    assert len(new_job) == 1
    old = bw.kube.jobs.pop(first_job)
    assert bw.order().keep == (first_version,)  # the files the ConfigMap names stay until it switches
    bw.finish_files()
    bw.kube.jobs[first_job] = old
    bw.run()
    assert bw.cond("Ready")["status"] == "True" and "wiki@2" in bw.cond("Ready")["message"]
    assert bw.kube.config_maps["mix-training"] != before and "BlendUpdated" in bw.reasons()
    assert bw.body["status"]["components"][0]["generation"] == 2 and bw.body["status"]["tokens"] == 1_300_000
    assert first_job not in bw.kube.jobs  # the older files Job is gone


def test_another_tokenizer_stalls_the_blend_naming_who_differs(bw):
    bw.add("gpt", 10_000, tokenizer=OTHER_TOKENIZER)
    bw.body["spec"]["components"].append({"datasetPrep": "gpt", "weight": 1})
    bw.run()
    stalled = bw.cond("Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "IncompatibleComponents"
    assert ("these components cannot be blended: different tokenizers: wiki/text, code/text use sentencepiece "
            "tokenizer tttttttttttt (vocab 8000, EOD 2); gpt/text uses huggingface tokenizer hhhhhhhhhhhh") \
        in stalled["message"]
    assert not bw.kube.jobs.get("mix-files") and bw.reasons() == ["IncompatibleComponents"]
    bw.run()
    assert bw.reasons() == ["IncompatibleComponents"]  # one event, not one per look


def test_missing_and_stalled_components_stall_the_blend(bw):
    bw.body["spec"]["components"].append({"datasetPrep": "nope", "weight": 1})
    bw.run()
    assert bw.cond("Stalled")["reason"] == "ComponentNotUsable"
    assert "DatasetPrep nope does not exist in this namespace" in bw.cond("Stalled")["message"]
    bw.body["spec"]["components"][-1] = {"datasetPrep": "wiki", "textKey": "title", "weight": 1}
    bw.run()
    assert "DatasetPrep wiki has no text key 'title' (it has text)" in bw.cond("Stalled")["message"]


def test_a_failed_files_job_stalls_with_its_message(bw):
    bw.run()
    bw.finish_files(ok=False, error="wiki/text: /data/wiki_text_document.idx does not exist")
    bw.run()
    assert bw.cond("Stalled")["reason"] == "FilesJobFailed"
    assert "wiki_text_document.idx does not exist" in bw.cond("Stalled")["message"]
    assert "mix-training" not in bw.kube.config_maps


def test_a_listing_other_than_the_status_describes_stalls(bw):
    bw.run()
    bw.finish_files(listing="0.5 /data/elsewhere\n")
    bw.run()
    assert bw.cond("Stalled")["reason"] == "FilesDiffer"


def test_repeated_data_is_a_warning_and_a_note(bw):
    bw.body["spec"]["totalTokens"] = 3_000_000
    bw.run()
    assert "RepeatedData" in bw.reasons()
    (note,) = bw.body["status"]["notes"]
    assert note.startswith("code/text is repeated 7.7 times") and bw.body["status"]["components"][1]["note"] == note
    bw.run()
    assert bw.reasons().count("RepeatedData") == 1


def test_invalid_spec_is_permanent():
    w = BlendWorld({"components": [{"datasetPrep": "a", "fraction": 1}]})
    outcome = w.run()
    assert isinstance(outcome.error, kopf.PermanentError)
    assert w.cond("Stalled")["reason"] == "InvalidSpec" and "set `totalTokens`" in w.cond("Stalled")["message"]
    assert w.run().error is None and w.run().status == {}  # the timer's next looks: no new failure, no write


def test_kept_shards_component_expands_in_the_order():
    w = BlendWorld()
    w.add("wiki", 900_000, 500)
    r = copy.deepcopy(RESULT)
    r["outputs"][0] = {"key": "text", "prefix": "code/ds_text_document", "documents": 50, "sequences": 50,
                       "tokens": 100_000, "dtype": "uint16", "blend_file": "code/ds_text_document.blend.txt",
                       "shards": 3, "blend_weights": [60_000, 0, 40_000]}
    w.preps["code"] = ready_prep("code", "uid-code", result=r, spec=SPEC | {"shards": 3, "keepShards": True})
    w.run()
    (wiki, code) = w.order().lists["all"]
    assert (code.blend_file, code.list_root, code.pod_root, code.tokens) == (
        "/data/code/ds_text_document.blend.txt", "/data", "/data", 100_000)
    assert w.body["status"]["datasets"] == 3 and w.body["status"]["components"][1]["datasets"] == 2


# --------------------------------------------------------------------------- on the runtime's queue


class Added:
    """A stand-in for the work queue that records the keys the runtime adds."""

    def __init__(self) -> None:
        self.keys: list = []

    def add(self, key, delay=None) -> None:
        self.keys.append(key)

    def forget(self, key) -> None:
        pass


def blend_runtime(bw: BlendWorld, finalizers: list[str] | None = None) -> Runtime:
    """The operator's runtime over the blend world: the blend stored in the fake API (with ``finalizers``),
    its components known as the DatasetPrep watch delivered them."""
    runtime = Runtime(bw.ctx.config, Tally(), bw.kube, ctx=bw.ctx)
    runtime.indexes.seen = bw.watched  # type: ignore[method-assign]
    body = copy.deepcopy(bw.body)
    body["metadata"]["finalizers"] = list(finalizers or [])
    bw.kube.add_datasetblend(body)
    for prep in bw.preps.values():
        runtime.bodies.note({**prep, "metadata": {**prep["metadata"], "namespace": "ml"}})
    return runtime


def stored_blend(bw: BlendWorld) -> dict:
    return copy.deepcopy(bw.kube.datasetblends[("ml", "mix")])


def test_the_runtime_writes_a_blend_once_however_often_a_stale_body_comes_back(bw):
    runtime = blend_runtime(bw, finalizers=[KOPF_FINALIZER])
    runtime.step_blend(stored_blend(bw))
    assert stored_blend(bw)["metadata"]["finalizers"] == []  # an older version's kopf finalizer: removed on sight
    writing = stored_blend(bw)
    assert writing["status"]["filesJob"] == bw.files_job()["metadata"]["name"]
    bw.finish_files()
    runtime.step_blend(stored_blend(bw))
    assert {c["type"]: c["status"] for c in stored_blend(bw)["status"]["conditions"]}["Ready"] == "True"
    reasons = [e["reason"] for e in bw.kube.events]
    assert reasons == ["FilesJobCreated", "BlendReady"]
    for stale in (writing, writing, writing):  # a lagging watch (or a second replica) hands the old body back
        with pytest.raises(Stale):
            runtime.step_blend(stale)
    assert [e["reason"] for e in bw.kube.events] == reasons  # a lost write carries no event
    assert bw.kube.writes("create_job", refused=False) == [f"create_job {bw.files_job()['metadata']['name']}"]
    assert bw.kube.writes("create_config_map", refused=False) == ["create_config_map mix-training"]  # 3 were 409s
    assert bw.kube.writes("replace_config_map") == []  # the same data: never rewritten
    assert len(bw.kube.writes("patch_blend_status", refused=False)) == 2  # WritingFiles, Ready
    bw.kube.calls.clear()
    assert runtime.step_blend(stored_blend(bw)) is None and bw.kube.calls == []  # Ready and current: no request


def test_a_deleted_blend_with_an_older_versions_finalizer_is_let_go(bw):
    runtime = blend_runtime(bw, finalizers=[KOPF_FINALIZER, "someone.else/keep"])
    bw.kube.datasetblends[("ml", "mix")]["metadata"]["deletionTimestamp"] = "T9"
    runtime.step_blend(stored_blend(bw))
    assert stored_blend(bw)["metadata"]["finalizers"] == ["someone.else/keep"]  # only ours goes
    assert not bw.kube.jobs and not bw.kube.events  # nothing started for a blend on its way out


def test_a_component_a_files_job_or_its_pod_queues_the_blend(bw):
    runtime = blend_runtime(bw)
    runtime.queue = added = Added()
    runtime.saw_blend({"type": "ADDED", "object": stored_blend(bw)})
    runtime.saw_datasetprep({"type": "MODIFIED", "object": {**bw.preps["wiki"], "metadata": {
        **bw.preps["wiki"]["metadata"], "namespace": "ml"}}})
    runtime.saw_datasetprep({"type": "MODIFIED", "object": {"metadata": {
        "name": "unrelated", "namespace": "ml", "uid": "u9", "resourceVersion": "1"}}})
    blend = BlendKey("ml", "mix")
    assert added.keys == [blend, ("ml", "wiki"), blend, ("ml", "unrelated")]
    runtime.step_blend(stored_blend(bw))
    added.keys.clear()
    job = bw.files_job()
    runtime.saw_child(job)
    runtime.saw_child({"metadata": {"name": "p", "namespace": "ml",
                                    "labels": job["spec"]["template"]["metadata"]["labels"]}})
    assert added.keys == [blend, blend]
    runtime.saw_blend({"type": "DELETED", "object": stored_blend(bw)})
    added.keys.clear()
    runtime.saw_datasetprep({"type": "MODIFIED", "object": {**bw.preps["wiki"], "metadata": {
        **bw.preps["wiki"]["metadata"], "namespace": "ml"}}})
    assert added.keys == [("ml", "wiki")]  # a deleted blend is no longer queued
