//! `datasetprep_native`: exact, fast encoder for HuggingFace byte-level BPE `tokenizer.json`s.
//!
//! Python API (see README.md):
//!
//! ```python
//! from datasetprep_native import ByteLevelBPE
//! enc = ByteLevelBPE.from_json(open("tokenizer.json").read(), add_special_tokens=True)
//! ids = np.frombuffer(enc.encode(text), "<u4")
//! buf, lens = enc.encode_many(texts)   # ids of all docs concatenated, per-doc counts ('<u8')
//! ```

pub mod bpe;
pub mod chunk;
pub mod config;
pub mod engine;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// Default bound of each word cache (entries); the cache is cleared when it is reached.
pub const DEFAULT_CACHE_SIZE: usize = 1 << 18;

fn ids_to_bytes<'py>(py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, ids.len() * 4, |buf: &mut [u8]| {
        for (chunk, id) in buf.chunks_exact_mut(4).zip(ids) {
            chunk.copy_from_slice(&id.to_le_bytes());
        }
        Ok(())
    })
}

/// Exact re-implementation of a HF `tokenizers` byte-level BPE tokenizer's `encode(text).ids`.
#[pyclass(module = "datasetprep_native", frozen)]
pub struct ByteLevelBPE {
    engine: engine::Engine,
}

#[pymethods]
impl ByteLevelBPE {
    /// Build from the text of a `tokenizer.json`.  Raises `ValueError("unsupported: ...")` for
    /// any configuration whose ids cannot be reproduced exactly.
    #[staticmethod]
    #[pyo3(signature = (tokenizer_json, add_special_tokens = true, cache_size = DEFAULT_CACHE_SIZE, chunking = true))]
    fn from_json(
        py: Python<'_>,
        tokenizer_json: &str,
        add_special_tokens: bool,
        cache_size: usize,
        chunking: bool,
    ) -> PyResult<Self> {
        let json = tokenizer_json.to_owned();
        let r = py.detach(move || {
            config::build_engine(
                &json,
                config::Options {
                    add_special_tokens,
                    cache_size,
                    chunking,
                },
            )
        });
        match r {
            Ok(engine) => Ok(Self { engine }),
            Err(reason) => Err(PyValueError::new_err(format!("unsupported: {reason}"))),
        }
    }

    /// Build from a `tokenizer.json` path.
    #[staticmethod]
    #[pyo3(signature = (path, add_special_tokens = true, cache_size = DEFAULT_CACHE_SIZE, chunking = true))]
    fn from_file(
        py: Python<'_>,
        path: std::path::PathBuf,
        add_special_tokens: bool,
        cache_size: usize,
        chunking: bool,
    ) -> PyResult<Self> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display())))?;
        Self::from_json(py, &text, add_special_tokens, cache_size, chunking)
    }

    /// Whether template special tokens (e.g. BOS) are added.
    #[getter]
    fn add_special_tokens(&self) -> bool {
        self.engine.add_special_tokens
    }

    #[getter]
    fn cache_size(&self) -> usize {
        self.engine.cache_size
    }

    fn clear_cache(&self) {
        self.engine.clear_cache()
    }

    /// Encode one document: little-endian uint32 token ids as `bytes`.
    fn encode<'py>(&self, py: Python<'py>, text: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
        let s: &str = text.to_str()?;
        let ids = py.detach(|| {
            let mut out = Vec::with_capacity(s.len() / 3 + 8);
            self.engine
                .with_cache(|cache| self.engine.encode_into(s, cache, &mut out));
            out
        });
        ids_to_bytes(py, &ids)
    }

    /// Encode many documents in one call: `(ids, lengths)` where `ids` is the concatenation of
    /// all documents' little-endian uint32 ids and `lengths` holds each document's token count
    /// as little-endian uint64.
    fn encode_many<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        // Hold strong references to every str for the whole call (the GIL is released below).
        let items: Vec<Bound<'py, PyString>> = if let Ok(list) = texts.cast::<PyList>() {
            list.iter()
                .map(|x| x.cast_into::<PyString>().map_err(|_| PyTypeError::new_err("encode_many expects str items")))
                .collect::<PyResult<_>>()?
        } else {
            texts
                .try_iter()?
                .map(|x| {
                    x?.cast_into::<PyString>()
                        .map_err(|_| PyTypeError::new_err("encode_many expects str items"))
                })
                .collect::<PyResult<_>>()?
        };
        let strs: Vec<&str> = items.iter().map(|s| s.to_str()).collect::<PyResult<_>>()?;
        let (ids, lens) = py.detach(|| {
            let total: usize = strs.iter().map(|s| s.len()).sum();
            let mut out = Vec::with_capacity(total / 3 + 8);
            let mut lens: Vec<u64> = Vec::with_capacity(strs.len());
            self.engine.with_cache(|cache| {
                for s in &strs {
                    let before = out.len();
                    self.engine.encode_into(s, cache, &mut out);
                    lens.push((out.len() - before) as u64);
                }
            });
            (out, lens)
        });
        let ids_b = ids_to_bytes(py, &ids)?;
        let lens_b = PyBytes::new_with(py, lens.len() * 8, |buf: &mut [u8]| {
            for (chunk, n) in buf.chunks_exact_mut(8).zip(&lens) {
                chunk.copy_from_slice(&n.to_le_bytes());
            }
            Ok(())
        })?;
        PyTuple::new(py, [ids_b, lens_b])
    }
}

#[pymodule]
fn datasetprep_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ByteLevelBPE>()?;
    m.add("DEFAULT_CACHE_SIZE", DEFAULT_CACHE_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
