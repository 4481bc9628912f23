"""SIGTERM to the parent alone (what ``kill PID`` and a container runtime send) stops everything
promptly, publishes nothing and exits 143 with a message; the workers die with their parent however
it dies; ``datasetprep job`` as PID 1 gets its signals and reaps every process (issue 11 item 7).
All with real processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from datasetprep import contract, signals
from paths import CORPUS_A, SP_MODEL, make_volume, volume_manifest

BIG = (CORPUS_A.read_bytes().rstrip(b"\n") + b"\n") * 10  # ~30 MB: tens of seconds with 2 workers


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _binarize(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_bytes(BIG)
    p = subprocess.Popen([sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(src), "--output-prefix",
                          str(tmp_path / "ds"), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                          str(SP_MODEL), "--workers", "2", "--chunk-mib", "1", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: len(_children(p.pid)) >= 2 and list(tmp_path.glob(".datasetprep-work-*/parts/*.done")), 120)
    return p, _children(p.pid)


def test_sigterm_to_the_parent_stops_the_workers_and_publishes_nothing(tmp_path):
    p, workers = _binarize(tmp_path)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 143, out + err
    assert "terminated (SIGTERM); nothing was published" in err and "Traceback" not in err
    assert took < 10, took
    assert _wait(lambda: not any(_alive(w) for w in workers), 5), [w for w in workers if _alive(w)]
    assert not list(tmp_path.glob("ds*")) and not (tmp_path / ".datasetprep-lock-ds").exists()
    assert list(tmp_path.glob(".datasetprep-work-ds-*/parts/*.done"))  # kept: a rerun resumes them


def test_sigkill_to_the_parent_takes_the_workers_with_it(tmp_path):
    p, workers = _binarize(tmp_path)
    p.kill()
    p.communicate(timeout=30)
    assert _wait(lambda: not any(_alive(w) for w in workers), 5), [w for w in workers if _alive(w)]
    assert not list(tmp_path.glob("ds*"))


def test_stop_signals_wait_for_the_end_of_a_publish():
    """SIGTERM during ``deferred()`` (the renames of a publish) is delivered when the block ends."""
    old = signal.getsignal(signal.SIGTERM)
    signals.install()
    reached = []
    try:
        with pytest.raises(signals.Terminated):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached.append("end of the block")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert reached == ["end of the block"]


needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                   reason="needs unshare and root (a PID namespace)")

MANIFEST = volume_manifest("pid1", "out/a", workers=2)


def _ns_pid1(unshare: subprocess.Popen) -> int:
    """The host pid of the namespace's PID 1 (the child of ``unshare --fork``)."""
    assert _wait(lambda: _children(unshare.pid), 30)
    return _children(unshare.pid)[0]


@needs_unshare
def test_job_as_pid_1_stops_on_sigterm_and_writes_why(tmp_path):
    """``datasetprep job`` as the first process of a PID namespace, as in a container: SIGTERM to it
    reaches the work (forwarded by the init it becomes), which stops within seconds, exits 143 and
    leaves a termination message saying why; nothing is published."""
    vol = tmp_path / "vol"
    vol.mkdir()
    make_volume(vol, MANIFEST)
    (vol / "raw" / "corpus_a.jsonl").write_bytes(BIG)
    term = tmp_path / "termination-log"
    env = {"PATH": os.environ["PATH"], contract.ENV_SPEC: json.dumps(yaml.safe_load(MANIFEST)["spec"]),
           contract.ENV_VOLUMES: json.dumps({"data": str(vol)}), contract.ENV_RUN: '{"step":"all"}',
           "DATASETPREP_TERMINATION_LOG": str(term), "DATASETPREP_CHUNK_MIB": "1"}
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "datasetprep.cli", "job"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    init = _ns_pid1(p)
    assert _wait(lambda: list((vol / "out").glob(".datasetprep-work-*/parts/*.done")), 120)
    work = _children(init)
    assert len(work) == 1 and len(_children(work[0])) == 2  # PID 1 -> the job -> its 2 workers
    t0 = time.monotonic()
    os.kill(init, signal.SIGTERM)  # as the container runtime does: to PID 1 only
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 143, out
    assert time.monotonic() - t0 < 10
    msg = json.loads(term.read_text())
    assert msg["ok"] is False and msg["kind"] == "transient" and "stopped by SIGTERM" in msg["error"]
    assert not list((vol / "out").glob("a*"))


REAPER = """import os, subprocess, sys, time
from datasetprep import signals

def child():
    subprocess.Popen(["sh", "-c", "sleep 0.3 & exit 0"]).wait()  # the sleep is orphaned: PID 1 inherits it
    time.sleep(1.5)
    zombies = [p for p in os.listdir("/proc") if p.isdigit()
               and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"]
    print("zombies", zombies, flush=True)
    return 7

sys.exit(signals.supervise(child) if os.getpid() == 1 else 99)
"""


@needs_unshare
def test_the_pid_1_init_reaps_orphans_and_returns_the_work_s_status():
    p = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", REAPER],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 7, p.stdout + p.stderr
    assert "zombies []" in p.stdout, p.stdout
