"""gptlite: GPT-1/GPT-2 from first principles.

A Rust byte-level BPE tokenizer (encoder and trainer) and a decoder-only
transformer whose forward and backward passes are written by hand on NumPy
(CPU) or CuPy (GPU).
"""
__version__ = "0.1.0"
