"""The operator <-> job contract (datasetprep.contract): every result the job can write is read back
by the operator as the same result (or its documented trimmed form), within Kubernetes' 4 KiB."""
from __future__ import annotations

import io
import json

import pytest

from datasetprep import contract
from datasetprep.contract import (EXIT_PERMANENT, TERMINATION_MESSAGE_MAX_BYTES, Deleted, Failed, OutputFile,
                                  ProgressRecord, Published, ShardDone, TokenizerInfo, encode_result, exit_code)
from datasetprep.errors import BinarizeError, InputError, WorkerLost, describe, failure
from datasetprep.progress import LogProgress
from datasetprep.stats import Stats
from datasetprep_operator.podprogress import latest_record
from datasetprep_operator.results import read_result

TOK = TokenizerInfo(type="sentencepiece", path="tok/tokenizer.model", vocab_size=8000, eod_id=2)


def merged(keys: int = 1) -> Published:
    return Published(outputs=tuple(
        OutputFile(key=f"k{i}", prefix=f"out/a_k{i}_document", documents=526, sequences=522, tokens=821228,
                   dtype="uint16", bin_sha256="b" * 64, idx_sha256="i" * 64) for i in range(keys)),
        tokenizer=TOK, fingerprint="f" * 64, resolved_revision="c" * 40)


def kept(shards: int, keys: int = 1) -> Published:
    return Published(outputs=tuple(
        OutputFile(key=f"k{i}", prefix=f"out/a_k{i}_document", documents=10, sequences=10, tokens=10 ** 12,
                   dtype="int32", blend_file=f"out/a_k{i}_document.blend.txt", shards=shards,
                   blend_weights=tuple(range(123456789, 123456789 + shards))) for i in range(keys)),
        tokenizer=TOK, fingerprint="f" * 64)


def without(result: Published, *fields: str) -> Published:
    return result.model_copy(update={"outputs": tuple(o.model_copy(update=dict.fromkeys(fields)) for o in result.outputs)})


#: (what the job has, what the operator must read back)
CASES = [
    (merged(), merged()),
    (merged(3), merged(3)),
    (merged().model_copy(update={"reused": True, "resolved_revision": None}),
     merged().model_copy(update={"reused": True, "resolved_revision": None})),
    (Published(outputs=(OutputFile(key="text", prefix="x_text_document"),), tokenizer=TokenizerInfo(type="null")),
     Published(outputs=(OutputFile(key="text", prefix="x_text_document"),), tokenizer=TokenizerInfo(type="null"))),
    (kept(3), kept(3)),
    # trimmed to fit, in the documented order: checksums first, then the blend weights
    (merged(16), without(merged(16), "idx_sha256")),
    (merged(22), without(merged(22), "idx_sha256", "bin_sha256")),
    (kept(2000), without(kept(2000), "idx_sha256", "bin_sha256", "blend_weights")),
    (merged(400), Failed(error=contract.TOO_BIG, kind="internal")),
    (ShardDone(shard=1, shards=3, chunks=6, chunks_reused=2, documents=170, fingerprint="f" * 64),
     ShardDone(shard=1, shards=3, chunks=6, chunks_reused=2, documents=170, fingerprint="f" * 64)),
    (ShardDone(shard=0, shards=2, chunks=4, chunks_reused=4, documents=9, published=True, already_published=True),
     ShardDone(shard=0, shards=2, chunks=4, chunks_reused=4, documents=9, published=True, already_published=True)),
    (Deleted(deleted_files=0, deleted_bytes=0), Deleted(deleted_files=0, deleted_bytes=0)),
    (Deleted(deleted_files=7, deleted_bytes=2 ** 40), Deleted(deleted_files=7, deleted_bytes=2 ** 40)),
    *[(Failed(error="corpus.jsonl:7: malformed JSON", kind=k), Failed(error="corpus.jsonl:7: malformed JSON", kind=k))
      for k in ("permanent", "transient", "internal")],
]


@pytest.mark.parametrize("written,read", CASES, ids=lambda c: type(c).__name__)
def test_the_operator_reads_every_result_the_job_writes(written, read):
    text = encode_result(written)
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert read_result(text) == read


def test_trimming_is_really_needed_in_the_trimmed_cases():
    """The cases above that expect a trimmed result are too big untrimmed (else they test nothing)."""
    for written, read in CASES:
        untrimmed = len(json.dumps(written.model_dump(mode="json", exclude_none=True), separators=(",", ":")))
        assert (untrimmed > TERMINATION_MESSAGE_MAX_BYTES) == (written != read), written


def test_a_long_error_is_cut_to_fit_and_keeps_its_kind():
    long = Failed(error="line 1: " + "é\"x" * 3000, kind="transient")
    text = encode_result(long)
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = contract.decode_result(text)
    assert back.kind == "transient" and back.error.endswith("...") and long.error.startswith(back.error[:-3])
    assert len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES - 10  # cut no more than needed


def test_encoding_leaves_the_result_alone():
    big = kept(2000)
    encode_result(big)
    assert big.outputs[0].blend_weights is not None and len(big.outputs[0].blend_weights) == 2000


def test_an_older_job_without_an_error_kind_is_read_as_permanent():
    assert read_result('{"ok":false,"error":"bad line"}') == Failed(error="bad line", kind="permanent")


def test_malformed_blend_weights_are_dropped_not_fatal():
    doc = json.loads(encode_result(kept(3)))
    doc["outputs"][0]["blend_weights"] = [1, 2]  # not one per shard
    assert read_result(json.dumps(doc)).outputs[0].blend_weights is None
    doc["outputs"][0]["blend_weights"] = [1, -2, 3]
    assert read_result(json.dumps(doc)).outputs[0].blend_weights is None


@pytest.mark.parametrize("exc,kind", [
    (InputError("a.jsonl:3: malformed JSON"), "permanent"),
    (BinarizeError("output exists"), "permanent"),
    (WorkerLost("a worker process died"), "transient"),
    (FileNotFoundError(2, "No such file or directory", "/data/x"), "permanent"),
    (OSError(5, "Input/output error", "/data/x"), "transient"),
    (MemoryError(), "transient"),
    (ModuleNotFoundError("No module named 'numpy'", name="numpy"), "permanent"),
    (ValueError("plain"), "permanent"),
    (KeyError("bug"), "internal"),
])
def test_every_error_gets_a_kind(exc, kind):
    message, got = describe(exc)
    assert got == kind and message
    assert failure(exc).kind == kind
    # Only a permanent error ends the job with the code the Job's podFailurePolicy fails at once.
    assert (exit_code(kind) == EXIT_PERMANENT) == (kind == "permanent") and exit_code(kind) != 0


def test_the_token_is_masked_in_failures():
    assert "hf_secret" not in failure(ValueError("bad token hf_secret"), secret="hf_secret").error


def test_hub_errors_are_permanent_except_unavailable():
    from datasetprep import hub

    assert describe(hub.HubAuthError("gated"))[1] == "permanent"
    assert describe(hub.HubNotFoundError("nope"))[1] == "permanent"
    assert describe(hub.HubUnavailableError("503"))[1] == "transient"


# --------------------------------------------------------------------------- progress


def test_progress_record_round_trips_through_a_log_line_and_the_operators_reader():
    record = ProgressRecord(bytes_done=10, bytes_total=100, documents=5, tokens=50, tokens_per_second=7,
                            chunks_done=1, chunks_total=4, shard=2, time=1234.5)
    stream = io.StringIO()
    reporter = LogProgress(None, stream, shard=2)
    stats = Stats(bytes_total=100, chunks_total=4)
    reporter(stats)
    reporter(stats)  # within the interval: not printed again
    assert latest_record("noise\n" + stream.getvalue() + "result: {}\n").shard == 2
    assert stream.getvalue().count("datasetprep-progress ") == 1
    assert latest_record(f"x\n{record.to_log_line()}\ny\n") == record
    assert json.loads(record.to_json())["bytesDone"] == 10  # camelCase on the wire
    line = record.to_log_line()
    assert "\n" not in line and line.startswith("datasetprep-progress {")
    assert ProgressRecord.from_log_line(line) == record
    assert ProgressRecord.from_log_line("progress: 10% | ...") is None
    assert ProgressRecord.from_json("{cut") is None and ProgressRecord.from_json(None) is None
