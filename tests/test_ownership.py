"""One run never destroys another's work (issue 11 item 3): clean-up touches only folders that are
provably this prefix's, and a prefix is held by one run at a time (a second one waits or fails with
a message naming the first; a holder that died holds nothing)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from datasetprep import ownership, pipeline, tokenization
from paths import CORPUS_A, GOLDEN, SP_MODEL, make_volume, volume_manifest

G = GOLDEN / "a_spbpe_eod_text_document"


class Crash(Exception):
    pass


def _req(out, progress=None, **kw):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    return pipeline.Request(inputs=[CORPUS_A], output_prefix=str(out), tokenizer=cfg, append_eod=True,
                            chunk_bytes=150_000, progress=progress, **kw)


def _crash_after(n):
    def cb(stats):
        if stats.chunks_done >= n:
            raise Crash()
    return cb


def _golden(prefix) -> bool:
    return (Path(f"{prefix}_text_document.bin").read_bytes() == Path(f"{G}.bin").read_bytes()
            and Path(f"{prefix}_text_document.idx").read_bytes() == Path(f"{G}.idx").read_bytes())


@pytest.mark.parametrize("mine,other", [("wiki", "wiki-en"), ("x1", "x[1]"), ("x[1]", "x1"), ("x*", "xy"),
                                        ("a", "a-0123456789abcdef")])
def test_a_run_keeps_its_hands_off_another_prefixs_work(tmp_path, mine, other):
    with pytest.raises(Crash):
        pipeline.run(_req(tmp_path / other, _crash_after(3)))
    theirs = sorted(tmp_path.glob(".datasetprep-work-*"))
    assert len(theirs) == 1
    pipeline.run(_req(tmp_path / mine))  # a whole run of the other prefix, start (clean-up) to end
    assert _golden(tmp_path / mine)
    assert theirs[0].is_dir() and len(list(theirs[0].glob("parts/*.done"))) >= 3
    m = pipeline.run(_req(tmp_path / other))
    assert m.stats.chunks_reused >= 3 and _golden(tmp_path / other)


def test_work_folders_carry_an_owner_record(tmp_path):
    with pytest.raises(Crash):
        pipeline.run(_req(tmp_path / "wiki", _crash_after(1)))
    (work,) = tmp_path.glob(".datasetprep-work-wiki-*")
    doc = json.loads((work / "owner.json").read_text())
    assert doc["kind"] == "datasetprep.io/owner" and doc["prefix"] == "wiki"
    assert [p.name for p in ownership.owned_dirs(tmp_path, "wiki")] == [work.name]
    assert list(ownership.owned_dirs(tmp_path, "wik")) == [] and list(ownership.owned_dirs(tmp_path, "wiki-")) == []


MANIFEST = volume_manifest("wiki", "out/wiki", workers=1)


def test_delete_data_keeps_its_hands_off_another_prefix(tmp_path, run_job):
    """``datasetprep job`` with the delete plan for ``out/wiki`` leaves ``out/wiki-en`` alone: its
    published files and its unfinished work."""
    volume = make_volume(tmp_path, MANIFEST)
    spec = yaml.safe_load(MANIFEST)["spec"]
    p, msg = run_job(volume, spec)
    assert msg["ok"], p.stdout + p.stderr
    pipeline.run(_req(volume / "out" / "wiki-en"))
    with pytest.raises(Crash):
        pipeline.run(_req(volume / "out" / "wiki-en", _crash_after(2), overwrite=True))
    before = sorted(x.name for x in (volume / "out").iterdir() if "wiki-en" in x.name)
    p, msg = run_job(volume, spec, "delete")
    assert msg["ok"] and msg["deleted_files"] == 3, p.stdout + p.stderr
    left = sorted(x.name for x in (volume / "out").iterdir())
    assert left == before and any(x.startswith(".datasetprep-work-wiki-en-") for x in left), left


def _binarize(src, prefix, *extra, **kw):
    return subprocess.Popen([sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(src),
                             "--output-prefix", str(prefix), "--tokenizer-type", "SentencePieceTokenizer",
                             "--tokenizer-model", str(SP_MODEL), "--append-eod", "--workers", "1", "--no-progress",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(cond, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_run_on_a_busy_prefix_fails_naming_the_first(tmp_path):
    """Two real ``binarize`` processes on one prefix: the second fails at once with a message naming
    the first (command, pid, host); the first finishes undisturbed."""
    src = tmp_path / "big.jsonl"
    src.write_bytes((CORPUS_A.read_bytes().rstrip(b"\n") + b"\n") * 6)
    first = _binarize(src, tmp_path / "ds", "--chunk-mib", "0.5")
    _wait_for(lambda: list(tmp_path.glob(".datasetprep-work-ds-*/parts/*.done")))
    second = _binarize(CORPUS_A, tmp_path / "ds", "--overwrite")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1, out + err
    assert f"output prefix 'ds' is in use by datasetprep binarize --output-prefix {tmp_path / 'ds'} (pid {first.pid}" in err
    assert "internal error" not in err and "Traceback" not in err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert not list(tmp_path.glob(".datasetprep-*")), list(tmp_path.glob(".datasetprep-*"))  # lock file removed too


HOLD = """import sys, time
from datasetprep.ownership import PrefixLock
lock = PrefixLock(sys.argv[1], sys.argv[2], shared=sys.argv[3] == "shared", who="the holder of this test")
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def _holder(folder, name, shared=False):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, "shared" if shared else "exclusive"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _stop(p):
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()


def test_a_job_waits_for_the_holder_and_takes_over_when_it_dies(tmp_path):
    """A retried pod finds its predecessor still holding the prefix: it waits (saying who holds it),
    and takes over as soon as that process is gone -- killed with SIGKILL, so the lock file stays
    behind, but a lock of a dead process holds nothing."""
    volume = make_volume(tmp_path, MANIFEST)
    (volume / "out").mkdir()
    holder = _holder(volume / "out", "wiki")
    run = subprocess.Popen([sys.executable, "-m", "datasetprep.cli", "run", "-f", str(volume / "dsp.yaml"),
                            "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={"PATH": "/usr/bin:/bin", "DATASETPREP_LOCK_WAIT": "120"})
    time.sleep(3)
    assert run.poll() is None  # waiting
    _stop(holder)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    assert f"output prefix 'wiki' is in use by the holder of this test (pid {holder.pid}" in err
    assert "waiting up to" in err
    assert _golden(volume / "out" / "wiki")
    assert not (volume / "out" / ".datasetprep-lock-wiki").exists()


def test_shard_pods_share_the_prefix_and_exclude_a_writer(tmp_path):
    """Shard pods of one run hold the prefix together; a writer of the final names (here a whole
    run) is refused while they do, with a message saying so."""
    a = _holder(tmp_path, "ds", shared=True)
    b = _holder(tmp_path, "ds", shared=True)  # a second shard pod is let in
    try:
        with pytest.raises(ownership.PrefixBusy, match="in use by the shard pods of a sharded run"):
            pipeline.run(_req(tmp_path / "ds"))
        with ownership.PrefixLock(tmp_path, "ds", shared=True):  # and so is a third
            pass
    finally:
        _stop(a)
        _stop(b)
    pipeline.run(_req(tmp_path / "ds"))
    assert _golden(tmp_path / "ds")


def test_the_lock_is_reentrant_in_one_process_and_removed_after(tmp_path):
    with ownership.PrefixLock(tmp_path, "ds"):
        assert ownership.holds(tmp_path, "ds")
        with ownership.PrefixLock(tmp_path, "ds"), ownership.PrefixLock(tmp_path, "ds", shared=True):
            pass
        assert (tmp_path / ".datasetprep-lock-ds").exists()
        doc = json.loads((tmp_path / ".datasetprep-lock-ds").read_text())
        assert doc["prefix"] == "ds" and doc["pid"] > 0 and doc["host"]
    assert not (tmp_path / ".datasetprep-lock-ds").exists() and not ownership.holds(tmp_path, "ds")


def test_two_attempts_of_one_shard_never_write_side_by_side(tmp_path):
    """A retried pod of shard 0 while the old attempt (a real process holding shard 0's prefix) still
    runs: it is refused naming the holder (the job waits instead), while shard 1 runs beside it; once
    the holder is gone shard 0 runs, and the merge gives the golden bytes."""
    from datasetprep.contract import RunPlan

    holder = _holder(tmp_path, "ds_shard00000")
    try:
        with pytest.raises(ownership.PrefixBusy, match=rf"'ds_shard00000' is in use by the holder of this test "
                                                       rf"\(pid {holder.pid}"):
            pipeline.run_shard(_req(tmp_path / "ds"), RunPlan.shard(0, 2))
        assert pipeline.run_shard(_req(tmp_path / "ds"), RunPlan.shard(1, 2)).chunks > 0
    finally:
        _stop(holder)
    assert pipeline.run_shard(_req(tmp_path / "ds"), RunPlan.shard(0, 2)).chunks > 0
    pipeline.finish(_req(tmp_path / "ds"), RunPlan(step="merge", shards=2))
    assert _golden(tmp_path / "ds")
