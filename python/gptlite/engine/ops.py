"""The transformer's ops, each as a paired ``X_forward`` / ``X_backward``.

llm.c style: a forward returns ``(out, cache)``; the matching backward takes
``(dout, cache)`` and returns the gradients. Every function takes its array
module from its inputs (``xp = xp_of(x)``), so the same code runs on NumPy
(CPU) and CuPy (GPU). A few small fused CuPy kernels (GELU, LayerNorm
normalisation, softmax; sources in ``engine/cuda/``, compiled by
``engine/kernels.py``) are used only when ``xp`` is CuPy; the NumPy path is
the reference they are tested against. How a NumPy op is cut into blocks
for the cores lives in ``engine/cpu.py``.

Shapes: B batch, T sequence, C channels, H heads, hs = C // H head size,
V vocabulary, P positions, N = B*T rows. Linear layers work on 2-D (N, C)
activations so every projection is a single big GEMM.
"""
from __future__ import annotations

import math

import numpy as np

from gptlite.engine.backend import xp_of
from gptlite.engine import cpu
from gptlite.engine.cpu import parallel_heads as _parallel_heads, parallel_rows
from gptlite.engine.kernels import GELU_TANH_A, GELU_TANH_K, kernel as _cupy_kernel

ACTIVATIONS = ("gelu_new", "gelu")  # tanh approximation (GPT-2), exact erf (HF's GPT-1 default)


def _is_cupy(xp) -> bool:
    return xp is not np


def matmul(a, b, out=None):
    """a (M,K) @ b (K,N) -> (M,N); on NumPy blocked over the cores (engine.cpu)."""
    if xp_of(a) is np:
        return cpu.matmul(a, b, out=out)
    return xp_of(a).matmul(a, b, out=out)


# ----------------------------------------------------------------------------
# embedding: token + position


def embedding_forward(idx, wte, wpe, pos=None):
    """out[b,t] = wte[idx[b,t]] + wpe[pos[b,t]].

    idx (B,T) int, wte (V,C), wpe (P,C), pos (B,T) or (T,) int, default arange(T).
    Returns out (B,T,C) and the cache (idx, pos, V, P).
    """
    xp = xp_of(wte)
    T = idx.shape[1]
    if pos is None:
        pos = xp.arange(T)
    out = wte[idx]  # (B,T,C), a fresh array
    out += wpe[pos]
    return out, (idx, pos, wte.shape[0], wpe.shape[0])


def _scatter_add_rows(n_rows, index, values, out=None):
    """Add the rows of values (M,C) into out (n_rows,C) (zeros if None) at index (M,)."""
    xp = xp_of(values)
    if out is None:
        out = xp.zeros((n_rows, values.shape[1]), dtype=values.dtype)
    if _is_cupy(xp):
        return _segment_sum_rows(xp, index, values, out)
    # Sort-and-reduce: one pass of contiguous row sums instead of np.add.at's
    # per-element updates; deterministic (fixed summation order) too. The
    # reduced rows have unique ids, so a fancy-index += is exact.
    order = np.argsort(index, kind="stable")
    sidx = index[order]
    starts = np.flatnonzero(np.r_[True, sidx[1:] != sidx[:-1]])
    out[sidx[starts]] += np.add.reduceat(values[order], starts, axis=0)
    return out


def _segment_sum_rows(xp, index, values, out):
    """The GPU form of the sort-and-reduce above, without atomics
    (cupyx.scatter_add's order of additions varies run to run, so resumed
    runs would drift). Rows are sorted by (id, position) -- unique keys, so
    any sort gives one order -- then a segmented Hillis-Steele scan adds each
    row to the one 1, 2, 4, ... places before it within the same id: a fixed
    summation tree, elementwise kernels only, log2(M) passes. Each id's total
    ends on its segment's last row; the ids written are unique, so the final
    += has no races."""
    M = int(index.shape[0])
    if M == 0:
        return out
    key = index.astype(xp.int64) * M + xp.arange(M, dtype=xp.int64)
    order = xp.argsort(key)
    sidx = index[order]
    acc = values[order]
    d = 1
    while d < M:
        # a new array first: CuPy does not guard in-place ops on overlapping views
        shifted = xp.where((sidx[d:] == sidx[:-d])[:, None], acc[:-d], 0)
        acc[d:] += shifted
        d *= 2
    last = xp.concatenate([sidx[1:] != sidx[:-1], xp.ones(1, dtype=bool)])
    out[sidx[last]] += acc[last]
    return out


def embedding_backward(dout, cache, dwte=None):
    """dout (B,T,C) -> (dwte (V,C), dwpe (P,C)); repeated ids accumulate.

    ``dwte``: an existing (V,C) gradient to add into (the tied LM head's),
    which saves allocating and summing a second vocabulary-sized array.
    """
    idx, pos, V, P = cache
    xp = xp_of(dout)
    B, T, C = dout.shape
    d2 = dout.reshape(-1, C)
    dwte = _scatter_add_rows(V, idx.reshape(-1), d2, out=dwte)
    if pos.ndim == 1:  # the common case: the same positions in every row
        dwpe = xp.zeros((P, C), dtype=dout.dtype)
        dwpe[pos] = dout.sum(axis=0)
    else:
        dwpe = _scatter_add_rows(P, pos.reshape(-1), d2)
    return dwte, dwpe


# ----------------------------------------------------------------------------
# layernorm over the last axis


def layernorm_forward(x, w, b, eps=1e-5):
    """y = (x - mean) * rstd * w + b over the last axis.

    x (..., C), w (C,), b (C,). Cache: xhat (..., C), rstd (..., 1), w.
    """
    xp = xp_of(x)
    if _is_cupy(xp):  # one kernel: mean, rstd and affine (engine/fused.py)
        from gptlite.engine import fused

        return fused.layernorm_forward(xp.ascontiguousarray(x), w, b, eps)
    mean = x.mean(axis=-1, keepdims=True)
    xhat = x - mean
    var = np.einsum("...c,...c->...", xhat, xhat)[..., None]  # one fused pass
    var /= x.shape[-1]
    var += eps
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    y = xhat * w
    y += b
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    """dy (..., C) -> (dx (..., C), dw (C,), db (C,))."""
    if len(cache) == 4:  # the fused forward's cache (CuPy)
        from gptlite.engine import fused

        return fused.layernorm_backward(xp_of(dy).ascontiguousarray(dy), cache)
    xhat, rstd, w = cache
    C = dy.shape[-1]
    d2 = dy.reshape(-1, C)
    db = d2.sum(axis=0)
    dw = (d2 * xhat.reshape(-1, C)).sum(axis=0)
    dxhat = dy * w
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    m1 = dxhat.mean(axis=-1, keepdims=True)
    m2 = (dxhat * xhat).mean(axis=-1, keepdims=True)
    dxhat -= m1
    m2 = xhat * m2
    dxhat -= m2
    dxhat *= rstd
    return dxhat, dw, db


# ----------------------------------------------------------------------------
# linear, GPT-2's Conv1D layout: y = x @ W + b with W (in, out)


def linear_forward(x, W, b):
    """x (N, Cin), W (Cin, Cout), b (Cout,) or None -> y (N, Cout). Cache: x, W.

    W may be an int8 ``quant.QuantizedWeight`` (inference only): its fused
    kernel adds the bias, and there is no cache to go backward through."""
    if getattr(W, "is_quantized", False):
        return W.matmul(x, b), None
    y = matmul(x, W)
    if b is not None:
        y += b
    return y, (x, W)


def linear_backward(dy, cache):
    """dy (N, Cout) -> (dx (N, Cin), dW (Cin, Cout), db (Cout,))."""
    x, W = cache
    dx = matmul(dy, W.T)
    dW = matmul(x.T, dy)
    db = dy.sum(axis=0)
    return dx, dW, db


# ----------------------------------------------------------------------------
# GELU


def _erf(x):
    xp = xp_of(x)
    if _is_cupy(xp):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    try:  # SciPy is optional: a vectorised erf when present
        from scipy.special import erf

        return erf(x).astype(x.dtype, copy=False)
    except ImportError:
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def gelu_forward(x, approximate="gelu_new"):
    """GELU, elementwise. "gelu_new": 0.5x(1+tanh(k(x+0.044715x^3))) (GPT-2);
    "gelu": 0.5x(1+erf(x/sqrt2)) (exact). x any shape. Cache: x and tanh/erf term.
    """
    xp = xp_of(x)
    if approximate == "gelu_new":
        if _is_cupy(xp):
            y, t = _cupy_kernel("gelu_tanh_fwd")(x)
            return y, ("gelu_new", x, t)
        y, t = np.empty_like(x), np.empty_like(x)
        x2, y2, t2 = (a.reshape(-1, x.shape[-1]) if x.ndim else a.reshape(1, 1) for a in (x, y, t))

        def block(r):
            xr, tr, yr = x2[r], t2[r], y2[r]
            np.multiply(xr, xr, out=tr)
            tr *= GELU_TANH_A
            tr *= xr
            tr += xr
            tr *= GELU_TANH_K
            np.tanh(tr, out=tr)
            np.add(tr, 1.0, out=yr)
            yr *= xr
            yr *= 0.5

        parallel_rows(block, x2.shape[0])
        return y, ("gelu_new", x, t)
    if approximate == "gelu":
        e = _erf(x * (1.0 / math.sqrt(2.0)))
        y = e + 1.0
        y *= x
        y *= 0.5
        return y, ("gelu", x, e)
    raise ValueError(f"unknown activation {approximate!r}: expected one of {ACTIVATIONS}")


def gelu_backward(dy, cache):
    """dy -> dx, same shape."""
    kind, x, t = cache
    xp = xp_of(dy)
    if kind == "gelu_new":
        if _is_cupy(xp):
            return _cupy_kernel("gelu_tanh_bwd")(x, t, dy)
        # d/dx = 0.5(1+t) + 0.5x(1-t^2) k (1 + 3a x^2)
        dx = np.empty_like(dy)
        n = dy.shape[-1] if dy.ndim else 1
        x2, t2, dy2, dx2 = (a.reshape(-1, n) for a in (x, t, dy, dx))

        def block(r):
            xr, tr, g = x2[r], t2[r], dx2[r]
            u = xr * xr
            u *= 3 * GELU_TANH_A
            u += 1.0
            u *= 0.5 * GELU_TANH_K
            u *= xr
            np.multiply(tr, tr, out=g)
            np.subtract(1.0, g, out=g)
            g *= u
            g += 0.5
            u = np.multiply(tr, 0.5, out=u)
            g += u
            g *= dy2[r]

        parallel_rows(block, x2.shape[0])
        return dx
    # exact: d/dx = 0.5(1+erf(x/sqrt2)) + x * pdf(x)
    pdf = xp.exp(-0.5 * x * x)
    pdf *= x * (1.0 / math.sqrt(2.0 * math.pi))
    pdf += 0.5 * (1.0 + t)
    pdf *= dy
    return pdf


# ----------------------------------------------------------------------------
# softmax over the last axis (in place)


def softmax_inplace(a):
    """a (..., n) -> softmax(a) over the last axis, written into a. -inf -> 0."""
    xp = xp_of(a)
    if _is_cupy(xp) and a.flags.c_contiguous and a.dtype in (np.float32, np.float64):
        n = a.shape[-1]
        rows = a.size // n
        mod = _cupy_kernel("softmax_rows")
        fn = mod.get_function("softmax_f32" if a.dtype == np.float32 else "softmax_f64")
        threads = 128
        fn((rows,), (threads,), (a, np.int32(n)), shared_mem=threads * a.itemsize)
        return a
    if a.flags.c_contiguous:
        a2 = a.reshape(-1, a.shape[-1])  # a view
        parallel_rows(lambda r: _softmax_here(a2[r]), a2.shape[0])
    else:  # not reshapeable as a view: one pass on the whole array
        _softmax_here(a)
    return a


def _softmax_here(a):
    """Softmax over the last axis, in place, in one pass per step (on NumPy: on this thread)."""
    a -= a.max(axis=-1, keepdims=True)
    xp_of(a).exp(a, out=a)
    a *= 1.0 / a.sum(axis=-1, keepdims=True)


def softmax_backward_inplace(datt, att):
    """datt := att * (datt - sum(datt * att, -1)): the softmax Jacobian-vector product."""
    xp = xp_of(att)
    if _is_cupy(xp) or not (datt.flags.c_contiguous and att.flags.c_contiguous):
        s = (datt * att).sum(axis=-1, keepdims=True)
        datt -= s
        datt *= att
        return datt
    d2, a2 = datt.reshape(-1, datt.shape[-1]), att.reshape(-1, att.shape[-1])

    def block(r):
        d = d2[r]
        d -= np.einsum("ij,ij->i", d, a2[r])[:, None]
        d *= a2[r]

    parallel_rows(block, d2.shape[0])
    return datt


# ----------------------------------------------------------------------------
# causal multi-head self-attention on a fused qkv


def _split_heads(x2, B, T, H):
    """(B*T, C) or (B,T,C) -> (B,H,T,hs) view (no copy)."""
    C = x2.shape[-1]
    return x2.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def causal_bias(xp, Tq, Tk, dtype, offset=0):
    """(Tq, Tk) additive mask: 0 where key j <= query i + offset, -inf after."""
    i = xp.arange(Tq)[:, None] + offset
    j = xp.arange(Tk)[None, :]
    return xp.where(j > i, -xp.inf, 0.0).astype(dtype)


def bmm(a, b, out=None):
    """Batched matmul over the leading axes: a (..., m, k) @ b (..., k, n).

    On NumPy one sgemm per 2-D slice spread over the cores (engine.cpu.bmm);
    CuPy's matmul batches natively."""
    xp = xp_of(a)
    if xp is np:
        return cpu.bmm(a, b, out=out)
    if out is None:
        return xp.matmul(a, b)
    out[...] = xp.matmul(a, b)
    return out


def _attend(q, k, v, bias, att, yh):
    """att := softmax(q.k^T / sqrt(hs) + bias); yh := att @ v.

    q (B,H,t,hs), k, v (B,H,S,hs), bias (B|1, 1|H, t, S), att (B,H,t,S) and
    yh (B,H,t,hs) are written (yh usually a head-merged view)."""
    xp = xp_of(q)
    n_head = q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1])
    if _is_cupy(xp) or q.shape[2] <= 16:
        # CuPy batches natively; on NumPy, decoding's tiny products are cheaper
        # here than handed to the pool
        mm, softmax = (bmm, softmax_inplace) if _is_cupy(xp) else (np.matmul, _softmax_here)
        mm(q, k.transpose(0, 1, 3, 2), out=att)
        att *= scale
        att += bias
        softmax(att)
        mm(att, v, out=yh)
        return

    # One task per (batch row, run of heads): scores, mask, softmax and
    # att @ v back to back while the run's (hc,t,S) block is in this core's
    # cache; runs of several small heads save per-call overhead.
    def heads(b, hsl):
        a = att[b, hsl]
        np.matmul(q[b, hsl], k[b, hsl].transpose(0, 2, 1), out=a)
        a *= scale
        a += bias[b if bias.shape[0] > 1 else 0, hsl if bias.shape[1] > 1 else slice(0, 1)]
        _softmax_here(a)
        np.matmul(a, v[b, hsl], out=yh[b, hsl])

    _parallel_heads(heads, q.shape[0], n_head, q.shape[2] * k.shape[2])


def attention_kv_forward(q, k, v, bias):
    """Inference attention of t new queries over S cached keys (no cache kept).

    q (B,H,t,hs), k, v (B,H,S,hs), bias (B|1, 1|H, t, S) -> y (B*t, H*hs)."""
    xp = xp_of(q)
    B, H, t, hs = q.shape
    y = xp.empty((B, t, H, hs), dtype=q.dtype)
    att = xp.empty((B, H, t, k.shape[2]), dtype=q.dtype)
    _attend(q, k, v, bias, att, y.transpose(0, 2, 1, 3))
    return y.reshape(B * t, H * hs)


def attention_forward(qkv, n_head, B, T, bias=None):
    """Causal self-attention with a fused QKV input.

    qkv (B*T, 3C) -> y (B*T, C). Scores are q.k / sqrt(hs), causally masked
    (or with ``bias`` (B|1, 1|H, T, T), an additive mask), softmax over keys.
    Cache: q, k, v (B,H,T,hs) views into qkv, att (B,H,T,T) probabilities.
    """
    xp = xp_of(qkv)
    C = qkv.shape[-1] // 3
    hs = C // n_head
    q = _split_heads(qkv[:, :C], B, T, n_head)
    k = _split_heads(qkv[:, C:2 * C], B, T, n_head)
    v = _split_heads(qkv[:, 2 * C:], B, T, n_head)
    if bias is None:
        bias = causal_bias(xp, T, T, qkv.dtype)[None, None]
    y = xp.empty((B, T, n_head, hs), dtype=qkv.dtype)
    att = xp.empty((B, n_head, T, T), dtype=qkv.dtype)
    _attend(q, k, v, bias, att, y.transpose(0, 2, 1, 3))
    return y.reshape(B * T, C), (q, k, v, att, n_head, B, T)


def attention_backward(dy, cache):
    """dy (B*T, C) -> dqkv (B*T, 3C)."""
    q, k, v, att, n_head, B, T = cache
    xp = xp_of(dy)
    C = dy.shape[-1]
    hs = C // n_head
    scale = 1.0 / math.sqrt(hs)
    dyh = _split_heads(dy, B, T, n_head)  # (B,H,T,hs)
    dqkv = xp.empty((B, T, 3, n_head, hs), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (B,H,T,hs) views
    if _is_cupy(xp):
        bmm(att.transpose(0, 1, 3, 2), dyh, out=dv)
        datt = bmm(dyh, v.transpose(0, 1, 3, 2))  # (B,H,T,T)
        softmax_backward_inplace(datt, att)
        datt *= scale
        bmm(datt, k, out=dq)
        bmm(datt.transpose(0, 1, 3, 2), q, out=dk)
        return dqkv.reshape(B * T, 3 * C)

    def heads(b, hsl):  # the forward's tasks in reverse, one scratch block per task
        a, g = att[b, hsl], dyh[b, hsl]
        np.matmul(a.transpose(0, 2, 1), g, out=dv[b, hsl])
        da = g @ v[b, hsl].transpose(0, 2, 1)
        da -= np.einsum("hij,hij->hi", da, a)[..., None]  # softmax Jacobian-vector product
        da *= a
        da *= scale
        np.matmul(da, k[b, hsl], out=dq[b, hsl])
        np.matmul(da.transpose(0, 2, 1), q[b, hsl], out=dk[b, hsl])

    _parallel_heads(heads, B, n_head, T * T)
    return dqkv.reshape(B * T, 3 * C)


# ----------------------------------------------------------------------------
# residual


def residual_forward(x, fx, inplace=False):
    """x + f(x), any shape. No cache needed. ``inplace`` adds into x itself
    (for a residual stream that no cache holds, such as GPT-2's pre-LN one)."""
    if inplace:
        x += fx
        return x, None
    return x + fx, None


def residual_backward(dout, cache=None):
    """The gradient flows unchanged into both branches: (dx, dfx)."""
    return dout, dout


# ----------------------------------------------------------------------------
# LM head, tied to the token embedding: logits = h @ wte.T


def lm_head_forward(h, wte):
    """h (N, C), wte (V, C) -> logits (N, V). Cache: h, wte (None when int8)."""
    if getattr(wte, "is_quantized", False):
        return wte.matmul(h), None
    return matmul(h, wte.T), (h, wte)


def lm_head_backward(dlogits, cache):
    """dlogits (N, V) -> (dh (N, C), dwte (V, C)): the head's share of the tied
    embedding's gradient (the embedding lookup adds its own)."""
    h, wte = cache
    return matmul(dlogits, wte), matmul(dlogits.T, h)


# ----------------------------------------------------------------------------
# cross-entropy, mean over targets != ignore_index


def cross_entropy_forward(logits, targets, ignore_index=-1, inplace=False):
    """Mean negative log-likelihood of ``targets`` under softmax(logits).

    logits (..., V) float, targets (...) int; entries equal to ignore_index
    are skipped (they contribute neither loss nor gradient). With no target
    left the loss is 0.0 and the gradient zero. ``inplace=True`` reuses the
    logits buffer for the probabilities (the fused, memory-lean path).
    Returns (loss: float, cache).
    """
    xp = xp_of(logits)
    V = logits.shape[-1]
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)} minus the vocabulary axis")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    shape = logits.shape
    x = logits.reshape(-1, V)
    t = targets.reshape(-1)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= V))
    if bool(bad.any()):
        i = int(xp.flatnonzero(bad)[0])
        raise ValueError(f"target id {int(t[i])} at flat position {i} is outside [0, {V}) and is not ignore_index={ignore_index}")
    n = int(valid.sum())
    rows = xp.arange(x.shape[0])
    tsafe = xp.where(valid, t, 0)
    p = x if inplace else x.copy()
    if _is_cupy(xp) or not p.flags.c_contiguous:
        m = p.max(axis=1)
        picked = p[rows, tsafe] - m  # target logit minus max, before p is overwritten
        p -= m[:, None]
        xp.exp(p, out=p)
        s = p.sum(axis=1)
    else:  # the same passes, fused per row block and spread over the cores
        m, picked, s = (np.empty(p.shape[0], dtype=p.dtype) for _ in range(3))

        def block(r):
            pr = p[r]
            m[r] = pr.max(axis=1)
            picked[r] = pr[rows[r] - r.start, tsafe[r]] - m[r]
            pr -= m[r, None]
            np.exp(pr, out=pr)
            s[r] = pr.sum(axis=1)

        parallel_rows(block, p.shape[0])
    nll = xp.log(s) - picked
    loss = float((nll * valid).sum() / n) if n else 0.0
    return loss, (p, s, tsafe, valid, n, shape)


def cross_entropy_backward(cache, dloss=1.0):
    """-> dlogits, the shape of the logits (written into the cache's buffer)."""
    p, s, tsafe, valid, n, shape = cache
    xp = xp_of(p)
    scale = (dloss / n) if n else 0.0
    w = (valid * scale / s).astype(p.dtype)  # softmax normaliser and mean, per row
    if _is_cupy(xp):
        p *= w[:, None]
    else:
        parallel_rows(lambda r: np.multiply(p[r], w[r, None], out=p[r]), p.shape[0])
    rows = xp.arange(p.shape[0])
    p[rows, tsafe] -= (valid * scale).astype(p.dtype)
    return p.reshape(shape)
