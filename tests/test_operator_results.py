"""The job's result as the operator reads it (datasetprep_operator.results), pure: success only from a
well-formed result, anything else a failure with the best text there is."""
from __future__ import annotations

import json

import pytest

from datasetprep.contract import Failed
from datasetprep_operator.results import STATUS_MESSAGE_MAX
from datasetprep_operator.results import read_result
from specs import SUCCESS


def test_parse_success():
    r = read_result(json.dumps(SUCCESS))
    (out,) = r.outputs
    assert out.key == "text" and out.prefix == "llama_dataset_text_document" and out.tokens == 821228
    assert out.bin_sha256 == "b" * 64 and out.dtype == "uint16"
    assert r.tokenizer.model_dump() == {"type": "sentencepiece", "path": "tokenizer.model", "vocab_size": 8000,
                                        "eod_id": 2, "fingerprint": "t" * 64}
    assert r.fingerprint == "f" * 64 and r.resolved_revision is None


def test_parse_failure_carries_the_jobs_own_message():
    r = read_result('{"ok":false,"error":"corpus.jsonl line 3: invalid JSON"}')
    assert r == Failed(error="corpus.jsonl line 3: invalid JSON", kind="permanent")


@pytest.mark.parametrize("message,expected", [
    ("Traceback (most recent call last):\nMemoryError", "Traceback (most recent call last):\nMemoryError"),
    (json.dumps(SUCCESS)[:200], json.dumps(SUCCESS)[:200]),  # cut at the 4 KiB limit: never a success
    ('{"ok": true}', "the job reported success with an unreadable result: no outputs"),
    ('{"ok": true, "outputs": [{"key": 1}]}', None),
    ("[1, 2]", "[1, 2]"),
    ('{"ok": false}', '{"ok": false}'),
])
def test_parse_garbage_is_a_failure(message, expected):
    r = read_result(message)
    assert isinstance(r, Failed) and r.error
    if expected is not None:
        assert r.error == expected


def test_parse_empty_uses_the_fallback_and_clips_long_text():
    assert read_result(None, fallback="log line\nlast words").error == "log line\nlast words"
    assert read_result("", fallback=None).error == "the job left no termination message and no log"
    long = "x" * 5000 + "THE END"
    r = read_result(long)
    assert len(r.error) == STATUS_MESSAGE_MAX and r.error.endswith("THE END")
