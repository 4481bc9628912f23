"""``datasetprep wait`` as a user runs it (a process with $KUBECONFIG), against the real operator on
the test bed: it returns on Ready (exit 0) *and* on Stalled (exit 1, the job's message), at once, where
``kubectl wait --for=condition=Ready`` would sit out its timeout; it does not take an older spec's
Ready for the current one; its timeout exits 124. The same for a DatasetBlend (``dsb/NAME``)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bed import files_spec, running_operator
from datasetprep.blendspec import BLEND_PLURAL
from datasetprep.spec import GROUP, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _wait(bed, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "KUBECONFIG": str(bed.cluster.kubeconfig)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())",
                           "wait", *args, "-n", bed.ns], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_returns_on_ready_and_on_stalled_with_the_message(bed):
    (bed.data / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with running_operator(bed.ns):
        bed.create("good", files_spec("good_out"))
        bed.create("bad", files_spec("bad_out", paths=["bad.jsonl"], backoffLimit=0))
        ready, _ = _wait(bed, "dsp/good", "--timeout", "3m")
        stalled, took = _wait(bed, "datasetprep/bad", "--timeout", "6h")
    assert ready.returncode == 0, ready.stderr
    message = bed.condition("good", "Ready")[1]["message"]
    assert ready.stdout == f"good: Ready: {message}\n"
    assert stalled.returncode == 1, stalled.stdout + stalled.stderr
    cond = bed.condition("bad", "Stalled")[1]
    assert f"bad: Stalled: JobFailed: {cond['message']}" in stalled.stderr
    assert "bad.jsonl:2: malformed JSON" in stalled.stderr
    assert took < 120, f"it took {took:.0f}s to notice the failure"


def test_an_older_specs_ready_does_not_count_and_the_timeout_says_what_it_waits_for(bed):
    with running_operator(bed.ns):
        bed.create("wiki", files_spec("wiki_out"))
        bed.wait_ready("wiki")
        done, _ = _wait(bed, "wiki", "--timeout", "0")  # look once: Ready now
        assert done.returncode == 0, done.stderr
        bed.patch_spec("wiki", {"output": {"claimName": "not-yet"}})  # a new generation that must wait
        waiting, took = _wait(bed, "dsp/wiki", "--timeout", "5s")
    assert waiting.returncode == 124, waiting.stdout + waiting.stderr
    assert "wiki: timed out after 5s, neither Ready nor Stalled" in waiting.stderr
    assert "PersistentVolumeClaim not-yet not found" in waiting.stderr or "operator to see" in waiting.stderr
    assert 4 < took < 60


def test_a_missing_datasetprep_is_an_error_not_a_wait(bed):
    proc, took = _wait(bed, "dsp/nothing-here", "--timeout", "1h")
    assert proc.returncode == 1 and took < 30
    assert proc.stderr.strip() == f"datasetprep: error: DatasetPrep nothing-here not found in namespace {bed.ns}"


def _blend(bed, name: str, *components: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetBlend", "metadata": {"name": name},
            "spec": {"components": [{"datasetPrep": c, "weight": 1} for c in components]}}
    bed.custom.create_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, body)


def _blend_condition(bed, name: str, type_: str) -> dict:
    obj = bed.custom.get_namespaced_custom_object(GROUP, VERSION, bed.ns, BLEND_PLURAL, name)
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_a_blend_ready_stalled_or_still_waiting(bed):
    with running_operator(bed.ns):
        bed.create("one", files_spec("one_out"))
        bed.create("two", files_spec("two_out"))
        bed.create("later", files_spec("later_out", output={"claimName": "not-yet", "prefix": "later"}))
        _blend(bed, "mix", "one", "two")
        _blend(bed, "orphan", "one", "nowhere")
        _blend(bed, "patient", "one", "later")
        ready, _ = _wait(bed, "dsb/mix", "--timeout", "5m")
        stalled, took = _wait(bed, "datasetblend/orphan", "--timeout", "6h")
        waiting, _ = _wait(bed, "datasetblends.datasetprep.io/patient", "--timeout", "5s")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert ready.stdout == f"mix: Ready: {_blend_condition(bed, 'mix', 'Ready')['message']}\n"
    assert "ConfigMap mix-training" in ready.stdout
    assert stalled.returncode == 1, stalled.stdout + stalled.stderr
    cond = _blend_condition(bed, "orphan", "Stalled")
    assert f"orphan: Stalled: {cond['reason']}: {cond['message']}" in stalled.stderr
    assert "nowhere" in cond["message"] and took < 120
    assert waiting.returncode == 124, waiting.stdout + waiting.stderr
    assert "patient: timed out after 5s, neither Ready nor Stalled: " in waiting.stderr
    assert "later" in waiting.stderr.splitlines()[-1]


def test_a_missing_blend_is_an_error_not_a_wait(bed):
    proc, took = _wait(bed, "dsb/nothing-here", "--timeout", "1h")
    assert proc.returncode == 1 and took < 30
    assert proc.stderr.strip() == f"datasetprep: error: DatasetBlend nothing-here not found in namespace {bed.ns}"
