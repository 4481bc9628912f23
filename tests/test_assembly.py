"""The outputs' ``.bin`` files are assembled while the workers tokenize: each chunk's parts are
appended once every chunk before it is done (``publish.Assembly``). These tests try to make that
early assembly differ from assembling everything at the end: chunks arriving in any order, a
result list that does not start with what was appended, a run killed mid-assembly (twice) and
resumed, and a link planted where the stale assembly folders are cleared."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datasetprep import indexed
from datasetprep.chunks import ChunkResult
from datasetprep.errors import BinarizeError
from datasetprep.publish import ASSEMBLY_DIR_PREFIX, Assembly, assemble
from paths import CORPUS_A, SP_MODEL

KEYS = ["text", "title"]


def _results(tmp_path: Path, n: int, seed: int) -> list[ChunkResult]:
    """``n`` chunks of random documents, two text keys each (int32 ids, as a 128k vocabulary gets)."""
    rng = np.random.default_rng(seed)
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    out = []
    for i in range(n):
        parts = []
        for k in range(len(KEYS)):
            w = indexed.PartWriter(parts_dir / f"{i:08d}.{k}", np.dtype("<i4"))
            docs = int(rng.integers(0, 40))  # an empty chunk now and then
            lens = rng.integers(1, 3000, size=docs)
            w.add_packed(rng.integers(0, 128256, size=int(lens.sum()), dtype=np.int64), lens, np.ones(docs, np.int32))
            parts.append(w.close())
        out.append(ChunkResult(i, parts, parts[0].documents, 1))
    return out


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunks_arriving_in_any_order_give_the_dataset_assembled_at_the_end(tmp_path, seed):
    results = _results(tmp_path, 23, seed)
    whole = tmp_path / "whole"
    whole.mkdir()
    expected = assemble(results, KEYS, str(tmp_path / "ds"), "document", np.dtype("<i4"), whole)

    early_dir = tmp_path / "early"
    early_dir.mkdir()
    a = Assembly(KEYS, str(tmp_path / "ds"), "document", np.dtype("<i4"), early_dir, order=range(len(results)))
    arrival = results[:]
    random.Random(seed).shuffle(arrival)
    appended = []
    for r in arrival:
        a.add(r)
        appended.append(len(a._taken))
        # only an unbroken run of chunks from the first is ever appended
        assert [t.index for t in a._taken] == list(range(len(a._taken)))
    assert appended[-1] == len(results)
    got = a.finish(results)

    assert [g.output for g in got] == [e.output for e in expected]
    assert _files(early_dir) == _files(whole)


def test_a_result_list_that_does_not_start_with_the_appended_chunks_is_refused(tmp_path):
    results = _results(tmp_path, 4, 7)
    out = tmp_path / "out"
    out.mkdir()
    a = Assembly(KEYS, str(tmp_path / "ds"), "document", np.dtype("<i4"), out, order=range(4))
    a.add(results[0])
    a.add(results[1])
    with pytest.raises(BinarizeError, match="internal error"):
        a.finish([results[1], results[0], *results[2:]])
    a.close()


BIG = (CORPUS_A.read_bytes().rstrip(b"\n") + b"\n") * 10


def _wait(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _started_bins(folder: Path, old: list[Path]) -> list[Path]:
    """Non-empty ``.bin`` files being assembled, outside the folders ``old``."""
    found = []
    for b in folder.glob(f".datasetprep-work-ds-*/{ASSEMBLY_DIR_PREFIX}*/*.bin"):
        try:
            if b.parent not in old and not b.parent.is_symlink() and b.stat().st_size > 0:
                found.append(b)
        except FileNotFoundError:  # cleared meanwhile
            pass
    return found


def _binarize(src: Path, prefix: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datasetprep.cli", "binarize", "--input", str(src),
                             "--output-prefix", str(prefix), "--tokenizer-type", "SentencePieceTokenizer",
                             "--tokenizer-model", str(SP_MODEL), "--workers", "2", "--chunk-mib", "1",
                             "--append-eod", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_once_assembling(src: Path, folder: Path, old: list[Path] = ()) -> None:
    p = _binarize(src, folder / "ds")
    try:
        assert _wait(lambda: _started_bins(folder, list(old)) or p.poll() is not None, 120)
        assert p.poll() is None, "the run finished before its assembly could be caught (input too small?)"
    finally:
        os.kill(p.pid, signal.SIGKILL)  # the workers die with their parent
        p.communicate(timeout=30)
    assert not list(folder.glob("ds*")), "a killed run published something"


def test_a_run_killed_while_assembling_resumes_to_the_same_bytes_and_clears_its_stale_assembly(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_bytes(BIG)
    ref = tmp_path / "ref"
    ref.mkdir()
    done = _binarize(src, ref / "ds")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, out + err

    run = tmp_path / "run"
    run.mkdir()
    _kill_once_assembling(src, run)
    (work,) = run.glob(".datasetprep-work-ds-*")
    stale = list(work.glob(f"{ASSEMBLY_DIR_PREFIX}*"))
    assert len(stale) == 1
    # a link planted where the stale folders are cleared: never followed
    bait = tmp_path / "bait"
    bait.mkdir()
    (bait / "keep.bin").write_bytes(b"mine")
    (work / f"{ASSEMBLY_DIR_PREFIX}planted").symlink_to(bait)

    _kill_once_assembling(src, run, stale)  # the second attempt cleared the first one's assembly
    now = [p for p in work.glob(f"{ASSEMBLY_DIR_PREFIX}*") if not p.is_symlink()]
    assert len(now) == 1 and now != stale
    assert (bait / "keep.bin").read_bytes() == b"mine"

    last = _binarize(src, run / "ds")
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, out + err
    manifest = json.loads((run / "ds.manifest.json").read_text())
    assert manifest["stats"]["chunks_reused"] > 0
    for ext in (".bin", ".idx"):
        assert (run / f"ds_text_document{ext}").read_bytes() == (ref / f"ds_text_document{ext}").read_bytes()
    assert (bait / "keep.bin").read_bytes() == b"mine"
    assert not list(run.glob(".datasetprep-work-*"))
