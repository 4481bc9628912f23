"""The few Kubernetes API calls the reconciler makes, behind one small class.

Objects go in and come out as plain JSON dicts (camelCase, exactly as the API server speaks), so
the reconciler and the pure modules never see the client library's model classes. API errors are
sorted here into "try again" (``kopf.TemporaryError``) and "no use retrying" (``kopf.PermanentError``)
by :func:`translate_api_errors`; everything else propagates.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.spec import GROUP, PLURAL, VERSION

# HTTP statuses worth retrying: conflicts, throttling, server trouble, and RBAC that an admin may
# still be rolling out (403) -- the latter slowly.
_RETRY_FAST = {409, 429, 500, 502, 503, 504}
_RETRY_SLOW = {401, 403}
#: The ``source``/``reportingComponent`` of the events the operator posts.
EVENT_COMPONENT = "datasetprep-operator"
#: Characters of an event message kept (the API's events.k8s.io note limit).
EVENT_MESSAGE_MAX = 1024


def api_client_from_environment(pool_size: int | None = None) -> kubernetes.client.ApiClient:
    """An API client for this process: in-cluster credentials if present, else the kubeconfig.

    Args:
        pool_size: connections kept to the API server (one per worker thread, so none waits for another).
    """
    configuration = kubernetes.client.Configuration()
    if pool_size:
        configuration.connection_pool_maxsize = pool_size
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # $KUBECONFIG read now: the client library reads it once, when it is first imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


class Stale(Exception):
    """The object changed since the body a decision was made on (HTTP 409 on a conditional write, a 404:
    it is gone, or a newer generation found before starting a run): decide again on a fresh read."""


@contextlib.contextmanager
def translate_api_errors(what: str) -> Iterator[None]:
    """Turn API and connection errors into kopf's retry/give-up signals, naming the action."""
    try:
        yield
    except ApiException as exc:
        detail = api_reason(exc)
        if exc.status in _RETRY_FAST or exc.status is None:
            raise kopf.TemporaryError(f"{what}: {detail}", delay=5) from exc
        if exc.status in _RETRY_SLOW:
            raise kopf.TemporaryError(f"{what}: {detail} (check the operator's RBAC)", delay=60) from exc
        raise kopf.PermanentError(f"{what}: {detail}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"{what}: {exc}", delay=5) from exc


def api_reason(exc: ApiException) -> str:
    """One line for an API error: status, reason and the server's message (no headers)."""
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


class Kube:
    """Jobs, Pods, ConfigMaps, DatasetPreps and DatasetBlends in one namespace at a time, as JSON dicts."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.batch = kubernetes.client.BatchV1Api(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    def _get(self, read: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """``read(*args)`` as JSON, or None when the object does not exist (404)."""
        try:
            return self._json(read(*args, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def _delete(delete: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``delete(*args)``; an object already gone is fine."""
        try:
            delete(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_datasetprep(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A DatasetPrep, or None if there is none."""
        return self._get(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)

    def _patch(self, plural: str, namespace: str, name: str, resource_version: str, body: dict[str, Any], *,
               status: bool) -> dict[str, Any]:
        """Merge-patch one of our objects (its status subresource if ``status``), *only if* it is still at
        ``resource_version``: the ``resourceVersion`` in a merge patch is a precondition, the API server
        answers 409 (ApiException) when the object changed since it was read, so a decision made on a stale
        read is never written. Returns the object as stored after the write."""
        custom = self.custom
        patch = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        body = {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": resource_version}}
        return self._json(patch(GROUP, VERSION, namespace, plural, name, body,
                                _content_type="application/merge-patch+json", _preload_content=False))

    def patch_datasetprep_status(self, namespace: str, name: str, resource_version: str,
                                 status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a DatasetPrep's status, only if it is still at ``resource_version`` (else 409)."""
        return self._patch(PLURAL, namespace, name, resource_version, {"status": dict(status)}, status=True)

    def patch_datasetprep_finalizers(self, namespace: str, name: str, resource_version: str,
                                     finalizers: list[str]) -> dict[str, Any]:
        """Set a DatasetPrep's finalizers, only if it is still at ``resource_version`` (else 409)."""
        return self._patch(PLURAL, namespace, name, resource_version, {"metadata": {"finalizers": list(finalizers)}},
                           status=False)

    def patch_datasetblend_status(self, namespace: str, name: str, resource_version: str,
                                  status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a DatasetBlend's status, only if it is still at ``resource_version`` (else 409)."""
        return self._patch(BLEND_PLURAL, namespace, name, resource_version, {"status": dict(status)}, status=True)

    def patch_datasetblend_finalizers(self, namespace: str, name: str, resource_version: str,
                                      finalizers: list[str]) -> dict[str, Any]:
        """Set a DatasetBlend's finalizers, only if it is still at ``resource_version`` (else 409)."""
        return self._patch(BLEND_PLURAL, namespace, name, resource_version,
                           {"metadata": {"finalizers": list(finalizers)}}, status=False)

    def list_datasetpreps(self, namespace: str) -> list[dict[str, Any]]:
        """Every DatasetPrep of the namespace."""
        resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _preload_content=False)
        return self._json(resp).get("items", [])

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job, or None if there is none."""
        return self._get(self.batch.read_namespaced_job, name, namespace)

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Job; raises ApiException (409 when one of that name exists)."""
        return self._json(self.batch.create_namespaced_job(namespace, dict(body), _preload_content=False))

    def list_jobs(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Jobs whose labels match every item of ``selector``."""
        resp = self.batch.list_namespaced_job(namespace, label_selector=_selector(selector), _preload_content=False)
        return self._json(resp).get("items", [])

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods; a Job already gone is fine."""
        self._delete(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods whose labels match every item of ``selector``."""
        resp = self.core.list_namespaced_pod(namespace, label_selector=_selector(selector), _preload_content=False)
        return self._json(resp).get("items", [])

    def pod_log_tail(self, namespace: str, name: str, lines: int, *, limit_bytes: int | None = None,
                     container: str | None = None) -> str | None:
        """The last ``lines`` lines of a pod's log (at most ``limit_bytes`` of them), or None when the log
        cannot be had (pod gone, container not started, no kubelet)."""
        if lines <= 0:
            return None
        extra: dict[str, Any] = {"limit_bytes": limit_bytes} if limit_bytes else {}
        if container:
            extra["container"] = container
        try:
            resp = self.core.read_namespaced_pod_log(name, namespace, tail_lines=lines, _preload_content=False,
                                                     _request_timeout=10, **extra)
            return resp.data.decode("utf-8", errors="replace")
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return None

    def list_events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The (core/v1) events about the object with this uid, e.g. a Job's ``FailedCreate``."""
        resp = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}",
                                               _preload_content=False)
        return self._json(resp).get("items", [])

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a (core/v1) event about ``obj``, as the Job controller and kubectl describe show them."""
        meta = obj.get("metadata") or {}
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                               "namespace": meta.get("namespace"), "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:EVENT_MESSAGE_MAX],
            "source": {"component": EVENT_COMPONENT}, "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self.core.create_namespaced_event(meta.get("namespace"), body, _preload_content=False)

    def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PersistentVolumeClaim, or None if there is none."""
        return self._get(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None if there is none."""
        return self._get(self.core.read_namespaced_config_map, name, namespace)

    def create_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the ConfigMap; raises ApiException (409 when one of that name exists)."""
        return self._json(self.core.create_namespaced_config_map(namespace, dict(body), _preload_content=False))

    def replace_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the ConfigMap; ``body`` carries the resourceVersion it was read at (409 if stale)."""
        name = body["metadata"]["name"]
        return self._json(self.core.replace_namespaced_config_map(name, namespace, dict(body),
                                                                  _preload_content=False))

    def delete_config_map(self, namespace: str, name: str) -> None:
        """Delete a ConfigMap; one already gone is fine."""
        self._delete(self.core.delete_namespaced_config_map, name, namespace)


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
