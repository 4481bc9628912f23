"""datasetprep.hub against a local fake Hub (tests/hubserver.py), with the real HF client code."""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
import random
import subprocess
import sys
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datasetprep import hub
from datasetprep.spec import DatasetPrepSpec, HubDatasetSource, HubTokenizerSource
from hubserver import (
    CSV_EXPORT_SHA,
    CSV_REPO,
    FLAKY_FILE,
    FLAKY_REPO,
    FLAKY_SHA,
    GATED_DATASET_REPO,
    GATED_MODEL_REPO,
    GATED_MODEL_SHA,
    GOOD_TOKEN,
    LAYOUT_REPO,
    LAYOUT_SHA,
    LAYOUTS,
    MISSING_REPO,
    PRIVATE_REPO,
    SPM_MODEL_REPO,
    SPM_MODEL_SHA,
    TINY_OLD_SHA,
    TINY_REPO,
    TINY_SHA,
    WRONG_TOKEN,
)

pytestmark = pytest.mark.timeout(60)

AVAILABLE_TINY = "Available subsets and splits: en (train, validation); fr (train, validation)"


class Sleeps:
    """An injectable sleep: records the delays, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, d: float) -> None:
        self.delays.append(d)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def fast(sleeps: Sleeps) -> hub.RetryPolicy:
    return hub.RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05, total_timeout=10, sleep=sleeps)


def _src(**kw) -> HubDatasetSource:
    kw.setdefault("repo", TINY_REPO)
    return HubDatasetSource(**kw)


def _read_records(path: Path) -> list[dict]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- resolve / download


def test_download_gives_the_served_bytes_and_records_the_sha(fake_hub, tmp_path, fast):
    r = hub.resolve_dataset(_src(), None, retry=fast)
    assert (r.sha, r.revision_sha, r.revision) == (TINY_SHA, TINY_SHA, "main")
    assert (r.subset, r.split, r.source) == ("en", "train", "configs")  # the README's default subset
    assert [f.path for f in r.files] == ["en/train-00000-of-00002.parquet", "en/train-00001-of-00002.parquet"]
    assert r.available == {"en": ["train", "validation"], "fr": ["train", "validation"]}
    assert all(f.size and f.sha256 for f in r.files)  # LFS files: size and sha256 from paths-info

    paths = hub.download_dataset(r, tmp_path / "cache", None, retry=fast)
    root = tmp_path / "cache" / "datasets" / "acme--tiny-corpus" / TINY_SHA
    assert paths == [root / f.path for f in r.files]
    for p, f in zip(paths, r.files):
        assert p.read_bytes() == fake_hub.data.file(TINY_REPO, f.path).data
    recs = [x for p in paths for x in _read_records(p)]
    assert recs == fake_hub.data.records[(TINY_REPO, "en", "train")]
    # revision -> sha recorded for offline replay; no temp files left behind, only the stamps that
    # remember each file was verified against its listed sha256
    assert (tmp_path / "cache/datasets/acme--tiny-corpus/refs/main").read_text() == TINY_SHA
    hidden = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.name.startswith("."))
    assert hidden == [f"en/.{p.name}.verified" for p in paths]
    # LFS content came from the "CDN" origin, and the Authorization header never went there
    assert fake_hub.count("GET", "/cdn/") == 2


@pytest.mark.parametrize("subset,split", [("fr", "train"), ("fr", "validation"), ("en", "validation")])
def test_download_jsonl_and_gz_subsets(fake_hub, tmp_path, fast, subset, split):
    r = hub.resolve_dataset(_src(subset=subset, split=split), None, retry=fast)
    paths = hub.download_dataset(r, tmp_path, None, retry=fast)
    for p, f in zip(paths, r.files):
        assert p.read_bytes() == fake_hub.data.file(TINY_REPO, f.path).data
    assert [x for p in paths for x in _read_records(p)] == fake_hub.data.records[(TINY_REPO, subset, split)]


def test_second_download_makes_no_request_even_from_a_new_process(fake_hub, tmp_path, fast):
    cache = tmp_path / "cache"
    r = hub.resolve_dataset(_src(), None, retry=fast)
    first = hub.download_dataset(r, cache, None, retry=fast)
    assert fake_hub.file_downloads() == 4  # 2 x (302 from /resolve + GET on the CDN)

    fake_hub.reset()
    assert hub.download_dataset(r, cache, None, retry=fast) == first
    assert fake_hub.requests == []

    # A new process (another pod on the same volume) with the resolution passed as JSON.
    code = (
        "import json, sys\n"
        "from datasetprep import hub\n"
        "r = hub.ResolvedDataset.from_dict(json.loads(sys.argv[1]))\n"
        "print(json.dumps([str(p) for p in hub.download_dataset(r, sys.argv[2], None)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(r.to_dict()), str(cache)], check=True,
                         capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [str(p) for p in first]
    assert fake_hub.requests == []


def test_a_file_is_downloaded_only_if_missing_or_incomplete(fake_hub, tmp_path, fast):
    r = hub.resolve_dataset(_src(), None, retry=fast)
    paths = hub.download_dataset(r, tmp_path, None, retry=fast)
    paths[1].write_bytes(b"truncated")  # e.g. someone tampered with it
    paths[0].unlink()
    fake_hub.reset()
    hub.download_dataset(r, tmp_path, None, retry=fast)
    assert fake_hub.file_downloads() == 4
    for p, f in zip(paths, r.files):
        assert p.read_bytes() == fake_hub.data.file(TINY_REPO, f.path).data


def test_revisions_are_cached_apart(fake_hub, tmp_path, fast):
    old = hub.resolve_dataset(_src(revision="old"), None, retry=fast)
    new = hub.resolve_dataset(_src(revision="v1.0"), None, retry=fast)
    assert (old.sha, new.sha) == (TINY_OLD_SHA, TINY_SHA)
    p_old = hub.download_dataset(old, tmp_path, None, retry=fast)
    p_new = hub.download_dataset(new, tmp_path, None, retry=fast)
    assert [x for p in p_old for x in _read_records(p)] == fake_hub.data.records[(TINY_REPO + "@old", "en", "train")]
    assert len([x for p in p_new for x in _read_records(p)]) == 17
    assert p_old[0].parent.parent != p_new[0].parent.parent


def test_sha_revision_already_cached_needs_no_network(fake_hub, tmp_path, fast):
    cache = tmp_path / "cache"
    r = hub.resolve_dataset(_src(revision=TINY_SHA), None, cache_dir=cache, retry=fast)
    hub.download_dataset(r, cache, None, retry=fast)
    fake_hub.reset()
    again = hub.resolve_dataset(_src(revision=TINY_SHA), None, cache_dir=cache, retry=fast)
    assert again == r
    hub.download_dataset(again, cache, None, retry=fast)
    assert fake_hub.requests == []


def test_checksum_mismatch_is_retried_then_reported_and_nothing_is_left(fake_hub, tmp_path, monkeypatch, fast):
    r = hub.resolve_dataset(_src(subset="fr"), None, retry=fast)
    served = fake_hub.data.file(TINY_REPO, "fr/train-00000-of-00001.jsonl")
    monkeypatch.setattr(served, "data", served.data.replace(b"le", b"LE"))  # same size, other content
    with pytest.raises(hub.HubUnavailableError, match="checksum mismatch"):
        hub.download_dataset(r, tmp_path, None, retry=fast)
    assert fake_hub.count("GET", "fr/train-00000-of-00001.jsonl") == 5
    root = hub.dataset_cache_dir(tmp_path, r)
    assert not any(p.is_file() for p in root.rglob("*"))  # no partial or unverified file


# ------------------------------------------------------------------------------------- layouts


def test_conventional_layout_without_configs(fake_hub, tmp_path, fast):
    r = hub.resolve_dataset(_src(repo=LAYOUT_REPO), None, retry=fast)
    assert (r.sha, r.subset, r.source) == (LAYOUT_SHA, None, "layout")
    assert [f.path for f in r.files] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert r.available == {"default": ["train", "test"], "extra": ["train"]}
    t = hub.resolve_dataset(_src(repo=LAYOUT_REPO, split="test"), None, retry=fast)
    assert [f.path for f in t.files] == ["data/test-00000-of-00001.parquet"]
    e = hub.resolve_dataset(_src(repo=LAYOUT_REPO, subset="extra"), None, retry=fast)
    assert [f.path for f in e.files] == ["extra/train-00000-of-00001.jsonl"]
    recs = [x for p in hub.download_dataset(e, tmp_path, None, retry=fast) for x in _read_records(p)]
    assert recs == fake_hub.data.records[(LAYOUT_REPO, "extra", "train")]


def test_csv_repo_falls_back_to_the_parquet_export(fake_hub, tmp_path, fast):
    r = hub.resolve_dataset(_src(repo=CSV_REPO), None, retry=fast)
    assert (r.sha, r.data_revision, r.source) == (CSV_EXPORT_SHA, hub.PARQUET_EXPORT_REVISION, "parquetExport")
    assert [f.path for f in r.files] == ["default/train/0000.parquet"]
    assert r.notes and "refs/convert/parquet" in r.notes[0]
    recs = [x for p in hub.download_dataset(r, tmp_path, None, retry=fast) for x in _read_records(p)]
    assert recs == fake_hub.data.records[(CSV_REPO, None, "train")]


def test_data_files_patterns(fake_hub, fast):
    r = hub.resolve_dataset(_src(data_files=["fr/*.jsonl", "**/validation-*.jsonl.gz"]), None, retry=fast)
    assert [f.path for f in r.files] == ["fr/train-00000-of-00001.jsonl", "fr/validation-00000-of-00001.jsonl.gz"]
    assert r.source == "dataFiles"
    with pytest.raises(hub.HubNotFoundError) as e:
        hub.resolve_dataset(_src(data_files=["de/*.parquet"]), None, retry=fast)
    assert str(e.value).startswith(hub.NOT_FOUND_DATASET)
    assert "en/train-00000-of-00002.parquet" in str(e.value)  # shows what is there


#: (repo, commit, our subset, the datasets library's arguments for the same subset)
RESOLUTION_CASES = [
    (TINY_REPO, TINY_SHA, "en", {"name": "en"}),
    (TINY_REPO, TINY_SHA, "fr", {"name": "fr"}),
    (LAYOUT_REPO, LAYOUT_SHA, None, {}),
    (LAYOUT_REPO, LAYOUT_SHA, "extra", {"data_dir": "extra"}),
    *[(repo, sha, None, {}) for repo, (sha, _, front) in LAYOUTS.items() if front is None],
    ("acme/config-data-dir", LAYOUTS["acme/config-data-dir"][0], "a", {"name": "a"}),
    ("acme/config-data-dir", LAYOUTS["acme/config-data-dir"][0], "b", {"name": "b"}),
    ("acme/config-mapping", LAYOUTS["acme/config-mapping"][0], None, {}),
]


@pytest.mark.parametrize("repo,sha,subset,theirs_kw", RESOLUTION_CASES,
                         ids=[f"{c[0].split('/')[1]}-{c[2] or 'default'}" for c in RESOLUTION_CASES])
def test_data_file_resolution_matches_the_datasets_library(fake_hub, fast, repo, sha, subset, theirs_kw):
    """Ours (hub/layout.py) and the datasets library pick the same files for every split of a subset,
    in the same order, over README configs (with data_dir, data_files lists and mappings) and the
    conventional layouts (shards, split folders, split names, one file, a folder as subset)."""
    import datasets

    builder = datasets.load_dataset_builder(repo, revision=sha, **theirs_kw)
    prefix = f"hf://datasets/{repo}@{sha}/"
    theirs = {str(split): [str(t)[len(prefix):] for t in files] for split, files in builder.config.data_files.items()}
    assert theirs, (repo, subset)
    ours = {split: [f.path for f in hub.resolve_dataset(_src(repo=repo, subset=subset, split=split, revision=sha),
                                                        None, retry=fast).files] for split in theirs}
    assert ours == theirs


def test_streamed_records_match_the_datasets_library(fake_hub, fast):
    import datasets

    r = hub.resolve_dataset(_src(split="validation", revision=TINY_SHA), None, retry=fast)
    theirs = list(datasets.load_dataset(TINY_REPO, name="en", split="validation", streaming=True, revision=TINY_SHA))
    assert list(hub.iter_streaming_records(r, None, retry=fast)) == theirs


def test_layout_inference_units():
    assert hub.infer_split_patterns(["README.md", "train.jsonl", "test.jsonl", "docs/LICENSE"]) == {
        "train": ["**/train[-._ 0-9]*", "**/*[-._ 0-9]train[-._ 0-9]*", "**/training[-._ 0-9]*",
                  "**/*[-._ 0-9]training[-._ 0-9]*"],
        "test": ["**/test[-._ 0-9]*", "**/*[-._ 0-9]test[-._ 0-9]*", "**/testing[-._ 0-9]*",
                 "**/*[-._ 0-9]testing[-._ 0-9]*", "**/eval[-._ 0-9]*", "**/*[-._ 0-9]eval[-._ 0-9]*",
                 "**/evaluation[-._ 0-9]*", "**/*[-._ 0-9]evaluation[-._ 0-9]*"]}
    assert list(hub.infer_split_patterns(["data/valid/0.parquet", "data/train/0.parquet"])) == ["train", "validation"]
    assert hub.infer_split_patterns(["corpus.jsonl.zst", "NOTES.md"]) == {"train": ["**"]}
    assert hub.infer_split_patterns(["README.md", "script.py"]) == {}


def test_glob_semantics_match_fsspec():
    import fsspec
    files = ["README.md", "data/train-00000-of-00001.parquet", "data/sub/train-1.jsonl", "train.csv",
             "en/train/0000.parquet", "en/validation/0000.parquet", ".hidden/train.jsonl", "a/.b.jsonl",
             "x_train_y.jsonl", "__pycache__/train.jsonl", "docs/readme.txt"]
    patterns = ["**", "*", "data/*", "data/**", "**/*.parquet", "**/train-*", "*/train/*", "**/train[-._ 0-9]*",
                "**/*[-._ 0-9]train[-._ 0-9]*", "en/*/0000.parquet", "data/train-[0-9][0-9][0-9][0-9][0-9]*.*",
                "?rain.csv", "[tx]*", "**/train/**", "**/*.jsonl"]
    fs = fsspec.filesystem("memory")
    root = "/globcheck"
    try:
        for f in files:
            fs.pipe(f"{root}/{f}", b"x")
        for pat in patterns:
            theirs = sorted(p[len(root) + 1:] for p in fs.glob(f"{root}/{pat}") if fs.isfile(p))
            ours = sorted(f for f in files if hub.glob_to_regex(pat).match(f))
            assert ours == theirs, pat
    finally:
        fs.rm(root, recursive=True)


# ------------------------------------------------------------------------------------- not found


@pytest.mark.parametrize("kw,detail", [
    ({"subset": "de"}, "subset 'de' does not exist"),
    ({"split": "test"}, "split 'test' does not exist in subset 'en'"),
    ({"subset": "fr", "split": "dev"}, "split 'dev' does not exist in subset 'fr'"),
])
def test_wrong_subset_or_split_lists_the_available_ones(fake_hub, fast, kw, detail):
    with pytest.raises(hub.HubNotFoundError) as e:
        hub.resolve_dataset(_src(**kw), None, retry=fast)
    msg = str(e.value)
    assert msg.startswith("not found: check repo id / subset / split")
    assert detail in msg and msg.endswith(AVAILABLE_TINY)


def test_layout_repo_not_found_lists_subsets(fake_hub, fast):
    with pytest.raises(hub.HubNotFoundError, match=r"Available subsets and splits: default \(train, test\); "
                                                   r"extra \(train\)"):
        hub.resolve_dataset(_src(repo=LAYOUT_REPO, split="validation"), None, retry=fast)


def test_missing_repo_is_not_found_and_not_retried(fake_hub, fast, sleeps):
    with pytest.raises(hub.HubNotFoundError) as e:
        hub.resolve_dataset(_src(repo=MISSING_REPO), None, retry=fast)
    assert str(e.value) == (f"not found: check repo id / subset / split: dataset repo {MISSING_REPO} does not "
                            f"exist on {fake_hub.endpoint}")
    assert len(fake_hub.requests) == 1 and sleeps.delays == []
    with pytest.raises(hub.HubNotFoundError, match="revision 'nope' does not exist"):
        hub.resolve_dataset(_src(revision="nope"), None, retry=fast)


def test_missing_file_404_is_not_retried(fake_hub, tmp_path, fast, sleeps):
    r = hub.resolve_dataset(_src(subset="fr"), None, retry=fast)
    r.files = [hub.RemoteFile("fr/gone.jsonl", 10, None, None)]
    with pytest.raises(hub.HubNotFoundError, match="file 'fr/gone.jsonl' does not exist"):
        hub.download_dataset(r, tmp_path, None, retry=fast)
    assert fake_hub.count("GET", "fr/gone.jsonl") == 1 and sleeps.delays == []


def test_tokenizer_file_not_found(fake_hub, tmp_path, fast):
    with pytest.raises(hub.HubNotFoundError) as e:
        hub.fetch_tokenizer(HubTokenizerSource(repo=GATED_MODEL_REPO, file="tokenizer.model"), tmp_path,
                            GOOD_TOKEN, retry=fast)
    assert str(e.value).startswith(hub.NOT_FOUND_TOKENIZER) and "tokenizer.json" in str(e.value)
    with pytest.raises(hub.HubNotFoundError, match=f"model repo {MISSING_REPO} does not exist"):
        hub.fetch_tokenizer(HubTokenizerSource(repo=MISSING_REPO), tmp_path, None, retry=fast)


# ------------------------------------------------------------------------------------- auth


def test_gated_tokenizer_needs_the_token(fake_hub, tmp_path, fast, sleeps):
    src = HubTokenizerSource(repo=GATED_MODEL_REPO)
    with pytest.raises(hub.HubAuthError) as e:
        hub.fetch_tokenizer(src, tmp_path, None, retry=fast)
    guidance = (f"gated or private repo {GATED_MODEL_REPO}: request access at {fake_hub.endpoint}/{GATED_MODEL_REPO}"
                " and check the token's scope (a read token of an account that was granted access)")
    assert str(e.value).startswith(guidance)
    assert "no token was sent" in str(e.value)
    assert fake_hub.count("GET", "/resolve/") == 1 and sleeps.delays == []  # 401: not retried

    with pytest.raises(hub.HubAuthError) as e:
        hub.fetch_tokenizer(src, tmp_path, WRONG_TOKEN, retry=fast)
    assert str(e.value).startswith(guidance) and "HTTP 403" in str(e.value)
    assert WRONG_TOKEN not in str(e.value)

    path, sha = hub.fetch_tokenizer(src, tmp_path, GOOD_TOKEN, retry=fast)
    assert sha == GATED_MODEL_SHA
    assert path == tmp_path / "models" / "acme--gated-llama" / sha / "tokenizer.json"
    assert path.read_bytes() == fake_hub.data.tokenizer_json
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        assert (path.parent / extra).read_bytes() == fake_hub.data.file(GATED_MODEL_REPO, extra, repo_type="model").data
    assert not (path.parent / "config.json").exists()
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(path)).encode("the quick brown fox").ids

    fake_hub.reset()
    assert hub.fetch_tokenizer(src, tmp_path, GOOD_TOKEN, retry=fast) == (path, sha)
    assert fake_hub.file_downloads() == 0  # reused (only the revision was looked up)
    fake_hub.reset()
    assert hub.fetch_tokenizer(HubTokenizerSource(repo=GATED_MODEL_REPO, revision=sha), tmp_path, None,
                               retry=fast) == (path, sha)
    assert fake_hub.requests == []  # a commit sha already fetched: no network at all


def test_tokenizer_model_when_there_is_no_tokenizer_json(fake_hub, tmp_path, fast):
    path, sha = hub.fetch_tokenizer(HubTokenizerSource(repo=SPM_MODEL_REPO), tmp_path, None, retry=fast)
    assert (path.name, sha) == ("tokenizer.model", SPM_MODEL_SHA)
    assert path.read_bytes() == fake_hub.data.spm_model
    assert (path.parent / "tokenizer_config.json").exists()
    assert not (path.parent / "special_tokens_map.json").exists()
    import sentencepiece as spm

    assert spm.SentencePieceProcessor(model_file=str(path)).encode("the quick brown fox")


def test_gated_and_private_datasets(fake_hub, tmp_path, fast):
    r = hub.resolve_dataset(_src(repo=GATED_DATASET_REPO), None, retry=fast)  # metadata is public
    with pytest.raises(hub.HubAuthError) as e:
        hub.download_dataset(r, tmp_path, None, retry=fast)
    assert str(e.value).startswith(hub.auth_message(GATED_DATASET_REPO, fake_hub.endpoint, "dataset"))
    assert f"{fake_hub.endpoint}/datasets/{GATED_DATASET_REPO}" in str(e.value)
    paths = hub.download_dataset(r, tmp_path, GOOD_TOKEN, retry=fast)
    assert _read_records(paths[0]) == fake_hub.data.records[(GATED_DATASET_REPO, None, "train")]

    with pytest.raises(hub.HubAuthError, match="check the repo id too"):
        hub.resolve_dataset(_src(repo=PRIVATE_REPO), None, retry=fast)
    assert hub.resolve_dataset(_src(repo=PRIVATE_REPO), GOOD_TOKEN, retry=fast).files


def test_preflight_fails_fast_without_downloading(fake_hub, tmp_path, fast):
    spec = DatasetPrepSpec.model_validate({
        "source": {"hub": {"repo": GATED_DATASET_REPO}},
        "tokenizer": {"hub": {"repo": GATED_MODEL_REPO}},
        "output": {"claimName": "data", "prefix": "out/ds"},
    })
    with pytest.raises(hub.HubAuthError) as e:
        hub.preflight(spec, None, retry=fast)
    assert GATED_DATASET_REPO in str(e.value)
    with pytest.raises(hub.HubAuthError) as e:
        hub.preflight(tokenizer=spec.tokenizer.hub, token=WRONG_TOKEN, retry=fast)
    assert GATED_MODEL_REPO in str(e.value)
    fake_hub.reset()
    res = hub.preflight(spec, GOOD_TOKEN, retry=fast)
    assert res.dataset is not None and res.dataset.files
    assert (res.tokenizer_sha, res.tokenizer_file) == (GATED_MODEL_SHA, "tokenizer.json")
    assert fake_hub.count("GET", "/resolve/") == 0 and fake_hub.count("HEAD", "/resolve/") == 2


# ------------------------------------------------------------------------------------- retries


def test_503_twice_then_success_is_exactly_two_retries(fake_hub, tmp_path, fast, sleeps, caplog):
    caplog.set_level(logging.WARNING, logger="datasetprep.hub")
    r = hub.resolve_dataset(_src(repo=FLAKY_REPO), None, retry=fast)
    assert r.sha == FLAKY_SHA
    paths = hub.download_dataset(r, tmp_path, None, retry=fast)
    assert paths[0].read_bytes() == fake_hub.data.file(FLAKY_REPO, FLAKY_FILE).data
    assert fake_hub.count("GET", f"/{FLAKY_REPO}/resolve/") == 3
    assert [x.status for x in fake_hub.requests if "/resolve/" in x.path] == [503, 503, 200]
    assert len(sleeps.delays) == 2
    retries = [m for m in caplog.messages if "transient error (HTTP 503)" in m]
    assert len(retries) == 2 and "retry 1 of 4" in retries[0] and "retry 2 of 4" in retries[1]


def test_retries_are_bounded(fake_hub, tmp_path, sleeps):
    policy = hub.RetryPolicy(max_attempts=3, base_delay=0.01, sleep=sleeps)
    fake_hub.inject(r"/api/datasets/acme/tiny-corpus", status=502, times=100)
    with pytest.raises(hub.HubUnavailableError) as e:
        hub.resolve_dataset(_src(), None, retry=policy)
    assert "after 3 attempt(s)" in str(e.value) and "HTTP 502" in str(e.value)
    assert fake_hub.count("GET", "/api/datasets/acme/tiny-corpus") == 3 and len(sleeps.delays) == 2

    fake_hub.reset()
    capped = hub.RetryPolicy(max_attempts=50, base_delay=1.0, jitter=0, total_timeout=2.5, sleep=sleeps)
    fake_hub.inject(r"/api/datasets/acme/tiny-corpus", status=503, times=100)
    with pytest.raises(hub.HubUnavailableError):
        hub.resolve_dataset(_src(), None, retry=capped)
    # waits 1 s, then would wait 2 s more: 3 s > 2.5 s, so it stops after the second attempt
    assert fake_hub.count("GET", "/api/datasets/acme/tiny-corpus") == 2


def test_connection_reset_and_429_are_retried(fake_hub, tmp_path, fast, sleeps):
    r = hub.resolve_dataset(_src(subset="fr"), None, retry=fast)
    fake_hub.inject(r"fr/train-00000-of-00001\.jsonl", status=0, times=1)  # drop the connection
    fake_hub.inject(r"paths-info", status=429, times=1, headers={"Retry-After": "0.04"})
    r2 = hub.resolve_dataset(_src(subset="fr"), None, retry=fast)
    assert r2 == r and sleeps.delays[-1] >= 0.04  # Retry-After honoured (capped by max_delay)
    paths = hub.download_dataset(r, tmp_path, None, retry=fast)
    assert paths[0].read_bytes() == fake_hub.data.file(TINY_REPO, "fr/train-00000-of-00001.jsonl").data
    assert fake_hub.count("GET", "fr/train-00000-of-00001.jsonl") == 2


def test_retry_policy_backoff_and_env(monkeypatch):
    p = hub.RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, cap in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)):
        for _ in range(20):
            d = p.delay(attempt, rng=rng)
            assert cap * 0.5 <= d <= cap
    assert p.delay(1, retry_after=5) == 5 and p.delay(1, retry_after=100) == 8.0
    monkeypatch.setenv("DATASETPREP_HUB_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("DATASETPREP_HUB_BASE_DELAY", "0.5")
    assert (hub.RetryPolicy.from_env().max_attempts, hub.RetryPolicy.from_env().base_delay) == (2, 0.5)


# ------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("repo,subset,split", [
    (TINY_REPO, "en", "train"), (TINY_REPO, "fr", "train"), (TINY_REPO, "fr", "validation"),
    (LAYOUT_REPO, "extra", "train"),
])
def test_streaming_records_equal_the_files(fake_hub, tmp_path, fast, repo, subset, split):
    r = hub.resolve_dataset(_src(repo=repo, subset=subset, split=split), None, retry=fast)
    streamed = list(hub.iter_streaming_records(r, None, retry=fast, batch_size=3))
    assert streamed == fake_hub.data.records[(repo, subset, split)]
    assert fake_hub.count("GET", "/resolve/") > 0
    assert all("range" in x.headers for x in fake_hub.requests if x.method == "GET" and "/cdn/" in x.path)
    # nothing was written anywhere by streaming; downloading gives the same records
    paths = hub.download_dataset(r, tmp_path, None, retry=fast)
    assert [x for p in paths for x in _read_records(p)] == streamed


def test_streaming_subset_of_files_columns_and_retries(fake_hub, fast, sleeps):
    r = hub.resolve_dataset(_src(), None, retry=fast)
    second = r.files[1].path
    fake_hub.inject(r"/cdn/", status=503, times=1)  # the storage hiccups once
    got = list(hub.iter_streaming_records(r, None, retry=fast, files=[second], columns=["text"]))
    assert got == [{"text": x["text"]} for x in fake_hub.data.records[(TINY_REPO, "en", "train")][10:]]
    assert len(sleeps.delays) == 1


def test_streaming_a_gated_dataset_needs_the_token(fake_hub, fast):
    r = hub.resolve_dataset(_src(repo=GATED_DATASET_REPO), None, retry=fast)
    with pytest.raises(hub.HubAuthError):
        next(hub.iter_streaming_records(r, None, retry=fast))
    assert list(hub.iter_streaming_records(r, GOOD_TOKEN, retry=fast)) == \
        fake_hub.data.records[(GATED_DATASET_REPO, None, "train")]


# ------------------------------------------------------------------------------------- offline


def test_offline_after_a_first_run_makes_no_request(fake_hub, tmp_path, fast, monkeypatch):
    cache = tmp_path / "cache"
    src, tok = _src(subset="fr", split="validation"), HubTokenizerSource(repo=GATED_MODEL_REPO)
    r = hub.resolve_dataset(src, GOOD_TOKEN, retry=fast)
    files = hub.download_dataset(r, cache, GOOD_TOKEN, retry=fast)  # records the resolution too
    tok_path, tok_sha = hub.fetch_tokenizer(tok, cache / "tok", GOOD_TOKEN, retry=fast)

    fake_hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()
    r2 = hub.resolve_dataset(src, None, cache_dir=cache, retry=fast)
    assert r2 == r and r2.sha == TINY_SHA
    assert hub.download_dataset(r2, cache, None, retry=fast) == files
    assert hub.fetch_tokenizer(tok, cache / "tok", None, retry=fast) == (tok_path, tok_sha)
    res = hub.preflight(dataset=src, tokenizer=tok, cache_dir=cache, tokenizer_dir=cache / "tok")
    assert res.dataset == r and (res.tokenizer_sha, res.tokenizer_file) == (tok_sha, "tokenizer.json")
    assert hub.preflight(dataset=src, tokenizer=tok, token=GOOD_TOKEN).dataset is None  # no cache known: skipped
    assert fake_hub.requests == []

    # what was never fetched says so, still without touching the network
    with pytest.raises(hub.HubOfflineError, match="HF_HUB_OFFLINE"):
        hub.resolve_dataset(_src(subset="en"), None, cache_dir=cache, retry=fast)
    with pytest.raises(hub.HubOfflineError):
        hub.fetch_tokenizer(HubTokenizerSource(repo=SPM_MODEL_REPO), cache / "tok", None, retry=fast)
    with pytest.raises(hub.HubOfflineError):
        next(hub.iter_streaming_records(r, None, retry=fast))
    with pytest.raises(hub.HubOfflineError):
        hub.preflight(tokenizer=HubTokenizerSource(repo=SPM_MODEL_REPO), tokenizer_dir=cache / "tok")
    assert fake_hub.requests == []


def test_offline_cache_dir_from_env(fake_hub, tmp_path, fast, monkeypatch):
    monkeypatch.setenv("DATASETPREP_HUB_CACHE", str(tmp_path))
    r = hub.resolve_dataset(_src(), None, retry=fast)  # as the runner calls it: no cache_dir argument
    hub.download_dataset(r, tmp_path, None, retry=fast)
    fake_hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_dataset(_src(), None, retry=fast) == r
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------------- token hygiene


def test_the_token_never_appears_in_logs_messages_or_off_hub_requests(fake_hub, tmp_path, fast, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    tok_src = HubTokenizerSource(repo=GATED_MODEL_REPO)
    for n, token in enumerate((GOOD_TOKEN, WRONG_TOKEN)):
        d = tmp_path / str(n)
        for call in (
            lambda: hub.fetch_tokenizer(tok_src, d, token, retry=fast),
            lambda: hub.download_dataset(hub.resolve_dataset(_src(repo=GATED_DATASET_REPO), token, retry=fast),
                                         d, token, retry=fast),
            lambda: list(hub.iter_streaming_records(hub.resolve_dataset(_src(), token, retry=fast), token,
                                                    retry=fast)),
            lambda: hub.resolve_dataset(_src(repo=PRIVATE_REPO, subset="nope"), token, retry=fast),
            lambda: hub.download_dataset(hub.resolve_dataset(_src(repo=FLAKY_REPO), token, retry=fast),
                                         d, token, retry=fast),
        ):
            try:
                call()
            except hub.HubError as e:
                errors.append(e)
    assert len(errors) == 4, errors  # wrong token on the gated tokenizer & dataset; private repo twice
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err
    text += "".join("".join(traceback.format_exception(e)) for e in errors)
    for token in (GOOD_TOKEN, WRONG_TOKEN):
        assert token not in text
    # the token went to the Hub only: never to the file storage origin (another host)
    cdn = [x for x in fake_hub.requests if x.host.startswith("localhost")]
    assert cdn and all("authorization" not in x.headers for x in cdn)
    assert any(x.headers.get("authorization") == f"Bearer {GOOD_TOKEN}" for x in fake_hub.requests)


def test_redact_filter_masks_the_token_everywhere(capsys):
    token = "hf_SomeSecretValue1234567890abcdef"
    logger = logging.getLogger("test_hub.redact")
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        f = hub.install_token_redaction(token, logger)
        assert isinstance(f, hub.RedactTokenFilter)
        logger.warning("token is %s", token)
        logger.warning(f"inline {token} and a lookalike hf_abcdefghijklmnopqrstuvwxyz")
        try:
            raise RuntimeError(f"boom {token}")
        except RuntimeError:
            logger.exception("failed with %r", {"auth": f"Bearer {token}"})
        text = stream.getvalue()
        assert token not in text and "hf_abcdefghijklmnopqrstuvwxyz" not in text
        assert text.count("***") >= 4
    finally:
        logger.removeHandler(handler)


def test_token_from_env(tmp_path):
    assert hub.token_from_env({}) is None
    assert hub.token_from_env({"HF_TOKEN": "  hf_x \n"}) == "hf_x"
    f = tmp_path / "token"
    f.write_text("hf_from_file\n")
    assert hub.token_from_env({"HF_TOKEN_FILE": str(f)}) == "hf_from_file"
    assert hub.token_from_env({"HF_TOKEN": "hf_env", "HF_TOKEN_FILE": str(f)}) == "hf_env"
    with pytest.raises(hub.HubError, match="HF_TOKEN_FILE"):
        hub.token_from_env({"HF_TOKEN_FILE": str(tmp_path / "missing")})


def test_no_implicit_token(fake_hub, tmp_path, fast, monkeypatch):
    """A token lying around (HF_TOKEN, ~/.cache/huggingface/token) is not used behind the caller's back."""
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    with pytest.raises(hub.HubAuthError):
        hub.fetch_tokenizer(HubTokenizerSource(repo=GATED_MODEL_REPO), tmp_path, None, retry=fast)
    assert all("authorization" not in x.headers for x in fake_hub.requests)


# --------------------------------------------------------------------- the NeMo guide's case, and errors that say what to do
def test_llama31_layout_a_root_tokenizer_model_is_refused_naming_where_it_is(fake_hub, tmp_path, fast):
    """Llama 3.1 keeps tokenizer.json at the root and the tiktoken ranks at original/tokenizer.model."""
    from hubserver import LLAMA31_REPO

    with pytest.raises(hub.HubNotFoundError) as e:
        hub.fetch_tokenizer(HubTokenizerSource(repo=LLAMA31_REPO, file="tokenizer.model"), tmp_path, GOOD_TOKEN,
                            retry=fast)
    msg = str(e.value)
    assert msg.startswith(f"not found: check repo id / revision / file: file 'tokenizer.model' is not in model repo "
                          f"{LLAMA31_REPO} at revision 'main'")
    assert msg.endswith("tokenizer files there: original/tokenizer.model, special_tokens_map.json, tokenizer.json, "
                        "tokenizer_config.json -- set tokenizer.hub.file: original/tokenizer.model"), msg
    path, _ = hub.fetch_tokenizer(HubTokenizerSource(repo=LLAMA31_REPO, file="original/tokenizer.model"), tmp_path,
                                  GOOD_TOKEN, retry=fast)
    assert path.read_bytes() == fake_hub.data.llama_ranks
    assert (path.parents[1] / "tokenizer_config.json").is_file()  # from the root: the folder has none
    path, _ = hub.fetch_tokenizer(HubTokenizerSource(repo=LLAMA31_REPO), tmp_path, GOOD_TOKEN, retry=fast)
    assert path.name == "tokenizer.json"  # `file` unset: the root's tokenizer.json


def test_a_cluster_without_a_route_to_the_hub_is_told_apart_from_a_failing_hub(fake_hub, sleeps):
    policy = hub.RetryPolicy(max_attempts=2, base_delay=0.01, sleep=sleeps)
    with pytest.raises(hub.HubUnreachableError) as e:  # DNS
        hub.resolve_dataset(_src(), None, endpoint="http://no-such-hub.invalid", retry=policy)
    msg = str(e.value)
    assert msg.startswith("cannot reach the Hub at http://no-such-hub.invalid (read repo info at revision 'main', "
                          "dataset repo acme/tiny-corpus) after 2 attempt(s) in ")
    assert "the name no-such-hub.invalid does not resolve (DNS: " in msg
    for check in ("job pods may connect to no-such-hub.invalid:80", "networkPolicy.jobs.hubPorts",
                  "HF_ENDPOINT is right (it is http://no-such-hub.invalid)", "HTTPS_PROXY, NO_PROXY",
                  "DATASETPREP_JOB_ENV"):
        assert check in msg, (check, msg)
    assert "usually temporary" not in msg

    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(hub.HubUnreachableError, match=f"127.0.0.1 refused the connection. Check that the job pods "
                                                      f"may connect to 127.0.0.1:{closed} "):
        hub.resolve_dataset(_src(), None, endpoint=f"http://127.0.0.1:{closed}", retry=policy)

    fake_hub.inject(r"/api/datasets/acme/tiny-corpus", status=503, times=10)
    with pytest.raises(hub.HubUnavailableError) as e:  # the Hub answers, with errors
        hub.resolve_dataset(_src(), None, retry=policy)
    assert not isinstance(e.value, hub.HubUnreachableError)
    assert f"the Hub at {fake_hub.endpoint} kept failing (read repo info" in str(e.value)
    assert "last error: HTTP 503. This is usually temporary (a Hub outage or rate limit)" in str(e.value)
    fake_hub.reset()
    fake_hub.inject(r"/api/datasets/acme/tiny-corpus", status=429, times=10)
    with pytest.raises(hub.HubUnavailableError, match="HTTP 429 is the Hub's rate limit: use a token"):
        hub.resolve_dataset(_src(), None, retry=policy)
