"""``datasetprep wait``'s pure parts: when a DatasetPrep or a DatasetBlend counts as done, on the status
objects the operator's own builders make; its arguments. Against the real operator: tests/test_wait_e2e.py."""
from __future__ import annotations

import pytest

from datasetprep.cli import build_parser
from datasetprep.blendspec import DatasetBlendStatus
from datasetprep.spec import DatasetPrepStatus
from datasetprep_operator import wait
from datasetprep_operator.blendstatus import progressing_status, ready_status, stalled_status
from datasetprep_operator.status import failed_status, running_status, waiting_status

NOW = "2026-01-01T00:00:00Z"


def _body(status: DatasetPrepStatus | DatasetBlendStatus, generation: int = 2) -> dict:
    return {"metadata": {"name": "x", "generation": generation, "resourceVersion": "1"},
            "status": status.to_patch()}


def test_stalled_for_the_current_generation_ends_the_wait_as_a_failure():
    status = failed_status(DatasetPrepStatus(), reason="JobFailed", message="Job x-1 failed: bad tokenizer",
                           generation=2, now=NOW)
    v = wait.verdict(_body(status))
    assert v.done and not v.ready and v.message == "JobFailed: Job x-1 failed: bad tokenizer"


def test_a_verdict_about_an_older_spec_does_not_count():
    stalled = failed_status(DatasetPrepStatus(), reason="JobFailed", message="old", generation=1, now=NOW)
    v = wait.verdict(_body(stalled, generation=2))
    assert not v.done and v.message == "waiting for the operator to see the current spec"


def test_running_and_waiting_are_not_done_and_say_what_happens():
    running = running_status(DatasetPrepStatus(), job="x-1a2b", generation=2, now=NOW, start_time=None)
    v = wait.verdict(_body(running))
    assert not v.done and v.message == "Running, starting, Job x-1a2b is running"
    pending = waiting_status(DatasetPrepStatus(), reason="WaitingForClaim", message="PersistentVolumeClaim d not found",
                             generation=2, now=NOW)
    assert wait.verdict(_body(pending)).message == "Pending, waiting, PersistentVolumeClaim d not found"
    assert not wait.verdict({"metadata": {"generation": 1}}).done  # no status yet


@pytest.mark.parametrize("text,seconds", [("6h", 21600), ("1h30m", 5400), ("90s", 90), ("45", 45), ("0", 0),
                                          ("2.5m", 150), ("500ms", 0.5), ("none", None), ("-1", None)])
def test_timeouts(text, seconds):
    assert wait.parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["6 hours", "h", "1x", "-5", "30m1"])
def test_bad_timeouts_are_refused_with_the_forms_that_work(text):
    with pytest.raises(ValueError, match="6h, 1h30m, 90s|negative"):
        wait.parse_timeout(text)


def test_a_blend_is_done_when_ready_or_stalled_for_its_current_generation():
    ready = ready_status(DatasetBlendStatus(), message="2 components, 1,234 tokens, 2 datasets checked; ConfigMap "
                         "mix-training (generations a@1, b@1)", generation=2, now=NOW)
    v = wait.verdict(_body(ready), wait.BLEND)
    assert v.done and v.ready and v.message.startswith("2 components, 1,234 tokens")
    stalled = stalled_status(DatasetBlendStatus(), reason="ComponentNotUsable", message="DatasetPrep b is Stalled",
                             generation=2, now=NOW)
    v = wait.verdict(_body(stalled), wait.BLEND)
    assert v.done and not v.ready and v.message == "ComponentNotUsable: DatasetPrep b is Stalled"
    assert not wait.verdict(_body(stalled, generation=3), wait.BLEND).done  # about an older spec
    waiting = progressing_status(DatasetBlendStatus(), reason="WaitingForComponents", message="waiting for b (Running)",
                                 generation=2, now=NOW)
    v = wait.verdict(_body(waiting), wait.BLEND)
    assert not v.done and v.message == "waiting for b (Running)"
    assert wait.verdict({"metadata": {"generation": 1}}, wait.BLEND).message == \
        "waiting for the operator to see the current spec"


@pytest.mark.parametrize("text", ["dsp/wiki", "datasetprep/wiki", "datasetpreps/wiki", "DatasetPrep/wiki",
                                  "datasetpreps.datasetprep.io/wiki", "wiki"])
def test_targets(text):
    assert wait.parse_target(text) == (wait.PREP, "wiki")


@pytest.mark.parametrize("text", ["dsb/mix", "datasetblend/mix", "datasetblends/mix", "DatasetBlend/mix",
                                  "datasetblends.datasetprep.io/mix", "datasetblend.datasetprep.io/mix"])
def test_blend_targets(text):
    assert wait.parse_target(text) == (wait.BLEND, "mix")


def test_other_kinds_are_refused():
    with pytest.raises(ValueError, match=r"DatasetPreps \(dsp/NAME\) and DatasetBlends \(dsb/NAME\), not pod"):
        wait.parse_target("pod/wiki")
    with pytest.raises(ValueError, match="name the DatasetPrep, e.g. dsp/wikitext"):
        wait.parse_target("dsp/")
    with pytest.raises(ValueError, match="name the DatasetBlend, e.g. dsb/pretrain-mix"):
        wait.parse_target("dsb/")


def test_the_command_line():
    a = build_parser().parse_args(["wait", "dsp/wiki", "-n", "ml", "--timeout", "6h"])
    assert (a.target, a.namespace, a.timeout, a.quiet) == ("dsp/wiki", "ml", "6h", False)
