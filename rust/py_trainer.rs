//! PyO3 bindings of the BPE trainer (`gptlite._core`): counting and merging.
//!
//! The Python side (python/gptlite/trainer.py) validates options and builds the
//! Tokenizer; these functions do the heavy work with the GIL released, taking
//! it back only to iterate a Python iterable or to call the progress callback.

use std::path::PathBuf;

use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::pretokenize::Pattern;
use crate::train::{self, Counts, TrainError};

/// How often (in new tokens) the merge loop checks for Ctrl-C and reports progress.
const MERGE_PROGRESS_EVERY: usize = 256;
/// Texts from a Python iterable are counted in batches of about this many bytes.
const TEXT_BATCH: usize = 8 << 20;

fn to_pyerr(e: TrainError, pending: Option<PyErr>) -> PyErr {
    if let Some(err) = pending {
        return err; // the callback's own exception (KeyboardInterrupt included)
    }
    let msg = e.to_string();
    match e {
        TrainError::Io { kind, .. } => match kind {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        TrainError::InvalidUtf8 { .. } | TrainError::EmptyCorpus | TrainError::CountsTooLarge => {
            PyValueError::new_err(msg)
        }
        TrainError::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
    }
}

fn parse_pattern(name: &str) -> PyResult<Pattern> {
    Pattern::from_name(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown pre-tokenization pattern {name:?} (use one of {})", Pattern::known_names())))
}

fn parse_errors(errors: &str) -> PyResult<bool> {
    match errors {
        "strict" => Ok(false),
        "replace" => Ok(true),
        _ => Err(PyValueError::new_err(format!("errors must be \"strict\" or \"replace\", not {errors:?}"))),
    }
}

fn make_pool(num_threads: Option<usize>) -> PyResult<Option<rayon::ThreadPool>> {
    match num_threads {
        None => Ok(None),
        Some(0) => Err(PyValueError::new_err("num_threads must be at least 1")),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(Some)
            .map_err(|e| PyOSError::new_err(format!("cannot start {n} threads: {e}"))),
    }
}

/// Call `progress(phase, done, total)` with the GIL; check for Ctrl-C.
/// Returns false (and keeps the exception) when the callback raised.
fn report(progress: &Option<PyObject>, pending: &mut Option<PyErr>, phase: &str, done: u64, total: Option<u64>) -> bool {
    Python::with_gil(|py| {
        if let Err(e) = py.check_signals() {
            *pending = Some(e);
            return false;
        }
        if let Some(cb) = progress {
            if let Err(e) = cb.call1(py, (phase, done, total)) {
                *pending = Some(e);
                return false;
            }
        }
        true
    })
}

/// Pre-token counts and corpus size.
struct Counted {
    counts: Counts,
    corpus_bytes: u64,
}

fn count_sources(
    py: Python<'_>,
    files: Option<Vec<PathBuf>>,
    texts: Option<&PyAny>,
    pattern: Pattern,
    replace: bool,
    pool: Option<&rayon::ThreadPool>,
    progress: &Option<PyObject>,
) -> PyResult<Counted> {
    let mut counts = Counts::default();
    let mut corpus_bytes = 0u64;
    if let Some(files) = files {
        let total: u64 = files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let mut pending = None;
        let result = py.allow_threads(|| {
            train::count_files(&files, pattern, replace, pool, &mut |done| {
                report(progress, &mut pending, "count", done, Some(total))
            })
        });
        match result {
            Ok(c) => {
                corpus_bytes += files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum::<u64>();
                train::merge_counts(&mut counts, c);
            }
            Err(e) => return Err(to_pyerr(e, pending)),
        }
    }
    if let Some(texts) = texts {
        if texts.is_instance_of::<PyString>()? || texts.is_instance_of::<PyBytes>()? {
            return Err(PyValueError::new_err("texts must be an iterable of str (documents), not a single string"));
        }
        let mut batch: Vec<String> = Vec::new();
        let mut batch_bytes = 0usize;
        let flush = |batch: &mut Vec<String>, counts: &mut Counts| -> PyResult<()> {
            let c = py.allow_threads(|| train::count_texts(batch, pattern, pool));
            train::merge_counts(counts, c);
            batch.clear();
            Ok(())
        };
        for (i, item) in texts.iter()?.enumerate() {
            let item = item?;
            let s: &PyString = item.downcast().map_err(|_| {
                PyValueError::new_err(format!(
                    "texts[{i}] is {}, not str",
                    item.get_type().name().unwrap_or("an object")
                ))
            })?;
            let s = match s.to_str() {
                Ok(s) => s.to_owned(),
                Err(_) if replace => s.to_string_lossy().into_owned(),
                Err(_) => {
                    return Err(PyValueError::new_err(format!(
                        "texts[{i}] holds lone surrogates and cannot be encoded as UTF-8 (pass errors=\"replace\")"
                    )))
                }
            };
            batch_bytes += s.len();
            corpus_bytes += s.len() as u64;
            batch.push(s);
            if batch_bytes >= TEXT_BATCH {
                flush(&mut batch, &mut counts)?;
                batch_bytes = 0;
                let mut pending = None;
                if !report(progress, &mut pending, "count", corpus_bytes, None) {
                    return Err(to_pyerr(TrainError::Interrupted, pending));
                }
            }
        }
        flush(&mut batch, &mut counts)?;
        let mut pending = None;
        if !report(progress, &mut pending, "count", corpus_bytes, None) {
            return Err(to_pyerr(TrainError::Interrupted, pending));
        }
    }
    Ok(Counted { counts, corpus_bytes })
}

fn counts_to_dict(py: Python<'_>, counts: &Counts) -> PyResult<PyObject> {
    let d = PyDict::new(py);
    // sorted so the dict's order is reproducible
    let mut items: Vec<(&String, &u64)> = counts.iter().collect();
    items.sort_unstable();
    for (k, v) in items {
        d.set_item(k, v)?;
    }
    Ok(d.into())
}

/// count_pretokens(files=None, texts=None, pattern="gpt2", errors="strict", num_threads=None, progress=None)
/// -> dict[str, int]: how often each pre-token occurs.
#[pyfunction(files = "None", texts = "None", pattern = "\"gpt2\"", errors = "\"strict\"", num_threads = "None", progress = "None")]
fn count_pretokens(
    py: Python<'_>,
    files: Option<Vec<PathBuf>>,
    texts: Option<&PyAny>,
    pattern: &str,
    errors: &str,
    num_threads: Option<usize>,
    progress: Option<PyObject>,
) -> PyResult<PyObject> {
    let pattern = parse_pattern(pattern)?;
    let replace = parse_errors(errors)?;
    let pool = make_pool(num_threads)?;
    let c = count_sources(py, files, texts, pattern, replace, pool.as_ref(), &progress)?;
    counts_to_dict(py, &c.counts)
}

fn word_counts_from_dict(d: &PyAny) -> PyResult<Vec<(Vec<u8>, u64)>> {
    let d: &PyDict = d
        .downcast()
        .map_err(|_| PyValueError::new_err("word_counts must be a dict {pre-token (str or bytes): count (int)}"))?;
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let bytes: Vec<u8> = if let Ok(s) = k.downcast::<PyString>() {
            s.to_str()
                .map_err(|_| PyValueError::new_err(format!("word_counts key {k:?} cannot be encoded as UTF-8")))?
                .as_bytes()
                .to_vec()
        } else if let Ok(b) = k.downcast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else {
            return Err(PyValueError::new_err(format!(
                "word_counts key {k:?} is {}, not str or bytes",
                k.get_type().name().unwrap_or("an object")
            )));
        };
        let c: i128 = v
            .extract()
            .map_err(|_| PyValueError::new_err(format!("word_counts[{k:?}] = {v:?} is not an int")))?;
        if c < 0 || c > u64::MAX as i128 {
            return Err(PyValueError::new_err(format!("word_counts[{k:?}] = {c} is not a count (0 <= count < 2**64)")));
        }
        if bytes.is_empty() || c == 0 {
            continue;
        }
        out.push((bytes, c as u64));
    }
    Ok(out)
}

/// train_bpe(n_new_tokens, files=None, texts=None, word_counts=None, min_frequency=1,
///           pattern="gpt2", errors="strict", num_threads=None, progress=None)
/// -> (merges: list[(left, right, id, count)], tokens: list[bytes], stats: dict)
///
/// `tokens[i]` is the bytes of token i (0..=255 are the single bytes). Sources
/// are combined: counts of files, texts and word_counts add up.
/// `progress(phase, done, total)` is called with phase "count" (bytes) and
/// "merge" (new tokens); an exception it raises stops training and propagates.
#[pyfunction(
    files = "None",
    texts = "None",
    word_counts = "None",
    min_frequency = "1",
    pattern = "\"gpt2\"",
    errors = "\"strict\"",
    num_threads = "None",
    progress = "None"
)]
#[allow(clippy::too_many_arguments)]
fn train_bpe(
    py: Python<'_>,
    n_new_tokens: usize,
    files: Option<Vec<PathBuf>>,
    texts: Option<&PyAny>,
    word_counts: Option<&PyAny>,
    min_frequency: u64,
    pattern: &str,
    errors: &str,
    num_threads: Option<usize>,
    progress: Option<PyObject>,
) -> PyResult<PyObject> {
    let pattern = parse_pattern(pattern)?;
    let replace = parse_errors(errors)?;
    let pool = make_pool(num_threads)?;
    let t0 = std::time::Instant::now();
    let counted = count_sources(py, files, texts, pattern, replace, pool.as_ref(), &progress)?;
    let mut owned: Vec<(Vec<u8>, u64)> = match word_counts {
        Some(d) => word_counts_from_dict(d)?,
        None => Vec::new(),
    };
    let count_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut pending = None;
    let result = {
        let counts = &counted.counts;
        let owned = &mut owned;
        let pending = &mut pending;
        let progress = &progress;
        py.allow_threads(move || {
            let mut words: Vec<(&[u8], u64)> = counts.iter().map(|(k, &v)| (k.as_bytes(), v)).collect();
            words.extend(owned.iter().map(|(k, v)| (&k[..], *v)));
            let n_words = {
                // distinct pre-tokens over all sources
                let mut keys: Vec<&[u8]> = words.iter().map(|w| w.0).collect();
                keys.sort_unstable();
                keys.dedup();
                keys.len()
            };
            let total_pretokens: u128 = words.iter().map(|w| w.1 as u128).sum();
            let target = n_new_tokens as u64;
            train::train_bpe(&words, n_new_tokens, min_frequency, MERGE_PROGRESS_EVERY, &mut |done| {
                report(progress, pending, "merge", done as u64, Some(target))
            })
            .map(|r| (r, n_words, total_pretokens))
        })
    };
    let (r, n_words, total_pretokens) = result.map_err(|e| to_pyerr(e, pending.take()))?;
    let mut pending = None;
    if !report(&progress, &mut pending, "merge", (r.tokens.len() - 256) as u64, Some(n_new_tokens as u64)) {
        return Err(to_pyerr(TrainError::Interrupted, pending));
    }
    let merges = PyList::empty(py);
    for m in &r.merges {
        merges.append(PyTuple::new(py, [m.left as u64, m.right as u64, m.id as u64, m.count]))?;
    }
    let tokens = PyList::empty(py);
    for t in &r.tokens {
        tokens.append(PyBytes::new(py, t))?;
    }
    let stats = PyDict::new(py);
    stats.set_item("corpus_bytes", counted.corpus_bytes)?;
    stats.set_item("unique_pretokens", n_words)?;
    stats.set_item("pretokens", total_pretokens)?;
    stats.set_item("merges", r.merges.len())?;
    stats.set_item("new_tokens", r.tokens.len() - 256)?;
    stats.set_item("training_tokens", r.training_tokens)?;
    stats.set_item("count_seconds", count_seconds)?;
    stats.set_item("merge_seconds", t1.elapsed().as_secs_f64())?;
    Ok(PyTuple::new(py, [merges.to_object(py), tokens.to_object(py), stats.to_object(py)]).into())
}

pub fn register(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(count_pretokens, m)?)?;
    m.add_function(wrap_pyfunction!(train_bpe, m)?)?;
    Ok(())
}
