"""A job pod, proven real and unprivileged on the test bed's node: it runs our job image in containerd
as uid 65532 with a read-only root, has no API credentials at all, its service account can do nothing
but discovery, and its live progress still reaches ``status.progress`` -- through its log, read by the
operator (docs/security.md cites these tests)."""
from __future__ import annotations

import json

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from bed import (JOB_UID, assert_golden_copies, assert_real_job_pods, copies_lasting, files_spec, kubectl_exec,
                 progress_in_log, running_operator, running_pods, token_kubeconfig, write_big_input)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: What any authenticated identity may still do when RBAC grants it nothing (the API server's default
#: roles system:basic-user, system:discovery, system:public-info-viewer): ask about itself, and read
#: the cluster's public CA bundles.
SELF_REVIEWS = {("authorization.k8s.io", "selfsubjectaccessreviews"),
                ("authorization.k8s.io", "selfsubjectrulesreviews"),
                ("authentication.k8s.io", "selfsubjectreviews")}
PUBLIC_READ = {("certificates.k8s.io", "clustertrustbundles")}
DISCOVERY_RESOURCES = SELF_REVIEWS | PUBLIC_READ
DISCOVERY_PATHS = {"/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/",
                   "/openapi", "/openapi/*", "/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                   "/openid/v1/jwks", "/openid/v1/jwks/"}

#: Run inside the job container: who it is, whether / is writable, whether any API credential is there.
INSPECT = """
import json, os
r = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
try:
    open("/probe", "w").close()
    r["write_root"] = "ok"
except OSError as e:
    r["write_root"] = e.strerror
r["token_dir"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount")
r["environ_token"] = b"TOKEN" in open("/proc/1/environ", "rb").read()
print(json.dumps(r))
"""


def test_a_job_pod_is_unprivileged_and_its_live_progress_comes_through_its_log(bed, tmp_path):
    copies = copies_lasting(tmp_path, 30)
    write_big_input(bed, copies)
    with running_operator(bed.ns):
        bed.create("live", files_spec("live/llama", paths=["big.jsonl"], workers=1))
        job = bed.wait(lambda: (bed.get("live").get("status") or {}).get("jobName"), "a Job")
        (pod,) = bed.wait(lambda: running_pods(bed, job), "the job pod to run")
        name = pod.metadata.name

        # Live progress mid-run: printed by the real job image, read by the operator from the pod's log.
        def midway():
            p = (bed.get("live").get("status") or {}).get("progress") or {}
            return p if p.get("bytesTotal") and 0 < p.get("percent", 0) < 100 else None
        progress = bed.wait(midway, "status.progress part-way", timeout=120, interval=0.5)
        assert progress["summary"] == f"{progress['percent']}%" and progress["tokensPerSecond"] > 0
        in_log = progress_in_log(bed, name)
        assert in_log["bytesTotal"] == progress["bytesTotal"] and in_log["chunksTotal"] > 1

        # Inside the container: uid 65532, a read-only root, no service-account token, no token env.
        inside = kubectl_exec(bed, name, "python", "-c", INSPECT, check=True)
        facts = json.loads(inside.stdout.strip().splitlines()[-1])
        assert (facts["uid"], facts["gid"]) == (JOB_UID, JOB_UID)
        assert facts["write_root"] == "Read-only file system"
        assert facts["token_dir"] is False and facts["environ_token"] is False
        pod = bed.core.read_namespaced_pod(name, bed.ns)
        assert not [v for v in pod.spec.volumes if v.projected or (v.secret and "token" in v.name)]

        # The pod's identity (its service account, with a token bound to this very pod) may do nothing.
        identity = token_kubeconfig(bed.cluster, bed.ns, pod.spec.service_account_name, tmp_path / "job.kubeconfig",
                                    bound_pod=pod)
        assert_nothing_but_discovery(bed, identity, pod.spec.service_account_name)
        assert_cannot_touch_other_pods(bed, identity)

        obj = bed.wait_ready("live", timeout=300)
    assert_real_job_pods(bed, job)
    assert obj["status"]["output"]["documents"] == 526 * copies
    assert_golden_copies(bed.data / "live" / "llama_text_document", copies, tmp_path)


def assert_nothing_but_discovery(bed, kubeconfig, service_account: str) -> None:
    """SelfSubjectRulesReview and ``kubectl auth can-i --list`` as that identity: discovery only."""
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    authz = kubernetes.client.AuthorizationV1Api(api)
    review = authz.create_self_subject_rules_review(kubernetes.client.V1SelfSubjectRulesReview.from_dict({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": bed.ns}}))
    granted = set()
    for rule in review.status.resource_rules:
        pairs = {(g, r) for g in rule.api_groups or [""] for r in rule.resources or ()}
        granted |= pairs
        allowed = {"create"} if pairs <= SELF_REVIEWS else {"get", "list", "watch"} if pairs <= PUBLIC_READ else set()
        assert set(rule.verbs) <= allowed, rule
    assert granted <= DISCOVERY_RESOURCES, granted - DISCOVERY_RESOURCES
    for rule in review.status.non_resource_rules:
        assert set(rule.verbs) <= {"get"} and set(rule.non_resource_urls) <= DISCOVERY_PATHS, rule
    who = kubernetes.client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert who.status.user_info.username == f"system:serviceaccount:{bed.ns}:{service_account}"
    listed = bed.cluster.run_kubectl(f"--kubeconfig={kubeconfig}", "auth", "can-i", "--list", "-n", bed.ns).stdout
    for line in listed.splitlines()[1:]:
        first, verbs = line.split()[0], line.split()[-1]
        if first.startswith("["):  # a non-resource URL
            assert first.strip("[]") in DISCOVERY_PATHS and verbs == "[get]", line
        else:
            assert first in {f"{r}.{g}" for g, r in DISCOVERY_RESOURCES}, line
    assert bed.cluster.run_kubectl(f"--kubeconfig={kubeconfig}", "auth", "can-i", "patch", "pods", "-n", bed.ns,
                                   check=False).stdout.strip() == "no"
    api.close()


def assert_cannot_touch_other_pods(bed, kubeconfig) -> None:
    """A patch of another pod's labels (stealing a Service's traffic) and image (code execution) is refused."""
    victim = "training"
    bed.core.create_namespaced_pod(bed.ns, {"metadata": {"name": victim, "labels": {"app": "train"}}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": bed.cluster.test_image, "imagePullPolicy": "Never", "args": ["sleep", "600"]}]}})
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    for patch in ({"metadata": {"labels": {"app": "stolen"}}},
                  {"spec": {"containers": [{"name": "main", "image": "evil.example/miner:1"}]}}):
        with pytest.raises(ApiException) as refused:
            core.patch_namespaced_pod(victim, bed.ns, patch)
        assert refused.value.status == 403, refused.value
    api.close()
    pod = bed.core.read_namespaced_pod(victim, bed.ns)
    assert pod.metadata.labels == {"app": "train"} and pod.spec.containers[0].image == bed.cluster.test_image
