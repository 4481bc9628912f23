"""deploy/argocd/health.lua, run by a real Lua interpreter (lupa) the way Argo CD runs it.

Argo CD (gopher-lua, Lua 5.1) sets the global ``obj`` to the resource and expects the script to
return a table ``{status = ..., message = ...}``. The script is run here under Lua 5.1 (Argo's
dialect) and Lua 5.4, in a sandbox with only the libraries Argo CD opens (base, string, table,
math): no ``os``, ``io``, ``require`` or ``load``.
"""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARGO = REPO / "deploy" / "argocd"
SCRIPT = (ARGO / "health.lua").read_text()
HEALTH_KEY = "resource.customizations.health.datasetprep.io_DatasetPrep"
BLEND_HEALTH_KEY = "resource.customizations.health.datasetprep.io_DatasetBlend"

RUNTIMES = ["lupa.lua51", "lupa.lua54"]


def _runtime(module: str):
    lupa = importlib.import_module(module)  # lupa is in the test extra, with both runtimes
    return lupa.LuaRuntime(unpack_returned_tuples=True, register_eval=False)


def _to_lua(lua, value: Any):
    if isinstance(value, dict):
        t = lua.table()
        for k, v in value.items():
            if v is not None:  # JSON null: absent, as in Argo CD
                t[k] = _to_lua(lua, v)
        return t
    if isinstance(value, list):
        t = lua.table()
        for i, v in enumerate(value, 1):
            t[i] = _to_lua(lua, v)
        return t
    return value


def health(obj: dict[str, Any], module: str = "lupa.lua51") -> dict[str, str]:
    """Run health.lua with `obj` set, as Argo CD does; returns the `hs` table as a dict."""
    lua = _runtime(module)
    # Compile first (lupa's own chunk loader, not the global `load`), then sandbox the globals.
    script = lua.eval("function() " + SCRIPT + "\nend")
    g = lua.globals()
    for unsafe in ("os", "io", "require", "load", "loadstring", "loadfile", "dofile", "package", "debug"):
        g[unsafe] = None
    g.obj = _to_lua(lua, obj)
    hs = script()
    assert lua.eval("type")(hs) == "table", "the script must return a table"
    return {"status": hs["status"], "message": hs["message"]}


# ------------------------------------------------------------------------------------ cases
def dsp(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "datasetprep.io/v1alpha1",
        "kind": "DatasetPrep",
        "metadata": {"name": "wikitext", "namespace": "ml-team", "generation": generation},
        "spec": {"output": {"claimName": "llama-data", "prefix": "datasets/wikitext"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_: str, status: str, message: str = "", reason: str = "R", generation: int = 1) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2025-01-01T00:00:00Z"}


def conds(ready: str, reconciling: str, stalled: str, message: str = "", generation: int = 1) -> list[dict[str, Any]]:
    return [cond("Ready", ready, message, generation=generation),
            cond("Reconciling", reconciling, message, generation=generation),
            cond("Stalled", stalled, message, generation=generation)]


SUCCEEDED_MSG = "1000 documents, 52000 tokens written to datasets/wikitext_text_document"
STALLED_MSG = "spec.tokenizer: tokenizer must set exactly one of `hub` or `path`"

CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    # (id, object, expected status, expected message substring)
    ("no-status", dsp(), "Progressing", "operator"),
    ("empty-status", dsp(status={}), "Progressing", "operator"),
    ("pending-no-conditions", dsp(status={"phase": "Pending", "observedGeneration": 1}), "Progressing", "Pending"),
    ("running", dsp(status={"phase": "Running", "observedGeneration": 1, "message": "Job wikitext-1a2b is running",
                            "progress": {"summary": "2/4 shards"},
                            "conditions": conds("False", "True", "False", "Job wikitext-1a2b is running")}),
     "Progressing", "2/4 shards"),
    ("reconciling-without-phase", dsp(status={"observedGeneration": 1,
                                              "conditions": conds("False", "True", "False", "starting")}),
     "Progressing", "starting"),
    ("succeeded", dsp(status={"phase": "Succeeded", "observedGeneration": 1, "message": SUCCEEDED_MSG,
                              "conditions": conds("True", "False", "False", SUCCEEDED_MSG)}),
     "Healthy", SUCCEEDED_MSG),
    ("ready-but-stale-generation", dsp(generation=2, status={
        "phase": "Succeeded", "observedGeneration": 1, "conditions": conds("True", "False", "False", "done")}),
     "Progressing", "generation 2"),
    ("ready-without-observed-generation", dsp(status={
        "phase": "Succeeded", "conditions": conds("True", "False", "False", "done")}),
     "Progressing", "generation 1"),
    ("stalled", dsp(status={"phase": "Failed", "observedGeneration": 1, "message": "other text",
                            "conditions": conds("False", "False", "True", STALLED_MSG)}),
     "Degraded", STALLED_MSG),
    ("stalled-without-phase", dsp(status={"observedGeneration": 1,
                                          "conditions": [cond("Stalled", "True", "foreign Job in the way")]}),
     "Degraded", "foreign Job in the way"),
    ("failed-phase-only", dsp(status={"phase": "Failed", "observedGeneration": 1,
                                      "message": "pod wikitext-1a2b-0 exited 1: out of memory"}),
     "Degraded", "out of memory"),
    ("stalled-but-stale", dsp(generation=3, status={
        "phase": "Failed", "observedGeneration": 2, "conditions": conds("False", "False", "True", STALLED_MSG, 2)}),
     "Progressing", "generation 3"),
    ("stalled-false-ready-false", dsp(status={"observedGeneration": 1,
                                              "conditions": conds("False", "False", "False", "waiting")}),
     "Progressing", "waiting"),
    ("ready-unknown", dsp(status={"observedGeneration": 1, "conditions": [cond("Ready", "Unknown", "checking")]}),
     "Progressing", "checking"),
    ("reconciling-wins-over-ready", dsp(status={
        "phase": "Running", "observedGeneration": 1, "conditions": conds("True", "True", "False", "re-run")}),
     "Progressing", "re-run"),
    ("healthy-after-rerun", dsp(generation=5, status={
        "phase": "Succeeded", "observedGeneration": 5, "conditions": conds("True", "False", "False", "ok", 5)}),
     "Healthy", "ok"),
]


@pytest.mark.parametrize("module", RUNTIMES)
@pytest.mark.parametrize("case_id,obj,expected,message", CASES, ids=[c[0] for c in CASES])
def test_health(module, case_id, obj, expected, message):
    hs = health(copy.deepcopy(obj), module)
    assert hs["status"] == expected, (case_id, hs)
    assert isinstance(hs["message"], str) and hs["message"], hs
    if message:
        assert message in hs["message"], (case_id, hs)


def test_statuses_are_argo_cd_health_statuses():
    allowed = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    assert {c[2] for c in CASES} <= allowed
    assert {c[2] for c in CASES} == {"Healthy", "Progressing", "Degraded"}


def test_script_uses_only_lua51_and_safe_libraries():
    forbidden = ("os.", "io.", "require", "goto ", "//", "loadstring", "dofile", "table.unpack", "<const>")
    code = "\n".join(line.split("--", 1)[0] for line in SCRIPT.splitlines())
    for word in forbidden:
        assert word not in code, word


def test_operator_status_shapes_map_as_documented():
    """The status the operator really writes (datasetprep_operator.status) gets the expected verdicts."""
    from datasetprep.spec import DatasetPrepStatus
    from datasetprep_operator.status import failed_status, running_status

    now = "2025-01-01T00:00:00Z"
    running = running_status(DatasetPrepStatus(), job="wikitext-1a2b", generation=1, now=now,
                             start_time=None).to_patch()
    assert health(dsp(status=running))["status"] == "Progressing"
    failed = failed_status(DatasetPrepStatus(), reason="InvalidSpec", message=STALLED_MSG, generation=1,
                           now=now).to_patch()
    hs = health(dsp(status=failed))
    assert hs == {"status": "Degraded", "message": STALLED_MSG}
    # a spec change the operator has not seen yet: Progressing, not the old Degraded
    assert health(dsp(generation=2, status=failed))["status"] == "Progressing"


# -------------------------------------------------------------------------- Argo CD files
def test_argocd_cm_patch_embeds_the_script_verbatim():
    cm = yaml.safe_load((ARGO / "argocd-cm-patch.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {**cm["metadata"], "name": "argocd-cm",
                                                            "namespace": "argocd"}
    assert cm["data"][HEALTH_KEY] == SCRIPT
    assert cm["data"][BLEND_HEALTH_KEY] == SCRIPT  # the same script serves DatasetBlends


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_application():
    (app,) = _docs(ARGO / "application-operator.yaml")
    assert app["kind"] == "Application" and app["apiVersion"] == "argoproj.io/v1alpha1"
    src = app["spec"]["source"]
    assert src["path"] == "charts/datasetprep-operator"
    assert (REPO / src["path"] / "Chart.yaml").exists()
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    # the values it sets are valid chart values
    import json

    import jsonschema

    schema = json.loads((REPO / src["path"] / "values.schema.json").read_text())
    values = yaml.safe_load((REPO / src["path"] / "values.yaml").read_text())

    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    jsonschema.validate(merge(values, src["helm"]["valuesObject"]), schema)


def test_sync_wave_example():
    app_dir = ARGO / "example-app"
    objs = {d["kind"]: d for f in sorted(app_dir.glob("*.yaml")) if f.name != "kustomization.yaml"
            for d in _docs(f)}
    assert set(objs) == {"PersistentVolumeClaim", "DatasetPrep", "Job"}
    wave = {k: int(v["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for k, v in objs.items()}
    assert wave["DatasetPrep"] == 0 and wave["Job"] == 1 and wave["PersistentVolumeClaim"] <= 0

    # the DatasetPrep is valid for the spec model (the same one the CRD is generated from)
    from datasetprep.spec import parse_spec

    spec = parse_spec(objs["DatasetPrep"]["spec"])
    name = objs["DatasetPrep"]["metadata"]["name"]
    cm_name = spec.training_config.config_map_name or f"{name}-training"
    assert cm_name == f"{name}-training"

    pod = objs["Job"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_vol = next(v for v in volumes.values() if "configMap" in v)
    assert cm_vol["configMap"]["name"] == cm_name
    assert "config.yaml" in {i["key"] for i in cm_vol["configMap"]["items"]}
    pvc_vol = next(v for v in volumes.values() if "persistentVolumeClaim" in v)
    assert pvc_vol["persistentVolumeClaim"]["claimName"] == spec.output.claim_name == \
        objs["PersistentVolumeClaim"]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[pvc_vol["name"]] == spec.output.mount_path  # paths in config.yaml resolve
    assert "ReadWriteMany" in objs["PersistentVolumeClaim"]["spec"]["accessModes"]

    kust = yaml.safe_load((app_dir / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(f.name for f in app_dir.glob("*.yaml") if f.name != "kustomization.yaml")

    (app,) = _docs(ARGO / "application-example.yaml")
    assert app["spec"]["source"]["path"] == "deploy/argocd/example-app"
    assert app["spec"]["destination"]["namespace"] == kust["namespace"]
    # the operator Application gives that namespace the job ServiceAccount
    (op,) = _docs(ARGO / "application-operator.yaml")
    assert kust["namespace"] in op["spec"]["source"]["helm"]["valuesObject"]["jobServiceAccount"]["namespaces"]


# ------------------------------------------------------------------------------------ DatasetBlend
def dsb(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "datasetprep.io/v1alpha1", "kind": "DatasetBlend",
                           "metadata": {"name": "mix", "namespace": "ml-team", "generation": generation},
                           "spec": {"components": [{"datasetPrep": "wiki", "weight": 1}]}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize("module", RUNTIMES)
def test_blend_statuses_the_operator_writes(module):
    """Each blend status the operator really writes (datasetprep_operator.blendstatus) gets its verdict."""
    from datasetprep.blendspec import DatasetBlendStatus
    from datasetprep_operator.blendstatus import progressing_status, ready_status, stalled_status

    now, empty = "2025-01-01T00:00:00Z", DatasetBlendStatus()
    waiting = progressing_status(empty, reason="WaitingForComponents", message="waiting for DatasetPrep code is not "
                                 "Ready for generation 2 (Running, 40%)", generation=1, now=now).to_patch()
    hs = health(dsb(status=waiting), module)
    assert hs["status"] == "Progressing" and "waiting for DatasetPrep code" in hs["message"]
    writing = progressing_status(empty, reason="WritingFiles", message="Job mix-files-ab12cd34 is checking the "
                                 "datasets", generation=1, now=now).to_patch()
    assert health(dsb(status=writing), module)["status"] == "Progressing"
    stalled = stalled_status(empty, reason="IncompatibleComponents", message="these components cannot be blended: "
                             "different tokenizers", generation=1, now=now).to_patch()
    assert health(dsb(status=stalled), module) == {
        "status": "Degraded", "message": "these components cannot be blended: different tokenizers"}
    ready = ready_status(empty, message="2 components, 1,000 tokens", generation=1, now=now).to_patch()
    assert health(dsb(status=ready), module) == {"status": "Healthy", "message": "2 components, 1,000 tokens"}
    assert health(dsb(generation=2, status=ready), module)["status"] == "Progressing"  # spec changed, not seen yet
    assert health(dsb(), module)["status"] == "Progressing"
