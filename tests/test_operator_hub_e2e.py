"""End to end on the test bed's real node: a DatasetPrep whose dataset AND gated tokenizer come from a
local Hub endpoint that the pod network reaches (real huggingface_hub client code in the job image's
pod), with the token only in a Secret, mounted into the job pod as a file.

Asserts the bytes (equal to a local run of the same spec against the same Hub), the recorded
revision, the token file (mode, owner), and that the token string appears in no status, event,
ConfigMap, Job/Pod spec, pod log (``kubectl logs``), operator log, file written to the volume, nor in
the job container's environment (``/proc/1/environ``)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from bed import JOB_UID, assert_real_job_pods, kubectl_exec, running_operator, running_pods
from datasetprep.runner import run_spec
from datasetprep.spec import parse_spec
from hubserver import GOOD_TOKEN, POD_RUN_SPEC as SPEC, FakeHub, HubData, point_clients_at

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Run inside the job container while it works: the token file's facts and whether PID 1's
#: environment holds the token -- printed as a hash and booleans, never the token itself.
INSPECT = """
import hashlib, json, os, sys
path = os.environ["HF_TOKEN_FILE"]
st = os.stat(path)
token = open(path, "rb").read().strip()
env = open("/proc/1/environ", "rb").read()
print(json.dumps({"mode": oct(st.st_mode & 0o777), "uid": st.st_uid, "gid": st.st_gid,
                  "sha256": hashlib.sha256(token).hexdigest(), "in_environ": token in env,
                  "names": sorted(v.split(b"=", 1)[0].decode() for v in env.split(b"\\0") if v)}))
"""


@pytest.fixture(scope="module")
def pod_hub(kube_cluster, tmp_path_factory) -> Iterator[FakeHub]:
    """The local Hub endpoint on the test bed's host address, which pods reach (no cluster DNS: an IP;
    its storage origin is a second port of that address)."""
    hub = FakeHub(HubData(tmp_path_factory.mktemp("pod-hub-data")), host=kube_cluster.host_ip).start()
    try:
        yield hub
    finally:
        hub.stop()


def test_hub_source_and_gated_tokenizer_through_the_operator(bed, pod_hub, monkeypatch, tmp_path):
    # what a local run of the same spec against the same Hub writes
    pod_hub.reset()
    point_clients_at(pod_hub, tmp_path / "hf-home", monkeypatch)
    expected = tmp_path / "expected"
    expected.mkdir()
    local = run_spec(parse_spec(SPEC), {"data": expected}, token=GOOD_TOKEN)
    pod_hub.reset()

    env = {"HF_ENDPOINT": pod_hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    monkeypatch.setenv("DATASETPREP_JOB_ENV", json.dumps(env))
    bed.core.create_namespaced_secret(bed.ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": GOOD_TOKEN}})
    gate = pod_hub.hold(r"^/datasets/acme/tiny-corpus/resolve/")  # holds the pod mid-run, for a look inside
    with running_operator(bed.ns) as operator:
        bed.create("hubprep", SPEC)
        job = bed.wait(lambda: (bed.get("hubprep").get("status") or {}).get("jobName"), "a Job")
        (pod,) = bed.wait(lambda: running_pods(bed, job), "the job pod to run")
        bed.wait(lambda: pod_hub.held, "the pod's first dataset download", timeout=180)
        inside = json.loads(kubectl_exec(bed, pod.metadata.name, "python", "-c", INSPECT,
                                         check=True).stdout.strip().splitlines()[-1])
        gate.set()
        obj = bed.wait_ready("hubprep", timeout=240)
    operator_log = operator.output

    # The token is a file of the Secret's key, readable by the job's uid, and not in its environment.
    assert inside["sha256"] == hashlib.sha256(GOOD_TOKEN.encode()).hexdigest()
    assert inside["in_environ"] is False and "HF_TOKEN" not in inside["names"]
    assert "HF_TOKEN_FILE" in inside["names"]
    assert inside["mode"] in ("0o400", "0o440") and inside["gid"] == JOB_UID, inside  # fsGroup: group-readable

    status = obj["status"]
    assert status["resolvedRevision"] == local.resolved_revision
    for ext in ("bin", "idx"):
        assert (bed.data / f"hub/tiny_text_document.{ext}").read_bytes() == \
            (expected / f"hub/tiny_text_document.{ext}").read_bytes()
    assert pod_hub.file_downloads("acme/tiny-corpus") > 0  # the pod really went to the Hub
    assert_real_job_pods(bed, job)
    # the token was sent to the Hub (the gated tokenizer needed it) ...
    assert pod_hub.count(contains="gated-llama", status=200) > 0
    assert all("authorization" not in r.headers for r in pod_hub.requests if r.path.startswith("/cdn/"))
    # ... and is nowhere else
    cm = bed.config_map(status["configMapName"])
    job_obj = bed.batch.read_namespaced_job(job, bed.ns)
    pods = bed.core.list_namespaced_pod(bed.ns).items
    container = job_obj.spec.template.spec.containers[0]
    assert not [e for e in container.env if e.name == "HF_TOKEN"]
    (secret_volume,) = [v for v in job_obj.spec.template.spec.volumes if v.secret]
    assert secret_volume.secret.secret_name == "hf-token" and secret_volume.secret.default_mode == 0o400
    api = bed.core.api_client
    texts = [json.dumps(obj), json.dumps(cm.data), json.dumps(api.sanitize_for_serialization(job_obj)),
             json.dumps([api.sanitize_for_serialization(p) for p in pods]),
             json.dumps([api.sanitize_for_serialization(e) for e in bed.events("hubprep")]), operator_log]
    for p in pods:
        for c in p.spec.containers:
            texts.append(bed.cluster.pod_log(bed.ns, p.metadata.name, c.name))
            texts.append(bed.cluster.run_kubectl("logs", "-n", bed.ns, p.metadata.name, "-c", c.name).stdout)
    assert any("result:" in t for t in texts)  # the logs were read
    for f in bed.data.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt", ".yaml", ".log", ""):
            texts.append(f.read_text(errors="replace"))
    leaks = [t[:200] for t in texts if GOOD_TOKEN in t]
    assert not leaks, leaks
