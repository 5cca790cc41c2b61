"""gptlite: GPT-1/GPT-2 from first principles.

A Rust byte-level BPE tokenizer (encoder and trainer) and a decoder-only
transformer whose forward and backward passes are written by hand on NumPy
(CPU) or CuPy (GPU).
"""
__version__ = "0.1.0"

_TIKTOKEN_API = ("Encoding", "get_encoding", "encoding_for_model", "list_encoding_names")


def __getattr__(name):
    # tiktoken's API on the package itself (`import gptlite as tiktoken`), loaded
    # on first use so that `import gptlite` stays cheap.
    if name in _TIKTOKEN_API:
        from gptlite import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module 'gptlite' has no attribute {name!r}")
