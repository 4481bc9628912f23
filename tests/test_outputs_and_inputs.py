"""The input can be neither overwritten nor read back (issue 11 item 6): an output that would replace
an input (by name, link or hard link) is refused before any work, and what datasetprep wrote
(manifests, work folders, the Hub cache) is never picked up when a folder or glob is expanded."""
from __future__ import annotations

import json
import os

import pytest

from datasetprep import cli, readers
from paths import CORPUS_A, SP_MODEL

SP = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(SP_MODEL), "--append-eod",
      "--workers", "1", "--no-progress"]


def _jsonl(path, n=30):
    lines = CORPUS_A.read_text().splitlines(keepends=True)[:n]
    path.write_text("".join(lines))
    return path.read_bytes()


@pytest.mark.parametrize("how", ["same name", "hard link", "symbolic link"])
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, how):
    """``--input x.manifest.json --output-prefix x --overwrite`` (the input is JSON Lines that happens
    to carry the manifest's name, or a link to the input under it): refused, the input intact."""
    data = _jsonl(tmp_path / "data.jsonl")
    target = tmp_path / "x.manifest.json"
    if how == "same name":
        os.replace(tmp_path / "data.jsonl", target)
        src = target
    elif how == "hard link":
        os.link(tmp_path / "data.jsonl", target)
        src = tmp_path / "data.jsonl"
    else:
        target.symlink_to(tmp_path / "data.jsonl")
        src = tmp_path / "data.jsonl"
    code = cli.main(["binarize", "--input", str(src), "--output-prefix", str(tmp_path / "x"), "--overwrite", *SP])
    err = capsys.readouterr().err
    assert code == 1 and "is also an output of this run" in err and "x.manifest.json" in err, err
    assert src.read_bytes() == data and (target.is_symlink() or target.read_bytes() == data)
    assert not list(tmp_path.glob("x_*")) and not list(tmp_path.glob(".datasetprep-work-*"))


def test_an_output_inside_an_input_folder_is_not_read_back(tmp_path, capsys):
    """Run 1 writes its dataset (and manifest) into the folder it reads; run 2 reads the same folder:
    the same documents, not the manifest as one more JSON input."""
    folder = tmp_path / "data"
    folder.mkdir()
    _jsonl(folder / "part-1.jsonl", 20)
    assert cli.main(["binarize", "--input", str(folder), "--output-prefix", str(folder / "x"), *SP]) == 0
    assert (folder / "x.manifest.json").exists()
    assert cli.main(["binarize", "--input", str(folder), "--output-prefix", str(tmp_path / "y"), *SP]) == 0
    assert cli.main(["binarize", "--input", str(folder / "*.json*"), "--output-prefix", str(tmp_path / "z"), *SP]) == 0
    first, second, third = (json.loads((p).read_text()) for p in
                            (folder / "x.manifest.json", tmp_path / "y.manifest.json", tmp_path / "z.manifest.json"))
    assert first["outputs"][0]["documents"] == second["outputs"][0]["documents"] == third["outputs"][0]["documents"] == 20
    assert second["input"]["files"] == [str(folder / "part-1.jsonl")] == third["input"]["files"]


def test_our_own_files_are_never_inputs(tmp_path):
    """Work folders, the Hub cache (``.datasetprep/``) and manifests in a folder are skipped; a
    JSON Lines file that merely ends in ``.manifest.json`` is data."""
    d = tmp_path / "d"
    for rel in ("a.jsonl", ".datasetprep/hub-cache/datasets/x/file.jsonl", ".datasetprep-work-x-0123456789abcdef/p.jsonl",
                "sub/b.jsonl"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        _jsonl(d / rel, 2)
    (d / "x.manifest.json").write_text(json.dumps({"kind": "datasetprep.io/manifest"}, indent=2))
    _jsonl(d / "notes.manifest.json", 2)  # not ours: its content says so
    got = sorted(str(p.relative_to(d)) for p in readers.expand_inputs([str(d)]))
    assert got == ["a.jsonl", "notes.manifest.json", "sub/b.jsonl"]
    got = sorted(str(p.relative_to(d)) for p in readers.expand_inputs([str(d / "*.json")]))
    assert got == ["notes.manifest.json"]
