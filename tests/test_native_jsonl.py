"""The native engine reads JSONL lines exactly as datasetprep's Python reader does, or declines.

``encode_jsonl_packed(data, key, ...)`` parses a batch of whole lines itself.  For every batch it
either returns exactly what the Python path gives (``readers.LineBatch(...).records()``, then
``encode_packed``) or None, and it returns None whenever the
Python path raises (so the error message is the Python reader's).  Checked on hand-picked lines
(every JSON escape, surrogates, duplicate keys, NaN, BOM, CRLF / bare CR, invalid UTF-8, control
characters, nesting) and on Hypothesis-generated objects.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tokfiles import native_or_skip  # noqa: E402

datasetprep_native = native_or_skip()

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from datasetprep import readers  # noqa: E402
from paths import HF_DIR  # noqa: E402

ENC = datasetprep_native.ByteLevelBPE.from_file(str(HF_DIR / "tokenizer.json"))


def python_path(data: bytes, key: str = "text"):
    """What the pipeline's Python reader + engine give: the packed arrays, or the exception."""
    try:
        recs = readers.LineBatch(data, (key,), lambda k: f"line {k + 1}", None).records()
        texts = [r[0] for r in recs]
        if any(type(t) is not str for t in texts):
            return "not a string"
        return ENC.encode_packed(texts, 8000, "uint16")
    except (readers.InputError, UnicodeEncodeError, ValueError) as e:
        return e


def check(data: bytes, key: str = "text", *, fast: bool | None = None) -> None:
    got = ENC.encode_jsonl_packed(data, key, 8000, "uint16")
    want = python_path(data, key)
    if got is None:
        if fast:
            pytest.fail(f"declined a batch it should read: {data[:200]!r}")
        return
    assert not isinstance(want, (Exception, str)), f"read a batch the Python reader rejects ({want}): {data[:200]!r}"
    assert got == want, data[:200]


LINES = [
    b'{"text": "hello world"}',
    b'{"text":"compact","x":1}',
    b'  {"text" : "spaces around"}  \t',
    b'{"a": {"b": [1, 2, {"c": null}]}, "text": "nested before", "z": [true, false, 1.5e3, -0]}',
    b'{"text": "first", "text": "second wins"}',
    b'{"t\\u0065xt": "escaped key"}',
    rb'{"text": "esc \" \\ \/ \b \f \n \r \t \u00e9 \u4e2d \ud83d\ude00 \u0000 end"}',
    '{"text": "raw unicode é 中 😀 \u2028 \u2029 \u0085"}'.encode(),
    b'{"text": ""}',
    b'{"text": "<|endoftext|> inside"}',
    b'{"text": 5}',
    b'{"text": null}',
    b'{"text": ["a", "b"]}',
    b'{"other": "no text field"}',
    b'["not", "an", "object"]',
    b'"just a string"',
    b'',
    b'   ',
    b'{"text": "nan", "x": NaN}',
    b'{"text": "inf", "x": Infinity}',
    b'{"text": "big", "x": 1e999}',
    b'{"text": "bigint", "x": 123456789012345678901234567890}',
    rb'{"text": "lone \ud800 surrogate"}',
    rb'{"text": "lone low \udc00"}',
    b'{"text": "raw control \x01 char"}',
    b'{"text": "tab\tinside"}',
    b'\xef\xbb\xbf{"text": "bom"}',
    b'{"text": "bad utf8 \xff"}',
    b'{"x": "bad utf8 \xc3\x28 elsewhere", "text": "ok"}',
    b'{"text": "trailing comma",}',
    b"{'text': 'single quotes'}",
    b'{"text": "x"} trailing',
    b'{"text": "x"}{"text": "y"}',
    b'{"text": "deep", "x": ' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"text": "deep ok", "x": ' + b"[" * 50 + b"]" * 50 + b"}",
    b'{"text": "too deep for json.loads", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"text": "too deep for json.loads", "x": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
    b'{"text": "01", "x": 01}',
    b'{"text": "\\x41 bad escape"}',
]


@pytest.mark.parametrize("line", LINES, ids=range(len(LINES)))
def test_each_line_alone(line):
    check(line)
    check(line + b"\n")


def test_batches_and_newlines():
    good = [ln for ln in LINES if ln.strip() and ENC.encode_jsonl_packed(ln, "text", None, "uint16") is not None]
    assert len(good) >= 10
    for sep in (b"\n", b"\r\n", b"\r"):
        check(sep.join(good) + sep, fast=True)
        check(sep.join(good), fast=True)
    check(b"\n".join(good[:3]) + b"\r\n" + b"\r".join(good[3:]) + b"\n", fast=True)
    # one bad line anywhere declines the whole batch
    for bad in (b"", b"{bad", b'{"text": 5}'):
        check(b"\n".join(good[:2] + [bad] + good[2:]) + b"\n")
    check(b"\n\n".join(good))  # an empty line between


def test_golden_corpus_reads_natively():
    from paths import CORPUS_A

    data = CORPUS_A.read_bytes()
    check(data, fast=True)


def test_other_keys():
    data = b'{"text": "a", "body": "b"}\n{"body": "c", "text": "d"}\n'
    check(data, "body", fast=True)
    check(data, "missing")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(objs=st.lists(st.tuples(st.dictionaries(st.text(max_size=6), json_values, max_size=4),
                               st.text(), st.booleans(), st.booleans()), min_size=1, max_size=6),
       sep=st.sampled_from(["\n", "\r\n", "\r"]))
def test_generated_batches(objs, sep):
    lines = []
    for obj, text, ascii_only, dup in objs:
        obj = dict(obj)
        obj["text"] = text
        s = json.dumps(obj, ensure_ascii=ascii_only)
        if dup:
            s = s[:-1] + (", " if len(obj) else "") + '"text": ' + json.dumps(text[::-1]) + "}"
        lines.append(s)
    data = sep.join(lines).encode("utf-8", "surrogatepass") + sep.encode()
    check(data)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=60))
def test_arbitrary_bytes_never_read_differently(raw):
    check(b'{"text": "' + raw + b'"}\n')
    check(raw)


def test_pipeline_uses_it_and_names_bad_lines(tmp_path):
    """Through binarize: the native path and the Python path (DATASETPREP_NATIVE=0) write the same
    bytes, and a bad line in a batch still gets the Python reader's message with its line."""
    from datasetprep import indexed, pipeline, tokenization

    f = tmp_path / "in.jsonl"
    f.write_bytes(b"\n".join(ln for ln in LINES if ln.strip() and not isinstance(python_path(ln), (Exception, str))) + b"\n")
    assert ENC.encode_jsonl_packed(f.read_bytes(), "text", 8000, "uint16") is None  # NaN etc.: Python path
    fast = tmp_path / "fast.jsonl"
    fast.write_bytes(b"\n".join(ln for ln in LINES if ln.strip() and ENC.encode_jsonl_packed(ln, "text", None, "uint16")) + b"\n")
    cfg = tokenization.resolve_config("huggingface", HF_DIR)
    for name, src in (("a", f), ("c", fast)):
        pipeline.run(pipeline.Request(inputs=[src], output_prefix=str(tmp_path / name), tokenizer=cfg,
                                      append_eod=True))
        ds = indexed.IndexedDataset(indexed.output_prefix(tmp_path / name, "text"))
        got = np.concatenate([ds.document(i) for i in range(ds.num_documents)])
        assert np.array_equal(got, np.frombuffer(python_path(src.read_bytes())[0], "<u2"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": NaN, "x": [}\n{"text": "ok"}\n')
    with pytest.raises(readers.InputError, match=r"bad.jsonl:3\b"):
        pipeline.run(pipeline.Request(inputs=[bad], output_prefix=str(tmp_path / "b"), tokenizer=cfg))
