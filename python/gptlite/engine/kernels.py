"""The fused CuPy kernels, compiled once from the ``.cu`` sources in ``cuda/``.

A new kernel is one ``cuda/<name>.cu`` file plus one entry in ``_ELEMENTWISE``
(an ``ElementwiseKernel`` body: give its parameter lists) or ``_RAW`` (a
``RawModule``: the whole translation unit). The NumPy paths in
:mod:`gptlite.engine.ops` are the reference every kernel is tested against.
"""
from __future__ import annotations

import math
from pathlib import Path

GELU_TANH_K = math.sqrt(2.0 / math.pi)
GELU_TANH_A = 0.044715

CUDA_DIR = Path(__file__).with_name("cuda")

# name -> (input params, output params); the body is cuda/<name>.cu
_ELEMENTWISE = {
    "gelu_tanh_fwd": ("T x", "T y, T t"),
    "gelu_tanh_bwd": ("T x, T t, T dy", "T dx"),
    "ln_affine": ("T x, T mean, T rstd, T w, T b", "T xhat, T y"),
}
_RAW = ("softmax_rows",)

# the GELU constants are defined here once and handed to the kernels as macros
_PREAMBLE = f"#define GELU_K {GELU_TANH_K!r}\n#define GELU_A {GELU_TANH_A!r}\n"

_compiled = {}


def source(name: str) -> str:
    """The CUDA source of a kernel, as shipped in the package."""
    path = CUDA_DIR / f"{name}.cu"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"CUDA kernel source {path} is missing from the installed package") from None


def kernel(name: str):
    """The compiled kernel ``name`` (compiled on first use, then cached)."""
    k = _compiled.get(name)
    if k is not None:
        return k
    import cupy as cp

    if name in _ELEMENTWISE:
        ins, outs = _ELEMENTWISE[name]
        # the body's // comments would swallow the generated code after them
        body = "\n".join(line for line in source(name).splitlines() if not line.lstrip().startswith("//"))
        k = cp.ElementwiseKernel(ins, outs, body, f"gptlite_{name}", preamble=_PREAMBLE)
    elif name in _RAW:
        k = cp.RawModule(code=_PREAMBLE + source(name))
    else:
        raise KeyError(f"unknown CUDA kernel {name!r}: expected one of {sorted(_ELEMENTWISE) + list(_RAW)}")
    _compiled[name] = k
    return k
