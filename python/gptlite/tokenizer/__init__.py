"""Tokenizer: encodings (byte-level BPE over the Rust core) and BPE training."""
from gptlite.tokenizer.encoding import Tokenizer

__all__ = ["Tokenizer"]
