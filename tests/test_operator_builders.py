"""The operator's pure builders, without a cluster: Job manifest, ConfigMap, status, job results."""
from __future__ import annotations

import copy
import json

import kopf
import pytest
import yaml

from datasetprep.spec import parse_spec
from datasetprep_operator import builders
from datasetprep_operator.builders import JobResult, parse_termination_message
from datasetprep_operator.config import OperatorConfig

CONFIG = OperatorConfig(job_image="registry.example/datasetprep:1.2.3", job_service_account="datasetprep-job",
                        image_pull_policy="Always")
TOKEN_SECRET_VALUE = "hf_THIS_MUST_NEVER_APPEAR"

HUB_SPEC = {
    "source": {"hub": {"repo": "wikitext", "subset": "wikitext-103-v1", "split": "train"}},
    "tokenizer": {"type": "tiktoken", "hub": {"repo": "meta-llama/Llama-3.1-8B", "file": "tokenizer.model"}},
    "output": {"claimName": "datasets", "prefix": "llama_dataset"},
    "hfTokenSecretRef": {"name": "hf-token"},
    "resources": {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
}
FILES_SPEC = {
    "source": {"files": {"claimName": "raw", "paths": ["corpus/*.jsonl"]}},
    "tokenizer": {"type": "sentencepiece", "path": {"claimName": "models", "path": "sp/tokenizer.model"}},
    "output": {"claimName": "datasets", "prefix": "out/a", "mountPath": "/data"},
}

SUCCESS = {
    "ok": True,
    "outputs": [{"key": "text", "prefix": "llama_dataset_text_document", "documents": 526, "sequences": 522,
                 "tokens": 821228, "dtype": "uint16", "bin_sha256": "b" * 64, "idx_sha256": "i" * 64}],
    "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000, "eod_id": 2},
    "fingerprint": "f" * 64,
    "resolved_revision": None,
}


def job_for(raw: dict, **kw) -> dict:
    return builders.build_job(parse_spec(raw), parent="wiki", namespace="ml", parent_uid="uid-1", config=CONFIG, **kw)


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job)["env"]}


# --------------------------------------------------------------------------- names


def test_job_name_is_deterministic_and_changes_with_the_spec():
    a = builders.spec_hash(parse_spec(HUB_SPEC))
    assert a == builders.spec_hash(parse_spec(copy.deepcopy(HUB_SPEC)))
    assert len(a) == 8 and int(a, 16) >= 0
    changed = copy.deepcopy(HUB_SPEC) | {"appendEod": False}
    assert builders.spec_hash(parse_spec(changed)) != a
    assert job_for(HUB_SPEC)["metadata"]["name"] == f"wiki-{a}"


def test_spelled_out_defaults_and_delete_flag_do_not_change_the_hash():
    base = builders.spec_hash(parse_spec(HUB_SPEC))
    # What the API server stores after CRD defaulting.
    defaulted = copy.deepcopy(HUB_SPEC) | {"appendEod": True, "workers": 2, "shards": 1, "backoffLimit": 2,
                                           "trainingConfig": {}, "deleteDataOnDelete": True}
    defaulted["source"]["textKeys"] = ["text"]
    defaulted["source"]["hub"] |= {"revision": "main", "streaming": False}
    assert builders.spec_hash(parse_spec(defaulted)) == base


@pytest.mark.parametrize("parent", ["x" * 63, "a" * 253, "ab-" * 30, "a.b" * 40])
def test_job_name_fits_63_characters(parent):
    name = builders.job_name(parent, "0123abcd")
    assert len(name) <= 63
    assert name.endswith("-0123abcd")
    assert not name[: -len("-0123abcd")].endswith(("-", "."))


def test_config_map_name_default_and_override():
    assert builders.config_map_name("wiki", parse_spec(HUB_SPEC)) == "wiki-training"
    spec = parse_spec(HUB_SPEC | {"trainingConfig": {"configMapName": "llama-data"}})
    assert builders.config_map_name("wiki", spec) == "llama-data"


# --------------------------------------------------------------------------- the Job


def test_job_shape():
    job = job_for(HUB_SPEC)
    spec = job["spec"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["namespace"] == "ml"
    assert spec["backoffLimit"] == 2 and spec["completions"] == 1 and spec["parallelism"] == 1
    assert "ttlSecondsAfterFinished" not in spec and "completionMode" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "datasetprep-job"
    c = container(job)
    assert c["command"] == ["datasetprep", "job"]
    assert c["image"] == "registry.example/datasetprep:1.2.3" and c["imagePullPolicy"] == "Always"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    labels = job["metadata"]["labels"]
    assert labels[builders.LABEL_OWNER_UID] == "uid-1"
    assert labels[builders.LABEL_SPEC_HASH] == builders.spec_hash(parse_spec(HUB_SPEC))
    assert spec["template"]["metadata"]["labels"] == labels


def test_image_override_and_no_resources():
    job = job_for(FILES_SPEC | {"image": "mine:dev"})
    assert container(job)["image"] == "mine:dev"
    assert "resources" not in container(job)


def test_indexed_job_is_ready_for_sharding():
    job = job_for(FILES_SPEC | {"shards": 8, "parallelism": 3, "backoffLimit": 4}, indexed=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 8 and spec["parallelism"] == 3 and spec["backoffLimitPerIndex"] == 4
    assert "backoffLimit" not in spec
    assert job_for(FILES_SPEC | {"shards": 4}, indexed=True)["spec"]["parallelism"] == 4


def test_env_contract():
    job = job_for(HUB_SPEC)
    env = env_of(job)
    spec = json.loads(env["DATASETPREP_SPEC"]["value"])
    assert parse_spec(spec) == parse_spec(HUB_SPEC)
    assert spec["hfTokenSecretRef"] == {"name": "hf-token", "key": "token"}  # camelCase, defaults spelled out
    assert " " not in env["DATASETPREP_SPEC"]["value"]  # compact
    assert json.loads(env["DATASETPREP_VOLUMES"]["value"]) == {"datasets": "/data"}
    assert env["DATASETPREP_NAME"]["value"] == "wiki"
    assert env["DATASETPREP_NAMESPACE"]["value"] == "ml"
    assert env["DATASETPREP_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DATASETPREP_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HF_HOME"]["value"] == "/tmp/hf"
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}


def test_hf_token_only_with_a_secret_ref():
    assert "HF_TOKEN" not in env_of(job_for(FILES_SPEC))
    custom = job_for(HUB_SPEC | {"hfTokenSecretRef": {"name": "gated", "key": "hf"}})
    assert env_of(custom)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gated", "key": "hf"}


def test_no_literal_token_anywhere():
    """The Job carries a reference to the Secret, never its value, even when one was around."""
    job = job_for(HUB_SPEC)
    text = json.dumps(job)
    assert TOKEN_SECRET_VALUE not in text
    for e in container(job)["env"]:
        if e["name"] in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            assert "value" not in e
    # Nothing in the spec can smuggle a literal token in: the model has no such field.
    with pytest.raises(Exception):
        parse_spec(HUB_SPEC | {"hfToken": TOKEN_SECRET_VALUE})


def test_volumes_and_mounts_for_every_claim():
    job = job_for(FILES_SPEC)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}} and mounts["tmp"]["mountPath"] == "/tmp"
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) == {"datasets", "raw", "models"}
    where = {claims[c]["name"]: c for c in claims}
    paths = {where[n]: (m["mountPath"], m["readOnly"]) for n, m in mounts.items() if n in where}
    assert paths == {"datasets": ("/data", False), "models": ("/mnt/claims/models", True),
                     "raw": ("/mnt/claims/raw", True)}
    assert json.loads(env_of(job)["DATASETPREP_VOLUMES"]["value"]) == {
        "datasets": "/data", "raw": "/mnt/claims/raw", "models": "/mnt/claims/models"}


def test_inputs_on_the_output_claim_share_its_mount():
    raw = copy.deepcopy(FILES_SPEC)
    raw["source"]["files"].pop("claimName")
    raw["tokenizer"]["path"]["claimName"] = "datasets"
    job = job_for(raw)
    claims = [v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == ["datasets"]


def check_restricted_pss(pod_spec: dict) -> list[str]:
    """The checks of the `restricted` Pod Security Standard (v1.25+) that a pod spec can fail."""
    problems = []
    psc = pod_spec.get("securityContext") or {}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for v in pod_spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {v['name']} type {kinds}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            problems.append(key)
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append("privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation != false")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append("runAsNonRoot")
        if (sc.get("runAsUser", psc.get("runAsUser"))) == 0:
            problems.append("runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            problems.append("capabilities.drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append("capabilities.add")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            problems.append("hostPort")
    return problems


@pytest.mark.parametrize("raw", [HUB_SPEC, FILES_SPEC])
def test_security_context_is_restricted_pss(raw):
    job = job_for(raw)
    pod = job["spec"]["template"]["spec"]
    assert check_restricted_pss(pod) == []
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsNonRoot"] is True
    sc = container(job)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is True  # the job reports progress on its own pod


def test_the_pss_checker_catches_problems():
    pod = copy.deepcopy(job_for(FILES_SPEC)["spec"]["template"]["spec"])
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert len(check_restricted_pss(pod)) == 2


def test_adopt_sets_the_owner_reference():
    job = job_for(HUB_SPEC)
    owner = {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep",
             "metadata": {"name": "wiki", "namespace": "ml", "uid": "uid-1", "labels": {"team": "llm"}}}
    kopf.adopt(job, owner=owner, nested="spec.template")
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetPrep", "name": "wiki", "uid": "uid-1",
                   "controller": True, "blockOwnerDeletion": True}
    assert job["metadata"]["labels"]["team"] == "llm"
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "llm"
    assert job["metadata"]["name"].startswith("wiki-")  # not renamed by adopt


# --------------------------------------------------------------------------- job results


def test_parse_success():
    r = parse_termination_message(json.dumps(SUCCESS))
    assert r.ok and r.error is None
    (out,) = r.outputs
    assert out.key == "text" and out.prefix == "llama_dataset_text_document" and out.tokens == 821228
    assert out.bin_sha256 == "b" * 64 and out.dtype == "uint16"
    assert (r.tokenizer_type, r.tokenizer_path, r.vocab_size, r.eod_id) == ("sentencepiece", "tokenizer.model",
                                                                           8000, 2)
    assert r.fingerprint == "f" * 64 and r.resolved_revision is None


def test_parse_failure_carries_the_jobs_own_message():
    r = parse_termination_message('{"ok":false,"error":"corpus.jsonl line 3: invalid JSON"}')
    assert not r.ok and r.error == "corpus.jsonl line 3: invalid JSON"


@pytest.mark.parametrize("message,expected", [
    ("Traceback (most recent call last):\nMemoryError", "Traceback (most recent call last):\nMemoryError"),
    (json.dumps(SUCCESS)[:200], json.dumps(SUCCESS)[:200]),  # cut at the 4 KiB limit: never a success
    ('{"ok": true}', "the job reported success with an unreadable result: no outputs"),
    ('{"ok": true, "outputs": [{"key": 1}]}', None),
    ("[1, 2]", "[1, 2]"),
    ('{"ok": false}', '{"ok": false}'),
])
def test_parse_garbage_is_a_failure(message, expected):
    r = parse_termination_message(message)
    assert not r.ok and r.error
    if expected is not None:
        assert r.error == expected


def test_parse_empty_uses_the_fallback_and_clips_long_text():
    assert parse_termination_message(None, fallback="log line\nlast words").error == "log line\nlast words"
    assert parse_termination_message("", fallback=None).error == "the job left no termination message and no log"
    long = "x" * 5000 + "THE END"
    r = parse_termination_message(long)
    assert len(r.error) == builders.MAX_MESSAGE and r.error.endswith("THE END")


# --------------------------------------------------------------------------- ConfigMap


def test_config_yaml_is_exactly_the_guides_shape():
    spec = parse_spec(HUB_SPEC)
    data = builders.training_config_data(spec, parse_termination_message(json.dumps(SUCCESS)))
    assert data["config.yaml"] == (
        "training:\n"
        "  data:\n"
        '    dataset_path: "/data/llama_dataset_text_document"\n'
        '    tokenizer_path: "/data/tokenizer.model"\n'
    )
    assert yaml.safe_load(data["config.yaml"]) == {"training": {"data": {
        "dataset_path": "/data/llama_dataset_text_document", "tokenizer_path": "/data/tokenizer.model"}}}
    assert data["claimName"] == "datasets" and data["mountPath"] == "/data"
    assert data["megatron-args.txt"] == ("--data-path /data/llama_dataset_text_document --tokenizer-type "
                                         "SentencePieceTokenizer --tokenizer-model /data/tokenizer.model\n")
    nemo = yaml.safe_load(data["nemo2-data.yaml"])
    assert nemo == {"paths": ["/data/llama_dataset_text_document"],
                    "tokenizer": {"library": "sentencepiece", "tokenizer_model": "/data/tokenizer.model"}}
    assert "seq_length" in data["nemo2-data.yaml"]  # as a comment: the data does not decide it
    assert builders.build_config_map("wiki-training", "ml", "uid-1", data)["data"] == data


def test_config_follows_the_mount_path_and_tokenizer_type():
    raw = copy.deepcopy(HUB_SPEC)
    raw["output"]["mountPath"] = "/mnt/ds"
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "tiktoken", "path": "meta-llama/tokenizer.model", "vocab_size": 128256,
                           "eod_id": 128001}
    data = builders.training_config_data(parse_spec(raw), parse_termination_message(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"])["training"]["data"] == {
        "dataset_path": "/mnt/ds/llama_dataset_text_document", "tokenizer_path": "/mnt/ds/meta-llama/tokenizer.model"}
    assert "--tokenizer-type TikTokenizer --tokenizer-model /mnt/ds/meta-llama/tokenizer.model" in \
        data["megatron-args.txt"]


def test_huggingface_tokenizer_points_at_its_folder():
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "huggingface", "path": "tok/tokenizer.json", "vocab_size": 8001, "eod_id": 8000}
    data = builders.training_config_data(parse_spec(HUB_SPEC), parse_termination_message(json.dumps(result)))
    assert "--tokenizer-type HuggingFaceTokenizer --tokenizer-model /data/tok" in data["megatron-args.txt"]
    assert yaml.safe_load(data["nemo2-data.yaml"])["tokenizer"] == {"library": "huggingface", "model_name": "/data/tok"}


def test_null_tokenizer_config():
    raw = copy.deepcopy(FILES_SPEC)
    raw["tokenizer"] = {"type": "null", "vocabSize": 65500}
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "null", "path": None, "vocab_size": 65500, "eod_id": 65499}
    data = builders.training_config_data(parse_spec(raw), parse_termination_message(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"]) == {"training": {"data": {
        "dataset_path": "/data/llama_dataset_text_document"}}}
    assert data["megatron-args.txt"] == ("--data-path /data/llama_dataset_text_document --tokenizer-type "
                                         "NullTokenizer --vocab-size 65500\n")
    assert yaml.safe_load(data["nemo2-data.yaml"])["tokenizer"] == {"library": "null", "vocab_size": 65500}


def test_config_yaml_quotes_awkward_paths():
    raw = copy.deepcopy(HUB_SPEC)
    raw["output"]["prefix"] = 'we: "odd" #dir/x'
    result = copy.deepcopy(SUCCESS)
    result["outputs"][0]["prefix"] = 'we: "odd" #dir/x_text_document'
    data = builders.training_config_data(parse_spec(raw), parse_termination_message(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"])["training"]["data"]["dataset_path"] == \
        '/data/we: "odd" #dir/x_text_document'


# --------------------------------------------------------------------------- status and conditions


NOW1, NOW2, NOW3 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def by_type(conditions) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def test_condition_transitions():
    running = builders.running_status({}, job="wiki-1", generation=1, now=NOW1, start_time=None)
    c = by_type(running["conditions"])
    assert running["phase"] == "Running" and running["jobName"] == "wiki-1" and running["startTime"] == NOW1
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Running")
    assert c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
    assert all(x["observedGeneration"] == 1 and x["lastTransitionTime"] == NOW1 for x in c.values())

    result = parse_termination_message(json.dumps(SUCCESS))
    done = builders.succeeded_status(running, parse_spec(HUB_SPEC), result, job="wiki-1", config_map="wiki-training",
                                     generation=1, now=NOW2, completion_time=None)
    c = by_type(done["conditions"])
    assert done["phase"] == "Succeeded" and done["completionTime"] == NOW2 and done["configMapName"] == "wiki-training"
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "Succeeded")
    assert "526 documents, 821,228 tokens" in c["Ready"]["message"]
    assert c["Reconciling"]["status"] == "False" and c["Stalled"]["status"] == "False"
    assert c["Ready"]["lastTransitionTime"] == NOW2
    assert c["Stalled"]["lastTransitionTime"] == NOW1  # unchanged status keeps its transition time
    assert done["output"]["prefix"] == "/data/llama_dataset_text_document"
    assert done["output"]["tokens"] == 821228 and done["output"]["files"][0]["binSha256"] == "b" * 64

    # A spec change: generation 2 runs, Ready goes False, the published output stays in status.
    rerun = builders.running_status(done, job="wiki-2", generation=2, now=NOW3, start_time=None)
    assert "output" not in rerun  # a merge patch: the old output is left alone
    assert "/data/llama_dataset_text_document" in rerun["message"]
    c = by_type(rerun["conditions"])
    assert c["Ready"]["status"] == "False" and c["Ready"]["observedGeneration"] == 2

    failed = builders.failed_status(rerun, reason="JobFailed", message="Job wiki-2 failed: bad line", generation=2,
                                    now=NOW3, job="wiki-2")
    c = by_type(failed["conditions"])
    assert failed["phase"] == "Failed"
    assert (c["Stalled"]["status"], c["Stalled"]["reason"], c["Stalled"]["message"]) == \
        ("True", "JobFailed", "Job wiki-2 failed: bad line")
    assert c["Ready"]["status"] == "False" and c["Reconciling"]["status"] == "False"


def test_progress_from_the_pods_reports():
    reports = [
        {"bytesDone": 10, "bytesTotal": 100, "documents": 5, "tokens": 50, "tokensPerSecond": 10, "shard": 0, "time": 1},
        {"bytesDone": 40, "bytesTotal": 100, "documents": 20, "tokens": 200, "tokensPerSecond": 20, "shard": 0,
         "time": 2},  # the newer report of the same shard wins
        {"bytesDone": 100, "bytesTotal": 100, "documents": 30, "tokens": 400, "tokensPerSecond": 0, "shard": 1,
         "time": 2},
    ]
    p = builders.aggregate_progress(reports, shards_done=1, shards_total=2, pods_active=1)
    assert p["percent"] == 70 and p["summary"] == "70%"
    assert (p["bytesDone"], p["bytesTotal"], p["documents"], p["tokens"]) == (140, 200, 50, 600)
    assert p["tokensPerSecond"] == 20 and p["shardsDone"] == 1 and p["shardsTotal"] == 2
    assert p["etaSeconds"] == int(60 / (20 * 140 / 600))
    assert builders.aggregate_progress([], shards_done=0, shards_total=1, pods_active=0)["summary"] == "starting"
    assert builders.aggregate_progress([], shards_done=0, shards_total=1, pods_active=1)["summary"] == "running"
    assert builders.aggregate_progress([], shards_done=2, shards_total=4, pods_active=1)["summary"] == "2/4 shards"
    pod = {"metadata": {"annotations": {builders.PROGRESS_ANNOTATION: json.dumps(reports[0])}}}
    assert builders.pod_progress(pod) == reports[0]
    assert builders.pod_progress({"metadata": {"annotations": {builders.PROGRESS_ANNOTATION: "{cut"}}}) is None
    assert builders.pod_progress({"metadata": {}}) is None


def test_observed_status_bumps_generation_only_when_needed():
    running = builders.running_status({}, job="j", generation=1, now=NOW1, start_time=None)
    assert builders.observed_status(running, generation=1) == {}
    bumped = builders.observed_status(running, generation=3)
    assert bumped["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in bumped["conditions"]} == {3}


def test_results_with_several_keys_sum_tokens():
    result = copy.deepcopy(SUCCESS)
    result["outputs"].append(dict(result["outputs"][0], key="code", prefix="llama_dataset_code_document", tokens=10,
                                  sequences=5))
    r = parse_termination_message(json.dumps(result))
    out = builders.output_status(parse_spec(HUB_SPEC), r)
    assert out["tokens"] == 821238 and out["sequences"] == 527 and len(out["files"]) == 2
    assert out["prefix"] == "/data/llama_dataset_text_document"  # the first key is the dataset


def test_job_result_defaults():
    assert JobResult(ok=False).outputs == ()


def test_delete_data_job_mounts_only_the_output_and_has_no_token():
    job = job_for(HUB_SPEC | {"deleteDataOnDelete": True}, delete_data=True)
    assert job["metadata"]["name"] == "wiki-delete-data"
    c = container(job)
    assert c["command"] == ["datasetprep", "job", "--delete-data"]
    assert "HF_TOKEN" not in env_of(job)
    files = job_for(FILES_SPEC | {"deleteDataOnDelete": True}, delete_data=True)
    assert [v["persistentVolumeClaim"]["claimName"] for v in files["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v] == ["datasets"]
    assert json.loads(env_of(files)["DATASETPREP_VOLUMES"]["value"]) == {"datasets": "/data"}
    with pytest.raises(ValueError):
        job_for(FILES_SPEC, delete_data=True, merge=True)
