"""The publish is atomic: the final names show one run's complete output (or none) at every instant,
even when the process is killed in the middle, and a rerun finishes or undoes what was cut
(issue 11 items 4 and 5).

The kill-point tests run a real command under ``strace`` once to list every rename, unlink, fsync and
rmdir of its main thread, then once per point with ``--inject=…:signal=SIGKILL`` at that very call;
after each kill the folder must satisfy the invariant of ``killpoints.check_folder``, and a plain
rerun must leave exactly the output of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from datasetprep import cli, indexed, ownership, publish
from killpoints import check_folder, cli as dp, fresh_copy, kill_at, killed, leftovers, outputs, points
from paths import GOLDEN, SP_MODEL

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

NULL = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "65500", "--append-eod", "--workers", "1",
        "--no-progress"]


def _sweep(tmp_path: Path, start: Path, cmd: list[str], out: str, old: dict[str, bytes],
           select=lambda name, line: True, env: dict[str, str] | None = None) -> int:
    """Kill ``cmd`` at each of its commit points (``select``), from the state ``start``; after each
    kill check the invariant, rerun, and compare with an uninterrupted run. Returns the count."""
    ref = fresh_copy(start, tmp_path / "ref")
    env = {**os.environ, **(env or {})}
    every = points(cmd, ref, env)
    new = outputs(ref / out)
    assert new and new != old and not leftovers(ref / out)
    tested = 0
    for syscall, n, line in every:
        if not select(syscall, line):
            continue
        case = fresh_copy(start, tmp_path / "case")
        p = kill_at(cmd, case, syscall, n, env)
        assert killed(p), f"{syscall} #{n} ({line}) was not reached: {p.stdout + p.stderr}"
        check_folder(case / out, [old, new])
        again = subprocess.run(cmd, cwd=case, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, f"rerun after a kill at {syscall} #{n} ({line}): {again.stdout + again.stderr}"
        assert outputs(case / out) == new, f"rerun after a kill at {syscall} #{n} ({line}) differs"
        assert not leftovers(case / out), (line, leftovers(case / out))
        tested += 1
    print(f"\n{tested} kill points tested")
    return tested


@pytest.fixture
def start(tmp_path):
    """A folder with the golden null-tokenizer corpus and an older output of the same prefix."""
    s = tmp_path / "start"
    (s / "out").mkdir(parents=True)
    shutil.copy(GOLDEN / "corpus_null.jsonl", s / "in.jsonl")
    lines = (GOLDEN / "corpus_null.jsonl").read_text().splitlines(keepends=True)
    (s / "old.jsonl").write_text("".join(lines[:40]))
    assert cli.main(["binarize", "--input", str(s / "old.jsonl"), "--output-prefix", str(s / "out" / "x"), *NULL]) == 0
    return s


def test_binarize_survives_a_kill_at_every_commit_point(tmp_path, start):
    old = outputs(start / "out")
    cmd = dp("binarize", "--input", "in.jsonl", "--output-prefix", "out/x", "--overwrite", "--chunk-mib", "0.25", *NULL)
    tested = _sweep(tmp_path, start, cmd, "out", old)
    assert tested >= 30
    g = GOLDEN / "null_v65500_eod_text_document"
    final = outputs(tmp_path / "case" / "out")
    assert final["x_text_document.bin"] == indexed.bin_path(g).read_bytes()
    assert final["x_text_document.idx"] == indexed.idx_path(g).read_bytes()


def test_merge_survives_a_kill_at_every_commit_point(tmp_path):
    s = tmp_path / "start"
    s.mkdir()
    for name in ("a_spbpe_eod_text_document", "a_spbpe_noeod_text_document"):
        for ext in (".bin", ".idx"):
            shutil.copy(GOLDEN / (name + ext), s / (name[:len("a_spbpe_eod")] + ext))
    assert cli.main(["merge", "--input", str(s / "a_spbpe_eod"), "--output-prefix", str(s / "m")]) == 0
    old = outputs(s)
    cmd = dp("merge", "--input", "a_spbpe_eod", "a_spbpe_noe", "--output-prefix", "m", "--overwrite")
    assert _sweep(tmp_path, s, cmd, ".", old) >= 8


KEPT = """apiVersion: datasetprep.io/v1alpha1
kind: DatasetPrep
metadata: {name: kept}
spec:
  source: {files: {paths: [in.jsonl]}, textKeys: [text]}
  tokenizer: {type: "null", vocabSize: 65500}
  output: {claimName: data, prefix: out/x}
  appendEod: true
  shards: 2
  keepShards: true
  workers: 1
"""


def test_kept_shards_and_blend_lists_survive_a_kill_at_every_publish_point(tmp_path, start):
    """``run -f`` with kept shards over an older merged output: two shard publishes, then the blend
    list's (which also removes the merged pair). Killed at every point of each publish: from its
    journal's commit to the journal's removal (the points before a commit are those of the binarize
    test)."""
    (start / "dsp.yaml").write_text(KEPT)
    old = outputs(start / "out")
    cmd = dp("run", "-f", "dsp.yaml", "--no-progress", "--overwrite")
    state = {"in": False}

    def publishing(syscall: str, line: str) -> bool:
        if syscall.startswith("rename") and ".json.tmp" in line and ".datasetprep-publish-" in line:
            state["in"] = True  # the journal's commit
        elif syscall.startswith("unlink") and ".datasetprep-publish-" in line and ".json.tmp" not in line:
            state["in"] = False  # the journal's removal: the last point of this publish
            return True
        return state["in"]

    assert _sweep(tmp_path, start, cmd, "out", old, select=publishing, env={"DATASETPREP_CHUNK_MIB": "0.25"}) >= 20
    final = outputs(tmp_path / "case" / "out")
    assert "x_text_document.bin" not in final and "x_text_document.blend.txt" in final


def test_a_cut_publish_is_finished_by_inspect_and_by_merge(tmp_path, start, capsys):
    """Killed right after the new .bin took its final name: the folder shows the new .bin and no .idx
    (no usable pair), plus the journal; ``inspect`` finishes the publish before it reads."""
    cmd = dp("binarize", "--input", "in.jsonl", "--output-prefix", "out/x", "--overwrite", *NULL)
    every = points(cmd, fresh_copy(start, tmp_path / "ref"))
    renames = [(s, n) for s, n, line in every if s.startswith("rename") and '"x_text_document.bin"' in line]
    assert len(renames) == 1
    case = fresh_copy(start, tmp_path / "case")
    # the call after the .bin's rename is the .idx's: kill there
    syscall, n = renames[0]
    assert killed(kill_at(cmd, case, syscall, n + 1))
    out = case / "out"
    assert (out / "x_text_document.bin").exists() and not (out / "x_text_document.idx").exists()
    assert (out / ".datasetprep-publish-x.json").exists() and not (out / "x.manifest.json").exists()
    assert publish.pending_for(out / "x_text_document") == str(out / "x")
    assert cli.main(["inspect", str(out / "x_text_document"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "finished the publish" in captured.err and json.loads(captured.out)["documents"] == 300
    g = GOLDEN / "null_v65500_eod_text_document"
    assert (out / "x_text_document.idx").read_bytes() == indexed.idx_path(g).read_bytes()
    assert (out / "x.manifest.json").exists()
    assert [n for n in leftovers(out) if not n.startswith(".datasetprep-work-")] == []  # the next run cleans work
    # the same cut, then `merge` reads the pair: it finishes the publish first
    case = fresh_copy(start, tmp_path / "case2")
    assert killed(kill_at(cmd, case, syscall, n + 1))
    assert cli.main(["merge", "--input", str(case / "out" / "x_text_document"), "--output-prefix",
                     str(case / "m")]) == 0
    assert (case / "m.bin").read_bytes() == indexed.bin_path(g).read_bytes()
    assert (case / "out" / "x_text_document.idx").read_bytes() == indexed.idx_path(g).read_bytes()


def test_a_publish_whose_staged_files_are_gone_is_undone(tmp_path, start):
    """If the journal's staged files vanished (someone deleted the work folder), the half-published
    names are taken away: nothing half-published stays, and the rerun makes it again."""
    cmd = dp("binarize", "--input", "in.jsonl", "--output-prefix", "out/x", "--overwrite", *NULL)
    every = points(cmd, fresh_copy(start, tmp_path / "ref"))
    (syscall, n), = [(s, n) for s, n, line in every if s.startswith("rename") and '"x_text_document.bin"' in line]
    case = fresh_copy(start, tmp_path / "case")
    assert killed(kill_at(cmd, case, syscall, n + 1))
    out = case / "out"
    for d in out.glob(".datasetprep-work-*"):
        shutil.rmtree(d)
    notes = []
    with ownership.PrefixLock(out, "x"):
        assert publish.recover(out / "x", notes.append)
    assert "undid the publish" in notes[0]
    assert not [p for p in out.iterdir() if p.name.startswith("x")], sorted(p.name for p in out.iterdir())
    assert subprocess.run(cmd, cwd=case, capture_output=True).returncode == 0
    assert outputs(out)["x_text_document.idx"] == indexed.idx_path(GOLDEN / "null_v65500_eod_text_document").read_bytes()


def test_a_failed_run_publishes_nothing_duplicate_keys(tmp_path, capsys):
    """``--json-keys text text`` is refused before any work: no output, no work folder, no folder."""
    out = tmp_path / "o" / "x"
    code = cli.main(["binarize", "--input", str(GOLDEN / "corpus_a.jsonl"), "--output-prefix", str(out),
                     "--json-keys", "text", "text", "--tokenizer-type", "SentencePieceTokenizer",
                     "--tokenizer-model", str(SP_MODEL), "--workers", "1", "--no-progress"])
    assert code == 1
    assert "names 'text' more than once" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_publish_refuses_two_outputs_with_one_final_name(tmp_path):
    """The last line of defence: a publish never renames two staged files onto one final name."""
    tmp = tmp_path / ".datasetprep-tmp-x-00000000"
    tmp.mkdir()
    (tmp / "a").write_bytes(b"1")
    (tmp / "b").write_bytes(b"2")
    with pytest.raises(Exception, match="not distinct"):
        publish.publish(tmp_path / "x", [publish.Move(tmp / "a", "x_text_document.bin"),
                                         publish.Move(tmp / "b", "x_text_document.bin")], None, tmp)
    assert not (tmp_path / "x_text_document.bin").exists()
