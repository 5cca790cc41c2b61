//! PyO3 bindings of the encoder: `gptlite._core.CoreBPE` and `split`.
//!
//! Thin on purpose: argument checking that Python does better (types, special
//! tokens that are not allowed, lone surrogates) lives in `gptlite/tokenizer.py`.
//! Errors in user data come back as `ValueError` / `FileNotFoundError` /
//! `TypeError`; the GIL is released around every encode.

use std::path::Path;
use std::sync::Arc;

use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyLong, PyTuple};

use crate::encode::{Bpe, EncodeError, Split};
use crate::pretokenize::{is_safe_cut, split, Pattern};
use crate::vocab::{self, VocabError, VocabParts};

fn vocab_err(e: VocabError) -> PyErr {
    match e {
        VocabError::NotFound(_) => PyFileNotFoundError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn pattern_of(name: &str) -> PyResult<Pattern> {
    Pattern::from_name(name).or_else(|| Pattern::from_regex(name)).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown pre-tokenization pattern {name:?} (use one of {}, or one of their regexes)",
            Pattern::known_names()
        ))
    })
}

fn name_of(path: &str) -> String {
    path.to_string()
}

#[pyclass(module = "gptlite._core", name = "CoreBPE")]
pub struct CoreBPE {
    inner: Arc<Bpe>,
    /// One Python int per id, made once: building result lists then costs an
    /// INCREF per token instead of an allocation, which keeps the serial
    /// (GIL-holding) part of batch encoding small.
    ints: Vec<PyObject>,
}

/// Most texts in one `encode_batch` chunk, and how often the strings
/// converted so far are published to the helpers.
const MAX_CHUNK_TEXTS: usize = 64;

fn build(parts: VocabParts, pattern: Pattern, origin: &str) -> PyResult<Bpe> {
    Bpe::new(parts.tokens, parts.merges, parts.specials, pattern)
        .map_err(|e| PyValueError::new_err(format!("{origin}: {e}")))
}

fn wrap(py: Python<'_>, bpe: Bpe) -> CoreBPE {
    let ints = (0..bpe.n_vocab() as u32).map(|i| i.into_py(py)).collect();
    CoreBPE { inner: Arc::new(bpe), ints }
}

impl CoreBPE {
    /// A Python list of the ids (all < n_vocab: they come from our own tables).
    fn to_list(&self, py: Python<'_>, ids: &[u32]) -> PyResult<PyObject> {
        use pyo3::{ffi, AsPyPointer};
        unsafe {
            let list = ffi::PyList_New(ids.len() as ffi::Py_ssize_t);
            if list.is_null() {
                return Err(PyErr::fetch(py));
            }
            let list: PyObject = PyObject::from_owned_ptr(py, list);
            for (i, &id) in ids.iter().enumerate() {
                let o = self.ints[id as usize].as_ptr();
                ffi::Py_INCREF(o);
                // steals the reference; cannot fail for an index within the new list
                ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, o);
            }
            Ok(list)
        }
    }
}

/// Token ids from any Python iterable of ints, with errors naming the position.
fn extract_ids(ids: &PyAny) -> PyResult<Vec<i64>> {
    let one = |pos: usize, item: &PyAny| -> PyResult<i64> {
        match item.extract::<i64>() {
            Ok(v) => Ok(v),
            Err(_) if item.is_instance_of::<PyLong>().unwrap_or(false) => Err(PyValueError::new_err(format!(
                "token id {} at position {pos} is not in the vocabulary",
                item.repr().map(|r| r.to_string()).unwrap_or_default()
            ))),
            Err(_) => Err(PyTypeError::new_err(format!(
                "token id at position {pos} must be an int, not {}: {}",
                item.get_type().name().unwrap_or("?"),
                item.repr().map(|r| r.to_string()).unwrap_or_default()
            ))),
        }
    };
    if let Ok(list) = ids.downcast::<PyList>() {
        return list.iter().enumerate().map(|(i, x)| one(i, x)).collect();
    }
    if ids.is_instance_of::<pyo3::types::PyString>()? || ids.is_instance_of::<PyBytes>()? {
        return Err(PyTypeError::new_err(format!(
            "expected a sequence of token ids, got {}",
            ids.get_type().name().unwrap_or("?")
        )));
    }
    let iter = ids.iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a sequence of token ids, got {}",
            ids.get_type().name().unwrap_or("?")
        ))
    })?;
    let mut out = Vec::new();
    for (i, x) in iter.enumerate() {
        out.push(one(i, x?)?);
    }
    Ok(out)
}

/// Run `f`, turning a Rust panic (a bug, never expected from user data) into a
/// RuntimeError instead of pyo3's PanicException, which is a BaseException that
/// `except Exception` would not catch.
fn guard<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .map(|s| s.as_str())
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        PyRuntimeError::new_err(format!("internal error in gptlite's tokenizer (please report): {msg}"))
    })
}

fn encode_err(e: EncodeError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

#[pymethods]
impl CoreBPE {
    /// Load `encoder.json` + `vocab.bpe` (or `vocab.json` + `merges.txt`).
    /// `pattern`: None for the one the files name (GPT-2's when they name
    /// none); a pattern that contradicts the files' is refused, since encoding
    /// would then split text unlike training did.
    #[staticmethod]
    #[args(pattern = "None")]
    fn from_gpt2_files(py: Python<'_>, encoder_path: &str, merges_path: &str, pattern: Option<&str>) -> PyResult<Self> {
        let asked = pattern.map(pattern_of).transpose()?;
        let parts = py.allow_threads(|| {
            guard(|| -> Result<VocabParts, VocabError> {
                let enc = vocab::read_file(Path::new(encoder_path))?;
                let bpe = vocab::read_file(Path::new(merges_path))?;
                vocab::parse_gpt2(&enc, &name_of(encoder_path), &bpe, &name_of(merges_path))
            })
        })?;
        let origin = format!("{encoder_path} + {merges_path}");
        let parts = parts.map_err(vocab_err)?;
        let pattern = match (asked, parts.pattern) {
            (Some(a), Some(f)) if a != f => {
                return Err(PyValueError::new_err(format!(
                    "{merges_path}: the vocabulary was trained with pre-tokenization pattern '{}', not '{}' \
                     (leave the pattern out to use the file's)",
                    f.name(),
                    a.name()
                )))
            }
            (Some(a), _) => a,
            (None, f) => f.unwrap_or(Pattern::Gpt2),
        };
        let bpe = py.allow_threads(|| guard(|| build(parts, pattern, &origin)))??;
        Ok(wrap(py, bpe))
    }

    /// Load a `.tiktoken` rank file; `specials` are added (the file has none).
    #[staticmethod]
    fn from_tiktoken_file(py: Python<'_>, path: &str, specials: Vec<(String, u32)>, pattern: &str) -> PyResult<Self> {
        let pattern = pattern_of(pattern)?;
        let ranks = py
            .allow_threads(|| guard(|| vocab::read_file(Path::new(path)).and_then(|d| vocab::parse_tiktoken(&d, &name_of(path)))))?
            .map_err(vocab_err)?;
        let bpe = py
            .allow_threads(|| guard(|| Bpe::from_ranks(ranks, specials, pattern)))?
            .map_err(|e| PyValueError::new_err(format!("{path}: {e}")))?;
        Ok(wrap(py, bpe))
    }

    /// From tiktoken-style mergeable ranks (bytes -> rank == id).
    #[staticmethod]
    fn from_ranks(py: Python<'_>, ranks: Vec<(&[u8], u32)>, specials: Vec<(String, u32)>, pattern: &str) -> PyResult<Self> {
        let pattern = pattern_of(pattern)?;
        let ranks: Vec<(Vec<u8>, u32)> = ranks.into_iter().map(|(b, r)| (b.to_vec(), r)).collect();
        let bpe = py
            .allow_threads(|| guard(|| Bpe::from_ranks(ranks, specials, pattern)))?
            .map_err(|e| PyValueError::new_err(format!("mergeable_ranks: {e}")))?;
        Ok(wrap(py, bpe))
    }

    /// From the exact tables (tokens, merges in priority order, specials): used
    /// by pickling and by the trainer.
    #[staticmethod]
    fn from_parts(
        py: Python<'_>,
        tokens: Vec<(&[u8], u32)>,
        merges: Vec<(u32, u32)>,
        specials: Vec<(String, u32)>,
        pattern: &str,
    ) -> PyResult<Self> {
        let pattern = pattern_of(pattern)?;
        let tokens: Vec<(Vec<u8>, u32)> = tokens.into_iter().map(|(b, r)| (b.to_vec(), r)).collect();
        let bpe = py.allow_threads(|| guard(|| build(VocabParts { tokens, merges, specials, pattern: None }, pattern, "vocabulary")))??;
        Ok(wrap(py, bpe))
    }

    /// Encode with a general regex instead of a built-in scanner (a custom
    /// `pat_str`): the same special-token rule as `encode`, then the regex's
    /// matches, each merged by BPE. Text no match covers is skipped, as a
    /// regex `findall` skips it.
    fn encode_regex(&self, py: Python<'_>, text: &str, re: &PyRegex, allowed: Vec<String>) -> PyResult<PyObject> {
        let inner = &self.inner;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let ids = py
            .allow_threads(|| {
                guard(|| {
                    let mut out = Vec::new();
                    inner.encode_specials_by(text, &allowed, Some(re as &dyn Split), &mut out).map(|_| out)
                })
            })?
            .map_err(PyValueError::new_err)?;
        self.to_list(py, &ids)
    }

    /// tiktoken's `encode_with_unstable`: (stable ids, completions), splitting
    /// with this vocabulary's scanner, or with `re` for a custom pattern.
    fn encode_with_unstable(
        &self,
        py: Python<'_>,
        text: &str,
        allowed: Vec<String>,
        re: Option<&PyRegex>,
    ) -> PyResult<(PyObject, PyObject)> {
        let inner = &self.inner;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let (stable, completions) = py
            .allow_threads(|| guard(|| inner.encode_with_unstable(text, &allowed, re.map(|r| r as &dyn Split))))?
            .map_err(PyValueError::new_err)?;
        let lists = completions.iter().map(|c| self.to_list(py, c)).collect::<PyResult<Vec<_>>>()?;
        Ok((self.to_list(py, &stable)?, PyList::new(py, lists).into()))
    }

    fn encode_ordinary(&self, py: Python<'_>, text: &str) -> PyResult<PyObject> {
        // One output buffer per thread, reused: no allocation (and no page
        // faults for a large text's first touch) per call, the hot path.
        thread_local! {
            static OUT: std::cell::RefCell<Vec<u32>> = std::cell::RefCell::new(Vec::new());
        }
        let inner = &self.inner;
        OUT.with(|out| {
            let mut out = out.try_borrow_mut().map_err(|_| PyRuntimeError::new_err("re-entrant encode_ordinary"))?;
            out.clear();
            let buf = &mut *out;
            py.allow_threads(|| guard(|| inner.encode_ordinary_into(text, buf)))?;
            let list = self.to_list(py, buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new(); // do not keep a huge text's buffer for good
            }
            list
        })
    }

    /// Encode, turning the `allowed` special tokens into their ids.
    fn encode(&self, py: Python<'_>, text: &str, allowed: Vec<String>) -> PyResult<PyObject> {
        let inner = &self.inner;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let ids = py.allow_threads(|| guard(|| inner.encode_with_specials(text, &allowed)))?;
        self.to_list(py, &ids)
    }

    /// Encode a list of str over `num_threads` threads, this one included; order kept.
    ///
    /// Helpers (a persistent pool, so their piece caches stay warm) encode
    /// without the GIL. This thread first turns the Python strings into UTF-8,
    /// publishing them chunk by chunk so the helpers start at once; then it
    /// encodes chunks of its own and, between them, turns finished results into
    /// Python lists. The parts that need the GIL overlap with the parallel work.
    fn encode_batch(&self, py: Python<'_>, texts: &PyList, allowed: Vec<String>, num_threads: usize) -> PyResult<PyObject> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{mpsc, OnceLock};
        type Chunk = PyResult<Vec<Vec<u32>>>;
        let n = texts.len();
        if n == 0 {
            return Ok(PyList::empty(py).into());
        }
        let inner: &Bpe = &self.inner;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let threads = num_threads.clamp(1, 256).min(n);
        // Chunks of consecutive texts: few channel messages, yet small enough
        // to balance the load. Bounded in characters as well as in count, so
        // that a few huge texts do not land in one chunk and leave the other
        // threads idle at the end.
        let lens: Vec<usize> = texts.iter().take(n).map(|t| t.len().unwrap_or(1)).collect();
        let target = (lens.iter().sum::<usize>() / (threads * 16)).max(1);
        let mut bounds = vec![0usize];
        let mut chars = 0usize;
        for (i, &len) in lens.iter().enumerate() {
            chars += len;
            if chars >= target || i + 1 - bounds[bounds.len() - 1] >= MAX_CHUNK_TEXTS || i + 1 == n {
                bounds.push(i + 1);
                chars = 0;
            }
        }
        let n_chunks = bounds.len() - 1;
        let strs: Vec<OnceLock<&str>> = (0..n).map(|_| OnceLock::new()).collect();
        let ready = AtomicUsize::new(0); // strs[..ready] are set
        let abort = AtomicBool::new(false); // a string could not be converted: stop
        let counter = AtomicUsize::new(0); // next chunk to claim
        let (strs, allowed, ready, abort, counter, bounds) = (&strs, &allowed, &ready, &abort, &counter, &bounds);
        let encode_chunk = move |c: usize| -> Option<Chunk> {
            let (start, end) = (bounds[c], bounds[c + 1]);
            while ready.load(Ordering::Acquire) < end {
                if abort.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::yield_now(); // the conversion is ~10x faster than encoding
            }
            let texts = strs[start..end].iter().map(|s| *s.get().expect("published"));
            Some(guard(|| texts.map(|t| inner.encode_with_specials(t, allowed)).collect()))
        };
        let (tx, rx) = mpsc::channel::<(usize, Chunk)>();
        let helper = move |tx: mpsc::Sender<(usize, Chunk)>| {
            move || loop {
                let c = counter.fetch_add(1, Ordering::Relaxed);
                let Some(r) = (c < n_chunks).then(|| encode_chunk(c)).flatten() else { break };
                if tx.send((bounds[c], r)).is_err() {
                    break; // this thread stopped on an error
                }
            }
        };
        let mut out: Vec<Option<PyObject>> = (0..n).map(|_| None).collect();
        let mut store = |start: usize, r: Chunk| -> PyResult<()> {
            for (k, ids) in r?.iter().enumerate() {
                out[start + k] = Some(self.to_list(py, ids)?);
            }
            Ok(())
        };
        let mut this_thread = |mut rx: mpsc::Receiver<(usize, Chunk)>| -> PyResult<()> {
            for (i, item) in texts.iter().enumerate().take(n) {
                match item.extract::<&str>() {
                    Ok(s) => {
                        let _ = strs[i].set(s);
                    }
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                if (i + 1) % MAX_CHUNK_TEXTS == 0 || i + 1 == n {
                    ready.store(i + 1, Ordering::Release);
                }
            }
            loop {
                while let Ok((start, r)) = rx.try_recv() {
                    store(start, r)?;
                }
                let c = counter.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                let r = py.allow_threads(|| encode_chunk(c)).expect("all strings are published");
                store(bounds[c], r)?;
            }
            // nothing left to claim: wait (without the GIL) for the helpers' last chunks
            loop {
                let (r, back) = py.allow_threads(move || (rx.recv(), rx));
                rx = back;
                match r {
                    Ok((start, r)) => store(start, r)?,
                    Err(_) => return Ok(()), // every helper has finished
                }
            }
        };
        match (threads > 1).then(|| crate::encode::pool(threads - 1)).flatten() {
            Some(pool) => pool.in_place_scope(|s| {
                for _ in 1..threads {
                    let job = helper(tx.clone());
                    s.spawn(move |_| job());
                }
                drop(tx);
                this_thread(rx)
            })?,
            None => {
                drop(tx); // one thread, or no helper could be started: this thread does it all
                this_thread(rx)?
            }
        }
        let lists: Vec<PyObject> = out.into_iter().map(|l| l.expect("every chunk was stored")).collect();
        Ok(PyList::new(py, lists).into())
    }

    /// Encode to little-endian unsigned integers of `width` bytes (2 or 4), as a bytearray.
    fn encode_to_bytes(&self, py: Python<'_>, text: &str, allowed: Vec<String>, width: usize) -> PyResult<PyObject> {
        if width != 2 && width != 4 {
            return Err(PyValueError::new_err(format!("width must be 2 or 4, not {width}")));
        }
        if width == 2 && self.inner.n_vocab() > 65536 {
            return Err(PyValueError::new_err(format!(
                "a vocabulary of {} ids does not fit in uint16",
                self.inner.n_vocab()
            )));
        }
        let inner = &self.inner;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let bytes = py.allow_threads(|| guard(|| {
            let ids = inner.encode_with_specials(text, &allowed);
            let mut out = Vec::with_capacity(ids.len() * width);
            if width == 2 {
                for id in ids {
                    out.extend_from_slice(&(id as u16).to_le_bytes());
                }
            } else {
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
            out
        }))?;
        // a bytearray, so that numpy.frombuffer gives a writable array without a copy
        Ok(pyo3::types::PyByteArray::new(py, &bytes).into())
    }

    fn decode_bytes(&self, py: Python<'_>, ids: &PyAny) -> PyResult<PyObject> {
        let ids = extract_ids(ids)?;
        let inner = &self.inner;
        let b = py.allow_threads(|| guard(|| inner.decode_bytes(ids)))?.map_err(encode_err)?;
        Ok(PyBytes::new(py, &b).into())
    }

    fn token_bytes(&self, py: Python<'_>, id: &PyAny) -> PyResult<PyObject> {
        let one = PyTuple::new(py, [id]);
        let ids = extract_ids(one)?;
        let b = self.inner.decode_bytes(ids).map_err(|_| {
            PyValueError::new_err(format!(
                "token id {} is not in the vocabulary",
                id.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        Ok(PyBytes::new(py, &b).into())
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.n_vocab()
    }

    #[getter]
    fn pattern(&self) -> &'static str {
        self.inner.pattern.name()
    }

    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.inner.specials().to_vec()
    }

    /// Regular tokens as (bytes, id), in id order.
    fn tokens(&self, py: Python<'_>) -> Vec<(PyObject, u32)> {
        self.inner.tokens().iter().map(|(b, id)| (PyBytes::new(py, b).into(), *id)).collect()
    }

    /// Merges as (left id, right id), in priority order.
    fn merges(&self) -> Vec<(u32, u32)> {
        self.inner.merge_list().to_vec()
    }

    /// Contents of (`encoder.json`, `vocab.bpe`).
    fn gpt2_files(&self) -> PyResult<(String, String)> {
        let parts = VocabParts {
            tokens: self.inner.tokens().to_vec(),
            merges: self.inner.merge_list().to_vec(),
            specials: self.inner.specials().to_vec(),
            pattern: Some(self.inner.pattern),
        };
        vocab::write_gpt2(&parts).map_err(PyValueError::new_err)
    }

    /// Contents of a `.tiktoken` file (regular tokens only).
    fn tiktoken_file(&self) -> String {
        vocab::write_tiktoken(self.inner.tokens())
    }

    /// The pre-tokens of `text` under this tokenizer's pattern.
    fn split(&self, text: &str) -> Vec<String> {
        split(text, self.inner.pattern).map(|s| s.to_string()).collect()
    }
}

/// `split(text, pattern) -> list[str]` (pattern "gpt2", "cl100k" or "o200k", or its regex): pre-tokenization alone.
#[pyfunction]
#[pyo3(name = "split")]
fn py_split(text: &str, pattern: &str) -> PyResult<Vec<String>> {
    let p = pattern_of(pattern)?;
    Ok(split(text, p).map(|s| s.to_string()).collect())
}

/// A compiled general regex (fancy-regex: look-around and backreferences, as
/// tiktoken's engine) for patterns without a hand-written scanner.
#[pyclass(module = "gptlite._core", name = "Regex")]
pub struct PyRegex {
    re: fancy_regex::Regex,
}

impl Split for PyRegex {
    fn pieces(&self, text: &str, f: &mut dyn FnMut(usize, usize)) -> Result<(), String> {
        for m in self.re.find_iter(text) {
            let m = m.map_err(|e| format!("pattern failed on the text: {e}"))?;
            f(m.start(), m.end());
        }
        Ok(())
    }
}

#[pymethods]
impl PyRegex {
    #[new]
    fn new(pattern: &str) -> PyResult<Self> {
        fancy_regex::Regex::new(pattern)
            .map(|re| PyRegex { re })
            .map_err(|e| PyValueError::new_err(format!("pat_str {pattern:?} is not a valid regex: {e}")))
    }

    /// The matches of the regex in `text`, in order.
    fn split(&self, text: &str) -> PyResult<Vec<String>> {
        self.re
            .find_iter(text)
            .map(|m| m.map(|m| m.as_str().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| PyValueError::new_err(format!("pattern failed on the text: {e}")))
    }
}

/// `patterns() -> list[(name, tiktoken_regex, regex)]`: every pattern with a
/// scanner; the single source of these strings for the Python side.
#[pyfunction]
fn patterns() -> Vec<(&'static str, &'static str, &'static str)> {
    Pattern::ALL.iter().map(|p| (p.name(), p.tiktoken_regex(), p.regex())).collect()
}

/// `safe_cut(text, lo, hi, pattern) -> int`: the largest character index p,
/// lo <= p < hi, where `text` may be cut for streamed encoding under
/// `pattern` (see `pretokenize::is_safe_cut`): text[:p] and text[p:] encode to
/// the ids of the whole, whatever is appended later. 0 when there is none.
#[pyfunction]
fn safe_cut(text: &str, lo: usize, hi: usize, pattern: &str) -> PyResult<usize> {
    let pattern = pattern_of(pattern)?;
    let b = text.as_bytes();
    // byte offset of character `hi` (or the end)
    let mut chars = 0usize;
    let mut i = 0usize;
    while i < b.len() && chars < hi {
        i += utf8_len(b[i]);
        chars += 1;
    }
    // walk back one character at a time; cuts lie next to ASCII bytes, so
    // checking character boundaries only misses none
    let lo = lo.max(1);
    while chars > lo {
        i -= 1;
        while b[i] & 0xC0 == 0x80 {
            i -= 1;
        }
        chars -= 1;
        if is_safe_cut(b, i, pattern) {
            return Ok(chars);
        }
    }
    Ok(0)
}

#[inline]
fn utf8_len(lead: u8) -> usize {
    match lead {
        0..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

pub fn register(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(safe_cut, m)?)?;
    m.add_class::<CoreBPE>()?;
    m.add_class::<PyRegex>()?;
    m.add_function(wrap_pyfunction!(patterns, m)?)?;
    m.add_function(wrap_pyfunction!(py_split, m)?)?;
    Ok(())
}
