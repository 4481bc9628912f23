"""The blend files Job (datasetprep.blendjob) and the in-pod check (datasetprep check-training-config), on real
datasets written by the engine: the order the operator builds, the files the Job writes, the ConfigMap the
operator then writes, and a trainer's reading of all of it -- including the mistakes it must catch."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blendfixtures import SP, docs, kept, merged, plan_of, write_dataset
from datasetprep import blendformats as fmt
from datasetprep.blendjob import write_blend
from datasetprep.contract import ENV_BLEND, EXIT_PERMANENT, BlendWritten, decode_result
from datasetprep.errors import BinarizeError
from datasetprep.indexed import IndexedDataset, read_header
from datasetprep.trainercheck import check
from datasetprep_operator import blendconfig
from paths import SP_MODEL

SPEC = {"components": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}], "splits": "98,2"}


@pytest.fixture
def volume(tmp_path) -> Path:
    """A claim as the blend's pods mount it: a merged dataset, a kept-shards one (3 shards, one empty), the
    tokenizer."""
    root = tmp_path / "claim"
    wiki = write_dataset(root / "wiki_text_document", docs(40, 30))
    shards = [write_dataset(root / "code" / f"ds_shard{i:05d}_text_document", d)
              for i, d in enumerate((docs(10, 20, 100), [], docs(5, 50, 200)))]
    lines = "".join(f"{s['tokens']} /data/code/ds_shard{i:05d}_text_document\n"
                    for i, s in enumerate(shards) if s["sequences"])  # as the job's own blend list, empty left out
    (root / "code" / "ds_text_document.blend.txt").write_text(lines)
    (root / "tokenizer.model").write_bytes(SP_MODEL.read_bytes())
    root.joinpath("facts.json").write_text(json.dumps({"wiki": wiki, "shards": [s["tokens"] for s in shards]}))
    return root


def _components(volume: Path, *, known: bool = True, wiki_sequences: int | None = None):
    facts = json.loads((volume / "facts.json").read_text())
    w = facts["wiki"]
    wiki = merged("wiki", w["tokens"], documents=w["documents"], sequences=wiki_sequences or w["sequences"])
    code = kept("code", tuple(facts["shards"]), known=known)
    return wiki, code


def _plan(volume: Path, **kw):
    return plan_of(SPEC | {"mountPath": str(volume)}, *_components(volume, **kw))


def _order(volume: Path, plan, keep=()):
    return blendconfig.order(plan, str(volume / "datasetprep-blends" / "mix"), keep)


def test_files_job_checks_expands_and_writes_what_the_operator_expects(volume):
    plan = _plan(volume)
    order = _order(volume, plan)
    written = write_blend(order, log=lambda _: None)
    folder = volume / "datasetprep-blends" / "mix" / order.version
    assert written.blend_folder == str(folder) and written.datasets == 3
    listing = (folder / fmt.DATA_ARGS_FILE).read_text()
    # the operator's own expansion (from status) and the Job's (from the blend list on the volume) agree
    assert listing == blendconfig.expected_listing(plan)
    assert written.listing_sha256 == hashlib.sha256(listing.encode()).hexdigest()
    prefixes, weights = fmt.blend_from_list(listing.split())
    assert prefixes == [str(volume / "wiki_text_document"), str(volume / "code/ds_shard00000_text_document"),
                        str(volume / "code/ds_shard00002_text_document")]
    assert sum(weights) == pytest.approx(1.0, abs=1e-15) and weights[0] == 0.75
    sequences = json.loads((folder / fmt.SEQUENCES_FILE).read_text())
    for p in prefixes:  # what tools/build_sequences_per_dataset.py computes from each header
        ds = IndexedDataset(p)
        assert sequences[p] == [ds.num_sequences, ds.num_documents + 1]


def test_files_job_expands_shards_the_status_could_not_list(volume):
    plan = _plan(volume, known=False)
    written = write_blend(_order(volume, plan), log=lambda _: None)
    assert written.datasets == 3 and blendconfig.expected_listing(plan) is None
    assert Path(written.data_args).read_text() == blendconfig.expected_listing(_plan(volume))


def test_a_wrong_path_fails_the_job_with_its_name(volume):
    (volume / "wiki_text_document.idx").rename(volume / "moved.idx")
    with pytest.raises(BinarizeError, match=r"wiki/text: .*wiki_text_document.idx does not exist"):
        write_blend(_order(volume, _plan(volume)), log=lambda _: None)


def test_counts_that_disagree_with_status_fail_the_job(volume):
    with pytest.raises(BinarizeError, match="sequences, its DatasetPrep says 41"):
        write_blend(_order(volume, _plan(volume, wiki_sequences=41)), log=lambda _: None)
    (volume / "code" / "ds_text_document.blend.txt").write_text("1 /data/code/ds_shard00000_text_document\n")
    with pytest.raises(BinarizeError, match="its data changed since"):
        write_blend(_order(volume, _plan(volume)), log=lambda _: None)


def test_a_truncated_bin_fails_the_header_check(volume):
    with open(volume / "wiki_text_document.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(BinarizeError, match="its index ends at byte"):
        write_blend(_order(volume, _plan(volume)), log=lambda _: None)
    assert read_header(volume / "code" / "ds_shard00000_text_document").documents == 10


def _weights(wiki: float, code: float) -> dict:
    return {"components": [{"datasetPrep": "wiki", "weight": wiki}, {"datasetPrep": "code", "weight": code}]}


def test_versions_are_kept_and_pruned(volume):
    first = _order(volume, _plan(volume))
    write_blend(first, log=lambda _: None)
    assert _order(volume, plan_of(SPEC | {"mountPath": str(volume), "splits": "90,10"}, *_components(volume))
                  ).version == first.version  # --split is not in the files: the same version
    second = _order(volume, plan_of(_weights(2, 1) | {"mountPath": str(volume)}, *_components(volume)),
                    keep=[first.version])
    write_blend(second, log=lambda _: None)
    folder = volume / "datasetprep-blends" / "mix"
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.version, second.version])
    third = _order(volume, plan_of(_weights(1, 1) | {"mountPath": str(volume)}, *_components(volume)),
                   keep=[second.version])
    write_blend(third, log=lambda _: None)
    assert sorted(p.name for p in folder.iterdir()) == sorted([second.version, third.version])
    write_blend(third, log=lambda _: None)  # a retried pod: the same version again
    assert sorted(p.name for p in folder.iterdir()) == sorted([second.version, third.version])


def test_job_entrypoint_writes_a_blend_result(volume, tmp_path):
    order = _order(volume, _plan(volume))
    term = tmp_path / "termination-log"
    env = {"PATH": "/usr/bin:/bin", ENV_BLEND: order.to_json(), "DATASETPREP_TERMINATION_LOG": str(term),
           **{k: os.environ[k] for k in ("PYTHONPATH", "VIRTUAL_ENV") if k in os.environ}}
    p = subprocess.run([sys.executable, "-c", "import sys; from datasetprep.cli import main; sys.exit(main())",
                        "job"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    result = decode_result(term.read_text())
    assert isinstance(result, BlendWritten) and result.datasets == 3
    (volume / "wiki_text_document.bin").unlink()
    p = subprocess.run(p.args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_PERMANENT and "wiki_text_document.bin does not exist" in json.loads(term.read_text())["error"]


# ----------------------------------------------------------------------------------- the in-pod check


def _config_dir(volume: Path, tmp_path: Path, plan) -> Path:
    written = write_blend(_order(volume, plan), log=lambda _: None)
    cm = tmp_path / "configmap"
    cm.mkdir()
    for key, text in blendconfig.config_data(plan, written).items():
        (cm / key).write_text(text)
    return cm


def test_check_reads_every_format_and_opens_every_dataset(volume, tmp_path):
    cm = _config_dir(volume, tmp_path, _plan(volume))
    report = check(cm, log=lambda _: None)
    assert report.formats == ["megatron-args.txt", "nemo2-data.yaml", "megatron-bridge.yaml", "config.yaml"]
    assert report.datasets == 3 and report.vocab_size == SP.vocab_size and report.dtype == "uint16"


def test_check_fails_on_a_wrong_path_in_the_config_map(volume, tmp_path):
    cm = _config_dir(volume, tmp_path, _plan(volume))
    nemo = cm / "nemo2-data.yaml"
    nemo.write_text(nemo.read_text().replace("wiki_text_document", "wikii_text_document"))
    with pytest.raises(BinarizeError, match="nemo2-data.yaml describes another blend"):
        check(cm, log=lambda _: None)


def test_check_fails_on_a_missing_dataset(volume, tmp_path):
    cm = _config_dir(volume, tmp_path, _plan(volume))
    (volume / "code" / "ds_shard00002_text_document.idx").unlink()
    with pytest.raises(BinarizeError, match="ds_shard00002_text_document.idx does not exist"):
        check(cm, log=lambda _: None)


def test_check_fails_on_a_stale_sequences_file(volume, tmp_path):
    cm = _config_dir(volume, tmp_path, _plan(volume))
    args = fmt.megatron_args((cm / "megatron-args.txt").read_text())
    seq = Path(args["sequences_path"])
    doc = json.loads(seq.read_text())
    doc[next(iter(doc))][0] += 1
    seq.write_text(json.dumps(doc))
    with pytest.raises(BinarizeError, match="the sequences file says"):
        check(cm, log=lambda _: None)


def test_check_fails_when_the_blend_files_are_not_mounted(volume, tmp_path):
    cm = _config_dir(volume, tmp_path, _plan(volume))
    args = cm / "megatron-args.txt"
    args.write_text(args.read_text().replace(str(volume), "/nowhere"))
    with pytest.raises(BinarizeError, match="cannot read /nowhere/.*is its claim mounted"):
        check(cm, log=lambda _: None)


# ----------------------------------------------------------------------------------- confinement (issue 12 item 3)


def _confined_order(volume: Path):
    plan = _plan(volume)
    return blendconfig.order(plan, str(volume / "datasetprep-blends" / "mix"), root=str(volume))


def test_a_blend_folder_through_a_planted_link_is_refused(volume, tmp_path):
    """``datasetprep-blends`` replaced by a link to a folder outside the claim: the Job fails naming the
    field and the link, and writes nothing there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (volume / "datasetprep-blends").symlink_to(outside)
    with pytest.raises(BinarizeError, match=r"spec\.files\.path: datasetprep-blends/mix leaves folder .*: "
                                            r"datasetprep-blends is a symbolic link to .*outside"):
        write_blend(_confined_order(volume), log=lambda _: None)
    assert list(outside.iterdir()) == []


def test_a_version_name_planted_as_a_link_is_replaced_not_followed(volume, tmp_path):
    """A link with the version's name (or an older version's) pointing outside: the link is replaced or left,
    what it points at is never written or deleted."""
    outside = tmp_path / "outside"
    (outside / "keepme").mkdir(parents=True)
    order = _confined_order(volume)
    folder = volume / "datasetprep-blends" / "mix"
    folder.mkdir(parents=True)
    (folder / order.version).symlink_to(outside)
    (folder / ("0" * 16)).symlink_to(outside / "keepme")  # looks like an older version to prune
    write_blend(order, log=lambda _: None)
    assert (folder / order.version).is_dir() and not (folder / order.version).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keepme"] and (outside / "keepme").is_dir()


def test_the_operator_names_the_files_claim_s_mount_as_the_root(volume):
    plan = _plan(volume)
    assert blendconfig.order(plan, "/data/b", root="/data").root == "/data"
    assert blendconfig.order(plan, "/data/b").version == blendconfig.order(plan, "/data/b", root="/data").version


def _writer(order, paused, go, results):
    """A files Job in a forked process; ``paused``: it stops after its first file until ``go``."""
    import datasetprep.blendjob as blendjob

    real = blendjob.write_text

    def write(path, text):
        real(path, text)
        if paused is not None and not paused.is_set():
            paused.set()
            go.wait(60)
    blendjob.write_text = write
    try:
        write_blend(order, log=lambda _: None, lock_wait=60)
        results.put((order.version, "ok"))
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put((order.version, repr(e)))


def test_two_files_jobs_on_one_folder_keep_their_hands_off_each_other(volume):
    """A version's Job and its successor's write one folder side by side (the older one still writing
    when the newer starts): the newer waits for the folder's lock instead of deleting the other's
    temporary; both end well, both versions are complete, no temporary is left. A Job that may not
    wait is refused, naming the one that writes."""
    first = _confined_order(volume)
    second = blendconfig.order(plan_of(_weights(2, 1) | {"mountPath": str(volume)}, *_components(volume)),
                               str(volume / "datasetprep-blends" / "mix"), [first.version], root=str(volume))
    ctx = multiprocessing.get_context("fork")
    paused, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    a = ctx.Process(target=_writer, args=(first, paused, go, results))
    a.start()
    try:
        assert paused.wait(60)
        folder = volume / "datasetprep-blends" / "mix"
        (tmp,) = [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
        b = ctx.Process(target=_writer, args=(second, None, None, results))
        b.start()
        with pytest.raises(BinarizeError, match=r"in use by datasetprep job \(DatasetBlend files\) \(pid "
                                                + str(a.pid)):
            write_blend(second, log=lambda _: None)
        time.sleep(1.0)  # the successor's Job is running now: it must not touch the temporary
        assert tmp.is_dir() and b.is_alive()
    finally:
        go.set()
    a.join(60)
    b.join(60)
    assert sorted(results.get(timeout=10) for _ in range(2)) == sorted([(first.version, "ok"), (second.version, "ok")])
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.version, second.version])
    for order in (first, second):
        assert (folder / order.version / fmt.SEQUENCES_FILE).is_file()


def test_a_folder_above_the_blend_folder_swapped_mid_write_redirects_nothing(volume, tmp_path, monkeypatch):
    import datasetprep.blendjob as blendjob

    bait = tmp_path / "outside"
    (bait / "mix" / ("0" * 16)).mkdir(parents=True)  # an "older version" a stray prune would delete
    order = _confined_order(volume)
    swapped = volume / "datasetprep-blends"
    real = blendjob.write_text

    def write(path, text):
        if not swapped.is_symlink():
            os.rename(swapped, volume / "away")
            swapped.symlink_to(bait)
        real(path, text)
    monkeypatch.setattr(blendjob, "write_text", write)
    with pytest.raises(BinarizeError, match=r"spec\.files\.path: datasetprep-blends is a symbolic link to "):
        write_blend(order, log=lambda _: None)
    monkeypatch.undo()
    assert sorted(str(p.relative_to(bait)) for p in bait.rglob("*")) == ["mix", f"mix/{'0' * 16}"]
    swapped.unlink()
    os.rename(volume / "away", swapped)
    write_blend(order, log=lambda _: None)
    assert sorted(p.name for p in (swapped / "mix").iterdir()) == [order.version]


def test_a_version_s_job_finishing_after_its_successor_s_does_not_prune_it(volume, monkeypatch):
    """The older Job is slow (here: stopped while it checks the datasets); its successor's Job writes the
    newer version meanwhile; the older one then writes its own and prunes only what was there when it
    started -- the newer version stays (the training ConfigMap names it)."""
    import datasetprep.blendjob as blendjob

    first = _confined_order(volume)
    second = blendconfig.order(plan_of(_weights(2, 1) | {"mountPath": str(volume)}, *_components(volume)),
                               str(volume / "datasetprep-blends" / "mix"), [first.version], root=str(volume))
    zero = volume / "datasetprep-blends" / "mix" / ("0" * 16)
    zero.mkdir(parents=True)  # an old version, there before both: pruned
    real = blendjob.expand

    def slow(order, *a, **kw):
        if order is first:
            monkeypatch.setattr(blendjob, "expand", real)
            write_blend(second, log=lambda _: None)
        return real(order, *a, **kw)
    monkeypatch.setattr(blendjob, "expand", slow)
    write_blend(first, log=lambda _: None)
    assert sorted(p.name for p in zero.parent.iterdir()) == sorted([first.version, second.version])


# ----------------------------------------------------------------------------- a files folder shared by blends


def _blend(volume: Path, owner: str, generation: int, wiki: float, code: float, keep=()):
    """The order of blend ``owner`` at ``generation`` (weights ``wiki``:``code``), in one shared folder."""
    return blendconfig.order(plan_of(_weights(wiki, code) | {"mountPath": str(volume)}, *_components(volume)),
                             str(volume / "shared-files"), keep, root=str(volume), owner=owner, generation=generation)


def _listing(volume: Path) -> list[str]:
    return sorted(p.name for p in (volume / "shared-files").iterdir() if not p.name.startswith(".datasetprep-lock"))


def test_two_blends_sharing_a_files_folder_never_prune_each_other_s_versions(volume):
    """Two DatasetBlends name one ``spec.files.path``. Each keeps changing; each prunes only its own
    older versions, never the other's current one (which its training ConfigMap names)."""
    a1 = _blend(volume, "uid-a", 1, 3, 1)
    b1 = _blend(volume, "uid-b", 1, 1, 3)
    for o in (a1, b1):
        write_blend(o, log=lambda _: None)
    a2 = _blend(volume, "uid-a", 2, 2, 1, keep=[a1.version])
    write_blend(a2, log=lambda _: None)
    assert _listing(volume) == sorted([a1.version, a2.version, b1.version])
    a3 = _blend(volume, "uid-a", 3, 1, 1, keep=[a2.version])
    write_blend(a3, log=lambda _: None)
    assert _listing(volume) == sorted([a2.version, a3.version, b1.version])  # a1 went, b1 stays
    b2 = _blend(volume, "uid-b", 2, 1, 2, keep=[b1.version])
    b3 = _blend(volume, "uid-b", 3, 1, 4, keep=[b2.version])
    write_blend(b2, log=lambda _: None)
    write_blend(b3, log=lambda _: None)
    assert _listing(volume) == sorted([a2.version, a3.version, b2.version, b3.version])
    for o in (a2, a3, b2, b3):
        assert (volume / "shared-files" / o.version / fmt.SEQUENCES_FILE).is_file()


def test_a_version_s_job_starting_after_its_successor_wrote_does_not_prune_it(volume):
    """The older generation's pod runs only after the newer one's Job wrote its version (both keep the
    version the ConfigMap names): the newer version is there when the older Job starts, and stays."""
    a0 = _blend(volume, "uid-a", 1, 3, 1)
    write_blend(a0, log=lambda _: None)
    newer = _blend(volume, "uid-a", 3, 1, 1, keep=[a0.version])
    older = _blend(volume, "uid-a", 2, 2, 1, keep=[a0.version])
    write_blend(newer, log=lambda _: None)
    write_blend(older, log=lambda _: None)
    assert _listing(volume) == sorted([a0.version, newer.version, older.version])
    # the next generation prunes both of the older ones it does not keep
    last = _blend(volume, "uid-a", 4, 1, 5, keep=[newer.version])
    write_blend(last, log=lambda _: None)
    assert _listing(volume) == sorted([newer.version, last.version])


def test_a_version_two_blends_wrote_goes_when_the_last_of_them_prunes_it(volume):
    """The same lists in one folder: one version (a content address) with both blends' marks. Written
    again by the second blend, it is not replaced (no moment without it); the first blend's change takes
    only its own mark; the second's takes the folder."""
    a1 = _blend(volume, "uid-a", 1, 3, 1)
    b1 = _blend(volume, "uid-b", 7, 3, 1)
    assert a1.version == b1.version
    write_blend(a1, log=lambda _: None)
    inode = (volume / "shared-files" / a1.version / fmt.SEQUENCES_FILE).stat().st_ino
    write_blend(b1, log=lambda _: None)
    shared = volume / "shared-files" / a1.version
    assert (shared / fmt.SEQUENCES_FILE).stat().st_ino == inode
    assert sorted(p.name for p in shared.glob(".datasetprep-owner-*")) == [".datasetprep-owner-uid-a",
                                                                          ".datasetprep-owner-uid-b"]
    a2 = _blend(volume, "uid-a", 2, 2, 1, keep=[a1.version])
    a3 = _blend(volume, "uid-a", 3, 1, 1, keep=[a2.version])
    write_blend(a2, log=lambda _: None)
    write_blend(a3, log=lambda _: None)
    assert shared.is_dir() and [p.name for p in shared.glob(".datasetprep-owner-*")] == [".datasetprep-owner-uid-b"]
    b2 = _blend(volume, "uid-b", 8, 1, 2, keep=[])
    write_blend(b2, log=lambda _: None)
    assert not shared.exists()


def test_versions_without_an_owner_mark_are_left_and_said(volume):
    """A version an older operator's Job wrote (no mark): the new Job leaves it and says so."""
    old = _blend(volume, None, None, 3, 1)
    write_blend(old, log=lambda _: None)
    said = []
    write_blend(_blend(volume, "uid-a", 2, 1, 1), log=said.append)
    assert old.version in _listing(volume)
    assert any("without an owner mark" in m and old.version in m for m in said), said


def test_a_same_named_version_with_a_planted_link_inside_is_replaced_not_kept(volume, tmp_path):
    """A version folder whose files equal the order's but one is a link (to a file outside the claim with the
    same text): it is written anew, the link never kept or followed for writing."""
    a1 = _blend(volume, "uid-a", 1, 3, 1)
    write_blend(a1, log=lambda _: None)
    final = volume / "shared-files" / a1.version
    outside = tmp_path / "outside.json"
    outside.write_bytes((final / fmt.SEQUENCES_FILE).read_bytes())
    (final / fmt.SEQUENCES_FILE).unlink()
    (final / fmt.SEQUENCES_FILE).symlink_to(outside)
    write_blend(_blend(volume, "uid-b", 1, 3, 1), log=lambda _: None)
    assert not (final / fmt.SEQUENCES_FILE).is_symlink()
    assert sorted(p.name for p in final.glob(".datasetprep-owner-*")) == [".datasetprep-owner-uid-a",
                                                                         ".datasetprep-owner-uid-b"]
