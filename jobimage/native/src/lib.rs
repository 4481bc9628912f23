//! `datasetprep_native`: exact, fast encoders for HF byte-level BPE `tokenizer.json` files, tiktoken
//! BPE rank files (one engine, two id maps) and SentencePiece BPE models.
//!
//! Python API (see README.md):
//!
//! ```python
//! from datasetprep_native import ByteLevelBPE, SentencePieceBPE
//! enc = ByteLevelBPE.from_json(open("tokenizer.json").read(), add_special_tokens=True)
//! enc = ByteLevelBPE.from_tiktoken(open("tokenizer.model", "rb").read(), pattern)
//! enc = SentencePieceBPE.from_sentencepiece(open("tokenizer.model", "rb").read())
//! ids = np.frombuffer(enc.encode(text), "<u4")
//! toks, seq_lens, docs = enc.encode_packed(texts, eod, "uint16")   # a .bin/.idx part's arrays
//! ```
//!
//! Modules, each using only those after it: `hf` / `tiktoken` / `sentencepiece` (file → engine)
//! → `engine` (added tokens, normalizer, pre-tokenizer stages, queued cache lookups) → `cache`,
//! `bpe`, `pretok` → `table` (flat lookup tables), `unicode` (character classes); `pack`
//! (output arrays) and `jsonl` (JSONL lines) stand alone.

pub mod bpe;
pub mod cache;
pub mod engine;
pub mod hf;
pub mod jsonl;
pub mod pack;
pub mod pretok;
pub mod sentencepiece;
pub mod table;
pub mod tiktoken;
pub mod unicode;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// Default bound of each word cache (entries); the cache is cleared when it is reached.
pub const DEFAULT_CACHE_SIZE: usize = 1 << 18;

fn le_bytes<'py, T: Copy, const W: usize>(
    py: Python<'py>,
    xs: &[T],
    to: impl Fn(T) -> [u8; W],
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, xs.len() * W, |buf: &mut [u8]| {
        for (c, &x) in buf.chunks_exact_mut(W).zip(xs) {
            c.copy_from_slice(&to(x));
        }
        Ok(())
    })
}

/// The `str` items of a list or any iterable, held for the whole call (the GIL is released
/// while they are encoded).
fn collect_texts<'py>(texts: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyString>>> {
    let err = || PyTypeError::new_err("expected str items");
    if let Ok(list) = texts.cast::<PyList>() {
        list.iter().map(|x| x.cast_into::<PyString>().map_err(|_| err())).collect()
    } else {
        texts
            .try_iter()?
            .map(|x| x?.cast_into::<PyString>().map_err(|_| err()))
            .collect()
    }
}

/// An engine: encodes documents one after another with its own per-thread caches.
enum Model {
    ByteLevel(engine::Engine),
    SentencePiece(sentencepiece::SentencePiece),
}

impl Model {
    /// Encode `texts` in order into `p`, closing each document.
    fn encode_docs(&self, texts: &[&str], p: &mut pack::Packer) -> Result<(), String> {
        fn run(
            texts: &[&str],
            p: &mut pack::Packer,
            mut encode: impl FnMut(&str, &mut Vec<u32>),
        ) -> Result<(), String> {
            for s in texts {
                let start = p.tokens.len();
                encode(s, &mut p.tokens);
                p.end_document(start)?;
            }
            Ok(())
        }
        match self {
            Model::ByteLevel(e) => e.with_cache(|c| run(texts, p, |s, out| e.encode_into(s, c, out))),
            Model::SentencePiece(m) => m.with_cache(|c| run(texts, p, |s, out| m.encode_into(s, c, out))),
        }
    }

    /// One document's ids.
    fn encode_one(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 8);
        match self {
            Model::ByteLevel(e) => e.with_cache(|c| e.encode_into(text, c, &mut out)),
            Model::SentencePiece(m) => m.with_cache(|c| m.encode_into(text, c, &mut out)),
        }
        out
    }
}

fn parse_dtype(dtype: &str) -> PyResult<pack::DType> {
    pack::DType::parse(dtype).ok_or_else(|| PyValueError::new_err(format!("dtype {dtype:?}")))
}

fn unsupported(reason: String) -> PyErr {
    PyValueError::new_err(format!("unsupported: {reason}"))
}

/// An exact native tokenizer: HF byte-level BPE (`tokenizer.json`, `encode(text).ids`), a
/// tiktoken rank file (`encode_ordinary`) or a SentencePiece BPE model (`encode_as_ids`).
/// Exported as `ByteLevelBPE` and `SentencePieceBPE` too (the same class).
#[pyclass(module = "datasetprep_native", name = "Encoder", frozen)]
pub struct Encoder {
    model: Model,
    add_special_tokens: bool,
    cache_size: usize,
    model_vocab_size: usize,
    /// Token strings → ids of a tokenizer.json (vocab and added tokens); empty otherwise.
    token_ids: rustc_hash::FxHashMap<String, u32>,
}

impl Encoder {
    /// The engine of a tokenizer.json's text (`from_json`, `from_file`).
    fn build_json(py: Python<'_>, json: &str, add_special_tokens: bool, cache_size: usize, fast_split: bool) -> PyResult<Self> {
        let opts = hf::Options {
            add_special_tokens,
            cache_size,
            fast_split,
        };
        let built = py.detach(|| hf::build_engine(json, opts));
        release_free_memory();
        let (engine, vocab) = built.map_err(unsupported)?;
        let mut enc = Self::new(Model::ByteLevel(engine), add_special_tokens, cache_size, vocab.model_size);
        enc.token_ids = vocab.ids;
        Ok(enc)
    }

    fn new(model: Model, add_special_tokens: bool, cache_size: usize, model_vocab_size: usize) -> Self {
        Self {
            model,
            add_special_tokens,
            cache_size,
            model_vocab_size,
            token_ids: Default::default(),
        }
    }
}

#[pymethods]
impl Encoder {
    /// Build from the text of a `tokenizer.json`.  Raises `ValueError("unsupported: ...")` for
    /// any configuration whose ids cannot be reproduced exactly.  `fast_split=False` runs onig
    /// for every pre-tokenizer pattern (the reference for the hand-written splitters).
    #[staticmethod]
    #[pyo3(signature = (tokenizer_json, add_special_tokens = true, cache_size = DEFAULT_CACHE_SIZE, fast_split = true))]
    fn from_json(
        py: Python<'_>,
        tokenizer_json: &Bound<'_, PyAny>,
        add_special_tokens: bool,
        cache_size: usize,
        fast_split: bool,
    ) -> PyResult<Self> {
        // bytes as read from the file, or str (bytes spare a 128k vocabulary's file a round
        // trip through Python's UCS-2 strings)
        let json: &str = if let Ok(b) = tokenizer_json.cast::<PyBytes>() {
            std::str::from_utf8(b.as_bytes()).map_err(|e| unsupported(format!("tokenizer.json is not UTF-8: {e}")))?
        } else if let Ok(t) = tokenizer_json.cast::<PyString>() {
            t.to_str()?
        } else {
            return Err(PyTypeError::new_err("tokenizer_json must be str or bytes"));
        };
        Self::build_json(py, json, add_special_tokens, cache_size, fast_split)
    }

    /// Build from a `tokenizer.json` path.
    #[staticmethod]
    #[pyo3(signature = (path, add_special_tokens = true, cache_size = DEFAULT_CACHE_SIZE, fast_split = true))]
    fn from_file(
        py: Python<'_>,
        path: std::path::PathBuf,
        add_special_tokens: bool,
        cache_size: usize,
        fast_split: bool,
    ) -> PyResult<Self> {
        let text = std::fs::read(&path)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display())))?;
        let json = std::str::from_utf8(&text).map_err(|e| unsupported(format!("tokenizer.json is not UTF-8: {e}")))?;
        Self::build_json(py, json, add_special_tokens, cache_size, fast_split)
    }

    /// Build from the bytes of a tiktoken rank file and its split pattern (one of the patterns
    /// with a hand-written pre-tokenizer, else `ValueError("unsupported: ...")`).  Encodes like
    /// `encode_ordinary`: special-token strings are text.
    #[staticmethod]
    #[pyo3(signature = (ranks, pattern, cache_size = DEFAULT_CACHE_SIZE))]
    fn from_tiktoken(py: Python<'_>, ranks: &[u8], pattern: &str, cache_size: usize) -> PyResult<Self> {
        let built = py.detach(|| tiktoken::build_engine(ranks, pattern, cache_size));
        release_free_memory();
        let (engine, n) = built.map_err(unsupported)?;
        Ok(Self::new(Model::ByteLevel(engine), false, cache_size, n))
    }

    /// Build from the bytes of a SentencePiece `tokenizer.model` (BPE; `ValueError("unsupported:
    /// ...")` for models whose ids cannot be reproduced exactly: use the library then).
    #[staticmethod]
    #[pyo3(signature = (model, cache_size = DEFAULT_CACHE_SIZE))]
    fn from_sentencepiece(py: Python<'_>, model: &[u8], cache_size: usize) -> PyResult<Self> {
        let built = py.detach(|| sentencepiece::SentencePiece::from_bytes(model, cache_size));
        release_free_memory();
        let m = built.map_err(unsupported)?;
        let n = m.piece_size();
        Ok(Self::new(Model::SentencePiece(m), false, cache_size, n))
    }

    /// Whether template special tokens (e.g. BOS) are added.
    #[getter]
    fn add_special_tokens(&self) -> bool {
        self.add_special_tokens
    }

    #[getter]
    fn cache_size(&self) -> usize {
        self.cache_size
    }

    /// Tokens of the model: vocab entries of a tokenizer.json, ranks of a rank file, pieces of a
    /// SentencePiece model.
    #[getter]
    fn model_vocab_size(&self) -> usize {
        self.model_vocab_size
    }

    /// Distinct tokens of a tokenizer.json, added tokens included (HF
    /// `get_vocab_size(with_added_tokens=True)`); the model's size otherwise.
    #[getter]
    fn vocab_size(&self) -> usize {
        if self.token_ids.is_empty() {
            self.model_vocab_size
        } else {
            self.token_ids.len()
        }
    }

    /// The id of a token string of a tokenizer.json (vocab or added token), like HF
    /// `token_to_id`; None when unknown (and for other models).
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.token_ids.get(token).copied()
    }

    fn clear_cache(&self) {
        match &self.model {
            Model::ByteLevel(e) => e.clear_cache(),
            Model::SentencePiece(m) => m.clear_cache(),
        }
    }

    /// Encode one document: little-endian uint32 token ids as `bytes`.
    fn encode<'py>(&self, py: Python<'py>, text: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
        let s: &str = text.to_str()?;
        let ids = py.detach(|| self.model.encode_one(s));
        le_bytes(py, &ids, u32::to_le_bytes)
    }

    /// Encode many documents in one call: `(ids, lengths)` where `ids` is the concatenation of
    /// all documents' little-endian uint32 ids and `lengths` holds each document's token count
    /// as little-endian uint64.
    fn encode_many<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        let items = collect_texts(texts)?;
        let strs: Vec<&str> = items.iter().map(|s| s.to_str()).collect::<PyResult<_>>()?;
        let p = py.detach(|| {
            let total: usize = strs.iter().map(|s| s.len()).sum();
            let mut p = pack::Packer::new(None, total / 2 + 8);
            self.model.encode_docs(&strs, &mut p).map(|()| p)
        });
        let p = p.map_err(PyValueError::new_err)?;
        // per-document counts from the packer's sequences (no EOD: a document is 0 or 1 sequence)
        let mut seqs = p.seq_lens.iter();
        let lens: Vec<u64> = p.docs.iter().map(|&d| if d == 0 { 0 } else { *seqs.next().unwrap() as u64 }).collect();
        PyTuple::new(py, [le_bytes(py, &p.tokens, u32::to_le_bytes)?, le_bytes(py, &lens, u64::to_le_bytes)?])
    }

    /// Encode many documents into the arrays of a `.bin`/`.idx` part: `(tokens, seq_lens, docs)`
    /// as `bytes`: the tokens in `dtype` ("uint16", "int32" or "uint32", little-endian) with
    /// `eod` after each non-empty document (when not None), each sequence's length (`<i4`) and
    /// each document's number of sequences (`<i4`, 0 for an empty document).  `ValueError` when
    /// an id does not fit `dtype`.
    #[pyo3(signature = (texts, eod, dtype))]
    fn encode_packed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        eod: Option<u32>,
        dtype: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let dt = parse_dtype(dtype)?;
        let items = collect_texts(texts)?;
        let strs: Vec<&str> = items.iter().map(|s| s.to_str()).collect::<PyResult<_>>()?;
        let packer = py.detach(|| {
            let total: usize = strs.iter().map(|s| s.len()).sum();
            let mut p = pack::Packer::new(eod, total / 2 + strs.len() + 8);
            self.model.encode_docs(&strs, &mut p).map(|()| p)
        });
        packed_tuple(py, &packer.map_err(PyValueError::new_err)?, dt, dtype)
    }

    /// `encode_packed` of the string field `key` of each line of a batch of whole JSONL lines
    /// (`data`), parsed here; None when any line must be read by the Python reader instead
    /// (see `jsonl.rs`: whatever `json.loads` would read differently, or reject).
    #[pyo3(signature = (data, key, eod, dtype))]
    fn encode_jsonl_packed<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        key: &str,
        eod: Option<u32>,
        dtype: &str,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let dt = parse_dtype(dtype)?;
        let packer = py.detach(|| {
            let Some(texts) = jsonl::texts(data, key) else {
                return Ok(None);
            };
            let strs: Vec<&str> = texts.iter().map(|t| &**t).collect();
            let mut p = pack::Packer::new(eod, data.len() / 2 + texts.len() + 8);
            self.model.encode_docs(&strs, &mut p).map(|()| Some(p))
        });
        match packer.map_err(PyValueError::new_err)? {
            None => Ok(None),
            Some(p) => Ok(Some(packed_tuple(py, &p, dt, dtype)?)),
        }
    }
}

/// Hand the memory freed after building an engine (parse buffers) back to the OS, so that it
/// neither counts in this process's RSS nor is copied into forked workers' RSS.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn packed_tuple<'py>(py: Python<'py>, p: &pack::Packer, dt: pack::DType, dtype: &str) -> PyResult<Bound<'py, PyTuple>> {
    let mut bad = None;
    let toks = PyBytes::new_with(py, p.tokens.len() * dt.itemsize(), |buf: &mut [u8]| {
        bad = p.write_tokens(dt, buf).err();
        Ok(())
    })?;
    if let Some(id) = bad {
        return Err(PyValueError::new_err(format!("token id {id} does not fit {dtype}")));
    }
    PyTuple::new(py, [toks, le_bytes(py, &p.seq_lens, i32::to_le_bytes)?, le_bytes(py, &p.docs, i32::to_le_bytes)?])
}

/// `encode_packed`'s arrays from documents' ids given as lists of ints (another engine's
/// output, e.g. SentencePiece's): one pass in native code instead of numpy over Python ints.
/// `ValueError` for an id that is negative or does not fit `dtype`.
#[pyfunction]
#[pyo3(signature = (docs, eod, dtype))]
fn pack_ids<'py>(py: Python<'py>, docs: &Bound<'py, PyList>, eod: Option<u32>, dtype: &str) -> PyResult<Bound<'py, PyTuple>> {
    let dt = parse_dtype(dtype)?;
    let mut p = pack::Packer::new(eod, 0);
    for doc in docs.iter() {
        let doc = doc.cast_into::<PyList>().map_err(|_| PyTypeError::new_err("pack_ids expects lists of ints"))?;
        let start = p.tokens.len();
        p.tokens.reserve(doc.len() + 1);
        for i in 0..doc.len() {
            // SAFETY: `doc` is a list (checked above) held for the whole loop, `i` is in range,
            // and PyList_GetItem returns a borrowed reference (no refcount work per item).
            let v = unsafe {
                let item = pyo3::ffi::PyList_GetItem(doc.as_ptr(), i as pyo3::ffi::Py_ssize_t);
                pyo3::ffi::PyLong_AsLongLong(item)
            };
            if v == -1 {
                if let Some(e) = PyErr::take(py) {
                    return Err(e); // not an int (TypeError) or too large (OverflowError)
                }
            }
            let id = u32::try_from(v).map_err(|_| PyValueError::new_err(format!("token id {v} does not fit {dtype}")))?;
            p.tokens.push(id);
        }
        p.end_document(start).map_err(PyValueError::new_err)?;
    }
    packed_tuple(py, &p, dt, dtype)
}

/// The pieces the hand-written pre-tokenizer cuts `text` into for `pattern` (`ValueError` for a
/// pattern without one): for tests against the regex.
#[pyfunction]
fn split_pieces(pattern: &str, text: &str) -> PyResult<Vec<String>> {
    let sp = pretok::Splitter::recognise(pattern)
        .ok_or_else(|| PyValueError::new_err("unsupported: no hand-written pre-tokenizer for this pattern"))?;
    let mut out = Vec::new();
    sp.split(unicode::classes(), text, |p| out.push(p.to_owned()));
    Ok(out)
}

/// Where the hand-written pre-tokenizer and oniguruma (compiled like HF's `SysRegex`) first cut
/// `text` differently: `None`, or `(byte offset, our piece, onig's piece)`.  For tests on large
/// texts (no Python object per piece).
#[pyfunction]
fn split_difference(pattern: &str, text: &str) -> PyResult<Option<(usize, String, String)>> {
    let sp = pretok::Splitter::recognise(pattern)
        .ok_or_else(|| PyValueError::new_err("unsupported: no hand-written pre-tokenizer for this pattern"))?;
    let re = onig::Regex::new(pattern).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut ours = Vec::new();
    sp.split(unicode::classes(), text, |p| ours.push(p));
    let mut theirs = Vec::new();
    let mut prev = 0;
    for (start, end) in re.find_iter(text) {
        if prev != start {
            theirs.push(&text[prev..start]);
        }
        if start != end {
            theirs.push(&text[start..end]);
        }
        prev = end;
    }
    if prev != text.len() {
        theirs.push(&text[prev..]);
    }
    let mut offset = 0;
    for i in 0..ours.len().max(theirs.len()) {
        let (a, b) = (ours.get(i).copied().unwrap_or(""), theirs.get(i).copied().unwrap_or(""));
        if a != b {
            return Ok(Some((offset, a.to_owned(), b.to_owned())));
        }
        offset += a.len();
    }
    Ok(None)
}

#[pymodule]
fn datasetprep_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()?;
    let cls = m.getattr("Encoder")?;
    m.add("ByteLevelBPE", &cls)?;
    m.add("SentencePieceBPE", &cls)?;
    m.add_function(wrap_pyfunction!(split_pieces, m)?)?;
    m.add_function(wrap_pyfunction!(pack_ids, m)?)?;
    m.add_function(wrap_pyfunction!(split_difference, m)?)?;
    m.add("DEFAULT_CACHE_SIZE", DEFAULT_CACHE_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
