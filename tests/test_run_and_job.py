"""`datasetprep run -f` (no cluster) and the Job entrypoint's contract with the operator."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from datasetprep import cli, indexed
from datasetprep.contract import EXIT_PERMANENT, RunPlan
from paths import GOLDEN, REPO, make_volume, volume_manifest

MANIFEST = volume_manifest("golden", "out/a_spbpe_eod", workers=2)


@pytest.fixture
def volume(tmp_path):
    return make_volume(tmp_path, MANIFEST)


def _same_as_golden(prefix) -> bool:
    g = GOLDEN / "a_spbpe_eod_text_document"
    return (indexed.bin_path(prefix).read_bytes() == indexed.bin_path(g).read_bytes()
            and indexed.idx_path(prefix).read_bytes() == indexed.idx_path(g).read_bytes())


def test_run_manifest_locally_then_reuse(volume, capsys):
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 0
    assert "golden: wrote" in capsys.readouterr().out
    assert _same_as_golden(volume / "out" / "a_spbpe_eod_text_document")
    man = json.loads((volume / "out" / "a_spbpe_eod.manifest.json").read_text())
    assert man["fingerprint"] and man["source"]["files"] == ["raw/corpus_a.jsonl"]
    mtime = (volume / "out" / "a_spbpe_eod_text_document.bin").stat().st_mtime_ns
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 0
    assert "golden: reused" in capsys.readouterr().out
    assert (volume / "out" / "a_spbpe_eod_text_document.bin").stat().st_mtime_ns == mtime


def test_run_refuses_to_clobber_different_work(volume, capsys):
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 0
    (volume / "dsp.yaml").write_text(MANIFEST.replace("appendEod: true", "appendEod: false"))
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 1
    assert "made from different inputs or settings" in capsys.readouterr().err
    assert _same_as_golden(volume / "out" / "a_spbpe_eod_text_document")
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress", "--overwrite"]) == 0


@pytest.mark.parametrize("bad,msg", [
    ("prefix: out/a_spbpe_eod", "spec.output.prefix"),
    ("source: {files: {paths: [raw/*.jsonl]}, textKeys: [text]}", "spec.source"),
])
def test_run_invalid_manifest_is_a_clear_error(volume, capsys, bad, msg):
    text = MANIFEST
    if "prefix" in bad:
        text = text.replace(bad, "prefix: ../escape")
    else:
        text = text.replace(bad, "source: {files: {paths: [raw/*.jsonl]}, hub: {repo: x}}")
    (volume / "dsp.yaml").write_text(text)
    assert cli.main(["run", "-f", str(volume / "dsp.yaml")]) == 2
    assert msg in capsys.readouterr().err


def _spec(volume):
    import yaml

    return yaml.safe_load((volume / "dsp.yaml").read_text())["spec"]


def test_job_entrypoint_success_message(volume, run_job):
    p, msg = run_job(volume, _spec(volume))
    assert p.returncode == 0, p.stdout + p.stderr
    assert msg["ok"] is True and msg["reused"] is False
    out = msg["outputs"][0]
    meta = json.loads((GOLDEN / "a_spbpe_eod_text_document.json").read_text())
    assert out["prefix"] == "out/a_spbpe_eod_text_document"
    assert (out["documents"], out["tokens"], out["bin_sha256"]) == (526, 821228, meta["sha256"]["bin"])
    manifest = json.loads((volume / "out" / "a_spbpe_eod.manifest.json").read_text())
    assert msg["tokenizer"] == {"type": "sentencepiece", "path": "tok/tokenizer.model", "vocab_size": 8000,
                                "eod_id": 2, "fingerprint": manifest["tokenizer"]["fingerprint"]}
    assert len(manifest["tokenizer"]["fingerprint"]) == 64  # what a DatasetBlend compares
    assert len(json.dumps(msg)) < 4096
    p, msg = run_job(volume, _spec(volume))
    assert msg["reused"] is True


def test_job_entrypoint_failure_message(volume, run_job):
    with open(volume / "raw" / "corpus_a.jsonl", "a") as f:
        f.write('\n{"text": oops}\n')
    p, msg = run_job(volume, _spec(volume), env={"HF_TOKEN": "hf_secretsecret"})
    assert p.returncode == EXIT_PERMANENT and msg["kind"] == "permanent"  # the Job fails at once on it
    assert msg["ok"] is False and "corpus_a.jsonl:527: malformed JSON" in msg["error"]
    assert "Traceback" not in p.stdout + p.stderr
    assert "hf_secretsecret" not in p.stdout + p.stderr + json.dumps(msg)
    assert not (volume / "out").exists() or not list((volume / "out").glob("*.bin"))


def test_job_entrypoint_bad_spec(volume, run_job):
    spec = _spec(volume)
    spec["workers"] = 0
    p, msg = run_job(volume, spec, RunPlan(step="all"))
    assert p.returncode == EXIT_PERMANENT and "spec.workers" in msg["error"]


def test_startup_is_fast():
    """`datasetprep --version` (imports, argument parsing) stays quick: a generous bound for a loaded CI
    box, to catch a heavy import at start-up; bench/ measures the real figure."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "datasetprep.cli", "--version"], check=True, capture_output=True)
    assert time.perf_counter() - t0 < 5  # generous bound on a loaded CI box; bench/ measures it precisely


def test_demo_manifest_runs(tmp_path, capsys):
    demo = REPO / "examples" / "demo"
    assert cli.main(["run", "-f", str(demo / "datasetprep.yaml"), "--volume", f"demo={tmp_path}", "--no-progress"]) == 1
    # the demo's inputs live next to the manifest; with the claim elsewhere they are missing:
    assert "does not exist" in capsys.readouterr().err
    shutil.copy(demo / "devils-dictionary.jsonl", tmp_path)
    shutil.copy(demo / "tokenizer.model", tmp_path)
    assert cli.main(["run", "-f", str(demo / "datasetprep.yaml"), "--volume", f"demo={tmp_path}", "--no-progress"]) == 0
    ds = indexed.IndexedDataset(tmp_path / "out" / "devils_dictionary_text_document")
    assert ds.num_documents == 999


def test_a_folder_the_job_may_not_write_to_is_a_permanent_error_naming_owner_mode_and_fix(tmp_path, monkeypatch):
    """What the job says when the output folder refuses it (as root here, so the refusal is simulated;
    the real one, a root-owned volume under a uid-65532 pod, is in tests/test_volume_e2e.py)."""
    import errno
    import os
    import tempfile as tempfile_mod

    from datasetprep import writable
    from datasetprep.errors import BinarizeError, failure
    from datasetprep.spec import parse_spec
    from datasetprep.volumes import Volumes

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    root = tmp_path / "vol"
    root.mkdir()
    root.chmod(0o755)
    spec = parse_spec({"source": {"hub": {"repo": "acme/x"}}, "tokenizer": {"type": "null", "vocabSize": 100},
                       "output": {"claimName": "data", "prefix": "out/llama"}})
    folders = writable.folders_to_write(spec, Volumes(spec, {"data": root}), downloads=True)
    assert folders == [(root / "out", "spec.output.prefix"), (root / ".datasetprep", "the Hub cache of "
                                                                                    "spec.output.claimName")]
    monkeypatch.setattr(tempfile_mod, "TemporaryFile", refuse)
    with pytest.raises(BinarizeError) as exc:
        writable.require_writable(folders, claim="data")
    message, kind = failure(exc.value).error, failure(exc.value).kind
    assert kind == "permanent" and message.startswith(f"cannot write to {root / 'out'} (spec.output.prefix, claim data)")
    st = (root / "out").stat()
    assert f"is owned by uid {st.st_uid} gid {st.st_gid} with mode 0755" in message
    assert f"the job runs as uid {os.getuid()} gid {os.getgid()}" in message
    assert "spec.securityContext" in message and "jobVolumeInit.enabled=true" in message
