"""`keepShards`: every shard publishes its own dataset and the run ends with a Megatron blend list
instead of a merged dataset (engine, `datasetprep run -f` and the job entrypoint)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasetprep import cli, indexed, merge, pipeline, tokenization
from datasetprep.contract import TERMINATION_MESSAGE_MAX_BYTES, OutputFile, Published, RunPlan, TokenizerInfo
from datasetprep.errors import BinarizeError
from datasetprep.job import write_termination
from paths import CORPUS_A, GOLDEN, SP_MODEL, make_volume, volume_manifest

G = GOLDEN / "a_spbpe_eod_text_document"


def _req(out, workers=1, progress=None):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    return pipeline.Request(inputs=[CORPUS_A], output_prefix=str(out), tokenizer=cfg, append_eod=True,
                            workers=workers, chunk_bytes=150_000, progress=progress, overwrite=True)


def shard(i: int, n: int) -> RunPlan:
    return RunPlan.shard(i, n, keep_shards=True)


def merge_step(n: int) -> RunPlan:
    return RunPlan(step="merge", shards=n, keep_shards=True)


def _blend(path):
    """The blend list as Megatron-LM reads it (``f.read().split()``): [(weight, prefix), ...]."""
    words = Path(path).read_text().split()
    return [(float(words[i]), words[i + 1]) for i in range(0, len(words), 2)]


def _docs(prefix):
    ds = indexed.IndexedDataset(prefix)
    return [ds.document(d) for d in range(ds.num_documents)]


@pytest.mark.parametrize("n", [2, 3])
def test_shards_kept_hold_the_golden_documents_in_order(tmp_path, n):
    out = tmp_path / "ds"
    infos = [pipeline.run_shard(_req(out), shard(i, n)) for i in range(n)]
    assert all(i.published for i in infos)
    m = pipeline.finish(_req(out), merge_step(n))

    assert m.layout == "shards" and m.shards == n
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
    assert sum(w for w, _ in blend) == indexed.IndexedDataset(G).num_tokens == m.outputs[0].tokens

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
    pipeline.run_shard(_req(out), shard(1, 2))
    before = (tmp_path / "ds_shard00001_text_document.bin").stat().st_mtime_ns
    again = pipeline.run_shard(_req(out, workers=2), shard(1, 2))  # another worker count: same work
    assert again.already_published
    assert (tmp_path / "ds_shard00001_text_document.bin").stat().st_mtime_ns == before


def test_finish_refuses_a_missing_or_changed_shard(tmp_path):
    out = tmp_path / "ds"
    pipeline.run_shard(_req(out), shard(0, 2))
    with pytest.raises(BinarizeError, match="shard 1 of 2 has not published"):
        pipeline.finish(_req(out), merge_step(2))
    pipeline.run_shard(_req(out), shard(1, 2))
    with open(tmp_path / "ds_shard00000_text_document.bin", "ab") as f:  # damaged after publishing
        f.write(b"\0\0")
    with pytest.raises(BinarizeError, match="shard 0 of 2 .* changed since"):
        pipeline.finish(_req(out), merge_step(2))
    assert not (tmp_path / "ds.manifest.json").exists()
    again = pipeline.run_shard(_req(out), shard(0, 2))  # its pod runs again: the chunks are still recorded
    assert not again.already_published and again.chunks_reused == again.chunks
    pipeline.finish(_req(out), merge_step(2))
    assert len(_blend(tmp_path / "ds_text_document.blend.txt")) == 2


def test_empty_shards_have_weight_zero_and_stay_out_of_the_blend(tmp_path):
    n_chunks = len(pipeline.plan(_req(tmp_path / "ds"))[1])
    n = n_chunks + 2  # more shards than chunks: two (or more) shards get nothing
    out = tmp_path / "ds"
    for i in range(n):
        pipeline.run_shard(_req(out), shard(i, n))
    m = pipeline.finish(_req(out), merge_step(n))
    shards = m.outputs[0].shards
    assert len(shards) == n and sum(1 for s in shards if s.documents == 0) == n - n_chunks
    blend = _blend(tmp_path / "ds_text_document.blend.txt")
    assert len(blend) == n_chunks and all(w > 0 for w, _ in blend)


def test_switching_layouts_leaves_no_stale_files(tmp_path):
    out = tmp_path / "ds"
    pipeline.run(_req(out))  # merged
    assert (tmp_path / "ds_text_document.bin").exists()
    for i in range(3):
        pipeline.run_shard(_req(out), shard(i, 3))
    pipeline.finish(_req(out), merge_step(3))
    assert not (tmp_path / "ds_text_document.bin").exists()  # the merged dataset is gone
    for i in range(2):
        pipeline.run_shard(_req(out), shard(i, 2))
    pipeline.finish(_req(out), merge_step(2))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [x for x in names if "shard00002" in x], names  # shard 2 of the 3-shard run removed
    assert len(_blend(tmp_path / "ds_text_document.blend.txt")) == 2
    pipeline.run(_req(out))  # back to merged
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ds.manifest.json", "ds_text_document.bin", "ds_text_document.idx"], names


MANIFEST = volume_manifest("kept", "out/a", workers=2) + "  shards: 3\n  keepShards: true\n"


CHUNKS = {"DATASETPREP_CHUNK_MIB": "0.15"}


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


def test_job_pods_publish_shards_and_the_last_step_reports_the_blend(volume, run_job):
    spec = yaml.safe_load(MANIFEST)["spec"]
    for i in range(3):
        p, msg = run_job(volume, spec, index=i, env=CHUNKS)
        assert p.returncode == 0 and msg["ok"] and msg["published"], p.stdout + p.stderr
    p, msg = run_job(volume, spec, "merge", env=CHUNKS)
    assert p.returncode == 0, p.stdout + p.stderr
    out = msg["outputs"][0]
    assert out["prefix"] == "out/a_text_document" and out["blend_file"] == "out/a_text_document.blend.txt"
    assert out["shards"] == 3 and sum(out["blend_weights"]) == out["tokens"] == 821228
    assert [w for w, _ in _blend(volume / out["blend_file"])] == out["blend_weights"]
    assert "bin_sha256" not in out  # there is no single file to hash


def test_termination_message_drops_weights_before_it_breaks(tmp_path):
    log = tmp_path / "term"
    result = Published(reused=False, fingerprint="f" * 64, outputs=(OutputFile(
        key="text", prefix="out/a_text_document", documents=10, sequences=10, tokens=10 ** 12, dtype="uint16",
        blend_file="out/a_text_document.blend.txt", shards=2000, blend_weights=(123456789,) * 2000),),
        tokenizer=TokenizerInfo(type="sentencepiece", path="tok/t.model", vocab_size=8000, eod_id=2))
    write_termination(result, str(log))
    msg = json.loads(log.read_text())
    assert len(log.read_bytes()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert msg["ok"] and "blend_weights" not in msg["outputs"][0] and msg["outputs"][0]["shards"] == 2000


@pytest.mark.parametrize("keep", [False, True])
def test_delete_data_removes_the_dataset_and_nothing_else(volume, keep, run_job):
    """`datasetprep job` with the run plan `delete` (the operator's clean-up for `deleteDataOnDelete`)."""
    spec = yaml.safe_load(MANIFEST)["spec"]
    if not keep:
        spec.pop("keepShards")
        spec["shards"] = 1
    p, msg = run_job(volume, spec, index=0 if keep else None, env=CHUNKS)
    assert msg["ok"], p.stdout + p.stderr
    if keep:  # shard 0 published, the others not run: an unfinished kept-shards run
        assert (volume / "out" / "a_shard00000_text_document.bin").exists()
    (volume / "out" / "a_other_notes.txt").write_text("not ours")  # a file that merely shares the prefix
    (volume / "out" / "b_text_document.bin").write_text("another dataset")
    p, msg = run_job(volume, spec, "delete")
    assert p.returncode == 0 and msg["ok"] and msg["deleted_files"] >= 3, p.stdout + p.stderr
    left = sorted(x.name for x in (volume / "out").iterdir())
    assert left == ["a_other_notes.txt", "b_text_document.bin"], left
    assert (volume / "raw" / "corpus_a.jsonl").exists() and (volume / "tok" / "tokenizer.model").exists()
    p, msg = run_job(volume, spec, "delete")  # again: nothing left to delete, still fine
    assert msg == {"ok": True, "deleted_files": 0, "deleted_bytes": 0}


def test_inspect_and_merge_take_the_blend_list_even_mounted_elsewhere(tmp_path, capsys):
    out = tmp_path / "ds"
    for i in range(3):
        pipeline.run_shard(_req(out), shard(i, 3))
    pipeline.finish(_req(out), merge_step(3))
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
