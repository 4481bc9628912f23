"""Every path a run reads, writes or deletes stays inside its claim, on the volume too (issue 12
item 3): a symbolic link on the volume that leads elsewhere is refused with a message naming the
spec field and the link, and nothing outside the claim is read, written or deleted.

``datasetprep run -f --volume data=DIR`` and ``datasetprep job`` (the ``run_job`` fixture runs it as a
pod does) share the runner, so each escape is tried through one of them, the job where a pod matters.
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from datasetprep import cli, pipeline, tokenization
from datasetprep.contract import EXIT_PERMANENT
from datasetprep.spec import parse_spec
from datasetprep.volumes import ConfinementError, Volumes
from paths import CORPUS_A, GOLDEN, SP_MODEL, make_volume, volume_manifest

MANIFEST = volume_manifest("conf", "out/a", workers=1)
G = GOLDEN / "a_spbpe_eod_text_document"


@pytest.fixture
def vol(tmp_path):
    (tmp_path / "vol").mkdir()
    return make_volume(tmp_path / "vol", MANIFEST)


@pytest.fixture
def outside(tmp_path):
    o = tmp_path / "outside"
    o.mkdir()
    (o / "passwd").write_text("root:x:0:0\n")
    return o


def _run(vol, capsys, *extra):
    code = cli.main(["run", "-f", str(vol / "dsp.yaml"), "--volume", f"data={vol}", "--no-progress", *extra])
    return code, capsys.readouterr()


def _spec():
    return yaml.safe_load(MANIFEST)["spec"]


def _untouched(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"] and (outside / "passwd").read_text() == "root:x:0:0\n"


def test_output_prefix_through_a_symlinked_folder_is_refused(vol, outside, capsys, run_job):
    (vol / "out").symlink_to(outside)
    code, out = _run(vol, capsys)
    assert code == 1
    assert ("spec.output.prefix: out/a leaves claim 'data'" in out.err and f"out is a symbolic link to {outside}"
            in out.err), out.err
    p, msg = run_job(vol, _spec())
    assert p.returncode == EXIT_PERMANENT  # a planted link is not fixed by a retry: the Job stops at once
    assert "spec.output.prefix" in msg["error"] and "out is a symbolic link" in msg["error"]
    _untouched(outside)


def test_a_symlinked_final_name_is_refused_and_its_target_untouched(vol, outside, capsys, run_job):
    (vol / "out").mkdir()
    (vol / "out" / "a_text_document.bin").symlink_to(outside / "passwd")
    p, msg = run_job(vol, _spec())
    assert p.returncode == EXIT_PERMANENT, msg
    assert "out/a_text_document.bin is a symbolic link to" in msg["error"] and "outside claim 'data'" in msg["error"]
    _untouched(outside)
    # without a claim (``binarize``) the publish renames over the link: the link goes, its target stays
    assert cli.main(["binarize", "--input", str(CORPUS_A), "--output-prefix", str(vol / "out" / "a"),
                     "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(SP_MODEL),
                     "--append-eod", "--workers", "1", "--no-progress", "--overwrite"]) == 0
    assert (vol / "out" / "a_text_document.bin").read_bytes() == G.with_suffix(".bin").read_bytes()
    _untouched(outside)


def test_a_link_planted_between_two_runs(vol, outside, capsys, run_job):
    """Run 1 publishes; the output folder is then swapped for a link to a copy elsewhere: run 2 (with
    other settings, allowed to replace) and the clean-up both refuse, and touch nothing there."""
    p, msg = run_job(vol, _spec())
    assert msg["ok"], p.stdout + p.stderr
    shutil.move(vol / "out", outside / "out")
    (vol / "out").symlink_to(outside / "out")
    before = {q.name: q.read_bytes() for q in (outside / "out").iterdir() if q.is_file()}
    spec = _spec() | {"appendEod": False}
    p, msg = run_job(vol, spec)
    assert p.returncode == EXIT_PERMANENT and "out is a symbolic link to" in msg["error"], msg
    p, msg = run_job(vol, spec, "delete")
    assert p.returncode == EXIT_PERMANENT and "out is a symbolic link to" in msg["error"], msg
    assert {q.name: q.read_bytes() for q in (outside / "out").iterdir() if q.is_file()} == before


def test_delete_data_leaves_a_listed_name_that_became_a_link(vol, outside, run_job):
    """The manifest lists ``a_text_document.bin``; someone replaced it with a link to a file outside:
    the clean-up deletes the other files, leaves the link (and what it points at) alone."""
    p, msg = run_job(vol, _spec())
    assert msg["ok"]
    out = vol / "out"
    (out / "a_text_document.bin").unlink()
    (out / "a_text_document.bin").symlink_to(outside / "passwd")
    p, msg = run_job(vol, _spec(), "delete")
    assert msg["ok"] and msg["deleted_files"] == 2, p.stdout + p.stderr  # the .idx and the manifest
    assert "left" in p.stdout and "a_text_document.bin alone: it is a symbolic link" in p.stdout
    assert sorted(q.name for q in out.iterdir()) == ["a_text_document.bin"]
    _untouched(outside)


class Crash(Exception):
    pass


def _crashed_run(folder, n=3):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)

    def cb(stats):
        if stats.chunks_done >= n:
            raise Crash()

    req = pipeline.Request(inputs=[CORPUS_A], output_prefix=str(folder / "a"), tokenizer=cfg, append_eod=True,
                           chunk_bytes=300_000, workers=1, progress=cb)  # no claim: these protections hold anyway
    with pytest.raises(Crash):
        pipeline.run(req)
    req.progress = None
    (work,) = folder.glob(".datasetprep-work-a-*")
    return req, work


def test_links_inside_the_work_folder_are_never_followed(tmp_path, outside):
    """A part file, and a chunk record, replaced by links to files outside: the rerun neither reads
    nor writes through them (the record is not trusted, the part is made anew), and the output is
    the golden one."""
    folder = tmp_path / "claim"
    folder.mkdir()
    req, work = _crashed_run(folder)
    parts = work / "parts"
    (parts / "00000004.0.bin").symlink_to(outside / "passwd")  # a part the rerun will write (chunk 4 of 7)
    (parts / "00000001.done").unlink()
    (parts / "00000001.done").symlink_to(outside / "passwd")  # a record the rerun would read
    m = pipeline.run(req)
    assert m.stats.chunks_reused == 2
    assert (folder / "a_text_document.bin").read_bytes() == G.with_suffix(".bin").read_bytes()
    _untouched(outside)


@pytest.mark.parametrize("which", ["work folder", "parts folder"])
def test_a_work_folder_that_is_a_link_is_refused(tmp_path, outside, which):
    folder = tmp_path / "claim"
    folder.mkdir()
    req, work = _crashed_run(folder)
    victim = work / "parts" if which == "parts folder" else work
    shutil.rmtree(victim)
    victim.symlink_to(outside)
    with pytest.raises(Exception, match="symbolic link|not a folder"):
        pipeline.run(req)
    _untouched(outside)


def test_a_symlinked_input_glob_match_is_refused(vol, outside, capsys):
    (outside / "secret.jsonl").write_text('{"text": "not yours"}\n')
    (vol / "raw" / "zz.jsonl").symlink_to(outside / "secret.jsonl")
    code, out = _run(vol, capsys)
    assert code == 1
    assert "spec.source.files.paths: raw/zz.jsonl leaves claim 'data'" in out.err, out.err
    assert "raw/zz.jsonl is a symbolic link to" in out.err and not (vol / "out").exists()


def test_a_tokenizer_path_through_a_link_is_refused(vol, outside, capsys):
    shutil.move(vol / "tok", outside / "tok")
    (vol / "tok").symlink_to(outside / "tok")
    code, out = _run(vol, capsys)
    assert code == 1
    assert "spec.tokenizer.path.path: tok/tokenizer.model leaves claim 'data'" in out.err, out.err
    assert "tok is a symbolic link to" in out.err


def test_links_that_stay_inside_the_claim_are_fine(vol, capsys):
    """A link is not wrong in itself: one that resolves inside the claim is followed."""
    (vol / "data-v2").mkdir()
    (vol / "out").symlink_to("data-v2")
    (vol / "tok2").symlink_to("tok")
    (vol / "dsp.yaml").write_text(MANIFEST.replace("tok/tokenizer.model", "tok2/tokenizer.model"))
    code, out = _run(vol, capsys)
    assert code == 0, out.err
    assert (vol / "data-v2" / "a_text_document.bin").read_bytes() == G.with_suffix(".bin").read_bytes()
    man = json.loads((vol / "data-v2" / "a.manifest.json").read_text())
    assert man["source"]["files"] == ["raw/corpus_a.jsonl"]


def test_the_hub_cache_through_a_link_is_refused(vol, outside):
    (vol / ".datasetprep").symlink_to(outside)
    vols = Volumes(parse_spec(_spec()), {"data": vol})
    with pytest.raises(ConfinementError, match=r"\.datasetprep/hub-cache leaves claim 'data'.*\.datasetprep is a "
                                               r"symbolic link"):
        vols.state("hub-cache")


def test_run_confines_its_volume_folders_too(tmp_path, outside, capsys):
    """``run -f`` with ``--volume``: a claim's folder may itself be a link (it is the mount); what
    lies inside it is held to it."""
    real = tmp_path / "real"
    real.mkdir()
    make_volume(real, MANIFEST)
    (tmp_path / "mount").symlink_to(real)
    (real / "out").symlink_to(outside)
    code = cli.main(["run", "-f", str(real / "dsp.yaml"), "--volume", f"data={tmp_path / 'mount'}", "--no-progress"])
    assert code == 1 and "out is a symbolic link to" in capsys.readouterr().err
    _untouched(outside)
