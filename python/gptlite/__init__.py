"""gptlite: GPT-1/GPT-2 from first principles.

A Rust byte-level BPE tokenizer (encoder and trainer) and a decoder-only
transformer whose forward and backward passes are written by hand on NumPy
(CPU) or CuPy (GPU).

The public surface::

    import gptlite
    model = gptlite.GPT.from_pretrained("default")
    print(model.generate("Once upon a time", max_new_tokens=20, seed=0))

Names are imported on first use (module ``__getattr__``), so ``import
gptlite`` itself loads neither NumPy nor the extension.
"""
__version__ = "0.1.0"

# public name -> (module, attribute); tiktoken's API on the package itself
# (`import gptlite as tiktoken`), all loaded on first use so `import gptlite` stays cheap
_LAZY = {
    "GPT": ("gptlite.engine.model", "GPT"),
    "GPTConfig": ("gptlite.engine.model", "GPTConfig"),
    "Tokenizer": ("gptlite.tokenizer.encoding", "Tokenizer"),
    "Encoding": ("gptlite.tokenizer", "Encoding"),
    "get_encoding": ("gptlite.tokenizer", "get_encoding"),
    "encoding_for_model": ("gptlite.tokenizer", "encoding_for_model"),
    "list_encoding_names": ("gptlite.tokenizer", "list_encoding_names"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'gptlite' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
