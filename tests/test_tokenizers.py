"""Each tokenizer type: detection, wrong-type messages, EOD rules, and the round trip
binarize → read back → decode == source text (modulo the tokenizer's normalisation)."""
from __future__ import annotations

import json
import numpy as np
import pytest

from datasetprep import cli, indexed, pipeline, tokenization
from datasetprep.tokenization import TokenizerError
from paths import CORPUS_A, CORPUS_NULL, HF_DIR, SP_MODEL, read_texts
from tokfiles import llama3_like_ranks, ranks_from_hf_bpe, write_ranks


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory):
    return write_ranks(ranks_from_hf_bpe(), tmp_path_factory.mktemp("tt") / "tokenizer.model")


@pytest.fixture(scope="module")
def llama3_file(tmp_path_factory):
    return write_ranks(llama3_like_ranks(), tmp_path_factory.mktemp("l3") / "tokenizer.model")


def _binarize(tmp_path, kind, model, inp=CORPUS_A, eod=True, workers=2, **kw):
    cfg = tokenization.resolve_config(kind, model, **kw)
    out = tmp_path / "out"
    m = pipeline.run(pipeline.Request(inputs=[inp], output_prefix=str(out), tokenizer=cfg, append_eod=eod,
                                      workers=workers, chunk_bytes=200_000))
    return indexed.IndexedDataset(indexed.output_prefix(out, "text")), m, tokenization.load(cfg)


def test_detection(tiktoken_file):
    assert tokenization.detect_kind(SP_MODEL) == "sentencepiece"
    assert tokenization.detect_kind(HF_DIR) == "huggingface"
    assert tokenization.detect_kind(HF_DIR / "tokenizer.json") == "huggingface"
    assert tokenization.detect_kind(tiktoken_file) == "tiktoken"


def test_llama3_tokenizer_model_given_as_sentencepiece_names_the_right_type(llama3_file):
    """NeMo's guide passes Llama 3.1's tokenizer.model with --tokenizer-library sentencepiece."""
    with pytest.raises(TokenizerError) as e:
        tokenization.resolve_config("sentencepiece", llama3_file)
    msg = str(e.value)
    assert "tiktoken BPE rank file" in msg and "Llama 3" in msg and "TikTokenizer" in msg


@pytest.mark.parametrize("kind,other", [("huggingface", SP_MODEL), ("tiktoken", SP_MODEL),
                                        ("sentencepiece", HF_DIR / "tokenizer.json")])
def test_wrong_type_message(kind, other):
    with pytest.raises(TokenizerError, match="not a|use --tokenizer-type"):
        tokenization.resolve_config(kind, other)


def test_unreadable_and_garbage_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        tokenization.resolve_config("auto", tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(TokenizerError, match="cannot tell what tokenizer"):
        tokenization.resolve_config("auto", junk)
    bad_sp = tmp_path / "bad.model"
    bad_sp.write_bytes(b"\x0a\x05hello-not-a-model")
    cfg = tokenization.resolve_config("sentencepiece", bad_sp)
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        tokenization.load(cfg)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(TokenizerError, match="not a valid HuggingFace tokenizer.json"):
        tokenization.load(tokenization.resolve_config("huggingface", bad_json))


def test_preload_builds_once_and_load_waits_for_it(tmp_path, monkeypatch):
    """binarize starts the tokenizer's build on a thread before its imports; the run's load takes
    that very tokenizer (one build), and a tokenizer whose files changed since is built anew."""
    d = tmp_path / "hf"
    d.mkdir()
    for f in HF_DIR.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    built = []
    real = tokenization._build
    monkeypatch.setattr(tokenization, "_build", lambda cfg: built.append(cfg) or real(cfg))
    cfg = tokenization.resolve_config("huggingface", d)
    tokenization.preload(cfg)
    tokenization.preload(cfg)  # a second call starts nothing
    tok = tokenization.load(cfg)
    assert tokenization.load(cfg) is tok and len(built) == 1
    assert tok.encode("hello world").tolist() == real(cfg).encode("hello world").tolist()
    tokenization.preload(cfg)  # already loaded: nothing to start
    assert len(built) == 1
    # the files change after the preload: the preloaded tokenizer is not used
    tokenization.preload(tokenization.resolve_config("huggingface", d, eod_id=7))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}) + " " * 7)
    assert tokenization.load(tokenization.resolve_config("huggingface", d, eod_id=7)).eod == 7
    assert len(built) == 3  # the preload's, then the load's of the changed files


def test_preload_errors_are_raised_by_load_as_without_it(tmp_path):
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text('{"version": "1.0", "model": 3}')
    cfg = tokenization.resolve_config("huggingface", bad_json)
    tokenization.preload(cfg)
    with pytest.raises(TokenizerError, match="not a valid HuggingFace tokenizer.json"):
        tokenization.load(cfg)
    with pytest.raises(TokenizerError, match="not a valid HuggingFace tokenizer.json"):
        tokenization.load(cfg)  # and again, without a preload
    # through the CLI: the message, not a traceback, and nothing written
    rc = cli.main(["binarize", "--input", str(CORPUS_A), "--output-prefix", str(tmp_path / "o"),
                   "--tokenizer-model", str(bad_json), "--tokenizer-type", "huggingface", "--no-progress"])
    assert rc != 0 and not list(tmp_path.glob("o_*"))


def test_append_eod_without_eos_is_a_clear_error(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((HF_DIR / "tokenizer.json").read_bytes())  # no tokenizer_config.json
    cfg = tokenization.resolve_config("huggingface", d)
    with pytest.raises(TokenizerError, match="eos_token.*--eod-id"):
        pipeline.run(pipeline.Request(inputs=[CORPUS_A], output_prefix=str(tmp_path / "o"), tokenizer=cfg,
                                      append_eod=True))
    assert not list(tmp_path.glob("o_*"))
    # with an explicit id it works
    cfg = tokenization.resolve_config("huggingface", d, eod_id=8000)
    assert tokenization.load(cfg).eod == 8000


def test_sentencepiece_round_trip(tmp_path):
    import sentencepiece as spm

    norm = spm.SentencePieceNormalizer(model_file=str(SP_MODEL))
    ds, m, tok = _binarize(tmp_path, "sentencepiece", SP_MODEL)
    texts = read_texts(CORPUS_A)
    assert ds.num_documents == len(texts)
    for d, text in enumerate(texts):
        ids = ds.document(d)
        if len(ids):
            assert ids[-1] == tok.eod
            ids = ids[:-1]
        # modulo SentencePiece's own normaliser (nmt_nfkc, whitespace runs → one space, trimmed)
        want = norm.normalize(text).replace("\u2581", " ").strip()
        got = tok.decode(ids)
        if "⁇" in got:
            continue  # characters outside the vocabulary decode to the unknown piece
        assert got == want, d


def test_huggingface_byte_level_round_trip_is_exact(tmp_path):
    ds, m, tok = _binarize(tmp_path, "huggingface", HF_DIR)
    texts = read_texts(CORPUS_A)
    for d, text in enumerate(texts):
        ids = ds.document(d)
        if len(ids):
            assert ids[-1] == 8000
            ids = ids[:-1]
        assert tok.decode(ids) == text, d


def test_tiktoken_round_trip_is_exact_and_specials_are_text(tmp_path, tiktoken_file):
    ds, m, tok = _binarize(tmp_path, "tiktoken", tiktoken_file, eod=False)
    assert m.tokenizer.type == "tiktoken" and m.dtype == "uint16"
    texts = read_texts(CORPUS_A)
    for d, text in enumerate(texts):
        assert tok.decode(ds.document(d)) == text, d


def test_tiktoken_llama3_convention(tmp_path, llama3_file):
    tok = tokenization.load(tokenization.resolve_config("auto", llama3_file))
    assert tok.kind == "tiktoken"
    assert tok.vocab_size == 128256
    assert tok.eod == 128001  # <|end_of_text|>
    assert tok.special["<|begin_of_text|>"] == 128000 and tok.special["<|eot_id|>"] == 128009
    ds, m, _ = _binarize(tmp_path, "auto", llama3_file, inp=CORPUS_A)
    assert m.dtype == "int32"
    texts = read_texts(CORPUS_A)
    for d in (1, 2, 146):
        ids = ds.document(d)
        assert ids[-1] == 128001
        assert tok.decode(ids[:-1]) == texts[d]


def test_null_tokenizer_round_trip(tmp_path):
    ds, m, tok = _binarize(tmp_path, "null", None, inp=CORPUS_NULL, vocab_size=65499)
    for d, text in enumerate(read_texts(CORPUS_NULL)):
        assert [int(x) for x in ds.document(d)] == [int(x) for x in text.split()] + [65498]


def test_null_tokenizer_ids_beyond_vocabulary(tmp_path):
    """Refused even when the id fits the dtype (500 < 65535): ids are tokens of a vocabulary."""
    f = tmp_path / "in.jsonl"
    for bad in ("70000", "500", "-1"):
        f.write_text('{"text": "1 2 3"}\n{"text": "4 ' + bad + '"}\n')
        with pytest.raises(TokenizerError, match=f"in.jsonl:2: .*token id {bad} is outside the null tokenizer's "
                                                 r"vocabulary \(ids 0..99\): raise --vocab-size"):
            _binarize(tmp_path, "null", None, inp=f, vocab_size=100)
        assert not list(tmp_path.glob("out*"))


def test_list_values_become_sentences(tmp_path):
    f = tmp_path / "in.jsonl"
    rows = [{"text": ["First sentence.", "", "Second sentence here."]}, {"text": []}, {"text": ["", "  "]},
            {"text": "plain"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, m, tok = _binarize(tmp_path, "huggingface", HF_DIR, inp=f)
    assert list(np.diff(ds.document_indices)) == [2, 0, 1, 1]  # "  " is not empty for byte-level BPE
    assert ds.sequence(1)[-1] == 8000 and ds.sequence(0)[-1] != 8000


def test_inspect_decodes(tmp_path, capsys):
    ds, m, tok = _binarize(tmp_path, "sentencepiece", SP_MODEL)
    assert cli.main(["inspect", ds.prefix, "--tokenizer-model", str(SP_MODEL), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "526 documents (4 empty)" in out and "_Reducir _Información" in out
