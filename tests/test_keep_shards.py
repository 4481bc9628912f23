"""`keepShards`: every shard publishes its own dataset and the run ends with a Megatron blend list
instead of a merged dataset (engine, `datasetprep run -f` and the job entrypoint)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from datasetprep import cli, indexed, merge, pipeline, tokenization
from datasetprep.job import write_termination
from paths import CORPUS_A, GOLDEN, REPO, SP_MODEL
from test_run_and_job import make_volume

G = GOLDEN / "a_spbpe_eod_text_document"


def _req(out, n, workers=1, progress=None, keep=True):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    return pipeline.Request(inputs=[CORPUS_A], output_prefix=str(out), tokenizer=cfg, append_eod=True,
                            workers=workers, chunk_bytes=150_000, progress=progress, overwrite=True,
                            keep_shards=n if keep else 0)


def _blend(path):
    """The blend list as Megatron-LM reads it (``f.read().split()``): [(weight, prefix), ...]."""
    words = open(path).read().split()
    return [(float(words[i]), words[i + 1]) for i in range(0, len(words), 2)]


def _docs(prefix):
    ds = indexed.IndexedDataset(prefix)
    return [ds.document(d) for d in range(ds.num_documents)]


@pytest.mark.parametrize("n", [2, 3])
def test_shards_kept_hold_the_golden_documents_in_order(tmp_path, n):
    out = tmp_path / "ds"
    infos = [pipeline.run(_req(out, n), shard=(i, n)) for i in range(n)]
    assert all(i["published"] for i in infos)
    m = pipeline.finish(_req(out, n))

    assert m["layout"] == "shards" and m["shards"] == n
    assert not (tmp_path / "ds_text_document.bin").exists()  # nothing merged
    assert not list(tmp_path.glob(".datasetprep-*"))  # work folders gone: the parts live in the shards
    blend_file = tmp_path / "ds_text_document.blend.txt"
    blend = _blend(blend_file)
    expected = [str((tmp_path / f"ds_shard{i:05d}_text_document").resolve()) for i in range(n)]
    assert [p for _, p in blend] == expected

    # The shards, read in order, are exactly the golden dataset's documents, with the golden token
    # counts as blend weights.
    golden = _docs(G)
    got = [d for p in expected for d in _docs(p)]
    assert len(got) == len(golden) and all(np.array_equal(a, b) for a, b in zip(got, golden))
    assert [w for w, _ in blend] == [indexed.IndexedDataset(p).num_tokens for p in expected]
    assert sum(w for w, _ in blend) == indexed.IndexedDataset(G).num_tokens == m["outputs"][0]["tokens"]

    # ... and merging them gives the golden bytes (what `keepShards: false` would have published).
    merge.merge(expected, str(tmp_path / "merged_text_document"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"merged_text_document{ext}").read_bytes() == G.with_suffix(ext).read_bytes()
    # the shard manifests record sha256 of what they published
    for i, p in enumerate(expected):
        sm = json.loads((tmp_path / f"ds_shard{i:05d}.manifest.json").read_text())
        assert sm["shard"] == [i, n] and sm["layout"] == "shard"
        assert sm["outputs"][0]["bin_sha256"] == tokenization.file_sha256(p + ".bin")


def test_restarted_shard_pod_finds_its_dataset_published(tmp_path):
    out = tmp_path / "ds"
    pipeline.run(_req(out, 2), shard=(1, 2))
    before = (tmp_path / "ds_shard00001_text_document.bin").stat().st_mtime_ns
    again = pipeline.run(_req(out, 2, workers=2), shard=(1, 2))  # another worker count: same work
    assert again["already_published"] is True
    assert (tmp_path / "ds_shard00001_text_document.bin").stat().st_mtime_ns == before


def test_finish_refuses_a_missing_or_changed_shard(tmp_path):
    out = tmp_path / "ds"
    pipeline.run(_req(out, 2), shard=(0, 2))
    with pytest.raises(pipeline.BinarizeError, match="shard 1 of 2 has not published"):
        pipeline.finish(_req(out, 2))
    pipeline.run(_req(out, 2), shard=(1, 2))
    with open(tmp_path / "ds_shard00000_text_document.bin", "ab") as f:  # damaged after publishing
        f.write(b"\0\0")
    with pytest.raises(pipeline.BinarizeError, match="shard 0 of 2 .* changed since"):
        pipeline.finish(_req(out, 2))
    assert not (tmp_path / "ds.manifest.json").exists()
    again = pipeline.run(_req(out, 2), shard=(0, 2))  # its pod runs again: the chunks are still recorded
    assert not again.get("already_published") and again["chunks_reused"] == again["chunks"]
    pipeline.finish(_req(out, 2))
    assert len(_blend(tmp_path / "ds_text_document.blend.txt")) == 2


def test_empty_shards_have_weight_zero_and_stay_out_of_the_blend(tmp_path):
    n_chunks = len(pipeline.plan(_req(tmp_path / "ds", 2))[1])
    n = n_chunks + 2  # more shards than chunks: two (or more) shards get nothing
    out = tmp_path / "ds"
    for i in range(n):
        pipeline.run(_req(out, n), shard=(i, n))
    m = pipeline.finish(_req(out, n))
    shards = m["outputs"][0]["shards"]
    assert len(shards) == n and sum(1 for s in shards if s["documents"] == 0) == n - n_chunks
    blend = _blend(tmp_path / "ds_text_document.blend.txt")
    assert len(blend) == n_chunks and all(w > 0 for w, _ in blend)


def test_switching_layouts_leaves_no_stale_files(tmp_path):
    out = tmp_path / "ds"
    pipeline.run(_req(out, 0, keep=False))  # merged
    assert (tmp_path / "ds_text_document.bin").exists()
    for i in range(3):
        pipeline.run(_req(out, 3), shard=(i, 3))
    pipeline.finish(_req(out, 3))
    assert not (tmp_path / "ds_text_document.bin").exists()  # the merged dataset is gone
    for i in range(2):
        pipeline.run(_req(out, 2), shard=(i, 2))
    pipeline.finish(_req(out, 2))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [x for x in names if "shard00002" in x], names  # shard 2 of the 3-shard run removed
    assert len(_blend(tmp_path / "ds_text_document.blend.txt")) == 2
    pipeline.run(_req(out, 0, keep=False))  # back to merged
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ds.manifest.json", "ds_text_document.bin", "ds_text_document.idx"], names


MANIFEST = """apiVersion: datasetprep.io/v1alpha1
kind: DatasetPrep
metadata: {name: kept}
spec:
  source: {files: {paths: [raw/*.jsonl]}, textKeys: [text]}
  tokenizer: {type: sentencepiece, path: {path: tok/tokenizer.model}}
  output: {claimName: data, prefix: out/a}
  appendEod: true
  workers: 2
  shards: 3
  keepShards: true
"""


@pytest.fixture
def volume(tmp_path):
    return make_volume(tmp_path, MANIFEST)


def test_run_manifest_with_kept_shards_then_reuse(volume, capsys, monkeypatch):
    monkeypatch.setenv("DATASETPREP_CHUNK_MIB", "0.15")
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "kept: wrote" in out and "blend" in out, out
    blend = _blend(volume / "out" / "a_text_document.blend.txt")
    assert len(blend) == 3 and sum(w for w, _ in blend) == 821228
    mtime = (volume / "out" / "a_shard00000_text_document.bin").stat().st_mtime_ns
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 0
    assert "kept: reused" in capsys.readouterr().out
    assert (volume / "out" / "a_shard00000_text_document.bin").stat().st_mtime_ns == mtime
    # the merged layout is other work: the manifest refuses to clobber it without --overwrite
    (volume / "dsp.yaml").write_text(MANIFEST.replace("  keepShards: true\n", ""))
    assert cli.main(["run", "-f", str(volume / "dsp.yaml"), "--no-progress"]) == 1
    assert "made from different inputs or settings" in capsys.readouterr().err


def _job(volume, spec, *args, env=None):
    term = volume / "termination-log"
    env = dict(os.environ, DATASETPREP_SPEC=json.dumps(spec), DATASETPREP_VOLUMES=json.dumps({"data": str(volume)}),
               DATASETPREP_TERMINATION_LOG=str(term), DATASETPREP_CHUNK_MIB="0.15", **(env or {}))
    p = subprocess.run([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())",
                        "job", *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    return p, json.loads(term.read_text())


def test_job_pods_publish_shards_and_the_last_step_reports_the_blend(volume):
    spec = yaml.safe_load(MANIFEST)["spec"]
    for i in range(3):
        p, msg = _job(volume, spec, env={"JOB_COMPLETION_INDEX": str(i)})
        assert p.returncode == 0 and msg["ok"] and msg["published"], p.stdout + p.stderr
    p, msg = _job(volume, spec, "--merge")
    assert p.returncode == 0, p.stdout + p.stderr
    out = msg["outputs"][0]
    assert out["prefix"] == "out/a_text_document" and out["blend_file"] == "out/a_text_document.blend.txt"
    assert out["shards"] == 3 and sum(out["blend_weights"]) == out["tokens"] == 821228
    assert [w for w, _ in _blend(volume / out["blend_file"])] == out["blend_weights"]
    assert "bin_sha256" not in out  # there is no single file to hash


def test_termination_message_drops_weights_before_it_breaks(tmp_path, monkeypatch):
    log = tmp_path / "term"
    monkeypatch.setenv("DATASETPREP_TERMINATION_LOG", str(log))
    doc = {"ok": True, "reused": False, "fingerprint": "f" * 64,
           "outputs": [{"key": "text", "prefix": "out/a_text_document", "documents": 10, "sequences": 10,
                        "tokens": 10 ** 12, "dtype": "uint16", "blend_file": "out/a_text_document.blend.txt",
                        "shards": 2000, "blend_weights": [123456789] * 2000}],
           "tokenizer": {"type": "sentencepiece", "path": "tok/t.model", "vocab_size": 8000, "eod_id": 2}}
    write_termination(doc)
    msg = json.loads(log.read_text())
    assert len(log.read_text()) <= 4000
    assert msg["ok"] and "blend_weights" not in msg["outputs"][0] and msg["outputs"][0]["shards"] == 2000
    assert len(doc["outputs"][0]["blend_weights"]) == 2000  # the caller's dict is left alone


@pytest.mark.parametrize("keep", [False, True])
def test_delete_data_removes_the_dataset_and_nothing_else(volume, keep):
    """`datasetprep job --delete-data` (the operator's clean-up for `deleteDataOnDelete`)."""
    spec = yaml.safe_load(MANIFEST)["spec"]
    if not keep:
        spec.pop("keepShards")
        spec["shards"] = 1
    p, msg = _job(volume, spec, env={"JOB_COMPLETION_INDEX": "0"} if keep else None)
    assert msg["ok"], p.stdout + p.stderr
    if keep:  # shard 0 published, the others not run: an unfinished kept-shards run
        assert (volume / "out" / "a_shard00000_text_document.bin").exists()
    (volume / "out" / "a_other_notes.txt").write_text("not ours")  # a file that merely shares the prefix
    (volume / "out" / "b_text_document.bin").write_text("another dataset")
    p, msg = _job(volume, spec, "--delete-data")
    assert p.returncode == 0 and msg["ok"] and msg["deleted_files"] >= 3, p.stdout + p.stderr
    left = sorted(x.name for x in (volume / "out").iterdir())
    assert left == ["a_other_notes.txt", "b_text_document.bin"], left
    assert (volume / "raw" / "corpus_a.jsonl").exists() and (volume / "tok" / "tokenizer.model").exists()
    p, msg = _job(volume, spec, "--delete-data")  # again: nothing left to delete, still fine
    assert msg == {"ok": True, "deleted_files": 0, "deleted_bytes": 0}


def test_inspect_and_merge_take_the_blend_list_even_mounted_elsewhere(tmp_path, capsys):
    out = tmp_path / "ds"
    for i in range(3):
        pipeline.run(_req(out, 3), shard=(i, 3))
    pipeline.finish(_req(out, 3))
    # the folder as another machine sees it: the absolute paths in the list no longer exist
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("elsewhere"))
    for p in tmp_path.glob("ds_*"):
        p.unlink()
    blend = moved / "ds_text_document.blend.txt"
    assert cli.main(["inspect", str(blend), "--json", "-n", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["datasets"], info["documents"], info["tokens"]) == (3, 526, 821228)
    assert info["weights_are_token_counts"] is True
    assert [s["prefix"] for s in info["shards"]] == [str(moved / f"ds_shard{i:05d}_text_document") for i in range(3)]
    assert cli.main(["merge", "--input", str(blend), "--output-prefix", str(moved / "one_text_document")]) == 0
    for ext in (".bin", ".idx"):
        assert (moved / f"one_text_document{ext}").read_bytes() == G.with_suffix(ext).read_bytes()
    (moved / "bad.blend.txt").write_text("12 a_text_document 7\n")
    assert cli.main(["inspect", str(moved / "bad.blend.txt")]) == 1
    assert "expected 'weight prefix' pairs" in capsys.readouterr().err
