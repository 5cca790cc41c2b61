"""Tokenizer: encodings (byte-level BPE over the Rust core) and BPE training."""
from gptlite.tokenizer.encoding import Encoding, Tokenizer
from gptlite.tokenizer.encodings import encoding_for_model, get_encoding, list_encoding_names

__all__ = ["Encoding", "Tokenizer", "encoding_for_model", "get_encoding", "list_encoding_names"]
