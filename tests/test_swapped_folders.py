"""A folder above the output (or the output folder, or the work folder) swapped for a symbolic link to a
folder outside the claim *while* a run works (issue 11/12: the race between a check and the use).

The attacker is a writer on the claim: it moves the folder away (within the claim: a claim is a mount,
and ``rename`` cannot leave a mount) and puts a link to a bait folder outside the claim in its place.
The bait mirrors the output folder (a ``.bin``, a manifest, a work folder of ours by its name): a run
that went through the link would write, rename or delete something there. The swap is made at each
step of a real run -- before the chunks, between two chunks, between the last check and the publish,
between two renames of the publish -- and of the delete step, by wrapping the function that step calls
(the run itself is the real one, in this process, as ``datasetprep run -f`` and the job run it).

Each case checks: the bait is untouched byte for byte, the run fails with a message naming the swapped
folder and the link, nothing appears under the final names at the spec's path, and once the folder is
put back a rerun goes on from the work done (the chunks reused, or the output published in the held
folder reused) and ends on Megatron-LM's golden bytes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from datasetprep import layout, pipeline, runner
from datasetprep.settings import Settings
from datasetprep.spec import parse_spec
from datasetprep.volumes import FolderSwapped, HeldFolder
from paths import GOLDEN, make_volume, volume_manifest

PREFIX = "x/y/out/a"
SPEC = parse_spec(yaml.safe_load(volume_manifest("swap", PREFIX))["spec"])
G = GOLDEN / "a_spbpe_eod_text_document"
SETTINGS = Settings(chunk_bytes=300_000)  # corpus_a in 7 chunks
FINAL = ("a_text_document.bin", "a_text_document.idx", "a.manifest.json")
ANCESTORS = ["x", "x/y", "x/y/out"]


@pytest.fixture
def vol(tmp_path):
    (tmp_path / "vol").mkdir()
    return make_volume(tmp_path / "vol", volume_manifest("swap", PREFIX))


@pytest.fixture
def bait(tmp_path):
    """A folder outside the claim shaped like the way to the output, with files a stray run would touch."""
    b = tmp_path / "outside" / "bait"
    for rel in ("y/out", "out", ""):
        d = b / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "a_text_document.bin").write_bytes(b"not yours\n")
        (d / "a.manifest.json").write_text("{}\n")
        work = d / ".datasetprep-work-a-0123456789abcdef"
        work.mkdir()
        (work / "keep").write_text("mine\n")
    return b


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links not followed): file bytes, link targets, folders."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = os.path.relpath(p, root)
            out[rel] = ("link:" + os.readlink(p)) if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


class Swap:
    """Move ``vol/rel`` away (within the claim) and put a link to the bait in its place; ``restore`` undoes it."""

    def __init__(self, vol: Path, rel: str, bait: Path) -> None:
        self.path, self.away, self.target = vol / rel, vol / (rel + ".away"), bait  # the bait has each shape
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            os.rename(self.path, self.away)
            self.path.symlink_to(self.target)

    def restore(self) -> None:
        self.path.unlink()
        os.rename(self.away, self.path)


def _run(vol: Path, **kw):
    return runner.run_spec(SPEC, {"data": vol}, settings=SETTINGS, workers=1, **kw)


def _golden(out: Path) -> None:
    assert (out / "a_text_document.bin").read_bytes() == G.with_suffix(".bin").read_bytes()
    assert (out / "a_text_document.idx").read_bytes() == G.with_suffix(".idx").read_bytes()


def _wrap(monkeypatch, owner, name: str, before) -> None:
    real = getattr(owner, name)

    def wrapped(*a, **kw):
        before()
        return real(*a, **kw)
    monkeypatch.setattr(owner, name, wrapped)


def _swap_at(when: str, swap: Swap, monkeypatch) -> dict:
    """Arrange for ``swap`` at step ``when`` of the next run; the run's keyword arguments."""
    if when == "before chunks":
        _wrap(monkeypatch, pipeline, "prepare", swap)
    elif when == "before publish":  # after the last check, before the first rename: the window itself
        _wrap(monkeypatch, pipeline, "publish", swap)
    elif when == "mid-publish":  # between the .bin's rename and the .idx's (the journal's is the first)
        real, calls = os.replace, []

        def replace(*a, **kw):
            if kw.get("src_dir_fd") is not None:
                calls.append(a)
                if len(calls) == 3:
                    swap()
            return real(*a, **kw)
        monkeypatch.setattr(os, "replace", replace)
    else:
        return {"progress": lambda s: swap() if s.chunks_done >= 3 else None}
    return {}


@pytest.mark.parametrize("when", ["before chunks", "mid-run", "before publish", "mid-publish"])
@pytest.mark.parametrize("which", ANCESTORS)
def test_a_folder_swapped_during_a_run_redirects_nothing(vol, bait, monkeypatch, which, when):
    before = snapshot(bait)
    swap = Swap(vol, which, bait)
    kw = _swap_at(when, swap, monkeypatch)
    with pytest.raises(FolderSwapped) as err:
        _run(vol, **kw)
    monkeypatch.undo()
    assert swap.done
    msg = str(err.value)
    assert f"spec.output.prefix: {which} is a symbolic link to {swap.target}" in msg, msg
    assert "/proc/self/fd" not in msg, msg
    assert snapshot(bait) == before  # nothing written, renamed or deleted outside the claim
    published = when in ("before publish", "mid-publish")  # into the folder the run held (inside the claim)
    held = swap.away / os.path.relpath(vol / "x/y/out", swap.path)
    assert all((held / n).exists() == published for n in FINAL), sorted(os.listdir(held))
    if not published:
        assert "nothing was published" in msg
    swap.restore()
    out = vol / "x/y/out"
    result = _run(vol)  # the folder back: the run goes on from the work it did
    _golden(out)
    man = json.loads((out / "a.manifest.json").read_text())
    if published:
        assert result.reused
    else:
        assert man["stats"]["chunks_reused"] >= (3 if when == "mid-run" else 7 if when == "before chunks" else 0)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(FINAL)
    assert snapshot(bait) == before


@pytest.mark.parametrize("which", ["work folder", "parts folder"])
def test_the_work_folder_swapped_mid_run_redirects_nothing(vol, bait, which):
    """The work folder itself, or its ``parts`` folder (where the parts are written), swapped between two
    chunks."""
    out = vol / "x/y/out"
    before = snapshot(bait)
    box = {}

    def swap(stats):
        if stats.chunks_done >= 3 and not box:
            (work,) = out.glob(".datasetprep-work-a-*")
            box["path"] = path = work / "parts" if which == "parts folder" else work
            os.rename(path, out / "away")
            path.symlink_to(bait / ".datasetprep-work-a-0123456789abcdef")
    with pytest.raises(FolderSwapped) as err:
        _run(vol, progress=swap)
    path = box["path"]
    assert f"{os.path.relpath(path, vol)} is a symbolic link to" in str(err.value), str(err.value)
    assert snapshot(bait) == before
    assert not any((out / n).exists() for n in FINAL)
    path.unlink()
    os.rename(out / "away", path)
    _run(vol)
    _golden(out)
    assert json.loads((out / "a.manifest.json").read_text())["stats"]["chunks_reused"] >= 3
    assert snapshot(bait) == before


@pytest.mark.parametrize("which", ANCESTORS)
def test_a_folder_swapped_during_the_delete_step_deletes_nothing_outside(vol, bait, monkeypatch, which):
    _run(vol)
    out = vol / "x/y/out"
    for n in FINAL:  # the bait holds what a stray delete would take: the very files of the output
        shutil.copy(out / n, bait / os.path.relpath(out, vol / which) / n)
    before = snapshot(bait)
    swap = Swap(vol, which, bait)
    _wrap(monkeypatch, layout, "remove_output", swap)
    with pytest.raises(FolderSwapped) as err:
        runner.delete_output(SPEC, {"data": vol})
    monkeypatch.undo()
    assert f"spec.output.prefix: {which} is a symbolic link to {swap.target}" in str(err.value)
    assert snapshot(bait) == before
    swap.restore()
    assert not any((out / n).exists() for n in FINAL)  # what was deleted was the run's own, in the held folder
    assert runner.delete_output(SPEC, {"data": vol}).deleted_files == 0
    assert snapshot(bait) == before


def test_a_folder_swapped_before_the_delete_step_is_refused(vol, bait):
    _run(vol)
    swap = Swap(vol, "x/y", bait)
    before = snapshot(bait)
    swap()
    with pytest.raises(Exception, match=r"x/y is a symbolic link to"):
        runner.delete_output(SPEC, {"data": vol})
    assert snapshot(bait) == before
    swap.restore()
    assert runner.delete_output(SPEC, {"data": vol}).deleted_files == 3


def test_a_held_folder_names_the_first_folder_that_changed(vol, bait):
    (vol / "x/y/out").mkdir(parents=True)
    with HeldFolder(vol, vol / "x/y/out", "spec.output.prefix", "data") as held:
        held.check()
        assert os.path.samefile(held.path, vol / "x/y/out")
        os.rename(vol / "x", vol / "x2")
        with pytest.raises(FolderSwapped, match=r"spec\.output\.prefix: x was moved away or removed.*now at "
                                                 + re.escape(str(vol / "x2/y/out"))):
            held.check()
        (vol / "x").mkdir()
        with pytest.raises(FolderSwapped, match=r"x was replaced by another folder"):
            held.check()
        (held.path / "f").write_text("held")  # below the held path: the folder it holds, wherever it is now
        assert (vol / "x2/y/out/f").read_text() == "held"
        assert held.show(f"{held.path}/f") == f"{vol / 'x/y/out'}/f"
    with pytest.raises(FolderSwapped, match=r"x/y is a symbolic link"):
        os.rename(vol / "x2/y", vol / "x/y.away")
        (vol / "x/y").symlink_to(bait)
        HeldFolder(vol, vol / "x/y/out", "spec.output.prefix", "data")


def test_forked_workers_write_into_the_held_folder(vol, bait):
    """Two worker processes (forked: they inherit the held descriptors) go on writing their parts into
    the held folders after ``x/y`` is swapped between two chunks; the rerun reuses them."""
    before = snapshot(bait)
    swap = Swap(vol, "x/y", bait)
    with pytest.raises(FolderSwapped, match=r"x/y is a symbolic link to"):
        runner.run_spec(SPEC, {"data": vol}, settings=SETTINGS, workers=2,
                        progress=lambda s: swap() if s.chunks_done >= 2 else None)
    assert snapshot(bait) == before
    parts = list((swap.away / "out").glob(".datasetprep-work-a-*/parts/*.done"))
    assert len(parts) == 7, parts  # every chunk recorded in the held work folder
    swap.restore()
    runner.run_spec(SPEC, {"data": vol}, settings=SETTINGS, workers=2)
    out = vol / "x/y/out"
    _golden(out)
    assert json.loads((out / "a.manifest.json").read_text())["stats"]["chunks_reused"] == 7
