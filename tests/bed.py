"""Helpers of the tests that run the real operator against the API server test bed (``*_e2e.py``):
one test's namespace and volume (:class:`Bed`), the operator running for a block, the CRD installed.
The fixtures (``crd``, ``operator_env``, ``bed``) are in conftest.py."""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes.client.exceptions import ApiException

from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.spec import GROUP, PLURAL, VERSION
from datasetprep_operator.naming import LABEL_OWNER_UID
from datasetprep_operator.podprogress import latest_record
from paths import CORPUS_A, GOLDEN, REPO, SP_MODEL


CRD_FILE = REPO / "crds" / "datasetprep.io_datasetpreps.yaml"
BLEND_CRD_FILE = REPO / "crds" / "datasetprep.io_datasetblends.yaml"
GOLDEN_PREFIX = GOLDEN / "a_spbpe_eod_text_document"
GOLDEN_META = json.loads(GOLDEN_PREFIX.with_suffix(".json").read_text())
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
#: The job pods' uid (jobimage/Dockerfile's USER, the operator's runAsUser).
JOB_UID = 65532


def chart_images() -> dict[str, str]:
    """The image tags the chart deploys by default -- what tests/cluster/images builds and imports:
    ``{"operator": repo:appVersion, "job": repo:appVersion}``."""
    chart = yaml.safe_load((REPO / "charts" / "datasetprep-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "datasetprep-operator" / "values.yaml").read_text())
    app = chart["appVersion"]
    return {"operator": f"{values['image']['repository']}:{values['image']['tag'] or app}",
            "job": f"{values['jobImage']['repository']}:{values['jobImage']['tag'] or app}"}


def imported_image(cluster, which: str) -> tuple[str, str]:
    """``(tag, image id)`` of one of our images in the node's containerd; fails the test if it is not there."""
    tag = chart_images()[which]
    if tag not in cluster.images:
        pytest.fail(f"{tag} was not imported into the node (tests/cluster/images or DATASETPREP_TESTBED_IMAGES); "
                    f"imported: {sorted(cluster.images)}", pytrace=False)
    return tag, cluster.images[tag]


HANDLERS = "datasetprep_operator.handlers"


def wait_for(fn: Callable[[], Any], what: str, timeout: float = 120.0, interval: float = 0.2,
             detail: Callable[[], str] = lambda: "") -> Any:
    """``fn()``'s first truthy value, polled every ``interval`` s; a TimeoutError (with ``detail()``)
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}".rstrip())
        time.sleep(interval)


def own_for_job_pods(root: Path) -> None:
    """The job pods run as :data:`JOB_UID` and a hostPath volume ignores fsGroup: give them the folder and
    everything in it (the ``bed`` fixture's claim folder is theirs already; this is for what a test
    wrote into it as root)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, JOB_UID, JOB_UID)


@contextlib.contextmanager
def running_operator(namespace: str, *peering: str) -> Iterator[KopfRunner]:
    """The operator, serving one namespace, for the duration of the block (standalone unless
    ``peering`` args are given)."""
    args = ["run", *(peering or ["--standalone"]), "--namespace", namespace, "-m", HANDLERS]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.output


class Bed:
    """One test's namespace, its volume and the API calls the assertions need."""

    def __init__(self, cluster, namespace: str, data: Path) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.data = data
        api = cluster.api_client()
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.core = kubernetes.client.CoreV1Api(api)

    # -- the DatasetPrep
    def create(self, name: str, spec: dict) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetPrep",
                "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    # -- children
    def jobs(self, owner_uid: str) -> list:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"{LABEL_OWNER_UID}={owner_uid}").items

    def job(self, name: str):
        return self._read_or_none(self.batch.read_namespaced_job, name)

    def config_map(self, name: str):
        return self._read_or_none(self.core.read_namespaced_config_map, name)

    def _read_or_none(self, read: Callable[[str, str], Any], name: str) -> Any:
        try:
            return read(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, name: str) -> list:
        return self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items

    # -- waiting
    def wait(self, fn: Callable[[], Any], what: str, timeout: float = 120.0, interval: float = 0.2) -> Any:
        return wait_for(fn, what, timeout, interval, detail=lambda: self.cluster.debug_dump(self.ns))

    def condition(self, name: str, type_: str) -> tuple[dict, dict | None]:
        """(object, its condition of that type if it is about the current generation)."""
        obj = self.get(name)
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond["type"] == type_ and cond.get("observedGeneration") == obj["metadata"]["generation"]:
                return obj, cond
        return obj, None

    def wait_ready(self, name: str, timeout: float = 180.0) -> dict:
        """Like ``kubectl wait --for=condition=Ready``, for the current generation; fails fast when Stalled."""
        def ready():
            obj, stalled = self.condition(name, "Stalled")
            if stalled and stalled["status"] == "True":
                pytest.fail(f"{name} stalled instead of becoming Ready: {stalled['message']}")
            obj, cond = self.condition(name, "Ready")
            return obj if cond and cond["status"] == "True" else None
        return self.wait(ready, f"{name} Ready", timeout)

    def wait_stalled(self, name: str, timeout: float = 180.0) -> tuple[dict, dict]:
        def stalled():
            obj, cond = self.condition(name, "Stalled")
            return (obj, cond) if cond and cond["status"] == "True" else None
        return self.wait(stalled, f"{name} Stalled", timeout)


def golden_claim(cluster, namespace: str, folder: Path, name: str = "data", owner: tuple[int, int] = (JOB_UID, JOB_UID),
                 mode: int = 0o755) -> Path:
    """A hostPath claim ``name`` on ``folder`` (made here, ``owner`` and ``mode`` applied: by default the
    job pods' uid, as hostPath ignores fsGroup) holding the golden corpus and tokenizer model."""
    import shutil

    folder.mkdir()
    shutil.copy(CORPUS_A, folder / "corpus_a.jsonl")
    shutil.copy(SP_MODEL, folder / "tokenizer.model")
    cluster.create_hostpath_pvc(namespace, folder, name=name, access_modes=("ReadWriteMany",), owner=owner, mode=mode)
    return folder


def files_spec(prefix: str, paths: list[str] | None = None, **extra) -> dict:
    return {
        "source": {"files": {"paths": paths or ["corpus_a.jsonl"]}},
        "tokenizer": {"type": "sentencepiece", "path": {"path": "tokenizer.model"}},
        "output": {"claimName": "data", "prefix": prefix},
        "appendEod": True,
        **extra,
    }


def assert_golden(prefix: Path) -> None:
    for ext in (".bin", ".idx"):
        got, want = Path(f"{prefix}{ext}"), Path(f"{GOLDEN_PREFIX}{ext}")
        assert got.exists(), f"{got} was not written"
        assert got.read_bytes() == want.read_bytes(), f"{got} differs from Megatron-LM's {want.name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_real_job_pods(bed: Bed, job: str) -> list:
    """The Job's pods ran in containerd from our job image (not emulated); returns them."""
    _, image_id = imported_image(bed.cluster, "job")
    pods = job_pods(bed, job)
    assert pods, f"Job {job} has no pods"
    for p in pods:
        (cs,) = [c for c in p.status.container_statuses or () if c.name == "datasetprep"]
        assert cs.container_id and cs.container_id.startswith("containerd://"), cs
        assert cs.image_id and cs.image_id.endswith(image_id), (cs.image_id, image_id)
        assert p.spec.security_context.run_as_user == JOB_UID and p.spec.automount_service_account_token is False
    return pods


def running_pods(bed: Bed, job: str) -> list:
    """The Job's pods whose phase is Running."""
    return [p for p in job_pods(bed, job) if p.status.phase == "Running"]


def progress_in_log(bed: Bed, pod: str) -> dict:
    """The newest progress record a job pod printed (its log, through the kubelet), as JSON; {} if none."""
    record = latest_record(bed.cluster.pod_log(bed.ns, pod))
    return json.loads(record.to_json()) if record else {}


def kubectl_exec(bed: Bed, pod: str, *command: str, check: bool = False):
    """``kubectl exec`` in the pod's job container (the bed's own kubectl)."""
    return bed.cluster.run_kubectl("exec", "-n", bed.ns, pod, "-c", "datasetprep", "--", *command, check=check,
                                   timeout=60)


def token_kubeconfig(cluster, namespace: str, service_account: str, path: Path, *,
                     bound_pod: Any = None) -> Path:
    """A kubeconfig that authenticates only as the ServiceAccount, with a TokenRequest token (as a pod
    gets; bound to ``bound_pod`` (a V1Pod) if given, so the token names that pod, as a pod's own does)."""
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    spec: dict[str, Any] = {"audiences": [], "expirationSeconds": 3600}
    if bound_pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": bound_pod.metadata.name,
                                  "uid": bound_pod.metadata.uid}
    req = kubernetes.client.AuthenticationV1TokenRequest.from_dict({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    token = core.create_namespaced_service_account_token(service_account, namespace, req).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx_name = admin.get("current-context") or admin["contexts"][0]["name"]
    ctx = next(c for c in admin["contexts"] if c["name"] == ctx_name)["context"]
    server = dict(next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])["cluster"])
    if "certificate-authority" in server:  # make the CA path absolute (the kubeconfig moves)
        ca = Path(server["certificate-authority"])
        server["certificate-authority"] = str(ca if ca.is_absolute() else Path(cluster.kubeconfig).parent / ca)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "bed", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": "sa", "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


def install_kopf_peering(bed: Bed, name: str) -> None:
    """kopf's namespaced peering CRD and one peering object (what the Helm chart installs)."""
    ext = kubernetes.client.ApiextensionsV1Api(bed.cluster.api_client())
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "kopfpeerings.kopf.dev"},
           "spec": {"scope": "Namespaced", "group": "kopf.dev",
                    "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"status": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established():
        conds = ext.read_custom_resource_definition("kopfpeerings.kopf.dev").status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)
    bed.wait(established, "the peering CRD")
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": bed.ns}}
    bed.wait(lambda: _create_quietly(bed, peering), "the peering object", timeout=30)


def _create_quietly(bed: Bed, body: dict) -> bool:
    try:
        bed.custom.create_namespaced_custom_object("kopf.dev", "v1", bed.ns, "kopfpeerings", body)
    except ApiException as exc:
        if exc.status == 404:  # the new CRD is not served yet
            return False
        if exc.status != 409:
            raise
    return True


def terminated(pod) -> dict:
    """The job container's terminated state of a pod (V1Pod), as a dict."""
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            return cs.state.terminated.to_dict()
    return {}


def job_pods(bed: Bed, job: str) -> list:
    return bed.core.list_namespaced_pod(bed.ns, label_selector=f"batch.kubernetes.io/job-name={job}").items


def copies_lasting(tmp: Path, seconds: float, minimum: int = 6) -> int:
    """How many copies of corpus_a keep one tokenizer worker busy for ``seconds`` at least (measured
    here, now, with one in-process worker: a pod is no faster)."""
    from datasetprep import pipeline, tokenization

    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    t0 = time.monotonic()
    pipeline.run(pipeline.Request(inputs=[CORPUS_A], output_prefix=str(tmp / "calibrate"), tokenizer=cfg,
                                  append_eod=True, workers=1))
    return max(minimum, math.ceil(seconds / (time.monotonic() - t0)))


def write_big_input(bed: Bed, copies: int, name: str = "big.jsonl") -> Path:
    """``copies`` times corpus_a as one JSON Lines file on the volume."""
    text = CORPUS_A.read_text(encoding="utf-8")
    path = bed.data / name
    path.write_text("\n".join([text] * copies) + "\n", encoding="utf-8")
    return path


def assert_golden_copies(prefix: Path, copies: int, scratch: Path) -> None:
    """``prefix`` holds Megatron-LM's output for corpus_a ``copies`` times over (its merge tool's concatenation)."""
    from datasetprep.merge import merge as merge_datasets

    reference = scratch / "reference"
    merge_datasets([str(GOLDEN_PREFIX)] * copies, str(reference), True)
    assert same_bytes(prefix, reference), f"{prefix} differs from {copies} x Megatron-LM's output"


def same_bytes(prefix: Path, reference: Path) -> bool:
    return all(Path(f"{prefix}{ext}").read_bytes() == Path(f"{reference}{ext}").read_bytes()
               for ext in (".bin", ".idx"))


def install_crd(api_client, timeout: float = 60.0) -> dict:
    """Create or update both CRDs from crds/ (DatasetPrep and DatasetBlend: the operator serves both) and wait
    until each is Established and served; returns the DatasetPrep one."""
    install_one_crd(api_client, BLEND_CRD_FILE, BLEND_PLURAL, timeout)
    return install_one_crd(api_client, CRD_FILE, PLURAL, timeout)


def install_one_crd(api_client, path: Path, plural: str, timeout: float = 60.0) -> dict:
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    ext = kubernetes.client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while True:
        crd = ext.read_custom_resource_definition(name)
        conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
        if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established: {conds}")
        time.sleep(0.2)
    # Established can precede discovery by a moment.
    custom = kubernetes.client.CustomObjectsApi(api_client)
    while True:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
            return body
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def raw_get(api, path: str, accept: str = "application/json") -> dict:
    """GET any API path as JSON (what kubectl does for tables and for explain)."""
    method, url, headers, body, post = api.param_serialize("GET", path, header_params={"Accept": accept},
                                                           auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post)
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


def server_verdict(api, namespace: str, spec: dict, kind: str = "DatasetPrep", plural: str = PLURAL) -> str | None:
    """Create a custom resource with a server-side dry run (validation, defaulting, CEL; nothing stored): the
    API server's message when it refuses it, else None."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    custom = kubernetes.client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "probe", "namespace": namespace},
            "spec": spec}
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body, dry_run="All",
                                               field_validation="Strict")
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return json.loads(exc.body).get("message", exc.body)
    return None
