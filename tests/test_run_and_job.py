"""`datasetprep run -f` (no cluster) and the Job entrypoint's contract with the operator."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from datasetprep import cli, indexed
from paths import CORPUS_A, GOLDEN, REPO, SP_MODEL

MANIFEST = """apiVersion: datasetprep.io/v1alpha1
kind: DatasetPrep
metadata: {name: golden}
spec:
  source: {files: {paths: [raw/*.jsonl]}, textKeys: [text]}
  tokenizer: {type: sentencepiece, path: {path: tok/tokenizer.model}}
  output: {claimName: data, prefix: out/a_spbpe_eod}
  appendEod: true
  workers: 2
"""


def make_volume(root, manifest: str):
    """A volume folder with the golden corpus under raw/, the SentencePiece model under tok/ and
    ``manifest`` as dsp.yaml."""
    (root / "raw").mkdir()
    (root / "tok").mkdir()
    shutil.copy(CORPUS_A, root / "raw" / "corpus_a.jsonl")
    shutil.copy(SP_MODEL, root / "tok" / "tokenizer.model")
    (root / "dsp.yaml").write_text(manifest)
    return root


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


def _job(volume, spec: dict, extra_env=None):
    env = {"PATH": "/usr/bin:/bin", "DATASETPREP_SPEC": json.dumps(spec),
           "DATASETPREP_VOLUMES": json.dumps({"data": str(volume)}),
           "DATASETPREP_TERMINATION_LOG": str(volume / "termination-log"), **(extra_env or {})}
    p = subprocess.run([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())", "job"],
                       env=env, capture_output=True, text=True, timeout=300)
    return p, json.loads((volume / "termination-log").read_text())


def _spec(volume):
    import yaml

    return yaml.safe_load((volume / "dsp.yaml").read_text())["spec"]


def test_job_entrypoint_success_message(volume):
    p, msg = _job(volume, _spec(volume))
    assert p.returncode == 0, p.stdout + p.stderr
    assert msg["ok"] is True and msg["reused"] is False
    out = msg["outputs"][0]
    meta = json.loads((GOLDEN / "a_spbpe_eod_text_document.json").read_text())
    assert out["prefix"] == "out/a_spbpe_eod_text_document"
    assert (out["documents"], out["tokens"], out["bin_sha256"]) == (526, 821228, meta["sha256"]["bin"])
    assert msg["tokenizer"] == {"type": "sentencepiece", "path": "tok/tokenizer.model", "vocab_size": 8000,
                                "eod_id": 2}
    assert len(json.dumps(msg)) < 4096
    p, msg = _job(volume, _spec(volume))
    assert msg["reused"] is True


def test_job_entrypoint_failure_message(volume):
    with open(volume / "raw" / "corpus_a.jsonl", "a") as f:
        f.write('\n{"text": oops}\n')
    p, msg = _job(volume, _spec(volume), {"HF_TOKEN": "hf_secretsecret"})
    assert p.returncode == 1
    assert msg["ok"] is False and "corpus_a.jsonl:527: malformed JSON" in msg["error"]
    assert "Traceback" not in p.stdout + p.stderr
    assert "hf_secretsecret" not in p.stdout + p.stderr + json.dumps(msg)
    assert not (volume / "out").exists() or not list((volume / "out").glob("*.bin"))


def test_job_entrypoint_bad_spec(volume):
    spec = _spec(volume)
    spec["workers"] = 0
    p, msg = _job(volume, spec)
    assert p.returncode == 1 and "spec.workers" in msg["error"]


def test_startup_is_fast():
    """`datasetprep --help` (imports, argument parsing) is well under a second."""
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
