"""Operator settings (environment), the programmatic entry point and the metrics, without a cluster."""
from __future__ import annotations

import urllib.request

import kopf
import pytest

from datasetprep_operator import cli, runtime
from datasetprep_operator.config import OperatorConfig
from datasetprep_operator.metrics import Metrics


def test_defaults():
    config = OperatorConfig.from_env({})
    assert config.job_image.startswith("datasetprep-job:")
    assert (config.job_service_account, config.image_pull_policy) == ("default", "IfNotPresent")
    assert config.clusterwide and config.metrics_port is None and config.log_tail_lines == 20


def test_everything_from_the_environment():
    config = OperatorConfig.from_env({
        "DATASETPREP_JOB_IMAGE": "reg/dp:1", "DATASETPREP_JOB_SERVICE_ACCOUNT": "dp-job",
        "DATASETPREP_JOB_IMAGE_PULL_POLICY": "Always", "DATASETPREP_WATCH_NAMESPACES": "ml, team-* ,",
        "DATASETPREP_METRICS_PORT": "9090", "DATASETPREP_LOG_TAIL_LINES": "5", "DATASETPREP_WORKERS": "4",
        "DATASETPREP_LOG_FORMAT": "JSON", "UNRELATED": "x",
    })
    assert config == OperatorConfig(job_image="reg/dp:1", job_service_account="dp-job", image_pull_policy="Always",
                                    watch_namespaces=("ml", "team-*"), metrics_port=9090, log_tail_lines=5,
                                    workers=4, log_format="json")
    assert not config.clusterwide
    assert OperatorConfig.from_env({"DATASETPREP_IMAGE_PULL_POLICY": "Never"}).image_pull_policy == "Never"
    assert OperatorConfig.from_env({"DATASETPREP_WATCH_NAMESPACES": "*"}).clusterwide
    assert OperatorConfig.from_env({"DATASETPREP_METRICS_PORT": "0"}).metrics_port is None


@pytest.mark.parametrize("env,needle", [
    ({"DATASETPREP_IMAGE_PULL_POLICY": "Sometimes"}, "DATASETPREP_IMAGE_PULL_POLICY"),
    ({"DATASETPREP_METRICS_PORT": "http"}, "DATASETPREP_METRICS_PORT must be a number"),
    ({"DATASETPREP_METRICS_PORT": "70000"}, "DATASETPREP_METRICS_PORT must be 1-65535"),
    ({"DATASETPREP_JOB_SERVICE_ACCOUNT": "Bad_SA"}, "DATASETPREP_JOB_SERVICE_ACCOUNT"),
    ({"DATASETPREP_LOG_TAIL_LINES": "-1"}, "DATASETPREP_LOG_TAIL_LINES"),
    ({"DATASETPREP_WORKERS": "0"}, "DATASETPREP_WORKERS"),
    ({"DATASETPREP_LOG_FORMAT": "xml"}, "DATASETPREP_LOG_FORMAT"),
])
def test_malformed_settings_name_the_variable(env, needle):
    with pytest.raises(ValueError, match=needle):
        OperatorConfig.from_env(env)


def test_scope_resolution():
    env_scoped = OperatorConfig(watch_namespaces=("ml",))
    assert cli.resolve_scope(OperatorConfig(), None, False) == (True, [])
    assert cli.resolve_scope(env_scoped, None, False) == (False, ["ml"])
    assert cli.resolve_scope(env_scoped, ["a", "b"], False) == (False, ["a", "b"])
    assert cli.resolve_scope(env_scoped, None, True) == (True, [])
    with pytest.raises(ValueError):
        cli.resolve_scope(OperatorConfig(), ["a"], True)


def test_run_starts_kopf_with_our_handlers(monkeypatch):
    calls, logging_set_up = {}, []
    monkeypatch.setattr(kopf, "run", lambda **kw: calls.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: logging_set_up.append(kw))
    monkeypatch.setenv("DATASETPREP_JOB_IMAGE", "reg/dp:2")
    cli.run(namespaces=["ml"], all_namespaces=False, liveness="http://0.0.0.0:8080/healthz", metrics_port=9100,
            peering=None, standalone=True, log_format="json")
    assert calls["clusterwide"] is False and calls["namespaces"] == ["ml"]
    assert calls["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    assert calls["peering_name"] is None and calls["standalone"] is True and calls["priority"] is None
    config = calls["memo"].config
    assert config.metrics_port == 9100 and config.job_image == "reg/dp:2"
    assert config.watch_namespaces == ("ml",) and config.namespaces_are_exact  # no namespace discovery
    assert logging_set_up == [{"log_format": kopf.LogFormat.JSON, "log_refkey": "object"}]
    registry = kopf.get_default_registry()
    # Only watch handlers and indexes, on every kind: kopf writes nothing on our objects (no finalizer, no
    # progress annotation), nothing runs on a timer; DatasetBlends are on the runtime's queue too.
    assert not registry._spawning.get_all_handlers() and not registry._changing.get_all_handlers()
    watching = {h.id for h in registry._watching.get_all_handlers()}
    assert {"datasetprep_event", "datasetblend_event", "job_event", "pod_event"} <= watching

    cli.run(namespaces=None, all_namespaces=True, liveness=None, metrics_port=None, peering="datasetprep",
            standalone=True, priority=7)
    assert calls["clusterwide"] is True and calls["namespaces"] == []
    assert calls["peering_name"] == "datasetprep" and calls["standalone"] is False and calls["priority"] == 7


def test_settings_watch_only_what_is_ours():
    from kopf._cogs.structs.references import Resource  # what kopf matches the selectors against

    settings = kopf.OperatorSettings()
    runtime.configure_settings(settings, OperatorConfig())
    jobs = Resource("batch", "v1", "jobs", kind="Job", namespaced=True)
    pods = Resource("", "v1", "pods", kind="Pod", namespaced=True)
    other = Resource("", "v1", "configmaps", kind="ConfigMap", namespaced=True)
    ours = ["app.kubernetes.io/managed-by=datasetprep-operator"]
    # The API server filters: foreign Jobs and pods never reach the operator.
    assert settings.watching.label_selectors.collect(jobs) == ours
    assert settings.watching.label_selectors.collect(pods) == ours
    assert settings.watching.label_selectors.collect(other) == []
    assert settings.posting.enabled is False  # our events are posted (and counted) by the runtime
    # kopf strips "its" finalizer wherever no handler needs one: never one of ours, nor the stale one of blends
    assert settings.persistence.finalizer not in (runtime.FINALIZER, runtime.KOPF_FINALIZER)
    assert settings.scanning.disabled is False  # cluster-wide: CRDs are watched as before
    assert settings.watching.server_timeout and settings.watching.client_timeout > settings.watching.server_timeout

    namespaced = kopf.OperatorSettings()
    runtime.configure_settings(namespaced, OperatorConfig(watch_namespaces=("team-a", "team-b")))
    assert namespaced.scanning.disabled is True  # exact names: no cluster-wide namespace listing (403)
    globbed = kopf.OperatorSettings()
    runtime.configure_settings(globbed, OperatorConfig(watch_namespaces=("team-*",)))
    assert globbed.scanning.disabled is False  # a glob needs the namespace list


def test_phase_keys():
    assert runtime.phase_key({"phase": "Running"}) == "Running"
    assert runtime.phase_key({}) == runtime.phase_key(None) == runtime.phase_key({"phase": "Odd"}) == "Unknown"


def test_metrics_exposition_and_server():
    m = Metrics()
    m.run_started()
    m.run_succeeded(821228)
    m.run_failed()
    m.reconcile_error()
    index = {"Running": [object()], "Unknown": [object(), object()]}  # kopf's index: phase -> store
    m.count_phases_from(runtime.phase_counts(index))
    text = m.render()
    for line in ('datasetprep_resources{phase="Running"} 1.0', 'datasetprep_resources{phase="Succeeded"} 0.0',
                 'datasetprep_resources{phase="Unknown"} 2.0', "datasetprep_runs_started_total 1.0",
                 "datasetprep_runs_succeeded_total 1.0", "datasetprep_runs_failed_total 1.0",
                 "datasetprep_tokens_produced_total 821228.0", "datasetprep_reconcile_errors_total 1.0"):
        assert line in text, line
    assert "python_gc" not in text  # a registry of our own, not the process-global one
    m.serve(0, addr="127.0.0.1")
    port = m._server.server_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "datasetprep_runs_started_total 1.0" in body
    finally:
        m.stop()
    Metrics().render()  # a second operator in the same process does not collide

