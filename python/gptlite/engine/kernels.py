"""The fused CuPy kernels, compiled once from the ``.cu`` sources in ``cuda/``.

A new kernel is one ``cuda/<name>.cu`` file plus one entry in ``_ELEMENTWISE``
(an ``ElementwiseKernel`` body: give its parameter lists) or ``_RAW`` (a
``RawModule``: the whole translation unit). :class:`CudaKernels` is the GPU
backend's kernel set (``Backend.kernels``); its NumPy counterpart,
``engine.ops.NumpyKernels``, is the reference every kernel is tested against.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

GELU_TANH_K = math.sqrt(2.0 / math.pi)
GELU_TANH_A = 0.044715

CUDA_DIR = Path(__file__).with_name("cuda")

# name -> (input params, output params); the body is cuda/<name>.cu
_ELEMENTWISE = {
    "gelu_tanh_fwd": ("T x", "T y, T t"),
    "gelu_tanh_bwd": ("T x, T t, T dy", "T dx"),
}
_RAW = ("softmax_rows", "sampling")  # sampling: gptlite.generate's device sampler

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


def compile_file(path):
    """A RawModule of the CUDA C file ``path`` (the caller keeps it: compiled once per process)."""
    import cupy as cp

    with open(path, encoding="utf-8") as f:
        return cp.RawModule(code=f.read(), options=("-std=c++17",))


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


class CudaKernels:
    """The GPU's kernel set (CuPy): the methods ``engine.ops.NumpyKernels`` has,
    with the fused kernels of ``engine/fused.py`` and the small ones above where
    they exist, CuPy's own calls elsewhere."""

    def __init__(self, be):
        self.be = be
        self.xp = be.xp
        self.bf16 = be.matmul_dtype == "bfloat16"

    def launch(self, name, grid, block, args, shared_mem):
        from gptlite.engine import fused

        fused.module().get_function(name)(grid, block, args, shared_mem=shared_mem)

    null = np.uint64(0)  # a null pointer for an absent optional array argument

    def sumsq(self, g):
        from gptlite.engine import fused

        return fused.sumsq_kernel(self.xp)(g)

    def operand(self, a):
        """What a matmul operand is kept as between a forward and its backward:
        bf16 words under mixed precision (cast once, half the memory), else ``a``."""
        if self.bf16:
            from gptlite.engine import bf16

            return bf16.words(a, be=self.be)
        return a

    def matmul(self, a, b, out=None):
        if self.bf16:
            from gptlite.engine import bf16

            return bf16.gemm(a, b, out=out, be=self.be)
        return self.xp.matmul(a, b, out=out)

    def matmul_add(self, a, b, out):
        """out += a @ b (under mixed precision in the GEMM itself: beta = 1)."""
        if self.bf16:
            from gptlite.engine import bf16

            return bf16.gemm(a, b, out=out, accumulate=True, be=self.be)
        out += self.xp.matmul(a, b)
        return out

    def bmm(self, a, b, out=None):
        if out is None:
            return self.xp.matmul(a, b)
        out[...] = self.xp.matmul(a, b)
        return out

    def scatter_add_rows(self, index, values, out):
        # the sort-based segment-sum kernel: no atomics (cupyx.scatter_add's order
        # of additions varies run to run), so resume stays bit-exact on the GPU
        from gptlite.engine import fused

        return fused.embedding_backward(index, self.xp.ascontiguousarray(values), out, be=self.be)

    def layernorm_forward(self, x, w, b, eps, to_matmul=False):
        from gptlite.engine import fused

        return fused.layernorm_forward(self.xp.ascontiguousarray(x), w, b, eps, words=to_matmul and self.bf16, be=self.be)

    fuses_branch_bias = True  # the branch's bias is added inside the fused LayerNorm

    def residual_layernorm_forward(self, x, fx, w, b, eps, inplace, fx_bias=None, to_matmul=False):
        from gptlite.engine import fused

        xp = self.xp
        y, cache = fused.layernorm_forward(xp.ascontiguousarray(fx), w, b, eps, residual=xp.ascontiguousarray(x),
                                           x_bias=fx_bias, words=to_matmul and self.bf16, be=self.be)
        return cache[0], y, cache

    def layernorm_backward(self, dy, cache, dresidual=None, out=None):
        from gptlite.engine import fused

        xp = self.xp
        dres = None if dresidual is None else xp.ascontiguousarray(dresidual)
        dw, db = out if out is not None else (None, None)  # zeroed: the kernel adds into them
        return fused.layernorm_backward(xp.ascontiguousarray(dy), cache, dw=dw, db=db, dresidual=dres, be=self.be)

    @staticmethod
    def erf(x):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)

    @staticmethod
    def gelu_tanh_forward(x):
        return kernel("gelu_tanh_fwd")(x)

    @staticmethod
    def gelu_tanh_backward(x, t, dy):
        return kernel("gelu_tanh_bwd")(x, t, dy)

    def bias_gelu_forward(self, h, b, approximate, to_matmul=False):
        from gptlite.engine import fused
        from gptlite.engine.ops import gelu_forward

        if approximate == "gelu_new" and b is not None and h.dtype in (np.float32, np.float64):
            # one launch: bias add + GELU (under mixed precision straight to bf16 words)
            y, pre = fused.bias_gelu_forward(h, b, words=to_matmul and self.bf16, be=self.be)
            return y, ("fused", pre)
        if b is not None:
            h += b
        return gelu_forward(h, approximate, be=self.be)

    def bias_gelu_backward(self, dy, gcache, dbias=None):
        from gptlite.engine import fused
        from gptlite.engine.ops import gelu_backward

        if gcache[0] == "fused":  # a given dbias is zeroed: the kernel adds into it
            return fused.bias_gelu_backward(self.xp.ascontiguousarray(dy), gcache[1], dbias=dbias, be=self.be)
        dh = gelu_backward(dy, gcache, be=self.be)
        return dh, dh.sum(axis=0, out=dbias)

    def softmax_inplace(self, a):
        if not (a.flags.c_contiguous and a.dtype in (np.float32, np.float64)):
            from gptlite.engine.ops import _softmax_here

            _softmax_here(a)
            return a
        n = a.shape[-1]
        rows = a.size // n
        fn = kernel("softmax_rows").get_function("softmax_f32" if a.dtype == np.float32 else "softmax_f64")
        threads = 128
        fn((rows,), (threads,), (a, np.int32(n)), shared_mem=threads * a.itemsize)
        return a

    @staticmethod
    def softmax_backward_inplace(datt, att):
        from gptlite.engine.ops import _softmax_backward_generic

        return _softmax_backward_generic(datt, att)

    def attend(self, q, k, v, bias, att, yh):
        from gptlite.engine.ops import _attend_stacked

        _attend_stacked(q, k, v, bias, att, yh, self.bmm, self.softmax_inplace)

    def attend_backward(self, q, k, v, att, dyh, dq, dk, dv, scale):
        self.bmm(att.transpose(0, 1, 3, 2), dyh, out=dv)
        datt = self.bmm(dyh, v.transpose(0, 1, 3, 2))  # (B,H,T,T)
        self.softmax_backward_inplace(datt, att)
        datt *= scale
        self.bmm(datt, k, out=dq)
        self.bmm(datt.transpose(0, 1, 3, 2), q, out=dk)

    def ce_exp_rows(self, p, tsafe):
        from gptlite.engine.ops import _ce_exp_rows_generic

        return _ce_exp_rows_generic(self.xp, p, tsafe)

    @staticmethod
    def scale_rows(p, w):
        p *= w[:, None]

    def lm_head_cross_entropy(self, h, wte, targets, ignore_index, dwte_out=None):
        from gptlite.engine import fused

        return fused.lm_head_cross_entropy(h, wte, targets, dwte=dwte_out, ignore_index=ignore_index, be=self.be)
