"""`datasetprep run` / the job with a Hub dataset and a gated Hub tokenizer, against the local fake
Hub (real huggingface_hub client code): bytes, recorded revision, zero re-downloads, no token leak."""
from __future__ import annotations

import json
import shutil

import pytest

from datasetprep import indexed, pipeline, tokenization
from datasetprep.hub import HubAuthError
from datasetprep.runner import run_spec
from datasetprep.spec import parse_spec
from hubserver import GOOD_TOKEN

SPEC = {
    "source": {"hub": {"repo": "acme/tiny-corpus", "subset": "en", "split": "train"}, "textKeys": ["text"]},
    "tokenizer": {"type": "auto", "hub": {"repo": "acme/gated-llama"}},
    "output": {"claimName": "data", "prefix": "out/tiny"},
    "appendEod": True,
    "workers": 2,
    "hfTokenSecretRef": {"name": "hf-token"},
}


def test_hub_source_and_gated_tokenizer(fake_hub, tmp_path, caplog, capsys):  # noqa: F811
    spec = parse_spec(SPEC)
    logs = []
    res = run_spec(spec, {"data": tmp_path}, token=GOOD_TOKEN, log=logs.append)
    assert not res.reused
    assert res.resolved_revision and len(res.resolved_revision) == 40
    man = json.loads((tmp_path / "out" / "tiny.manifest.json").read_text())
    assert man["source"]["revision"] == res.resolved_revision
    # same bytes as binarizing the downloaded files directly with the downloaded tokenizer
    files = [tmp_path / f for f in man["input"]["files"]] if not man["input"]["files"][0].startswith("/") \
        else [__import__("pathlib").Path(f) for f in man["input"]["files"]]
    tok_file = tmp_path / res.tokenizer.path
    cfg = tokenization.resolve_config("auto", tok_file)
    pipeline.run(pipeline.Request(inputs=files, output_prefix=str(tmp_path / "direct"), tokenizer=cfg,
                                  append_eod=True))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"out/tiny_text_document.{ext}").read_bytes() == \
            (tmp_path / f"direct_text_document.{ext}").read_bytes()
    assert indexed.IndexedDataset(tmp_path / "out" / "tiny_text_document").num_documents > 0
    # second run: reused, zero dataset file downloads
    fake_hub.reset()
    res2 = run_spec(spec, {"data": tmp_path}, token=GOOD_TOKEN, log=logs.append)
    assert res2.reused
    assert fake_hub.file_downloads("acme/tiny-corpus") == 0
    # the token is nowhere
    everything = res.model_dump_json() + res2.model_dump_json() + json.dumps(man) + "\n".join(logs) + caplog.text
    everything += "".join(capsys.readouterr())
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file() and p.suffix == ".json":
            everything += p.read_text()
    assert GOOD_TOKEN not in everything


def test_gated_tokenizer_without_token_fails_fast(fake_hub, tmp_path):  # noqa: F811
    with pytest.raises(HubAuthError, match="gated or private repo"):
        run_spec(parse_spec(SPEC), {"data": tmp_path}, token=None)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.bin"))
    assert fake_hub.file_downloads("acme/tiny-corpus") == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_streaming_mode_gives_the_same_bytes_without_downloading(fake_hub, tmp_path, workers):  # noqa: F811
    spec = parse_spec({**SPEC, "workers": workers})
    run_spec(spec, {"data": tmp_path}, token=GOOD_TOKEN)
    cache = tmp_path / ".datasetprep" / "hub-cache"
    shutil.rmtree(cache)
    fake_hub.reset()
    streamed = {**SPEC, "workers": workers, "output": {"claimName": "data", "prefix": "out/streamed"},
                "source": {**SPEC["source"], "hub": {**SPEC["source"]["hub"], "streaming": True}}}
    res = run_spec(parse_spec(streamed), {"data": tmp_path}, token=GOOD_TOKEN)
    assert res.resolved_revision
    for ext in ("bin", "idx"):
        assert (tmp_path / f"out/streamed_text_document.{ext}").read_bytes() == \
            (tmp_path / f"out/tiny_text_document.{ext}").read_bytes()
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".gz")]
    assert fake_hub.count("GET") > 0  # the records came over HTTP


def test_the_nemo_guide_example_runs_as_written(fake_hub, tmp_path):  # noqa: F811
    """examples/wikitext-llama31.yaml's DatasetPrep, as written, against a Hub laid out as the real one
    (wikitext; Llama 3.1 with the tiktoken ranks at original/tokenizer.model)."""
    import yaml

    from paths import REPO

    docs = list(yaml.safe_load_all((REPO / "examples" / "wikitext-llama31.yaml").read_text()))
    (dsp,) = [d for d in docs if d["kind"] == "DatasetPrep"]
    spec = parse_spec(dsp["spec"])
    res = run_spec(spec, {dsp["spec"]["output"]["claimName"]: tmp_path}, token=GOOD_TOKEN)
    ds = indexed.IndexedDataset(tmp_path / "llama_dataset_text_document")
    wiki = fake_hub.data.records[("wikitext", "wikitext-103-v1", "train")]
    assert ds.num_documents == len(wiki)
    assert res.tokenizer.path.endswith("original/tokenizer.model") and res.tokenizer.type == "tiktoken"
    assert ds.sequence(0)[-1] == 128001  # appendEod: Llama 3's <|end_of_text|>
