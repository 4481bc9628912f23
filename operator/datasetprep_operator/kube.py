"""The few Kubernetes API calls the reconciler makes, behind one small class.

Objects go in and come out as plain JSON dicts (camelCase, exactly as the API server speaks), so
the reconciler and the builders never see the client library's model classes. API errors are
sorted here into "try again" (``kopf.TemporaryError``) and "no use retrying" (``kopf.PermanentError``)
by :func:`translate_api_errors`; everything else propagates.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from datasetprep.spec import GROUP, PLURAL, VERSION

# HTTP statuses worth retrying: conflicts, throttling, server trouble, and RBAC that an admin may
# still be rolling out (403) -- the latter slowly.
_RETRY_FAST = {409, 429, 500, 502, 503, 504}
_RETRY_SLOW = {401, 403}


def api_client_from_environment() -> kubernetes.client.ApiClient:
    """An API client for this process: in-cluster credentials if present, else the kubeconfig."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # $KUBECONFIG read now: the client library reads it once, when it is first imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


@contextlib.contextmanager
def translate_api_errors(what: str) -> Iterator[None]:
    """Turn API and connection errors into kopf's retry/give-up signals, naming the action."""
    try:
        yield
    except ApiException as exc:
        detail = _reason(exc)
        if exc.status in _RETRY_FAST or exc.status is None:
            raise kopf.TemporaryError(f"{what}: {detail}", delay=5) from exc
        if exc.status in _RETRY_SLOW:
            raise kopf.TemporaryError(f"{what}: {detail} (check the operator's RBAC)", delay=60) from exc
        raise kopf.PermanentError(f"{what}: {detail}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"{what}: {exc}", delay=5) from exc


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


class Kube:
    """Jobs, Pods, ConfigMaps (and other DatasetPreps) in one namespace at a time, as JSON dicts."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.batch = kubernetes.client.BatchV1Api(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    def get_datasetprep(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A DatasetPrep (another one than the resource being reconciled), or None if there is none."""
        try:
            return self._json(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                                       _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_datasetpreps(self, namespace: str) -> list[dict[str, Any]]:
        """Every DatasetPrep of the namespace."""
        resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _preload_content=False)
        return self._json(resp).get("items", [])

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job, or None if there is none."""
        try:
            return self._json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Job; raises ApiException (409 when one of that name exists)."""
        return self._json(self.batch.create_namespaced_job(namespace, dict(body), _preload_content=False))

    def list_jobs(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Jobs whose labels match every item of ``selector``."""
        resp = self.batch.list_namespaced_job(namespace, label_selector=_selector(selector), _preload_content=False)
        return self._json(resp).get("items", [])

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods; a Job already gone is fine."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
                                             _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods whose labels match every item of ``selector``."""
        resp = self.core.list_namespaced_pod(namespace, label_selector=_selector(selector), _preload_content=False)
        return self._json(resp).get("items", [])

    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str | None:
        """The last lines of a pod's log, or None when the log cannot be had (pod gone, no kubelet)."""
        if lines <= 0:
            return None
        try:
            resp = self.core.read_namespaced_pod_log(name, namespace, tail_lines=lines, _preload_content=False,
                                                     _request_timeout=10)
            return resp.data.decode("utf-8", errors="replace")
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return None

    def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PersistentVolumeClaim, or None if there is none."""
        try:
            return self._json(self.core.read_namespaced_persistent_volume_claim(name, namespace,
                                                                                _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None if there is none."""
        try:
            return self._json(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

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
        try:
            self.core.delete_namespaced_config_map(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
