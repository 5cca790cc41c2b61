"""Fused kernels of the GPU training step, and their NumPy twins.

The CUDA C lives in ``engine/cuda/fused_kernels.cu`` and is compiled once, on the
first CuPy call, into one ``RawModule``. Every kernel ``gl_<name>_<f32|f64>`` has a
twin in ``KERNEL_TWINS`` that does the same thing to NumPy buffers with the same
launch arguments (grid, block, args, shared_mem): the NumPy path here runs the
twins, ``tests/fake_cupy.py`` runs them in place of the real launches (checking
block size and shared memory against ``shared_mem_bytes``), and the GPU tests
compare the real kernels against them.

The public functions take arrays of either module and return arrays of the same
module; they launch through the backend (``be=``, else the arrays' own), whose
kernel set runs the CUDA kernel or its twin; none reads a value back to the host, so a step built from them
needs no synchronisation until someone asks for the loss.
"""
from __future__ import annotations

import math
import os

import numpy as np

from gptlite.engine.backend import Uploaded, backend_of

CU_FILE = os.path.join(os.path.dirname(__file__), "cuda", "fused_kernels.cu")
BLOCK = 256  # threads per block of the row kernels: a power of two, as block_sum needs
ELEM_BLOCK = 256
LM_HEAD_CHUNK = 4096  # rows of logits alive at once in lm_head_cross_entropy

# kernels that reduce within a block: dynamic shared memory of one element per thread
REDUCING = {"ln_fwd", "ln_bwd_dx", "causal_softmax_fwd", "causal_softmax_bwd", "ce_fwd_bwd"}

# kernels with a float32 instantiation only (gl_<name>_f32): the bf16 cast
FLOAT32_ONLY = {"to_bf16"}

# cupy.ReductionKernel(*SUMSQ_KERNEL): the squared norm of the flat gradient buffer
SUMSQ_KERNEL = ("T x", "T y", "x * x", "a + b", "y = a", "0", "gl_sumsq")

_module = None
_sumsq_kernel = None


def shared_mem_bytes(base: str, block: int, dtype) -> int:
    """The dynamic shared memory kernel ``base`` needs for ``block`` threads."""
    return block * np.dtype(dtype).itemsize if base in REDUCING else 0


def check_launch(name: str, grid, block, shared_mem: int) -> None:
    """Raise if a launch does not meet the kernel's declared needs (used by every
    launch on CuPy and by the stand-in)."""
    base, suffix = name[3:].rsplit("_", 1)
    dtype = {"f32": np.float32, "f64": np.float64}[suffix]
    b = block[0]
    if not 1 <= b <= 1024 or any(x != 1 for x in block[1:]):
        raise ValueError(f"{name}: block {block} is not 1-D with 1..1024 threads")
    if base in REDUCING and b & (b - 1):
        raise ValueError(f"{name}: block_sum/block_max need a power-of-two block, got {b}")
    need = shared_mem_bytes(base, b, dtype)
    if shared_mem != need:
        raise ValueError(f"{name}: launched with {shared_mem} bytes of shared memory, needs {need}")
    if grid[0] < 1 or grid[0] >= 2 ** 31:
        raise ValueError(f"{name}: grid {grid} out of range")


def _suffix(dtype) -> str:
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "f32"
    if dt == np.float64:
        return "f64"
    raise TypeError(f"fused kernels are float32/float64 only, got {dt}")


def module():
    """The compiled RawModule (once per process)."""
    global _module
    if _module is None:
        from gptlite.engine.kernels import compile_file

        _module = compile_file(CU_FILE)
    return _module


def _launch(be, base, dtype, grid, block, args):
    name = f"gl_{base}_{_suffix(dtype)}"
    smem = shared_mem_bytes(base, block[0], dtype)
    check_launch(name, grid, block, smem)
    be.kernels.launch(name, grid, block, args, smem)


def _scalar(dtype, v):
    return np.dtype(dtype).type(v)


def _null(be, a):
    """A kernel argument for an optional array: the array, or a null pointer."""
    return a if a is not None else be.kernels.null


# -- the kernels' NumPy twins: same arguments, same effect on the buffers ------------


def _words_out(y, yw, v):
    """A kernel output only a bf16 matmul reads: bf16 words into yw when given, else v into y."""
    from gptlite.engine.attention import to_bf16

    if yw is not None:
        yw.reshape(v.shape)[...] = to_bf16(v.astype(np.float32))
    else:
        y.reshape(v.shape)[...] = v


def _tw_ln_fwd(grid, block, args):
    x, xb, res, xsum, w, b, y, yw, mean, rstd, C, eps = args
    C = int(C)
    xs = (x if xb is None else x + xb).reshape(-1, C)
    if res is not None:
        xs = xs + res.reshape(-1, C)
    xsum.reshape(-1, C)[...] = xs
    mu = xs.mean(axis=1)
    d = xs - mu[:, None]
    rs = 1 / np.sqrt((d * d).mean(axis=1) + eps)
    _words_out(y, yw, d * rs[:, None] * w + b)
    mean[...], rstd[...] = mu, rs


def _tw_ln_bwd_dx(grid, block, args):
    dy, xs, mean, rstd, w, dres, dx, C = args
    C = int(C)
    dy, xs = dy.reshape(-1, C), xs.reshape(-1, C)
    xh = (xs - mean[:, None]) * rstd[:, None]
    g = dy * w
    v = rstd[:, None] * (g - g.mean(axis=1, keepdims=True) - xh * (g * xh).mean(axis=1, keepdims=True))
    dx.reshape(-1, C)[...] = v if dres is None else v + dres.reshape(-1, C)


def _tw_ln_bwd_dwdb(grid, block, args):
    dy, xs, mean, rstd, dw, db, N, C, acc = args
    dy, xs = dy.reshape(int(N), int(C)), xs.reshape(int(N), int(C))
    sw = (dy * (xs - mean[:, None]) * rstd[:, None]).sum(axis=0)
    sb = dy.sum(axis=0)
    if acc:
        dw += sw
        db += sb
    else:
        dw[...], db[...] = sw, sb


def _tw_colsum(grid, block, args):
    a, out, N, C, acc = args
    s = a.reshape(int(N), int(C)).sum(axis=0)
    if acc:
        out += s
    else:
        out[...] = s


_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def _tw_bias_gelu_fwd(grid, block, args):
    x, bias, pre, y, yw, n, C = args
    p = (x.reshape(-1, int(C)) + bias).reshape(pre.shape)
    pre[...] = p
    t = np.tanh(p.dtype.type(_K) * (p + p.dtype.type(_A) * p * p * p))
    _words_out(y, yw, 0.5 * p * (1 + t))


def _tw_gelu_bwd(grid, block, args):
    pre, dy, dx, n = args
    p = pre
    t = np.tanh(p.dtype.type(_K) * (p + p.dtype.type(_A) * p * p * p))
    dx[...] = dy * (0.5 * (1 + t) + 0.5 * p * (1 - t * t) * p.dtype.type(_K) * (1 + p.dtype.type(3 * _A) * p * p))


def _causal_mask(Tq, Tk):
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)


def _tw_causal_softmax_fwd(grid, block, args):
    s, p, Tq, Tk, scale = args
    Tq, Tk = int(Tq), int(Tk)
    z = s.reshape(-1, Tq, Tk) * scale
    mask = _causal_mask(Tq, Tk)
    z = np.where(mask, z, -np.inf)
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    p.reshape(-1, Tq, Tk)[...] = e / e.sum(axis=2, keepdims=True)


def _tw_causal_softmax_bwd(grid, block, args):
    p, dp, ds, Tq, Tk, scale = args
    Tq, Tk = int(Tq), int(Tk)
    p3, d3 = p.reshape(-1, Tq, Tk), dp.reshape(-1, Tq, Tk)
    mask = _causal_mask(Tq, Tk)
    inner = (p3 * d3 * mask).sum(axis=2, keepdims=True)
    ds.reshape(-1, Tq, Tk)[...] = np.where(mask, scale * p3 * (d3 - inner), 0)


def _tw_ce_fwd_bwd(grid, block, args):
    logits, targets, loss, V, dscale, ignore = args
    z = logits.reshape(-1, int(V))
    t = np.asarray(targets).astype(np.int64)
    keep = t != ignore
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    rows = np.arange(z.shape[0])
    tt = np.where(keep, t, 0)
    loss[...] = np.where(keep, lse - z[rows, tt], 0)
    p = np.exp(z - lse[:, None])
    p[rows[keep], tt[keep]] -= 1
    p *= dscale
    p[~keep] = 0
    z[...] = p


def _tw_clip_scale(grid, block, args):
    sumsq, max_norm, norm_out, scale, nonfinite = args
    n = np.sqrt(sumsq.reshape(-1)[:1])
    norm_out[...] = n
    bad = not np.isfinite(n[0])
    nonfinite[...] = int(bad)
    c = min(1.0, float(max_norm / (n[0] + 1e-6))) if max_norm > 0 and not bad else 1.0
    scale[...] = 0 if bad else c


def _tw_adamw_coef(grid, block, args):
    t, nonfinite, coef, b1, b2, lr = args
    if not int(nonfinite.reshape(-1)[0]):
        t[0] += 1
    s = int(t[0])
    coef[0] = math.sqrt(1.0 - float(b2) ** s)
    coef[1] = float(lr) / (1.0 - float(b1) ** s)


def _tw_adamw(grid, block, args):
    p, g, m, v, scale, nonfinite, coef, n, n_decay, keep, c1, b2, c2, eps = args
    if int(nonfinite.reshape(-1)[0]):
        return
    bc2_sqrt, step_size = coef[0], coef[1]
    gi = g * scale.reshape(-1)[0]
    nd = int(n_decay)
    p[:nd] *= keep
    m += (gi - m) * c1
    v *= b2
    v += gi * gi * c2
    p -= m / (np.sqrt(v) / bc2_sqrt + eps) * step_size


def _tw_embed_bwd(grid, block, args):
    dout, order, sorted_ids, dwte, N, C = args
    d = dout.reshape(-1, int(C))[order]
    ids = np.asarray(sorted_ids)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sums = np.add.reduceat(d, starts, axis=0) if len(starts) else d[:0]
    dwte[ids[starts]] += sums


def _tw_to_bf16(grid, block, args):
    from gptlite.engine.attention import to_bf16

    x, y, n = args
    y.reshape(-1)[: int(n)] = to_bf16(x.reshape(-1)[: int(n)])


KERNEL_TWINS = {
    "to_bf16": _tw_to_bf16,
    "ln_fwd": _tw_ln_fwd, "ln_bwd_dx": _tw_ln_bwd_dx, "ln_bwd_dwdb": _tw_ln_bwd_dwdb, "colsum": _tw_colsum,
    "bias_gelu_fwd": _tw_bias_gelu_fwd, "gelu_bwd": _tw_gelu_bwd,
    "causal_softmax_fwd": _tw_causal_softmax_fwd, "causal_softmax_bwd": _tw_causal_softmax_bwd,
    "ce_fwd_bwd": _tw_ce_fwd_bwd, "clip_scale": _tw_clip_scale, "adamw_coef": _tw_adamw_coef, "adamw": _tw_adamw, "embed_bwd": _tw_embed_bwd,
}


# -- the public functions -------------------------------------------------------------


def _cols_grid(C):
    return ((C + ELEM_BLOCK - 1) // ELEM_BLOCK,), (ELEM_BLOCK,)


def _elem_grid(n):
    return ((n + ELEM_BLOCK - 1) // ELEM_BLOCK,), (ELEM_BLOCK,)


def _be(be, a):
    return be if be is not None else backend_of(a)


def _contig(a, name):
    if not a.flags.c_contiguous:
        raise ValueError(f"fused: {name} must be C-contiguous, got strides {a.strides}")
    return a


def _out_pair(be, x, words):
    """(y, y or null, words or null): a float output of x's shape and dtype, or
    bf16 words (``words``: the output only feeds a bf16 matmul)."""
    xp = be.xp
    if words:
        if x.dtype != np.float32:
            raise TypeError(f"bf16 outputs come from float32 inputs, got {x.dtype}")
        y = xp.empty(x.shape, dtype=np.uint16)
        return y, be.kernels.null, y
    y = xp.empty_like(x)
    return y, y, be.kernels.null


def layernorm_forward(x, w, b, eps=1e-5, residual=None, x_bias=None, words=False, *, be=None):
    """LayerNorm of ``(x + x_bias) + residual`` (either optional) over the last
    axis, one launch; ``x_bias`` (C,) is the bias of the linear layer that made x;
    ``words``: y as bf16 words (it only feeds a bf16 matmul).

    Returns (y, (xsum, mean, rstd, w)): xsum is the normalised input (the new
    residual stream when ``residual`` is given), mean/rstd are per row."""
    be = _be(be, x)
    xp = be.xp
    _contig(x, "x")
    C = x.shape[-1]
    N = x.size // C
    xsum = xp.empty_like(x)
    y, y_arg, yw_arg = _out_pair(be, x, words)
    mean, rstd = xp.empty(N, dtype=x.dtype), xp.empty(N, dtype=x.dtype)
    if residual is not None:
        _contig(residual, "residual")
    _launch(be, "ln_fwd", x.dtype, (N,), (BLOCK,),
            (x, _null(be, x_bias), _null(be, residual), xsum, w, b, y_arg, yw_arg, mean, rstd, np.int32(C),
             _scalar(x.dtype, eps)))
    return y, (xsum, mean, rstd, w)


def layernorm_backward(dy, cache, dw=None, db=None, dresidual=None, *, be=None):
    """(dx, dw, db); dw/db accumulate when given (views of a flat gradient buffer),
    and ``dresidual`` (the gradient of the residual stream) is added into dx."""
    xsum, mean, rstd, w = cache
    be = _be(be, dy)
    xp = be.xp
    _contig(dy, "dy")
    C = dy.shape[-1]
    N = dy.size // C
    dx = xp.empty_like(dy)
    _launch(be, "ln_bwd_dx", dy.dtype, (N,), (BLOCK,),
            (dy, xsum, mean, rstd, w, _null(be, dresidual), dx, np.int32(C)))
    acc = dw is not None
    if not acc:
        dw, db = xp.empty(C, dtype=dy.dtype), xp.empty(C, dtype=dy.dtype)
    g, blk = _cols_grid(C)
    _launch(be, "ln_bwd_dwdb", dy.dtype, g, blk, (dy, xsum, mean, rstd, dw, db, np.int32(N), np.int32(C), np.int32(acc)))
    return dx, dw, db


def bias_gelu_forward(x, bias, words=False, *, be=None):
    """y = gelu_tanh(x + bias), one launch; cache: pre = x + bias. ``words``: y as
    bf16 words (it only feeds a bf16 matmul)."""
    be = _be(be, x)
    xp = be.xp
    _contig(x, "x")
    pre = xp.empty_like(x)
    y, y_arg, yw_arg = _out_pair(be, x, words)
    g, blk = _elem_grid(x.size)
    _launch(be, "bias_gelu_fwd", x.dtype, g, blk, (x, bias, pre, y_arg, yw_arg, np.int64(x.size), np.int32(x.shape[-1])))
    return y, pre


def bias_gelu_backward(dy, pre, dbias=None, *, be=None):
    """(dx, dbias): dx = dy * gelu'(pre); dbias the column sum of dx (accumulated when given)."""
    be = _be(be, dy)
    xp = be.xp
    dx = xp.empty_like(dy)
    g, blk = _elem_grid(dy.size)
    _launch(be, "gelu_bwd", dy.dtype, g, blk, (pre, dy, dx, np.int64(dy.size)))
    C = dy.shape[-1]
    acc = dbias is not None
    if not acc:
        dbias = xp.empty(C, dtype=dy.dtype)
    g, blk = _cols_grid(C)
    _launch(be, "colsum", dy.dtype, g, blk, (dx, dbias, np.int32(dy.size // C), np.int32(C), np.int32(acc)))
    return dx, dbias


def causal_softmax_forward(scores, scale, *, be=None):
    """softmax(scale * scores) over the last axis with the causal mask folded in;
    scores (..., Tq, Tk), Tk >= Tq (query i sees keys <= i + Tk - Tq)."""
    be = _be(be, scores)
    xp = be.xp
    _contig(scores, "scores")
    Tq, Tk = scores.shape[-2:]
    p = xp.empty_like(scores)
    _launch(be, "causal_softmax_fwd", scores.dtype, (scores.size // Tk,), (BLOCK,),
            (scores, p, np.int32(Tq), np.int32(Tk), _scalar(scores.dtype, scale)))
    return p


def causal_softmax_backward(dp, p, scale, *, be=None):
    """d(scores) from d(probabilities) and the forward's probabilities."""
    be = _be(be, dp)
    xp = be.xp
    _contig(dp, "dp")
    Tq, Tk = p.shape[-2:]
    ds = xp.empty_like(dp)
    _launch(be, "causal_softmax_bwd", dp.dtype, (dp.size // Tk,), (BLOCK,),
            (p, dp, ds, np.int32(Tq), np.int32(Tk), _scalar(dp.dtype, scale)))
    return ds


def lm_head_cross_entropy(h, wte, targets, dwte=None, ignore_index=-1, chunk=LM_HEAD_CHUNK, n_valid=None, *, be=None):
    """Mean cross-entropy of the tied LM head, forward and backward together,
    ``chunk`` rows of logits at a time (the full N x V logits never exist).

    h (N, C), wte (V, C), targets (N,) ints. Returns (loss, dh, dwte): loss a 0-d
    array on h's device (mean over rows whose target is not ``ignore_index``),
    dh (N, C) and dwte (V, C), accumulated into ``dwte`` when given. ``n_valid``
    (the count of counted rows) may be passed to avoid computing it."""
    be = _be(be, h)
    xp = be.xp
    N, C = h.shape
    V = wte.shape[0]
    uploaded = None
    if isinstance(targets, Uploaded):  # checked and counted on its host copy; the device copy is used
        uploaded, targets = targets.dev.reshape(-1), targets.host
    targets = targets.reshape(-1).astype(np.int64)
    if targets.shape[0] != N:
        raise ValueError(f"lm_head_cross_entropy: {N} rows of h but {targets.shape[0]} targets")
    if not be.is_gpu or not isinstance(targets, xp.ndarray):  # host targets: checked without a device sync
        t = np.asarray(targets)
        keep = t != ignore_index
        bad = keep & ((t < 0) | (t >= V))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"lm_head_cross_entropy: target id {int(t[i])} at flat position {i} is outside [0, {V}) "
                             f"and is not ignore_index={ignore_index}")
        if n_valid is None:  # counted on the host: the scale becomes a kernel argument
            n_valid = int(keep.sum())
        targets = xp.asarray(targets) if uploaded is None else uploaded.astype(xp.int64, copy=False)
    if n_valid is None:
        n_valid = (targets != ignore_index).sum()  # stays on the device under CuPy
    on_host = isinstance(n_valid, (int, np.integer))
    dscale = 1.0 / max(int(n_valid), 1) if on_host else 1.0 / xp.maximum(n_valid, 1)
    dh = xp.empty_like(h)
    fresh = dwte is None
    if fresh:  # float32 even when wte comes as bf16 words (mixed precision)
        dwte = xp.empty(wte.shape, dtype=h.dtype)
    losses = xp.empty(N, dtype=h.dtype)
    k = be.kernels
    h_in, wte_in = k.operand(h), k.operand(wte)  # bf16 words under mixed precision: cast once
    for a in range(0, N, chunk):
        b = min(N, a + chunk)
        logits = k.matmul(h_in[a:b], wte_in.T)
        # a device-side scale is folded in after the kernel (a scalar kernel
        # argument would need it on the host)
        _launch(be, "ce_fwd_bwd", h.dtype, (b - a,), (BLOCK,),
                (logits, targets[a:b], losses[a:b], np.int32(V), _scalar(h.dtype, dscale if on_host else 1.0),
                 np.int64(ignore_index)))
        if not on_host:
            logits *= dscale.astype(h.dtype)
        dlogits = k.operand(logits)
        k.matmul(dlogits, wte_in, out=dh[a:b])
        if fresh and a == 0:
            k.matmul(dlogits.T, h_in[a:b], out=dwte)
        else:
            k.matmul_add(dlogits.T, h_in[a:b], dwte)
    loss = losses.sum() * (h.dtype.type(dscale) if on_host else dscale.astype(h.dtype))
    return loss, dh, dwte


def grad_sumsq(g, *, be=None):
    """Sum of squares of a flat buffer, a 0-d array on its device (one reduction)."""
    return _be(be, g).kernels.sumsq(g)


def sumsq_kernel(xp):
    """The compiled squared-norm ReductionKernel (CuPy; built once)."""
    global _sumsq_kernel
    if _sumsq_kernel is None:
        _sumsq_kernel = xp.ReductionKernel(*SUMSQ_KERNEL)
    return _sumsq_kernel


def clip_scale(sumsq, max_norm, *, be=None):
    """(norm, scale, nonfinite) as device arrays of one element, from the squared
    global norm; scale is torch's clip coefficient (1 when max_norm is None/<= 0,
    0 when the norm is not finite), nonfinite an int32 flag."""
    be = _be(be, sumsq)
    xp = be.xp
    dt = sumsq.dtype
    norm, scale = xp.empty(1, dtype=dt), xp.empty(1, dtype=dt)
    flag = xp.empty(1, dtype=np.int32)
    _launch(be, "clip_scale", dt, (1,), (1,),
            (sumsq.reshape(1), _scalar(dt, max_norm or 0.0), norm, scale, flag))
    return norm, scale, flag


def adamw_flat(P, G, M, V, scale, nonfinite, t, *, be=None, n_decay, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1):
    """One AdamW step over the whole flat buffer (optim.AdamW's arithmetic) in two
    launches: the step count ``t`` (a (1,) int32 device array) advances unless
    ``nonfinite`` is set and gives the bias corrections, then the update, G times the
    device-side ``scale``, skipped on the device when ``nonfinite`` is set."""
    be = _be(be, P)
    xp = be.xp
    b1, b2 = betas
    f = lambda v: _scalar(P.dtype, v)  # noqa: E731
    coef = xp.empty(2, dtype=P.dtype)
    _launch(be, "adamw_coef", P.dtype, (1,), (1,), (t, nonfinite, coef, np.float64(b1), np.float64(b2), np.float64(lr)))
    g, blk = _elem_grid(P.size)
    _launch(be, "adamw", P.dtype, g, blk,
            (P, G, M, V, scale, nonfinite, coef, np.int64(P.size), np.int64(n_decay), f(1.0 - lr * weight_decay), f(1.0 - b1),
             f(b2), f(1.0 - b2), f(eps)))


def set_tf32(enabled: bool) -> None:
    """float32 matmuls on TF32 tensor cores (CuPy's cuBLAS compute type) or in
    full float32; process-wide, as CuPy's setting is."""
    from cupy._core import _routines_linalg as la

    la.set_compute_type(np.float32, la.COMPUTE_TYPE_TF32 if enabled else la.COMPUTE_TYPE_FP32)


def embedding_backward(idx, dout, dwte, *, be=None):
    """dwte[idx[i]] += dout[i], deterministically: rows sorted by (id, position),
    each id's run summed in position order by one block; no atomics."""
    be = _be(be, dout)
    xp = be.xp
    C = dout.shape[-1]
    ids = idx.reshape(-1).astype(np.int64)
    N = ids.shape[0]
    if N == 0:
        return dwte
    # a unique key per row makes any sort (stable or not) give the same order
    order = xp.argsort(ids * N + xp.arange(N, dtype=np.int64))
    sorted_ids = ids[order]
    _launch(be, "embed_bwd", dout.dtype, (N,), (BLOCK,),
            (_contig(dout, "dout"), order, sorted_ids, dwte, np.int64(N), np.int32(C)))
    return dwte
