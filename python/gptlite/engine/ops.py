"""The transformer's ops, each as a paired ``X_forward`` / ``X_backward``.

llm.c style: a forward returns ``(out, cache)``; the matching backward takes
``(dout, cache)`` and returns the gradients. The maths shared by both devices
is written once here on ``be.xp``; what differs (GEMM scheduling, LayerNorm,
GELU, softmax, the cross-entropy row passes, the embedding scatter) is a method
of the backend's kernel set: :class:`NumpyKernels` below (the reference,
blocked over the cores by ``engine/cpu.py``) or ``engine.kernels.CudaKernels``
(CuPy with the fused kernels of ``engine/fused.py``). Every op takes the
backend as ``be=`` (a model passes the one it was built with); without it the
backend of its first array is used.

Shapes: B batch, T sequence, C channels, H heads, hs = C // H head size,
V vocabulary, P positions, N = B*T rows. Linear layers work on 2-D (N, C)
activations so every projection is a single big GEMM.
"""
from __future__ import annotations

import math

import numpy as np

from gptlite.engine.backend import backend_of, xp_of
from gptlite.engine import cpu
from gptlite.engine.cpu import parallel_heads as _parallel_heads, parallel_rows
from gptlite.engine.kernels import GELU_TANH_A, GELU_TANH_K

ACTIVATIONS = ("gelu_new", "gelu")  # tanh approximation (GPT-2), exact erf (HF's GPT-1 default)


def _k(be, a):
    """The kernel set of the caller's backend (a model passes its own), else of ``a``'s."""
    return (be if be is not None else backend_of(a)).kernels


def matmul(a, b, out=None, *, be=None):
    """a (M,K) @ b (K,N) -> (M,N); on NumPy blocked over the cores (engine.cpu)."""
    return _k(be, a).matmul(a, b, out=out)


# ----------------------------------------------------------------------------
# embedding: token + position

# ----------------------------------------------------------------------------
# embedding: token + position


def embedding_forward(idx, wte, wpe, pos=None, *, be=None):
    """out[b,t] = wte[idx[b,t]] + wpe[pos[b,t]].

    idx (B,T) int, wte (V,C), wpe (P,C), pos (B,T) or (T,) int, default arange(T).
    Returns out (B,T,C) and the cache (idx, pos, V, P).
    """
    T = idx.shape[1]
    if pos is None:
        pos = (be if be is not None else backend_of(wte)).xp.arange(T)
    out = wte[idx]  # (B,T,C), a fresh array
    out += wpe[pos]
    return out, (idx, pos, wte.shape[0], wpe.shape[0])


def _scatter_add_rows(n_rows, index, values, out=None, *, be=None):
    """Add the rows of values (M,C) into out (n_rows,C) (zeros if None) at index (M,),
    deterministically (a fixed summation order, so resumed runs give the same bits)."""
    be = be if be is not None else backend_of(values)
    if out is None:
        out = be.xp.zeros((n_rows, values.shape[1]), dtype=values.dtype)
    return be.kernels.scatter_add_rows(index, values, out)


def embedding_backward(dout, cache, dwte=None, dwpe=None, *, be=None):
    """dout (B,T,C) -> (dwte (V,C), dwpe (P,C)); repeated ids accumulate.

    ``dwte``: an existing (V,C) gradient to add into (the tied LM head's),
    which saves allocating and summing a second vocabulary-sized array;
    ``dwpe``: a zeroed (P,C) buffer to write into (a flat gradient buffer's view).
    """
    idx, pos, V, P = cache
    be = be if be is not None else backend_of(dout)
    B, T, C = dout.shape
    d2 = dout.reshape(-1, C)
    dwte = _scatter_add_rows(V, idx.reshape(-1), d2, out=dwte, be=be)
    if pos.ndim == 1:  # the common case: the same positions in every row
        if dwpe is None:
            dwpe = be.xp.zeros((P, C), dtype=dout.dtype)
        dwpe[pos] = dout.sum(axis=0)
    else:
        dwpe = _scatter_add_rows(P, pos.reshape(-1), d2, out=dwpe, be=be)
    return dwte, dwpe


# ----------------------------------------------------------------------------
# layernorm over the last axis


def layernorm_forward(x, w, b, eps=1e-5, to_matmul=False, *, be=None):
    """y = (x - mean) * rstd * w + b over the last axis.

    x (..., C), w (C,), b (C,). The cache is the kernel set's own (NumPy:
    xhat (..., C), rstd (..., 1), w; CUDA: the fused kernel's row statistics).
    ``to_matmul``: y only feeds a matmul, so the kernel set may give it as the
    matmul's operand (bf16 words under mixed precision; as it is elsewhere).
    """
    return _k(be, x).layernorm_forward(x, w, b, eps, to_matmul=to_matmul)


def residual_layernorm_forward(x, fx, w, b, eps=1e-5, inplace=False, fx_bias=None, to_matmul=False, *, be=None):
    """The residual add and the LayerNorm after it: s = x + (fx + fx_bias),
    y = layernorm(s); ``fx_bias``: the pending bias of a ``linear_branch_forward``;
    ``to_matmul`` as in ``layernorm_forward``.

    Returns (s, y, cache); ``inplace`` lets s be x itself (a residual stream
    no cache holds). On CUDA one fused launch does all of it."""
    return _k(be, x).residual_layernorm_forward(x, fx, w, b, eps, inplace, fx_bias, to_matmul=to_matmul)


def layernorm_backward(dy, cache, dresidual=None, out=None, *, be=None):
    """dy (..., C) -> (dx (..., C), dw (C,), db (C,)); ``dresidual``, the gradient
    that reached the LayerNorm's input from the residual stream, is added to dx
    (on CUDA inside the same kernel). ``out``: zeroed (dw, db) buffers to write
    into (views of a flat gradient buffer), returned as dw and db."""
    return _k(be, dy).layernorm_backward(dy, cache, dresidual, out)


# ----------------------------------------------------------------------------
# linear, GPT-2's Conv1D layout: y = x @ W + b with W (in, out)


def linear_forward(x, W, b, *, be=None):
    """x (N, Cin), W (Cin, Cout), b (Cout,) or None -> y (N, Cout). Cache: x, W.

    W may be an int8 ``quant.QuantizedWeight`` (inference only): its fused
    kernel adds the bias, and there is no cache to go backward through."""
    if getattr(W, "is_quantized", False):
        return W.matmul(x, b), None
    k = _k(be, x)
    x, W = k.operand(x), k.operand(W)  # bf16 words under mixed precision, kept for the backward
    y = k.matmul(x, W)
    if b is not None:
        y += b
    return y, (x, W)


def linear_branch_forward(x, W, b, *, be=None):
    """A linear layer whose output goes into a residual add and LayerNorm
    (``residual_layernorm_forward``): (y, pending_bias, cache). Where the kernel
    set fuses the bias into that LayerNorm (CUDA) y lacks it and pending_bias is
    b; elsewhere the bias is added here and pending_bias is None. Backward:
    ``linear_backward``."""
    if getattr(W, "is_quantized", False) or not _k(be, x).fuses_branch_bias:
        y, cache = linear_forward(x, W, b, be=be)
        return y, None, cache
    y, cache = linear_forward(x, W, None, be=be)
    return y, b, cache


def linear_backward(dy, cache, out=None, *, be=None):
    """dy (N, Cout) -> (dx (N, Cin), dW (Cin, Cout), db (Cout,)); ``out``: zeroed
    (dW, db) buffers to write into (views of a flat gradient buffer)."""
    x, W = cache
    dW_out, db_out = out if out is not None else (None, None)
    k = _k(be, dy)
    db = dy.sum(axis=0, out=db_out)
    dy = k.operand(dy)  # cast once for both matmuls under mixed precision
    dx = k.matmul(dy, W.T)
    dW = k.matmul(x.T, dy, out=dW_out)
    return dx, dW, db


def linear_gelu_forward(x, W, b, approximate="gelu_new", *, be=None):
    """gelu(x @ W + b): the MLP's first half. On CUDA the bias add and the tanh
    GELU are one fused launch (and the backward's bias gradient one more).
    Cache: x, W and the activation's own."""
    if getattr(W, "is_quantized", False):
        return gelu_forward(W.matmul(x, b), approximate, be=be)[0], None
    k = _k(be, x)
    x, W = k.operand(x), k.operand(W)
    # the activation feeds the MLP's second matmul only: bf16 words under mixed precision
    y, gc = k.bias_gelu_forward(k.matmul(x, W), b, approximate, to_matmul=True)
    return y, (x, W, gc)


def linear_gelu_backward(dy, cache, out=None, *, be=None):
    """dy (N, Cout) -> (dx (N, Cin), dW (Cin, Cout), db (Cout,)); ``out`` as in
    ``linear_backward``."""
    x, W, gc = cache
    dW_out, db_out = out if out is not None else (None, None)
    k = _k(be, dy)
    dh, db = k.bias_gelu_backward(dy, gc, db_out)
    dh = k.operand(dh)
    return k.matmul(dh, W.T), k.matmul(x.T, dh, out=dW_out), db


# ----------------------------------------------------------------------------
# GELU


def gelu_forward(x, approximate="gelu_new", *, be=None):
    """GELU, elementwise. "gelu_new": 0.5x(1+tanh(k(x+0.044715x^3))) (GPT-2);
    "gelu": 0.5x(1+erf(x/sqrt2)) (exact). x any shape. Cache: x and tanh/erf term.
    """
    k = _k(be, x)
    if approximate == "gelu_new":
        y, t = k.gelu_tanh_forward(x)
        return y, ("gelu_new", x, t)
    if approximate == "gelu":
        e = k.erf(x * (1.0 / math.sqrt(2.0)))
        y = e + 1.0
        y *= x
        y *= 0.5
        return y, ("gelu", x, e)
    raise ValueError(f"unknown activation {approximate!r}: expected one of {ACTIVATIONS}")


def gelu_backward(dy, cache, *, be=None):
    """dy -> dx, same shape."""
    kind, x, t = cache
    be = be if be is not None else backend_of(dy)
    if kind == "gelu_new":
        return be.kernels.gelu_tanh_backward(x, t, dy)
    # exact: d/dx = 0.5(1+erf(x/sqrt2)) + x * pdf(x)
    pdf = be.xp.exp(-0.5 * x * x)
    pdf *= x * (1.0 / math.sqrt(2.0 * math.pi))
    pdf += 0.5 * (1.0 + t)
    pdf *= dy
    return pdf


# ----------------------------------------------------------------------------
# softmax over the last axis (in place)


def softmax_inplace(a, *, be=None):
    """a (..., n) -> softmax(a) over the last axis, written into a. -inf -> 0."""
    return _k(be, a).softmax_inplace(a)


def _softmax_here(a):
    """Softmax over the last axis, in place, in one pass per step (on NumPy: on this thread)."""
    a -= a.max(axis=-1, keepdims=True)
    xp_of(a).exp(a, out=a)
    a *= 1.0 / a.sum(axis=-1, keepdims=True)


def softmax_backward_inplace(datt, att, *, be=None):
    """datt := att * (datt - sum(datt * att, -1)): the softmax Jacobian-vector product."""
    return _k(be, att).softmax_backward_inplace(datt, att)


def _softmax_backward_generic(datt, att):
    s = (datt * att).sum(axis=-1, keepdims=True)
    datt -= s
    datt *= att
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


def bmm(a, b, out=None, *, be=None):
    """Batched matmul over the leading axes: a (..., m, k) @ b (..., k, n).

    On NumPy one sgemm per 2-D slice spread over the cores (engine.cpu.bmm);
    CuPy's matmul batches natively."""
    return _k(be, a).bmm(a, b, out=out)


_ROW_BLOCK = 512  # rows of a row-wise pass done together (LayerNorm): fixed, so the bits do not follow the core count


def _row_edges(n):
    return [(r, min(n, r + _ROW_BLOCK)) for r in range(0, n, _ROW_BLOCK)]


def _row_blocks(fn, n):
    """fn(slice) over the fixed row blocks of an n-row array, spread over the cores."""
    edges = _row_edges(n)
    cpu.parallel_slices(lambda i: fn(slice(*edges[i])), len(edges))


_causal_masks: dict = {}


_CAUSAL_BLOCK = 64  # rows per block of a causal attention's products: below, the blocks past the diagonal are skipped


def _causal_blocks(T):
    """[start, stop) blocks of a causal T x T attention's keys or queries."""
    return [(r0, min(T, r0 + _CAUSAL_BLOCK)) for r0 in range(0, T, _CAUSAL_BLOCK)]


def _causal_mask_t(T, H, dtype):
    """The additive causal mask in ``attend_causal``'s transposed layout,
    (key, head*query): -inf where key > query. Cached per shape."""
    key = (T, H, np.dtype(dtype))
    m = _causal_masks.get(key)
    if m is None:
        kq = np.where(np.arange(T)[:, None] > np.arange(T)[None, :], -np.inf, 0.0).astype(dtype)
        m = _causal_masks[key] = np.ascontiguousarray(np.broadcast_to(kq[:, None, :], (T, H, T))).reshape(T, H * T)
    return m


_BATCH_CHUNK_BYTES = 1 << 21  # a task's scores: a few batch rows (fewer, longer NumPy calls)


def _parallel_batch(fn, B, row_bytes):
    """fn(slice) over chunks of the batch rows, each chunk's ``row_bytes`` per row
    within _BATCH_CHUNK_BYTES, and a few chunks per core (so a core slowed by
    another process hands its share to the others)."""
    per = max(1, min(-(-B // (2 * cpu.workers())), _BATCH_CHUNK_BYTES // max(1, row_bytes)))
    starts = range(0, B, per)
    cpu.parallel_slices(lambda i: fn(slice(starts[i], min(B, starts[i] + per))), len(starts))


def _attend_stacked(q, k, v, bias, att, yh, mm, softmax):
    """The whole (B,H) stack at once: scores, scale, mask, softmax, att @ v."""
    mm(q, k.transpose(0, 1, 3, 2), out=att)
    att *= 1.0 / math.sqrt(q.shape[-1])
    att += bias
    softmax(att)
    mm(att, v, out=yh)


def _attend(q, k, v, bias, att, yh, *, be=None):
    """att := softmax(q.k^T / sqrt(hs) + bias); yh := att @ v.

    q (B,H,t,hs), k, v (B,H,S,hs), bias (B|1, 1|H, t, S), att (B,H,t,S) and
    yh (B,H,t,hs) are written (yh usually a head-merged view)."""
    _k(be, q).attend(q, k, v, bias, att, yh)


def attention_kv_forward(q, k, v, bias, *, be=None):
    """Inference attention of t new queries over S cached keys (no cache kept).

    q (B,H,t,hs), k, v (B,H,S,hs), bias (B|1, 1|H, t, S) -> y (B*t, H*hs)."""
    be = be if be is not None else backend_of(q)
    B, H, t, hs = q.shape
    y = be.xp.empty((B, t, H, hs), dtype=q.dtype)
    att = be.xp.empty((B, H, t, k.shape[2]), dtype=q.dtype)
    be.kernels.attend(q, k, v, bias, att, y.transpose(0, 2, 1, 3))
    return y.reshape(B * t, H * hs)


def attention_forward(qkv, n_head, B, T, bias=None, *, be=None):
    """Causal self-attention with a fused QKV input.

    qkv (B*T, 3C) -> y (B*T, C). Scores are q.k / sqrt(hs), causally masked
    (or with ``bias`` (B|1, 1|H, T, T), an additive mask), softmax over keys.
    Cache: q, k, v (B,H,T,hs) views into qkv, att (B,H,T,T) probabilities;
    for the plain causal mask on a kernel set with ``attend_causal`` (NumPy),
    that kernel set's layout instead: q scaled by 1/sqrt(hs), att (B,T,H,T).
    """
    be = be if be is not None else backend_of(qkv)
    xp = be.xp
    C = qkv.shape[-1] // 3
    hs = C // n_head
    q = _split_heads(qkv[:, :C], B, T, n_head)
    k = _split_heads(qkv[:, C:2 * C], B, T, n_head)
    v = _split_heads(qkv[:, 2 * C:], B, T, n_head)
    y = xp.empty((B, T, n_head, hs), dtype=qkv.dtype)
    if bias is None and hasattr(be.kernels, "attend_causal"):
        # the kernel set's own causal layout (NumPy: scores transposed, q pre-scaled)
        att = xp.empty((B, T, n_head, T), dtype=qkv.dtype)
        qs = be.kernels.attend_causal(q, k, v, att, y.transpose(0, 2, 1, 3))
        return y.reshape(B * T, C), (qs, k, v, att, n_head, B, T, True)
    if bias is None:
        bias = causal_bias(xp, T, T, qkv.dtype)[None, None]
    att = xp.empty((B, n_head, T, T), dtype=qkv.dtype)
    be.kernels.attend(q, k, v, bias, att, y.transpose(0, 2, 1, 3))
    return y.reshape(B * T, C), (q, k, v, att, n_head, B, T, False)


def attention_backward(dy, cache, *, be=None):
    """dy (B*T, C) -> dqkv (B*T, 3C)."""
    q, k, v, att, n_head, B, T, causal = cache
    be = be if be is not None else backend_of(dy)
    C = dy.shape[-1]
    hs = C // n_head
    dyh = _split_heads(dy, B, T, n_head)  # (B,H,T,hs)
    dqkv = be.xp.empty((B, T, 3, n_head, hs), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (B,H,T,hs) views
    if causal:
        be.kernels.attend_causal_backward(q, k, v, att, dyh, dq, dk, dv)
    else:
        be.kernels.attend_backward(q, k, v, att, dyh, dq, dk, dv, 1.0 / math.sqrt(hs))
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


def lm_head_forward(h, wte, *, be=None):
    """h (N, C), wte (V, C) -> logits (N, V). Cache: h, wte (None when int8)."""
    if getattr(wte, "is_quantized", False):
        return wte.matmul(h), None
    return matmul(h, wte.T, be=be), (h, wte)


def lm_head_backward(dlogits, cache, *, be=None):
    """dlogits (N, V) -> (dh (N, C), dwte (V, C)): the head's share of the tied
    embedding's gradient (the embedding lookup adds its own)."""
    h, wte = cache
    return matmul(dlogits, wte, be=be), matmul(dlogits.T, h, be=be)


# ----------------------------------------------------------------------------
# cross-entropy, mean over targets != ignore_index


def cross_entropy_forward(logits, targets, ignore_index=-1, inplace=False, *, be=None):
    """Mean negative log-likelihood of ``targets`` under softmax(logits).

    logits (..., V) float, targets (...) int; entries equal to ignore_index
    are skipped (they contribute neither loss nor gradient). With no target
    left the loss is 0.0 and the gradient zero. ``inplace=True`` reuses the
    logits buffer for the probabilities (the fused, memory-lean path).
    Returns (loss: float, cache).
    """
    be = be if be is not None else backend_of(logits)
    xp = be.xp
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
    tsafe = xp.where(valid, t, 0)
    p = x if inplace else x.copy()
    picked, s = be.kernels.ce_exp_rows(p, tsafe)
    nll = xp.log(s) - picked
    loss = float((nll * valid).sum() / n) if n else 0.0
    return loss, (p, s, tsafe, valid, n, shape)


def _ce_exp_rows_generic(xp, p, tsafe):
    m = p.max(axis=1)
    picked = p[xp.arange(p.shape[0]), tsafe] - m  # target logit minus max, before p is overwritten
    p -= m[:, None]
    xp.exp(p, out=p)
    return picked, p.sum(axis=1)


def cross_entropy_backward(cache, dloss=1.0, *, be=None):
    """-> dlogits, the shape of the logits (written into the cache's buffer)."""
    p, s, tsafe, valid, n, shape = cache
    be = be if be is not None else backend_of(p)
    scale = (dloss / n) if n else 0.0
    w = (valid * scale / s).astype(p.dtype)  # softmax normaliser and mean, per row
    be.kernels.scale_rows(p, w)
    rows = be.xp.arange(p.shape[0])
    p[rows, tsafe] -= (valid * scale).astype(p.dtype)
    return p.reshape(shape)


def lm_head_cross_entropy(h, wte, targets, ignore_index=-1, dwte=None, *, be=None):
    """The tied LM head and mean cross-entropy, forward and backward together:
    h (N, C), wte (V, C), targets (N,) ints -> (loss, dh (N, C), dwte (V, C), the
    head's share of the embedding gradient).

    NumPy: the (N, V) logits buffer becomes probabilities and then dlogits in
    place (one vocabulary-sized array alive), the loss a float. CUDA:
    ``fused.lm_head_cross_entropy``, chunked over rows with one fused
    softmax/cross-entropy launch per chunk (the logits never exist whole), the
    loss a 0-d device array. ``dwte``: a (V, C) buffer the head's gradient is added
    into (a zeroed view of a flat gradient buffer), returned as dwte."""
    return _k(be, h).lm_head_cross_entropy(h, wte, targets, ignore_index, dwte)


# ----------------------------------------------------------------------------
# the NumPy kernel set


class NumpyKernels:
    """The CPU's kernels: the reference maths every CUDA kernel is tested against,
    cut into blocks for the cores (engine.cpu); ``launch`` runs a fused kernel's
    NumPy twin (engine.fused.KERNEL_TWINS) with the CUDA launch's arguments."""

    def __init__(self, be):
        self.be = be

    def launch(self, name, grid, block, args, shared_mem):
        from gptlite.engine import fused

        fused.KERNEL_TWINS[name[3:].rsplit("_", 1)[0]](grid, block, args)

    null = None  # an absent optional array argument of a kernel twin

    @staticmethod
    def sumsq(g):
        return np.dot(g, g).reshape(())

    matmul = staticmethod(cpu.matmul)

    @staticmethod
    def operand(a):  # the CPU keeps operands as they are (no mixed precision)
        return a

    @staticmethod
    def matmul_add(a, b, out):
        out += cpu.matmul(a, b)
        return out
    bmm = staticmethod(cpu.bmm)

    @staticmethod
    def scatter_add_rows(index, values, out):
        # Sort-and-reduce: one pass of contiguous row sums instead of np.add.at's
        # per-element updates; deterministic (fixed summation order) too. The
        # reduced rows have unique ids, so a fancy-index += is exact.
        order = np.argsort(index, kind="stable")
        sidx = index[order]
        starts = np.flatnonzero(np.r_[True, sidx[1:] != sidx[:-1]])
        out[sidx[starts]] += np.add.reduceat(values[order], starts, axis=0)
        return out

    # LayerNorm in fixed blocks of rows spread over the cores (at the default
    # model's size it was the largest op left on one core). The block edges
    # depend on N alone, and the backward's column sums add the blocks' partial
    # sums in block order, so the bits are the same whatever the thread count.

    @staticmethod
    def layernorm_forward(x, w, b, eps, x_add=None, x_bias=None, s_out=None, to_matmul=False):
        """``x_add``/``x_bias``: LayerNorm of s = x + (x_add + x_bias) (x_add
        gets the bias added in place), s written to ``s_out`` (may be x)."""
        C = x.shape[-1]
        x2 = x.reshape(-1, C)
        n = x2.shape[0]
        xhat, y = np.empty((n, C), dtype=x.dtype), np.empty((n, C), dtype=x.dtype)
        rstd = np.empty((n, 1), dtype=x.dtype)
        if x_add is not None:
            a2, s2 = x_add.reshape(-1, C), s_out.reshape(-1, C)

        def block(r):
            xr, xh, rs = x2[r], xhat[r], rstd[r]
            if x_add is not None:
                if x_bias is not None:
                    a2[r] += x_bias
                xr = np.add(xr, a2[r], out=s2[r])
            mean = np.add.reduce(xr, axis=1, keepdims=True)
            mean /= C
            np.subtract(xr, mean, out=xh)
            np.einsum("ij,ij->i", xh, xh, out=rs[:, 0])  # one fused pass
            rs /= C
            rs += eps
            np.sqrt(rs, out=rs)
            np.reciprocal(rs, out=rs)
            xh *= rs
            yr = np.multiply(xh, w, out=y[r])
            yr += b

        _row_blocks(block, n)
        return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)

    fuses_branch_bias = False  # linear_branch_forward adds its bias itself

    def residual_layernorm_forward(self, x, fx, w, b, eps, inplace, fx_bias=None, to_matmul=False):
        if not (x.flags.c_contiguous and fx.flags.c_contiguous):
            if fx_bias is not None:
                fx += fx_bias
            s, _ = residual_forward(x, fx, inplace)
            y, cache = self.layernorm_forward(s, w, b, eps)
            return s, y, cache
        s = x if inplace else np.empty_like(x)
        y, cache = self.layernorm_forward(x, w, b, eps, x_add=fx, x_bias=fx_bias, s_out=s)
        return s, y, cache

    @staticmethod
    def layernorm_backward(dy, cache, dresidual=None, out=None):
        xhat, rstd, w = cache
        C = dy.shape[-1]
        d2, xh2, rs2 = dy.reshape(-1, C), xhat.reshape(-1, C), rstd.reshape(-1, 1)
        n = d2.shape[0]
        dx = np.empty((n, C), dtype=dy.dtype)
        dr2 = dresidual.reshape(-1, C) if dresidual is not None else None
        edges = _row_edges(n)
        dws, dbs = [None] * len(edges), [None] * len(edges)

        def block(i):
            r = slice(*edges[i])
            g, xh, rs, d = d2[r], xh2[r], rs2[r], dx[r]
            dbs[i] = np.add.reduce(g, axis=0)
            np.multiply(g, xh, out=d)  # first the product for dw, then dxhat in the same buffer
            dws[i] = np.add.reduce(d, axis=0)
            np.multiply(g, w, out=d)
            # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            m1 = np.add.reduce(d, axis=1, keepdims=True)
            m1 /= C
            m2 = np.einsum("ij,ij->i", d, xh)[:, None]  # one fused pass, no temporary
            m2 /= C
            d -= m1
            d -= np.multiply(xh, m2)
            d *= rs
            if dr2 is not None:
                d += dr2[r]

        cpu.parallel_slices(block, len(edges))
        dw, db = dws[0], dbs[0]
        for i in range(1, len(edges)):  # in block order
            dw += dws[i]
            db += dbs[i]
        if out is not None:
            out[0][...], out[1][...] = dw, db
            dw, db = out
        return dx.reshape(dy.shape), dw, db

    @staticmethod
    def erf(x):
        try:  # SciPy is optional: a vectorised erf when present
            from scipy.special import erf

            return erf(x).astype(x.dtype, copy=False)
        except ImportError:
            return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)

    @staticmethod
    def gelu_tanh_forward(x):
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
        return y, t

    @staticmethod
    def gelu_tanh_backward(x, t, dy):
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

    def bias_gelu_forward(self, h, b, approximate, to_matmul=False):  # to_matmul: the CPU has one form
        if b is not None:
            h += b
        return gelu_forward(h, approximate, be=self.be)

    def bias_gelu_backward(self, dy, gcache, dbias=None):
        dh = gelu_backward(dy, gcache, be=self.be)
        return dh, dh.sum(axis=0, out=dbias)

    @staticmethod
    def softmax_inplace(a):
        if a.flags.c_contiguous:
            a2 = a.reshape(-1, a.shape[-1])  # a view
            parallel_rows(lambda r: _softmax_here(a2[r]), a2.shape[0])
        else:  # not reshapeable as a view: one pass on the whole array
            _softmax_here(a)
        return a

    @staticmethod
    def softmax_backward_inplace(datt, att):
        if not (datt.flags.c_contiguous and att.flags.c_contiguous):
            return _softmax_backward_generic(datt, att)
        d2, a2 = datt.reshape(-1, datt.shape[-1]), att.reshape(-1, att.shape[-1])

        def block(r):
            d = d2[r]
            d -= np.einsum("ij,ij->i", d, a2[r])[:, None]
            d *= a2[r]

        parallel_rows(block, d2.shape[0])
        return datt

    @staticmethod
    def attend(q, k, v, bias, att, yh):
        if q.shape[2] <= 16:  # decoding's tiny products are cheaper here than handed to the pool
            return _attend_stacked(q, k, v, bias, att, yh, np.matmul, _softmax_here)
        scale = 1.0 / math.sqrt(q.shape[-1])

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

        _parallel_heads(heads, q.shape[0], q.shape[1], q.shape[2] * k.shape[2])

    # Causal training attention. The scores of a batch row are kept transposed,
    # att[b] as (key, head, query): the softmax statistics of every (head, query)
    # then lie along the contiguous last axis, so each softmax pass is a few long
    # NumPy loops instead of one short loop per query row (at T=128 that per-row
    # overhead was most of the softmax's time). The scale 1/sqrt(hs) is applied
    # to q once, before the scores, rather than to every score.

    @staticmethod
    def attend_causal(q, k, v, att, yh):
        """Causal ``attend``: q, k, v (B,H,T,hs); ``att`` (B,T,H,T) is written
        with the probabilities transposed (key, head, query); yh (B,H,T,hs).
        Returns the cache the backward needs (q scaled by 1/sqrt(hs))."""
        B, H, T, hs = q.shape
        blocks = _causal_blocks(T)
        qs = np.empty((B, T, H, hs), dtype=q.dtype).transpose(0, 2, 1, 3)  # rows of (H*hs): one long loop to scale
        mask = _causal_mask_t(T, H, q.dtype)
        scale = q.dtype.type(1.0 / math.sqrt(hs))

        def rows(sl):
            np.multiply(q[sl].transpose(0, 2, 1, 3), scale, out=qs[sl].transpose(0, 2, 1, 3))
            a = att[sl]
            a3 = a.reshape(a.shape[0], T, H * T)
            for b in range(sl.start, sl.stop):
                at = att[b].transpose(1, 0, 2)  # (H, key, query)
                for c0, c1 in blocks:  # key block: the queries at or after it
                    np.matmul(k[b, :, c0:c1], qs[b, :, c0:].transpose(0, 2, 1), out=at[:, c0:c1, c0:])
                    att[b, c0:c1, :, :c0] = -np.inf
            a3 += mask
            m = a3.max(axis=1, keepdims=True)
            a3 -= m
            np.exp(a3, out=a3)
            ssum = a3.sum(axis=1, keepdims=True)
            np.reciprocal(ssum, out=ssum)
            a3 *= ssum
            for b in range(sl.start, sl.stop):
                at = att[b].transpose(1, 0, 2)
                for r0, r1 in blocks:  # query block: the keys up to its end
                    np.matmul(at[:, :r1, r0:r1].transpose(0, 2, 1), v[b, :, :r1], out=yh[b, :, r0:r1])

        _parallel_batch(rows, B, att[0].nbytes)
        return qs

    @staticmethod
    def attend_causal_backward(qs, k, v, att, dyh, dq, dk, dv):
        """The backward of ``attend_causal`` (qs: the scaled q it returned)."""
        B, H, T, hs = qs.shape
        blocks = _causal_blocks(T)
        scale = qs.dtype.type(1.0 / math.sqrt(hs))

        def rows(sl):
            n = sl.stop - sl.start
            da = np.empty((n, T, H, T), dtype=qs.dtype)  # dL/d(scores), transposed like att
            d3, a3 = da.reshape(n, T, H * T), att[sl].reshape(n, T, H * T)
            for i, b in enumerate(range(sl.start, sl.stop)):
                at, dt = att[b].transpose(1, 0, 2), da[i].transpose(1, 0, 2)  # (H, key, query)
                for c0, c1 in blocks:
                    np.matmul(at[:, c0:c1, c0:], dyh[b, :, c0:], out=dv[b, :, c0:c1])
                    np.matmul(v[b, :, c0:c1], dyh[b, :, c0:].transpose(0, 2, 1), out=dt[:, c0:c1, c0:])
                    da[i, c0:c1, :, :c0] = 0  # masked: att is 0 there, and so is this
            t = d3 * a3
            d3 -= t.sum(axis=1, keepdims=True)  # the softmax Jacobian-vector product
            d3 *= a3
            for i, b in enumerate(range(sl.start, sl.stop)):
                dt = da[i].transpose(1, 0, 2)
                for r0, r1 in blocks:
                    np.matmul(dt[:, :r1, r0:r1].transpose(0, 2, 1), k[b, :, :r1], out=dq[b, :, r0:r1])
                for c0, c1 in blocks:
                    np.matmul(dt[:, c0:c1, c0:], qs[b, :, c0:], out=dk[b, :, c0:c1])
            dqs = dq[sl].transpose(0, 2, 1, 3)  # (n,T,H,hs): rows of H*hs in dqkv
            dqs *= scale

        _parallel_batch(rows, B, 2 * att[0].nbytes)

    @staticmethod
    def attend_backward(q, k, v, att, dyh, dq, dk, dv, scale):
        B, H, T = q.shape[:3]

        def heads(b, hsl):  # the forward's tasks in reverse, one scratch block per task
            a, g = att[b, hsl], dyh[b, hsl]
            np.matmul(a.transpose(0, 2, 1), g, out=dv[b, hsl])
            da = g @ v[b, hsl].transpose(0, 2, 1)
            da -= np.einsum("hij,hij->hi", da, a)[..., None]  # softmax Jacobian-vector product
            da *= a
            da *= scale
            np.matmul(da, k[b, hsl], out=dq[b, hsl])
            np.matmul(da.transpose(0, 2, 1), q[b, hsl], out=dk[b, hsl])

        _parallel_heads(heads, B, H, T * T)

    @staticmethod
    def ce_exp_rows(p, tsafe):
        """p := exp(p - rowmax) in place; returns (target logit - rowmax, row sums)."""
        if not p.flags.c_contiguous:
            return _ce_exp_rows_generic(np, p, tsafe)
        # the same passes, fused per row block and spread over the cores
        m, picked, s = (np.empty(p.shape[0], dtype=p.dtype) for _ in range(3))

        def block(r):
            pr = p[r]
            m[r] = pr.max(axis=1)
            picked[r] = pr[np.arange(r.stop - r.start), tsafe[r]] - m[r]
            pr -= m[r, None]
            np.exp(pr, out=pr)
            s[r] = pr.sum(axis=1)

        parallel_rows(block, p.shape[0])
        return picked, s

    def lm_head_cross_entropy(self, h, wte, targets, ignore_index, dwte_out=None):
        be = self.be
        logits, hc = lm_head_forward(h, wte, be=be)
        loss, ce = cross_entropy_forward(logits, np.asarray(targets), ignore_index, inplace=True, be=be)
        del logits
        dh, dwte = lm_head_backward(cross_entropy_backward(ce, be=be), hc, be=be)
        if dwte_out is not None:
            dwte_out += dwte
            dwte = dwte_out
        return loss, dh, dwte

    @staticmethod
    def scale_rows(p, w):
        parallel_rows(lambda r: np.multiply(p[r], w[r, None], out=p[r]), p.shape[0])
