"""Resume without rework and sharded runs (one Indexed Job pod per shard), at the engine level."""
from __future__ import annotations

import dataclasses

import pytest

from datasetprep import indexed, pipeline, tokenization
from datasetprep.contract import RunPlan
from datasetprep.errors import BinarizeError
from paths import CORPUS_A, GOLDEN, SP_MODEL

G = GOLDEN / "a_spbpe_eod_text_document"


def _req(out, workers=1, progress=None):
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    return pipeline.Request(inputs=[CORPUS_A], output_prefix=str(out), tokenizer=cfg, append_eod=True,
                            workers=workers, chunk_bytes=150_000, progress=progress)


def _golden(out) -> bool:
    p = indexed.output_prefix(out, "text")
    return (indexed.bin_path(p).read_bytes() == indexed.bin_path(G).read_bytes()
            and indexed.idx_path(p).read_bytes() == indexed.idx_path(G).read_bytes())


class Crash(Exception):
    pass


def _crash_after(n):
    def cb(stats):
        if stats.chunks_done >= n:
            raise Crash()
    return cb


@pytest.mark.parametrize("workers", [1, 2])
def test_rerun_after_crash_redoes_only_unfinished_chunks(tmp_path, workers):
    out = tmp_path / "ds"
    with pytest.raises(Crash):
        pipeline.run(_req(out, workers, _crash_after(6)))
    assert not list(tmp_path.glob("ds_*"))  # nothing published
    done = sorted((p for p in tmp_path.glob(".datasetprep-work-ds-*/parts/*.done")))
    assert len(done) >= 6
    m = pipeline.run(_req(out, workers))
    assert m.stats.chunks_reused == len(done)
    assert m.stats.chunks > len(done)
    assert _golden(out)
    assert not list(tmp_path.glob(".datasetprep-work-*"))  # cleaned after publishing


def test_resumed_run_reports_reused_work_as_done_but_not_in_its_rates(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(Crash):
        pipeline.run(_req(out, 1, _crash_after(6)))
    reports = []
    m = pipeline.run(_req(out, 1, reports.append))
    first, last = reports[0], reports[-1]
    reused = m.stats.chunks_reused
    assert first.chunks_reused == reused >= 6 and first.tokens_reused > 0
    assert first.tokens >= first.tokens_reused and first.bytes_done >= first.bytes_reused
    # at the end every token is counted, the reused ones included (no dip after a restart)
    assert last.tokens == m.outputs[0].tokens and last.documents == m.outputs[0].documents
    # rates and ETA: only this attempt's work (right after resuming, nothing done yet → no rate)
    fresh = dataclasses.replace(first, bytes_done=first.bytes_reused, tokens=first.tokens_reused,
                                documents=first.documents_reused)
    r = fresh.rates()
    assert r.tokens_s == 0 and r.mib_s == 0 and r.eta is None
    rates = last.rates()
    assert rates.tokens_s < last.tokens / rates.elapsed


def test_corrupt_chunk_is_redone(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(Crash):
        pipeline.run(_req(out, 1, _crash_after(5)))
    parts = sorted(tmp_path.glob(".datasetprep-work-ds-*/parts/00000002.0.bin"))
    assert parts
    data = bytearray(parts[0].read_bytes())
    data[10] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    m = pipeline.run(_req(out, 1))
    assert m.stats.chunks_reused == 4  # chunks 0,1,3,4 trusted; 2 failed its checksum
    assert _golden(out)


def test_changed_input_starts_clean(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(CORPUS_A.read_bytes())
    cfg = tokenization.resolve_config("sentencepiece", SP_MODEL)
    req = pipeline.Request(inputs=[src], output_prefix=str(tmp_path / "ds"), tokenizer=cfg, chunk_bytes=150_000,
                           progress=_crash_after(3))
    with pytest.raises(Crash):
        pipeline.run(req)
    src.write_bytes(CORPUS_A.read_bytes() + b'\n{"text": "one more"}')
    req.progress = None
    m = pipeline.run(req)
    assert m.stats.chunks_reused == 0 and m.outputs[0].documents == 527


@pytest.mark.parametrize("n", [2, 3, 7])
def test_shards_then_finish_equal_golden(tmp_path, n):
    out = tmp_path / "ds"
    infos = [pipeline.run_shard(_req(out, 1), RunPlan.shard(i, n)) for i in range(n)]
    assert sum(i.chunks for i in infos) == len(pipeline.plan(_req(out))[1])
    assert not list(tmp_path.glob("ds_*"))  # shards publish nothing
    again = pipeline.run_shard(_req(out, 2), RunPlan.shard(n - 1, n))  # a restarted pod of a finished shard
    assert again.chunks_reused == again.chunks
    pipeline.finish(_req(out), RunPlan(step="merge", shards=n))
    assert _golden(out)


def test_finish_refuses_missing_shard(tmp_path):
    out = tmp_path / "ds"
    pipeline.run_shard(_req(out), RunPlan.shard(0, 2))
    with pytest.raises(BinarizeError, match="is not done"):
        pipeline.finish(_req(out), RunPlan(step="merge", shards=2))
