"""The training ConfigMap, pure: config.yaml in the NeMo guide's shape, Megatron-LM's flags, NeMo 2's
data module, for merged datasets and for kept shards' blends."""
from __future__ import annotations

import copy
import json

import yaml

from datasetprep.naming import shard_prefix
from datasetprep.spec import parse_spec
from datasetprep_operator.results import read_result
from datasetprep_operator.trainingconfig import build_config_map, training_config_data
from specs import HUB_SPEC, FILES_SPEC, KEPT_RESULT, SUCCESS, sharded



def test_config_yaml_is_exactly_the_guides_shape():
    spec = parse_spec(HUB_SPEC)
    data = training_config_data(spec, read_result(json.dumps(SUCCESS)))
    assert data["config.yaml"] == (
        "training:\n"
        "  data:\n"
        '    dataset_path: "/data/llama_dataset_text_document"\n'
        '    tokenizer_path: "/data/tokenizer.model"\n'
    )
    assert yaml.safe_load(data["config.yaml"]) == {"training": {"data": {
        "dataset_path": "/data/llama_dataset_text_document", "tokenizer_path": "/data/tokenizer.model"}}}
    assert data["claimName"] == "datasets" and data["mountPath"] == "/data"
    assert data["megatron-args.txt"] == ("--data-path /data/llama_dataset_text_document --tokenizer-type "
                                         "SentencePieceTokenizer --tokenizer-model /data/tokenizer.model\n")
    nemo = yaml.safe_load(data["nemo2-data.yaml"])
    assert nemo == {"paths": ["/data/llama_dataset_text_document"],
                    "tokenizer": {"library": "sentencepiece", "tokenizer_model": "/data/tokenizer.model"}}
    assert "seq_length" in data["nemo2-data.yaml"]  # as a comment: the data does not decide it
    assert build_config_map("wiki-training", "ml", "uid-1", data)["data"] == data


def test_config_follows_the_mount_path_and_tokenizer_type():
    raw = copy.deepcopy(HUB_SPEC)
    raw["output"]["mountPath"] = "/mnt/ds"
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "tiktoken", "path": "meta-llama/tokenizer.model", "vocab_size": 128256,
                           "eod_id": 128001}
    data = training_config_data(parse_spec(raw), read_result(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"])["training"]["data"] == {
        "dataset_path": "/mnt/ds/llama_dataset_text_document", "tokenizer_path": "/mnt/ds/meta-llama/tokenizer.model"}
    assert "--tokenizer-type TikTokenizer --tokenizer-model /mnt/ds/meta-llama/tokenizer.model" in \
        data["megatron-args.txt"]


def test_huggingface_tokenizer_points_at_its_folder():
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "huggingface", "path": "tok/tokenizer.json", "vocab_size": 8001, "eod_id": 8000}
    data = training_config_data(parse_spec(HUB_SPEC), read_result(json.dumps(result)))
    assert "--tokenizer-type HuggingFaceTokenizer --tokenizer-model /data/tok" in data["megatron-args.txt"]
    assert yaml.safe_load(data["nemo2-data.yaml"])["tokenizer"] == {"library": "huggingface", "model_name": "/data/tok"}


def test_null_tokenizer_config():
    raw = copy.deepcopy(FILES_SPEC)
    raw["tokenizer"] = {"type": "null", "vocabSize": 65500}
    result = copy.deepcopy(SUCCESS)
    result["tokenizer"] = {"type": "null", "path": None, "vocab_size": 65500, "eod_id": 65499}
    data = training_config_data(parse_spec(raw), read_result(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"]) == {"training": {"data": {
        "dataset_path": "/data/llama_dataset_text_document"}}}
    assert data["megatron-args.txt"] == ("--data-path /data/llama_dataset_text_document --tokenizer-type "
                                         "NullTokenizer --vocab-size 65500\n")
    assert yaml.safe_load(data["nemo2-data.yaml"])["tokenizer"] == {"library": "null", "vocab_size": 65500}


def test_config_yaml_quotes_awkward_paths():
    raw = copy.deepcopy(HUB_SPEC)
    raw["output"]["prefix"] = 'we: "odd" #dir/x'
    result = copy.deepcopy(SUCCESS)
    result["outputs"][0]["prefix"] = 'we: "odd" #dir/x_text_document'
    data = training_config_data(parse_spec(raw), read_result(json.dumps(result)))
    assert yaml.safe_load(data["config.yaml"])["training"]["data"]["dataset_path"] == \
        '/data/we: "odd" #dir/x_text_document'


def kept_config(result: dict, **spec_extra) -> dict[str, str]:
    spec = parse_spec(sharded(keepShards=True, **spec_extra))
    return training_config_data(spec, read_result(json.dumps(result)))


def test_kept_shards_config_names_the_blend():
    import yaml

    data = kept_config(KEPT_RESULT)
    shard0, shard2 = "/data/llama_dataset_shard00000_text_document", "/data/llama_dataset_shard00002_text_document"
    # Megatron-LM reads the list from the file on the volume, whatever the number of shards
    assert data["megatron-args.txt"] == ("--data-args-path /data/llama_dataset_text_document.blend.txt "
                                         "--tokenizer-type SentencePieceTokenizer "
                                         "--tokenizer-model /data/tokenizer.model\n")
    # NeMo takes the blend inline: weight (tokens), prefix, ...; the empty shard 1 is left out
    assert yaml.safe_load(data["config.yaml"])["training"]["data"] == {
        "dataset_path": [12, shard0, 18, shard2], "data_args_path": "/data/llama_dataset_text_document.blend.txt",
        "tokenizer_path": "/data/tokenizer.model"}
    assert yaml.safe_load(data["nemo2-data.yaml"])["paths"] == ["12", shard0, "18", shard2]
    # the names are the engine's own
    assert shard2 == "/data/" + shard_prefix("llama_dataset", 2) + "_text_document"

    # weights the job had no room for: the file is named instead of a list
    no_weights = copy.deepcopy(KEPT_RESULT)
    del no_weights["outputs"][0]["blend_weights"]
    data = kept_config(no_weights)
    assert "dataset_path" not in yaml.safe_load(data["config.yaml"])["training"]["data"]
    nemo = yaml.safe_load(data["nemo2-data.yaml"])
    assert "paths" not in nemo and "/data/llama_dataset_text_document.blend.txt" in data["nemo2-data.yaml"]
    assert data["megatron-args.txt"].startswith("--data-args-path /data/llama_dataset_text_document.blend.txt ")
    # malformed weights (not one per shard) are not trusted either
    bad = copy.deepcopy(KEPT_RESULT)
    bad["outputs"][0]["blend_weights"] = [1, 2]
    assert "dataset_path" not in yaml.safe_load(kept_config(bad)["config.yaml"])["training"]["data"]
