"""bfloat16 mixed precision on the GPU: the matmuls on bf16 tensor cores.

A model built with ``dtype="bfloat16"`` keeps float32 weights (the master copy
AdamW updates), a float32 residual stream, and float32 LayerNorm, GELU,
attention softmax and loss statistics; only the matmuls' operands are bf16, and
the matmuls accumulate in float32 (cuBLAS ``gemmEx`` with ``CUDA_R_16BF``
operands, a ``CUDA_R_32F`` result and ``CUBLAS_COMPUTE_32F``), as torch autocast
does. Why bf16 rather than float16: the same exponent range as float32, so no
loss scaling (and no overflow to tune for) is needed.

CuPy has no bf16 dtype, so a bf16 array is a ``uint16`` array of bf16 words: the
upper half of each float32, rounded to nearest-even (``gl_to_bf16_f32`` in
``cuda/fused_kernels.cu``; ``attention.to_bf16`` is its host twin, bit for bit).
The linear layers cast each operand once in the forward and keep the bf16 copy
as their cache (``CudaKernels.operand``), so the backward reuses it and the
cached activations take half the memory.
"""
from __future__ import annotations

import numpy as np

# cuBLAS / CUDA library constants (cublas_api.h, library_types.h)
CUDA_R_32F, CUDA_R_16BF = 0, 14
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_POINTER_MODE_HOST = 0

# alpha and beta of gemmEx, read from host memory when the call is made
_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)

WORDS = np.dtype(np.uint16)


def to_bf16(x, *, be):
    """bf16 words of a float32 device array (one launch); the shape is kept."""
    from gptlite.engine import fused

    if x.dtype != np.float32:
        raise TypeError(f"to_bf16: expected float32, got {x.dtype}")
    x = be.xp.ascontiguousarray(x)
    y = be.xp.empty(x.shape, dtype=WORDS)
    if x.size:
        grid, block = fused._elem_grid(x.size)
        fused._launch(be, "to_bf16", np.float32, grid, block, (x, y, np.int64(x.size)))
    return y


def words(a, *, be):
    """``a`` as bf16 words: a float32 array cast (a transposed view stays a
    transposed view of the cast), bf16 words as they are."""
    if a.dtype == WORDS:
        return a
    if a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous:
        return to_bf16(a.T, be=be).T
    return to_bf16(a, be=be)


def _row_major(a, what, be):
    """(words laid out row-major, transposed?) of a 2-D operand: a C-contiguous
    array, or the transpose of one (cuBLAS reads it with CUBLAS_OP_T)."""
    if a.ndim != 2:
        raise ValueError(f"bf16 matmul: {what} must be 2-D, got shape {tuple(a.shape)}")
    if a.dtype not in (WORDS, np.float32):
        raise TypeError(f"bf16 matmul: {what} must be float32 or bf16 words (uint16), got {a.dtype}")
    if a.flags.c_contiguous:
        return words(a, be=be), False
    if a.T.flags.c_contiguous:
        return words(a.T, be=be), True
    return words(be.xp.ascontiguousarray(a), be=be), False


def gemm(a, b, out=None, accumulate=False, *, be):
    """out (M, N) float32 = a (M, K) @ b (K, N) (``accumulate``: out +=), the
    operands float32 (cast here) or bf16 words, on bf16 tensor cores with float32
    accumulation. ``out`` must be C-contiguous float32."""
    M, K = a.shape[0], a.shape[-1]
    if b.ndim != 2 or b.shape[0] != K:
        raise ValueError(f"bf16 matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not chain")
    N = b.shape[1]
    A, ta = _row_major(a, "a", be)
    B, tb = _row_major(b, "b", be)
    xp = be.xp
    if out is None:
        if accumulate:
            raise ValueError("bf16 matmul: accumulate needs out")
        out = xp.empty((M, N), dtype=np.float32)
    elif tuple(out.shape) != (M, N) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"bf16 matmul: out must be a C-contiguous float32 ({M}, {N}) array, "
                         f"got {out.dtype} {tuple(out.shape)} with strides {out.strides}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        if not accumulate:
            out.fill(0)
        return out
    from cupy_backends.cuda.libs import cublas

    handle = xp.cuda.device.get_cublas_handle()
    if cublas.getPointerMode(handle) != CUBLAS_POINTER_MODE_HOST:  # alpha/beta live on the host
        cublas.setPointerMode(handle, CUBLAS_POINTER_MODE_HOST)
    # row-major C = a b is column-major C^T = b^T a^T: b is cuBLAS's first operand.
    # Row-major words of b are column-major b^T (op N, ld N); of b^T, column-major b (op T, ld K).
    cublas.gemmEx(handle, CUBLAS_OP_T if tb else CUBLAS_OP_N, CUBLAS_OP_T if ta else CUBLAS_OP_N, N, M, K,
                  _ONE.ctypes.data, B.data.ptr, CUDA_R_16BF, K if tb else N,
                  A.data.ptr, CUDA_R_16BF, M if ta else K,
                  (_ONE if accumulate else _ZERO).ctypes.data, out.data.ptr, CUDA_R_32F, N,
                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
    return out


def reference_gemm(a, b):
    """The NumPy twin of ``gemm`` (host arrays): both operands rounded to bf16,
    multiplied in float64, returned as float32."""
    from gptlite.engine.attention import from_bf16, to_bf16 as host_bf16

    def val(x):
        x = np.asarray(x)
        return from_bf16(x) if x.dtype == WORDS else from_bf16(host_bf16(x))

    return (val(a).astype(np.float64) @ val(b).astype(np.float64)).astype(np.float32)
