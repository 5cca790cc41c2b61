//! gptlite's Rust core: the hot loops of byte-level BPE, nothing else.
//!
//! - `pretokenize`: GPT-2 (and cl100k) pre-tokenization scanners
//! - `fxhash`: the one hasher of the tables and counts
//! - `encode`: rank-based byte-pair merging with a piece cache
//! - `vocab`: reading and writing GPT-2 / HF / tiktoken vocabulary files
//! - `train`: the BPE trainer
//! - `quant`: weight-only int8 matrix products for decoding
//! - `py_tokenizer`, `py_trainer`: the PyO3 bindings (feature `python`)

pub mod encode;
pub mod fxhash;
pub mod pretokenize;
pub mod quant;
pub mod train;
pub mod vocab;

#[cfg(feature = "python")]
mod py_tokenizer;
#[cfg(feature = "python")]
mod py_trainer;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _core(py: Python<'_>, m: &PyModule) -> PyResult<()> {
    py_tokenizer::register(py, m)?;
    py_trainer::register(py, m)?;
    quant::py::register(py, m)?;
    Ok(())
}
