"""DatasetBlend arithmetic (shares, fractions, epochs, kept-shard expansion, rounding) and the trainers' formats,
each written and read back with its trainer's rules (datasetprep.blendformats mirrors Megatron-Core's
``get_blend_from_list``, Megatron-LM's ``get_blend_and_blend_per_split``, NeMo 2's ``PreTrainingDataModule`` and
Megatron-Bridge's ``GPTDatasetConfig``; bench/megatron_blend_check.py compares them with Megatron-Core itself)."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import yaml

from blendfixtures import HF, SP, kept, merged, plan_of
from datasetprep import blending, blendformats as fmt
from datasetprep.blendspec import parse_blend_spec, split_fractions
from datasetprep.contract import BlendWritten
from datasetprep_operator import blendconfig
from paths import REPO

WEIGHTS = {"components": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}]}


# ----------------------------------------------------------------------------------- arithmetic


def test_weights_are_token_shares_whatever_the_sizes():
    plan = plan_of(WEIGHTS, merged("wiki", 1_000_000), merged("code", 10))
    assert [(d.prefix, d.weight) for d in plan.datasets("all")] == [
        ("/data/wiki_text_document", 0.75), ("/data/code_text_document", 0.25)]


def test_fractions_that_floats_do_not_sum_to_one_are_normalised():
    spec = {"components": [{"datasetPrep": n, "fraction": f} for n, f in (("a", 0.7), ("b", 0.2), ("c", 0.1))],
            "totalTokens": 1000}
    assert 0.7 + 0.2 + 0.1 != 1.0  # why the tolerance exists
    plan = plan_of(spec, merged("a", 100), merged("b", 100), merged("c", 100))
    weights = [d.weight for d in plan.datasets("all")]
    assert math.isclose(sum(weights), 1.0, rel_tol=0, abs_tol=1e-15)
    assert [round(w, 12) for w in weights] == [0.7, 0.2, 0.1]


def test_split_fractions_follow_megatron():
    assert split_fractions("969,30,1") == (0.969, 0.03, 0.001)
    assert split_fractions("98, 2") == (0.98, 0.02, 0.0)
    assert split_fractions("1") == (1.0, 0.0, 0.0)


def test_epochs_under_the_budget_and_the_repeat_note():
    spec = WEIGHTS | {"totalTokens": 100_000, "maxEpochs": 4, "splits": "90,10,0"}
    plan = plan_of(spec, merged("wiki", 100_000), merged("code", 5_000))
    wiki, code = plan.figures[("all", "wiki", "text")], plan.figures[("all", "code", "text")]
    assert wiki.train_tokens == 90_000 and wiki.epochs == round(0.75 * 100_000 / 90_000, 3) == 0.833
    assert code.train_tokens == 4_500 and code.epochs == round(0.25 * 100_000 / 4_500, 3) == 5.556
    assert wiki.note is None and "code/text is repeated 5.6 times" in code.note and "maxEpochs 4" in code.note
    assert plan.notes == (code.note,)


def test_no_budget_no_epochs():
    plan = plan_of(WEIGHTS, merged("wiki", 1000), merged("code", 1000))
    assert all(f.epochs is None and f.note is None for f in plan.figures.values())
    assert plan.figures[("all", "wiki", "text")].train_tokens == 969


def test_per_split_budget_counts_the_train_list_only():
    spec = {"perSplit": {"train": [{"datasetPrep": "wiki", "fraction": 1.0}],
                         "valid": [{"datasetPrep": "code", "fraction": 1.0}]}, "totalTokens": 3000}
    plan = plan_of(spec, merged("wiki", 1000), merged("code", 10))
    assert plan.splits is None
    assert plan.figures[("train", "wiki", "text")].epochs == 3.0  # no split cut: the whole dataset trains
    assert plan.figures[("valid", "code", "text")].epochs is None


def test_kept_shards_expand_with_token_weights_scaled_by_the_component_share():
    plan = plan_of(WEIGHTS, merged("wiki", 1000), kept("code", (300, 0, 100)))
    got = [(d.prefix, d.weight) for d in plan.datasets("all")]
    assert got == [("/data/wiki_text_document", 0.75),
                   ("/data/code/ds_shard00000_text_document", 0.25 * 300 / 400),
                   ("/data/code/ds_shard00002_text_document", 0.25 * 100 / 400)]  # the empty shard is left out
    assert sum(w for _, w in got) == pytest.approx(1.0, abs=1e-15)
    # exact: each shard's weight is the component's share times its part of the tokens
    assert Fraction(got[1][1]) == pytest.approx(Fraction(3, 16))


def test_kept_shards_whose_tokens_only_the_volume_knows_are_left_to_the_files_job():
    plan = plan_of(WEIGHTS, merged("wiki", 1000), kept("code", (300, 100), known=False))
    assert plan.datasets("all") is None and not plan.expanded
    assert blendconfig.expected_listing(plan) is None


def test_tokens_count_each_dataset_once():
    spec = {"perSplit": {"train": [{"datasetPrep": "wiki", "weight": 1}, {"datasetPrep": "code", "weight": 1}],
                         "valid": [{"datasetPrep": "wiki", "weight": 1}]}}
    plan = plan_of(spec, merged("wiki", 1000), merged("code", 10))
    assert plan.tokens() == 1010 and plan.components() == 2


def test_claim_mounts():
    assert blending.claim_mounts(["data", "data"], "/data") == {"data": "/data"}
    assert blending.claim_mounts(["web", "code", "web"], "/mnt") == {"web": "/mnt/web", "code": "/mnt/code"}
    plan = plan_of(WEIGHTS, merged("wiki", 10, claim="web"), merged("code", 10, claim="code"))
    assert [d.prefix for d in plan.datasets("all")] == ["/data/web/wiki_text_document", "/data/code/code_text_document"]
    plan = plan_of(WEIGHTS, merged("wiki", 10), merged("code", 10), files_claim="blends")
    assert plan.mounts == {"data": "/data/data", "blends": "/data/blends"}


# ----------------------------------------------------------------------------------- checks


def test_differences_name_who_differs_in_what():
    out = blending.differences([merged("wiki", 1), merged("code", 1), merged("gpt", 1, tokenizer=HF, dtype="int32",
                                                                            eod=False)])
    assert len(out) == 3
    assert out[0].startswith("different tokenizers: wiki/text, code/text use sentencepiece tokenizer aaaaaaaaaaaa "
                             "(vocab 8000, EOD 2); gpt/text uses huggingface tokenizer bbbbbbbbbbbb (vocab 50257")
    assert out[1] == "different token dtypes: wiki/text, code/text: uint16; gpt/text: int32"
    assert out[2] == ("different EOD settings: wiki/text, code/text: appendEod: true; gpt/text: appendEod: false")
    assert blending.differences([merged("wiki", 1), merged("code", 1)]) == []


def test_same_files_other_special_tokens_is_another_tokenizer():
    other = blending.TokenizerFacts(**{**SP.__dict__, "fingerprint": "c" * 64})
    assert blending.differences([merged("a", 1), merged("b", 1, tokenizer=other)])


def test_fingerprintless_statuses_compare_type_vocab_and_eod():
    old = blending.TokenizerFacts(type="sentencepiece", vocab_size=8000, eod_id=2)
    assert blending.differences([merged("a", 1), merged("b", 1, tokenizer=old)]) == []
    assert blending.differences([merged("a", 1), merged("b", 1, tokenizer=blending.TokenizerFacts(
        type="sentencepiece", vocab_size=8001, eod_id=2))])


def test_megatron_fast_path_dtype_rule():
    assert blending.fast_path_dtype(8000) == "uint16"
    assert blending.fast_path_dtype(65536) == "uint16" and blending.fast_path_dtype(65537) == "int32"
    # preprocess_data.py writes int32 from 65500 on: a vocabulary of 65520 would be misread with the file
    tok = blending.TokenizerFacts(type="huggingface", vocab_size=65520, eod_id=0, fingerprint="d" * 64)
    plan = plan_of(WEIGHTS, merged("wiki", 10, tokenizer=tok, dtype="int32"),
                   merged("code", 10, tokenizer=tok, dtype="int32"))
    assert not plan.fast_path and "no per-dataset sequences file" in plan.notes[0]
    assert plan_of(WEIGHTS, merged("wiki", 10), merged("code", 10)).fast_path


def test_whitespace_paths():
    assert blending.whitespace_paths(["a/b", "a b/c", "x\ty"]) == ["a b/c", "x\ty"]


# ----------------------------------------------------------------------------------- trainer formats


PAIRS = [(0.75, "/data/wiki_text_document"), (1 / 3 * 0.25, "/data/code/ds_shard00000_text_document")]


def test_data_args_file_reads_back_as_megatron_reads_it():
    text = fmt.data_args_text(PAIRS)
    prefixes, weights = fmt.blend_from_list(text.split())  # get_blend_from_list(f.read().split())
    assert prefixes == [p for _, p in PAIRS] and weights == [w for w, _ in PAIRS]  # exact: repr round-trips


@pytest.mark.parametrize("items,expected", [
    (["/d/a"], (["/d/a"], None)),
    (["/d/a", "/d/b"], (["/d/a", "/d/b"], None)),  # even, but no weight parses: prefixes only
    (["30", "/d/a", "70", "/d/b"], (["/d/a", "/d/b"], [30.0, 70.0])),
    (["1e-05", " /d/a "], (["/d/a"], [1e-05])),
    (None, None),
])
def test_blend_from_list_semantics(items, expected):
    assert fmt.blend_from_list(items) == expected


@pytest.mark.parametrize("items", [[], ["30", "/d/a", "x", "/d/b"]])
def test_blend_from_list_refuses_what_megatron_cannot_read(items):
    with pytest.raises(fmt.FormatProblem):
        fmt.blend_from_list(items)


def test_per_split_file():
    text = fmt.per_split_text({"train": PAIRS, "valid": PAIRS[:1]})
    doc = json.loads(text)
    assert set(doc) == {"train", "valid", "test"} and doc["test"] is None
    files = {"/b/ps.json": text}
    m = fmt.megatron_data("--per-split-data-args-path /b/ps.json --per-dataset-sequences-path /b/s.json",
                          files.__getitem__)
    assert m.blend is None and m.split is None and m.sequences_path == "/b/s.json"
    assert m.blend_per_split == [([p for _, p in PAIRS], [w for w, _ in PAIRS]), (["/data/wiki_text_document"],
                                                                                 [0.75]), None]


def test_megatron_args_mistakes_are_refused():
    with pytest.raises(fmt.FormatProblem, match="without --split"):
        fmt.megatron_data("--data-path 1 /a", {}.__getitem__)
    with pytest.raises(fmt.FormatProblem, match="incompatible"):
        fmt.megatron_data("--per-split-data-args-path /p --split 1", {"/p": '{"train":["/a"],"valid":null,'
                                                                        '"test":null}'}.__getitem__)
    with pytest.raises(fmt.FormatProblem, match="no 'test' key"):
        fmt.megatron_data("--per-split-data-args-path /p", {"/p": '{"train":["/a"],"valid":null}'}.__getitem__)


def test_sequences_file_counts_documents_as_the_index_header_does():
    assert json.loads(fmt.sequences_text({"/d/a": (522, 527)})) == {"/d/a": [522, 527]}


def test_nemo_paths_shapes():
    assert fmt.nemo_blends(["0.5", "/a", "0.5", "/b"]) == ((["/a", "/b"], [0.5, 0.5]), None)
    assert fmt.nemo_blends("/a") == ((["/a"], None), None)
    assert fmt.nemo_blends({"train": ["1", "/a"], "validation": ["/b"], "test": ["/c"]}) == (
        None, [(["/a"], [1.0]), (["/b"], None), (["/c"], None)])
    with pytest.raises(fmt.FormatProblem, match="test"):
        fmt.nemo_blends({"train": ["/a"], "validation": ["/b"]})


def test_bridge_shapes():
    assert fmt.bridge_blends({"blend": [["/a", "/b"], [0.75, 0.25]], "split": "9,1"}) == (
        (["/a", "/b"], [0.75, 0.25]), None)
    assert fmt.bridge_blends({"blend_per_split": [[["/a"], [1.0]], None, None]}) == (None, [(["/a"], [1.0]), None,
                                                                                            None])
    with pytest.raises(fmt.FormatProblem):
        fmt.bridge_blends({"blend": [["/a", "/b"], [1.0]]})


# ----------------------------------------------------------------------------------- the ConfigMap


def _written(plan) -> BlendWritten:
    listing = blendconfig.expected_listing(plan) or ""
    import hashlib

    all_ = "all" in plan.lists
    return BlendWritten(blend_folder="/data/datasetprep-blends/mix/0123456789abcdef",
                        data_args="/data/datasetprep-blends/mix/0123456789abcdef/data-args.txt" if all_ else None,
                        per_split_data_args=None if all_ else "/data/datasetprep-blends/mix/0123456789abcdef/ps.json",
                        sequences="/data/datasetprep-blends/mix/0123456789abcdef/sequences-per-dataset.json",
                        datasets=3, listing_sha256=hashlib.sha256(listing.encode()).hexdigest())


def _all_formats(data: dict[str, str], listing: str):
    files = {"/data/datasetprep-blends/mix/0123456789abcdef/data-args.txt": listing,
             "/data/datasetprep-blends/mix/0123456789abcdef/ps.json": listing}
    m = fmt.megatron_data(data["megatron-args.txt"], files.__getitem__)
    nemo = yaml.safe_load(data["nemo2-data.yaml"])
    bridge = yaml.safe_load(data["megatron-bridge.yaml"])["dataset"]
    guide = yaml.safe_load(data["config.yaml"])["training"]["data"]
    return m, nemo, bridge, guide


def test_config_map_one_distribution_every_format_agrees():
    plan = plan_of(WEIGHTS | {"splits": "98,2"}, merged("wiki", 1000), kept("code", (300, 0, 100)))
    data = blendconfig.config_data(plan, _written(plan))
    m, nemo, bridge, guide = _all_formats(data, blendconfig.expected_listing(plan))
    want = ([d.prefix for d in plan.datasets("all")], [d.weight for d in plan.datasets("all")])
    assert m.blend == want and m.split == "98,2" and m.sequences_path.endswith("sequences-per-dataset.json")
    assert (m.tokenizer_type, m.tokenizer_model) == ("SentencePieceTokenizer", "/data/tokenizer.model")
    assert fmt.nemo_blends(nemo["paths"]) == (want, None) and nemo["split"] == "98,2"
    assert nemo["tokenizer"] == {"library": "sentencepiece", "tokenizer_model": "/data/tokenizer.model"}
    assert fmt.bridge_blends(bridge) == (want, None) and bridge["split"] == "98,2"
    assert fmt.blend_from_list(guide["dataset_path"]) == want and guide["splits_string"] == "98,2"
    assert guide["data_args_path"].endswith("data-args.txt") and guide["tokenizer_path"] == "/data/tokenizer.model"
    assert yaml.safe_load(data["claims.yaml"]) == [{"claimName": "data", "mountPath": "/data"}]
    assert (data["claimName"], data["mountPath"]) == ("data", "/data")


def test_config_map_per_split():
    spec = {"perSplit": {"train": [{"datasetPrep": "wiki", "weight": 2}, {"datasetPrep": "code", "weight": 1}],
                         "valid": [{"datasetPrep": "code", "weight": 1}], "test": [{"datasetPrep": "wiki", "weight": 1}]}}
    plan = plan_of(spec, merged("wiki", 1000, tokenizer=HF, dtype="uint16"), merged("code", 10, tokenizer=HF))
    data = blendconfig.config_data(plan, _written(plan))
    m, nemo, bridge, guide = _all_formats(data, blendconfig.expected_listing(plan))
    want = [(["/data/wiki_text_document", "/data/code_text_document"], [2 / 3, 1 / 3]),
            (["/data/code_text_document"], [1.0]), (["/data/wiki_text_document"], [1.0])]
    assert m.blend is None and m.split is None and m.blend_per_split == want
    assert m.tokenizer_model == "/data/gpt2"  # HF: the tokenizer.json's folder
    assert fmt.nemo_blends(nemo["paths"]) == (None, want) and nemo["split"] is None
    assert fmt.bridge_blends(bridge) == (None, want) and bridge["split"] is None
    assert set(guide["dataset_path"]) == {"train", "validation", "test"}


def test_config_map_per_split_without_test_leaves_nemo_a_note():
    spec = {"perSplit": {"train": [{"datasetPrep": "wiki", "weight": 1}], "valid": [{"datasetPrep": "code", "weight": 1}]}}
    plan = plan_of(spec, merged("wiki", 1000), merged("code", 10))
    data = blendconfig.config_data(plan, _written(plan))
    assert "paths" not in yaml.safe_load(data["nemo2-data.yaml"])
    assert "needs train, validation and test" in data["nemo2-data.yaml"]
    assert fmt.bridge_blends(yaml.safe_load(data["megatron-bridge.yaml"])["dataset"])[1][2] is None


def test_config_map_without_sequences_flag_when_megatron_would_misread():
    tok = blending.TokenizerFacts(type="huggingface", vocab_size=65520, eod_id=0, fingerprint="d" * 64, path="t/x")
    plan = plan_of(WEIGHTS, merged("wiki", 10, tokenizer=tok, dtype="int32"), merged("code", 10, tokenizer=tok,
                                                                                      dtype="int32"))
    assert "--per-dataset-sequences-path" not in blendconfig.config_data(plan, _written(plan))["megatron-args.txt"]


def test_config_map_names_the_file_when_it_cannot_list_the_blend():
    plan = plan_of(WEIGHTS, merged("wiki", 1000), kept("code", (1, 2), known=False))
    data = blendconfig.config_data(plan, _written(plan))
    assert "dataset_path" not in yaml.safe_load(data["config.yaml"])["training"]["data"]
    assert "paths" not in yaml.safe_load(data["nemo2-data.yaml"]) and "too long" in data["nemo2-data.yaml"]
    assert "--data-args-path" in data["megatron-args.txt"]


def test_order_version_is_a_content_address():
    plan = plan_of(WEIGHTS, merged("wiki", 1000), merged("code", 10))
    a = blendconfig.order(plan, "/data/b", keep=["x" * 16])
    assert a.version == blendconfig.order(plan, "/data/b").version and a.keep == ("x" * 16,)
    other = plan_of({"components": [{"datasetPrep": "wiki", "weight": 2}, {"datasetPrep": "code", "weight": 1}]},
                    merged("wiki", 1000), merged("code", 10))
    assert blendconfig.order(other, "/data/b").version != a.version
    changed = plan_of(WEIGHTS, merged("wiki", 1000, sequences=11), merged("code", 10))
    assert blendconfig.order(changed, "/data/b").version != a.version  # a component's new output


def test_training_job_example_mounts_what_the_blend_says():
    job = yaml.safe_load((REPO / "examples" / "training-job.yaml").read_text())
    blend = next(d for d in yaml.safe_load_all((REPO / "examples" / "blend.yaml").read_text())
                 if d and d["kind"] == "DatasetBlend")
    spec = parse_blend_spec(blend["spec"])
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["training-config"]["configMap"]["name"] == spec.training_config.config_map_name
    assert "items" not in volumes["training-config"]["configMap"]  # every key, the files the check reads
    for c in pod["initContainers"] + pod["containers"]:
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["data"] == spec.mount_path and mounts["training-config"] == "/etc/datasetprep"
    assert pod["initContainers"][0]["command"] == ["datasetprep", "check-training-config", "/etc/datasetprep"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "datasets"
