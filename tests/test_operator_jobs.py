"""The operator's Job manifests and names, pure (no API): from a spec and its run plan to the exact
manifest, the restricted Pod Security Standard, the content hashes that name runs."""
from __future__ import annotations

import copy
import json
import re
from fractions import Fraction

import kopf
import pytest
from pydantic import ValidationError

from datasetprep.contract import RunPlan
from datasetprep.hashes import reuse_key, spec_hash
from datasetprep.spec import parse_spec
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.jobs import build_job
from datasetprep_operator.resources import ResourceDefaults, job_resources, parse_quantity
from datasetprep_operator.naming import LABEL_COMPONENT, LABEL_OWNER_UID, LABEL_SPEC_HASH, config_map_name, job_name, merge_job_name
from specs import FILES_SPEC, HUB_SPEC, SPEC, sharded


CONFIG = OperatorConfig(job_image="registry.example/datasetprep:1.2.3", job_service_account="datasetprep-job",
                        image_pull_policy="Always")


TOKEN_SECRET_VALUE = "hf_THIS_MUST_NEVER_APPEAR"


def job_for(raw: dict, step: str = "first") -> dict:
    """The Job of a step: the run's first one (``first``), the ``merge``, or the clean-up (``delete``)."""
    spec = parse_spec(raw)
    plan = {"first": RunPlan.stages(spec)[0], "merge": RunPlan.stages(spec)[-1], "delete": RunPlan.cleanup()}[step]
    return build_job(spec, plan, parent="wiki", namespace="ml", parent_uid="uid-1", config=CONFIG)


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job)["env"]}


# --------------------------------------------------------------------------- names and hashes

def test_job_name_is_deterministic_and_changes_with_the_spec():
    a = spec_hash(parse_spec(HUB_SPEC))
    assert a == spec_hash(parse_spec(copy.deepcopy(HUB_SPEC)))
    assert re.fullmatch(r"[0-9a-f]{8}", a), a
    changed = copy.deepcopy(HUB_SPEC) | {"appendEod": False}
    assert spec_hash(parse_spec(changed)) != a
    assert job_for(HUB_SPEC)["metadata"]["name"] == f"wiki-{a}"


def test_spelled_out_defaults_and_delete_flag_do_not_change_the_hash():
    base = spec_hash(parse_spec(HUB_SPEC))
    # What the API server stores after CRD defaulting.
    defaulted = copy.deepcopy(HUB_SPEC) | {"appendEod": True, "workers": 2, "shards": 1, "backoffLimit": 2,
                                           "trainingConfig": {}, "deleteDataOnDelete": True}
    defaulted["source"]["textKeys"] = ["text"]
    defaulted["source"]["hub"] |= {"revision": "main", "streaming": False}
    assert spec_hash(parse_spec(defaulted)) == base


@pytest.mark.parametrize("parent", ["x" * 63, "a" * 253, "ab-" * 30, "a.b" * 40])
def test_job_name_fits_63_characters(parent):
    name = job_name(parent, "0123abcd")
    assert len(name) <= 63
    assert name.endswith("-0123abcd")
    assert not name[: -len("-0123abcd")].endswith(("-", "."))


def test_config_map_name_default_and_override():
    assert config_map_name("wiki", parse_spec(HUB_SPEC)) == "wiki-training"
    spec = parse_spec(HUB_SPEC | {"trainingConfig": {"configMapName": "llama-data"}})
    assert config_map_name("wiki", spec) == "llama-data"


@pytest.mark.parametrize("parent", ["x" * 63, "a" * 50 + "-" + "b" * 12, "wiki"])
def test_merge_job_name_fits_and_keeps_the_digest(parent):
    name = merge_job_name(parent, "0123abcd")
    assert len(name) <= 63 and name.endswith("-0123abcd-merge") and not name.startswith("-")


def test_reuse_key_is_what_the_bytes_depend_on():
    base = parse_spec(SPEC)
    key = reuse_key(base)
    same = [
        {**SPEC, "output": {"claimName": "data", "prefix": "elsewhere", "mountPath": "/mnt"}},
        {**SPEC, "shards": 4, "workers": 8, "backoffLimit": 0, "reuse": "Never", "image": "x:1"},
        {**SPEC, "source": {"files": {"claimName": "data", "paths": ["corpus.jsonl"]}, "textKeys": ["text"]}},
        {**SPEC, "tokenizer": {**SPEC["tokenizer"], "path": {"claimName": "data", "path": "tokenizer.model"}}},
    ]
    for raw in same:
        assert reuse_key(parse_spec(raw)) == key, raw
    different = [
        {**SPEC, "appendEod": False},
        {**SPEC, "source": {"files": {"paths": ["other.jsonl"]}}},
        {**SPEC, "source": {"files": {"claimName": "raw", "paths": ["corpus.jsonl"]}}},
        {**SPEC, "source": {"files": {"paths": ["corpus.jsonl"]}, "textKeys": ["content"]}},
        {**SPEC, "tokenizer": {**SPEC["tokenizer"], "eodId": 3}},
        {**SPEC, "output": {"claimName": "other", "prefix": "llama_dataset"}},
    ]
    keys = {reuse_key(parse_spec(raw)) for raw in different}
    assert key not in keys and len(keys) == len(different)
    hub = {**SPEC, "source": {"hub": {"repo": "wikitext", "subset": "a"}}}
    assert reuse_key(parse_spec(hub)) != reuse_key(
        parse_spec({**hub, "source": {"hub": {"repo": "wikitext", "subset": "a", "revision": "v2"}}}))


def test_kept_shards_are_part_of_the_reuse_key():
    merged = reuse_key(parse_spec(sharded()))
    assert reuse_key(parse_spec(SPEC)) == merged  # shards alone change nothing
    kept3 = reuse_key(parse_spec(sharded(keepShards=True)))
    kept4 = reuse_key(parse_spec({**sharded(keepShards=True), "shards": 4}))
    assert len({merged, kept3, kept4}) == 3


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
    # the spec's values, the operator's defaults for the rest
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "4Gi", "ephemeral-storage": "1Gi"},
                              "limits": {"memory": "8Gi", "ephemeral-storage": "4Gi"}}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    labels = job["metadata"]["labels"]
    assert labels[LABEL_OWNER_UID] == "uid-1"
    assert labels[LABEL_SPEC_HASH] == spec_hash(parse_spec(HUB_SPEC))
    assert spec["template"]["metadata"]["labels"] == labels


def test_image_override_and_default_resources():
    job = job_for(FILES_SPEC | {"image": "mine:dev"})
    assert container(job)["image"] == "mine:dev"
    assert container(job)["resources"] == {
        "requests": {"cpu": "500m", "ephemeral-storage": "1Gi", "memory": "1Gi"},
        "limits": {"ephemeral-storage": "4Gi", "memory": "4Gi"}}
    bare = build_job(parse_spec(FILES_SPEC), RunPlan.stages(parse_spec(FILES_SPEC))[0], parent="wiki", namespace="ml",
                     parent_uid="uid-1", config=OperatorConfig(job_resources=ResourceDefaults()))
    assert "resources" not in container(bare)
    assert {"name": "tmp", "emptyDir": {}} in bare["spec"]["template"]["spec"]["volumes"]


@pytest.mark.parametrize("own, want", [
    # a request above the default limit raises the limit to it
    ({"requests": {"memory": "16Gi"}}, ({"memory": "16Gi"}, {"memory": "16Gi"})),
    # a limit below the default request lowers the request to it
    ({"limits": {"memory": "512Mi"}}, ({"memory": "512Mi"}, {"memory": "512Mi"})),
    # both, the wrong way round: the request is lowered to the limit (the API server would refuse the pod)
    ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1500Mi"}}, ({"memory": "1500Mi"}, {"memory": "1500Mi"})),
    # consistent values stay as they are
    ({"requests": {"memory": "1.5Gi"}, "limits": {"memory": "3Gi"}}, ({"memory": "1.5Gi"}, {"memory": "3Gi"})),
])
def test_spec_resources_override_the_defaults_and_never_make_a_pod_the_api_server_refuses(own, want):
    defaults = ResourceDefaults(requests=(("memory", "1Gi"),), limits=(("memory", "4Gi"),), tmp_size_limit="1Gi")
    resources, tmp = job_resources(defaults, parse_spec(FILES_SPEC | {"resources": own}).resources)
    assert (resources["requests"], resources["limits"]) == want and tmp == "1Gi"
    resources, tmp = job_resources(defaults, parse_spec(FILES_SPEC | {"resources": {"tmpSizeLimit": "10Gi"}}).resources)
    assert tmp == "10Gi" and resources == {"requests": {"memory": "1Gi"}, "limits": {"memory": "4Gi"}}


@pytest.mark.parametrize("text, value", [("500m", Fraction(1, 2)), ("2", 2), ("4Gi", 4 * 2**30), ("1.5Gi", 3 * 2**29),
                                         ("1e3", 1000), ("1E", 10**18), ("100M", 10**8), (".5", Fraction(1, 2))])
def test_quantities(text, value):
    assert parse_quantity(text) == value


def test_bad_quantities_are_refused_by_the_spec_and_the_operator_settings():
    with pytest.raises(ValidationError, match="resources.limits.memory"):
        parse_spec(FILES_SPEC | {"resources": {"limits": {"memory": "4 GB"}}})
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")
    with pytest.raises(ValueError, match="DATASETPREP_JOB_RESOURCES: limits.memory"):
        OperatorConfig.from_env({"DATASETPREP_JOB_RESOURCES": '{"limits": {"memory": "4 GB"}}'})
    with pytest.raises(ValueError, match="requests.memory .* above limits.memory"):
        OperatorConfig.from_env({"DATASETPREP_JOB_RESOURCES": '{"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}'})
    with pytest.raises(ValueError, match="DATASETPREP_JOB_TMP_SIZE_LIMIT"):
        OperatorConfig.from_env({"DATASETPREP_JOB_TMP_SIZE_LIMIT": "big"})
    cfg = OperatorConfig.from_env({"DATASETPREP_JOB_RESOURCES": '{"requests": {"cpu": "2"}, "limits": {}}',
                                   "DATASETPREP_JOB_TMP_SIZE_LIMIT": "8Gi"})
    assert cfg.job_resources == ResourceDefaults(requests=(("cpu", "2"),), tmp_size_limit="8Gi")
    assert OperatorConfig.from_env({}).job_resources == OperatorConfig().job_resources


def test_spec_security_context_sets_the_identity_and_stays_restricted():
    job = job_for(FILES_SPEC | {"securityContext": {"runAsUser": 1000, "runAsGroup": 2000,
                                                    "supplementalGroups": [4242]}})
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] | {} == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 2000,
                                          "fsGroup": 2000, "supplementalGroups": [4242],
                                          "seccompProfile": {"type": "RuntimeDefault"}}
    assert check_restricted_pss(pod) == []
    for bad in ({"runAsUser": 0}, {"runAsGroup": 0}, {"supplementalGroups": [0]}):
        with pytest.raises(ValidationError):
            parse_spec(FILES_SPEC | {"securityContext": bad})


def test_volume_init_container_is_opt_in_and_only_chowns_the_output_folders():
    assert "initContainers" not in job_for(FILES_SPEC)["spec"]["template"]["spec"]
    config = OperatorConfig(job_image="registry.example/datasetprep:1.2.3", job_volume_init=True)
    spec = parse_spec(HUB_SPEC | {"image": "someone-elses:image", "securityContext": {"runAsUser": 1000},
                                  "output": {"claimName": "datasets", "prefix": "llama/wiki", "mountPath": "/data"}})
    job = build_job(spec, RunPlan.stages(spec)[0], parent="wiki", namespace="ml", parent_uid="uid-1", config=config)
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example/datasetprep:1.2.3"  # never spec.image: it runs as root
    assert init["command"][:2] == ["/bin/sh", "-c"] and init["command"][-2:] == ["/data/llama", "/data/.datasetprep"]
    assert {"name": "OWNER", "value": "1000:65532"} in init["env"]
    assert init["volumeMounts"] == [{"name": "output", "mountPath": "/data"}]
    sc = init["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert check_restricted_pss(pod) == ["runAsUser 0", "capabilities.add"]  # baseline, not restricted
    assert container(job)["securityContext"]["runAsNonRoot"] is True  # the job itself stays non-root
    delete = build_job(spec, RunPlan.cleanup(), parent="wiki", namespace="ml", parent_uid="uid-1", config=config)
    assert delete["spec"]["template"]["spec"]["initContainers"][0]["command"][-1] == "/data/llama"


def test_indexed_job_is_ready_for_sharding():
    job = job_for(FILES_SPEC | {"shards": 8, "parallelism": 3, "backoffLimit": 4})
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 8 and spec["parallelism"] == 3 and spec["backoffLimitPerIndex"] == 4
    assert "backoffLimit" not in spec
    assert job_for(FILES_SPEC | {"shards": 4})["spec"]["parallelism"] == 4


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
    assert env["HF_HOME"]["value"] == "/tmp/hf"
    assert env["HF_TOKEN_FILE"] == {"name": "HF_TOKEN_FILE", "value": "/var/run/secrets/datasetprep/hf-token/token"}
    assert "HF_TOKEN" not in env and not any(n.startswith("DATASETPREP_POD") for n in env)


def test_hf_token_is_a_file_from_the_secret_only_with_a_secret_ref():
    assert "HF_TOKEN_FILE" not in env_of(job_for(FILES_SPEC))
    assert not [v for v in job_for(FILES_SPEC)["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    custom = job_for(HUB_SPEC | {"hfTokenSecretRef": {"name": "gated", "key": "hf"}})
    volumes = {v["name"]: v for v in custom["spec"]["template"]["spec"]["volumes"]}
    assert volumes["hf-token"]["secret"] == {"secretName": "gated", "items": [{"key": "hf", "path": "token"}],
                                             "defaultMode": 0o400}
    mounts = {m["name"]: m for m in container(custom)["volumeMounts"]}
    assert mounts["hf-token"] == {"name": "hf-token", "mountPath": "/var/run/secrets/datasetprep/hf-token",
                                  "readOnly": True}
    assert env_of(custom)["HF_TOKEN_FILE"]["value"] == "/var/run/secrets/datasetprep/hf-token/token"
    assert "HF_TOKEN" not in env_of(custom)


def test_no_literal_token_anywhere(monkeypatch):
    """The Job carries a reference to the Secret, never its value -- even when the value is around."""
    # The operator's own environment holds a token (e.g. set for something else): it stays out.
    monkeypatch.setenv("HF_TOKEN", TOKEN_SECRET_VALUE)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN_SECRET_VALUE)
    spec = parse_spec(HUB_SPEC | {"deleteDataOnDelete": True, "shards": 2})
    for plan in (*RunPlan.stages(spec), RunPlan.cleanup()):
        job = build_job(spec, plan, parent="wiki", namespace="ml", parent_uid="uid-1", config=CONFIG)
        assert TOKEN_SECRET_VALUE not in json.dumps(job), plan
        tokens = [e for e in container(job)["env"] if "TOKEN" in e["name"]]
        assert [e["name"] for e in tokens] == ([] if plan.step == "delete" else ["HF_TOKEN_FILE"]), plan
        secrets = [v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        assert secrets == ([] if plan.step == "delete" else ["hf-token"]), plan
    # Nothing in the spec can smuggle a literal token in: the model has no such field ...
    with pytest.raises(ValidationError, match="hfToken"):
        parse_spec(HUB_SPEC | {"hfToken": TOKEN_SECRET_VALUE})
    # ... and the operator's DATASETPREP_JOB_ENV cannot set the token variable either.
    with pytest.raises(ValueError, match="HF_TOKEN is set by the operator"):
        OperatorConfig(job_env=(("HF_TOKEN", TOKEN_SECRET_VALUE),))
    with pytest.raises(ValueError, match="HF_TOKEN_FILE is set by the operator"):
        OperatorConfig(job_env=(("HF_TOKEN_FILE", "/etc/passwd"),))


def test_volumes_and_mounts_for_every_claim():
    job = job_for(FILES_SPEC)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} and mounts["tmp"]["mountPath"] == "/tmp"
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
    assert pod["automountServiceAccountToken"] is False  # no API credentials: progress goes to the log


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


def test_delete_data_job_mounts_only_the_output_and_has_no_token():
    job = job_for(HUB_SPEC | {"deleteDataOnDelete": True}, "delete")
    assert job["metadata"]["name"] == "wiki-delete-data"
    c = container(job)
    assert c["command"] == ["datasetprep", "job"]
    assert json.loads(env_of(job)["DATASETPREP_RUN"]["value"]) == {"step": "delete", "shards": 1, "keepShards": False}
    assert "HF_TOKEN" not in env_of(job) and "HF_TOKEN_FILE" not in env_of(job)
    files = job_for(FILES_SPEC | {"deleteDataOnDelete": True}, "delete")
    assert [v["persistentVolumeClaim"]["claimName"] for v in files["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v] == ["datasets"]
    assert json.loads(env_of(files)["DATASETPREP_VOLUMES"]["value"]) == {"datasets": "/data"}


def test_indexed_job_and_merge_job_manifests():
    spec = parse_spec(sharded(parallelism=2, backoffLimit=4))
    config = OperatorConfig(job_env=(("DATASETPREP_CHUNK_MIB", "0.5"), ("HF_HOME", "/cache")))
    first, second = RunPlan.stages(spec)
    shards = build_job(spec, first, parent="wiki", namespace="ml", parent_uid="u", config=config)
    merge_job = build_job(spec, second, parent="wiki", namespace="ml", parent_uid="u", config=config)
    assert shards["spec"]["completionMode"] == "Indexed" and shards["spec"]["completions"] == 3
    assert shards["spec"]["parallelism"] == 2 and shards["spec"]["backoffLimitPerIndex"] == 4
    assert shards["spec"]["maxFailedIndexes"] == 0
    assert shards["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert merge_job["metadata"]["name"] == shards["metadata"]["name"] + "-merge"
    assert merge_job["spec"]["completions"] == 1 and "completionMode" not in merge_job["spec"]
    assert merge_job["spec"]["backoffLimit"] == 4
    (c1,), (c2,) = shards["spec"]["template"]["spec"]["containers"], merge_job["spec"]["template"]["spec"]["containers"]
    assert c1["command"] == c2["command"] == ["datasetprep", "job"]
    env = {e["name"]: e for e in c1["env"]}
    plans = [json.loads({e["name"]: e for e in c["env"]}["DATASETPREP_RUN"]["value"]) for c in (c1, c2)]
    assert plans == [{"step": "shard", "shards": 3, "keepShards": False}, {"step": "merge", "shards": 3, "keepShards": False}]
    assert [e for e in c1["env"] if e["name"] != "DATASETPREP_RUN"] == [e for e in c2["env"] if e["name"] != "DATASETPREP_RUN"]
    assert c1["volumeMounts"] == c2["volumeMounts"]
    assert env["DATASETPREP_CHUNK_MIB"] == {"name": "DATASETPREP_CHUNK_MIB", "value": "0.5"}
    assert env["HF_HOME"]["value"] == "/cache" and [e["name"] for e in c1["env"]].count("HF_HOME") == 1
    assert merge_job["metadata"]["labels"][LABEL_COMPONENT] == "merge"


def test_job_env_setting():
    env = {"DATASETPREP_JOB_ENV": '{"HTTPS_PROXY": "http://p:3128", "DATASETPREP_CHUNK_MIB": 0.1}'}
    assert OperatorConfig.from_env(env).job_env == (("DATASETPREP_CHUNK_MIB", "0.1"), ("HTTPS_PROXY", "http://p:3128"))
    assert OperatorConfig.from_env({}).job_env == ()
    for bad, needle in [("[]", "JSON object"), ("{", "JSON object"), ('{"DATASETPREP_SPEC": "x"}', "cannot be"),
                        ('{"A": {"b": 1}}', "must be a string"), ('{"1 A": "x"}', "not a valid")]:
        with pytest.raises(ValueError, match=needle):
            OperatorConfig.from_env({"DATASETPREP_JOB_ENV": bad})


def test_a_permanent_error_fails_the_job_at_once_and_evictions_do_not_count():
    from datasetprep.contract import EXIT_PERMANENT

    for spec in (HUB_SPEC, FILES_SPEC | {"shards": 4}):
        policy = job_for(spec)["spec"]["podFailurePolicy"]["rules"]
        assert policy[0] == {"action": "FailJob", "onExitCodes": {
            "containerName": "datasetprep", "operator": "In", "values": [EXIT_PERMANENT]}}
        assert policy[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert job_for(HUB_SPEC)["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # what the policy needs


def test_a_retry_value_names_a_new_run_and_no_value_keeps_the_old_name():
    spec = parse_spec(HUB_SPEC)
    plain = spec_hash(spec)
    assert spec_hash(spec, None) == plain  # resources without the annotation keep their Job
    assert len({plain, spec_hash(spec, "1"), spec_hash(spec, "2")}) == 3
    assert spec_hash(spec, "1") == spec_hash(parse_spec(copy.deepcopy(HUB_SPEC)), "1")
    job = build_job(spec, RunPlan.stages(spec)[0], parent="wiki", namespace="ml", parent_uid="uid-1",
                    config=CONFIG, retry="1")
    assert job["metadata"]["name"] == job_name("wiki", spec_hash(spec, "1"))
    assert job["metadata"]["labels"][LABEL_SPEC_HASH] == spec_hash(spec, "1")
