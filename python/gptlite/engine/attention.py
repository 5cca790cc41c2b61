"""Flash attention for the GPU path, and its NumPy twins.

The CUDA C lives in ``engine/cuda/flash_attention.cu`` and is compiled once, on the
first CuPy call, into one ``RawModule``. Training attention never builds the
(B, H, T, T) score matrix: the forward streams key tiles through shared memory with
an online softmax and keeps only the log-sum-exp of each row; the backward
recomputes the scores tile by tile from it (dK/dV in one kernel, dQ in another, so
no atomics and the same bits every run). Decoding has its own kernel: one new query
per (row, head) against the preallocated KV cache, split over the cache's columns
and combined in a second launch; a prompt goes through the training forward, which
also masks left padding.

The model calls ``attention_forward``/``attention_backward`` and ``kv_attention``
(bottom of this file): the flash kernels on the GPU backend, the materialised
scores of ``engine/ops.py`` on the CPU (the reference) and where no kernel fits.

Every kernel ``fa_<base>_<f32|f64|bf16>[_d<DMAX>]`` has a twin in ``KERNEL_TWINS``
that does the same to NumPy buffers, with the same launch arguments and the same
tiling (query tiles of ``BR`` rows, key tiles of ``inner_tile`` rows, tiles above
the diagonal skipped, the same running max/sum updates): the NumPy path of these
functions runs the twins, ``tests/fake_cupy.py`` runs them in place of the real
launches, and the GPU tests compare the two.

bf16 arrays are 16-bit words (``numpy.uint16``) holding the top half of a float32;
the kernels convert on load, accumulate in float32 and round to nearest-even on
store (``to_bf16``/``from_bf16`` do the same on the host).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from gptlite.engine.backend import xp_of

CU_FILE = os.path.join(os.path.dirname(__file__), "cuda", "flash_attention.cu")
BR = 32  # query rows per block (keys per block in the dK/dV kernel): FA_BR in the .cu
TPR = 4  # threads per row, splitting the head dimensions: FA_TPR
THREADS = BR * TPR
DEC_THREADS = 128  # 4 warps, each streaming every 4th key of its split
PRE_THREADS = 256
DMAXES = (32, 64, 128)  # head-size bounds with a compiled instantiation
DEC_MIN_CHUNK = 64  # cache columns per decode split, at least
DEC_TARGET_BLOCKS = 264  # decode blocks to aim for: two per SM of an H100/H200 (132 SMs)
MAX_GRID_Y = 65535

UNTILED = ("bwd_pre", "dec_comb", "kv_append")  # kernels without a head-size bound (no _d<DMAX> instantiations)
_STORAGE = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.uint16): "bf16"}
_ACC = {"f32": np.float32, "f64": np.float64, "bf16": np.float32}

_module = None


# -- bf16 words on the host ----------------------------------------------------------


def to_bf16(a) -> np.ndarray:
    """float32 -> bf16 words (uint16), rounded to nearest-even; NaN stays NaN."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def from_bf16(w) -> np.ndarray:
    """bf16 words (uint16) -> float32, exactly."""
    return (np.asarray(w, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _load(a, sfx):
    a = np.asarray(a)
    return from_bf16(a) if sfx == "bf16" else a.astype(_ACC[sfx], copy=False)


def _store(v, sfx):
    return to_bf16(v) if sfx == "bf16" else v


# -- launch bookkeeping ----------------------------------------------------------------


def inner_tile(sfx: str, dmax: int) -> int:
    """Rows of the streamed tile (Tile<A, DMAX>::BC in the .cu): two tiles of
    BC x DMAX accumulators fit the 48 KB of static shared memory."""
    return 16 if np.dtype(_ACC[sfx]).itemsize == 8 and dmax == 128 else 32


def _parse(name: str):
    """'fa_fwd_f32_d64' -> ('fwd', 'f32', 64); 'fa_bwd_pre_bf16' -> ('bwd_pre', 'bf16', None)."""
    if not name.startswith("fa_"):
        raise KeyError(f"{name} is not a flash-attention kernel")
    parts = name[3:].split("_")
    dmax = None
    if parts[-1].startswith("d") and parts[-1][1:].isdigit():
        dmax = int(parts.pop()[1:])
    sfx = parts.pop()
    base = "_".join(parts)
    if base not in KERNEL_TWINS or sfx not in _ACC or (dmax is None) != (base in UNTILED) \
            or (dmax is not None and dmax not in DMAXES):
        raise KeyError(f"unknown flash-attention kernel {name!r}")
    return base, sfx, dmax


def check_launch(name: str, grid, block) -> None:
    """Raise if a launch does not match what kernel ``name`` is written for (used by
    every launch on CuPy and by the stand-in)."""
    base, _, _ = _parse(name)
    want = {"fwd": THREADS, "bwd_dkdv": THREADS, "bwd_dq": THREADS, "dec_part": DEC_THREADS}.get(base)
    b = tuple(block)
    if want is not None and b != (want,):
        raise ValueError(f"{name}: block {b}, the kernel is written for ({want},)")
    if want is None and (len(b) != 1 or not 1 <= b[0] <= 1024):
        raise ValueError(f"{name}: block {b} is not 1-D with 1..1024 threads")
    g = tuple(grid) + (1,) * (2 - len(grid))
    if not (1 <= g[0] < 2 ** 31 and 1 <= g[1] <= MAX_GRID_Y):
        raise ValueError(f"{name}: grid {tuple(grid)} out of range")


def module():
    """The compiled RawModule (once per process)."""
    global _module
    if _module is None:
        from gptlite.engine.kernels import compile_file

        _module = compile_file(CU_FILE)
    return _module


def run_twin(name, grid, block, args):
    base, sfx, dmax = _parse(name)
    KERNEL_TWINS[base](sfx, dmax, tuple(grid), tuple(block), args)


def _launch(xp, name, grid, block, args):
    check_launch(name, grid, block)
    if xp is np:
        run_twin(name, grid, block, args)
    else:
        module().get_function(name)(grid, block, args)


# -- the kernels' NumPy twins ------------------------------------------------------------


def _split_qkv(qkv, sfx, B, T, H, D):
    a = _load(qkv, sfx).reshape(B, T, 3, H, D)
    q, k, v = (a[:, :, i].transpose(0, 2, 1, 3).reshape(B * H, T, D) for i in range(3))
    return q, k, v


def _heads(x, sfx, B, T, H, D):
    return _load(x, sfx).reshape(B, T, H, D).transpose(0, 2, 1, 3).reshape(B * H, T, D)


def _put_heads(out, vals, sfx, B, T, H, D, col=None):
    """vals (B*H, T, D) into out (B*T, C) — or into part ``col`` of (B*T, 3C)."""
    o = np.asarray(out)
    v = vals.reshape(B, H, T, D).transpose(0, 2, 1, 3)
    if col is None:
        o.reshape(B, T, H, D)[...] = _store(v, sfx)
    else:
        o.reshape(B, T, 3, H, D)[:, :, col] = _store(v, sfx)


def _tw_fwd(sfx, dmax, grid, block, args):
    qkv, y, lse, pad, T, H, D, scale = args
    T, H, D = int(T), int(H), int(D)
    A = _ACC[sfx]
    B = grid[1] // H
    BC = inner_tile(sfx, dmax)
    q, k, v = _split_qkv(qkv, sfx, B, T, H, D)
    q = q * A(scale)
    out = np.empty_like(q)
    lse2 = np.asarray(lse).reshape(B * H, T)
    p0 = np.zeros(B, dtype=np.int64) if pad is None else np.asarray(pad).astype(np.int64)
    p0 = np.repeat(p0, H)[:, None, None]  # (B*H, 1, 1): row bh is batch bh // H
    for r0 in range(0, T, BR):
        r1 = min(T, r0 + BR)
        qt, rows = q[:, r0:r1], np.arange(r0, r1)[None, :, None]
        m = np.full((B * H, r1 - r0), -np.inf, dtype=A)
        l = np.zeros_like(m)
        o = np.zeros_like(qt)
        for k0 in range(0, min(T, r0 + BR), BC):
            k1 = min(T, k0 + BC)
            keys = np.arange(k0, k1)[None, None, :]
            s = qt @ k[:, k0:k1].transpose(0, 2, 1)
            s = np.where((keys <= rows) & ((keys >= p0) | (keys == rows)), s, A(-np.inf))
            mt = np.maximum(m, s.max(axis=-1))
            live = mt > -np.inf  # the kernel skips a tile with no visible key for the row
            with np.errstate(invalid="ignore"):
                alpha = np.exp(m - mt)
                p = np.exp(s - mt[..., None])
            p = np.where(live[..., None], p, A(0))
            l = np.where(live, l * alpha + p.sum(axis=-1), l)
            o = np.where(live[..., None], o * alpha[..., None] + p @ v[:, k0:k1], o)
            m = mt
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN inputs (a poisoned step) give NaN, as on the GPU
            out[:, r0:r1] = o / l[..., None]
            lse2[:, r0:r1] = m + np.log(l)
    _put_heads(y, out, sfx, B, T, H, D)


def _tw_bwd_pre(sfx, dmax, grid, block, args):
    dy, y, dsum, B, T, H, D = args
    B, T, H, D = int(B), int(T), int(H), int(D)
    s = (_heads(dy, sfx, B, T, H, D) * _heads(y, sfx, B, T, H, D)).sum(axis=-1)
    np.asarray(dsum).reshape(B * H, T)[...] = s


def _bwd_inputs(sfx, dmax, grid, args):
    """What both backward twins read: sizes, the accumulation type, the inner tile,
    q (pre-scaled), k, v and dy by head, and the forward's LSE and dsum rows."""
    qkv, dy, lse, dsum, dqkv, T, H, D, scale = args
    T, H, D = int(T), int(H), int(D)
    A = _ACC[sfx]
    B = grid[1] // H
    q, k, v = _split_qkv(qkv, sfx, B, T, H, D)
    q = q * A(scale)
    g = _heads(dy, sfx, B, T, H, D)
    L = np.asarray(lse).reshape(B * H, T)
    Ds = np.asarray(dsum).reshape(B * H, T)
    return dqkv, B, T, H, D, A, inner_tile(sfx, dmax), q, k, v, g, L, Ds, scale


def _tw_bwd_dkdv(sfx, dmax, grid, block, args):
    dqkv, B, T, H, D, A, BQ, q, k, v, g, L, Ds, _ = _bwd_inputs(sfx, dmax, grid, args)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for c0 in range(0, T, BR):
        c1 = min(T, c0 + BR)
        kt, vt, keys = k[:, c0:c1], v[:, c0:c1], np.arange(c0, c1)
        dkt, dvt = np.zeros_like(kt), np.zeros_like(vt)
        for q0 in range((c0 // BQ) * BQ, T, BQ):
            q1 = min(T, q0 + BQ)
            qt, gt = q[:, q0:q1], g[:, q0:q1]
            s = qt @ kt.transpose(0, 2, 1)
            s = np.where(keys[None, None, :] <= np.arange(q0, q1)[None, :, None], s, A(-np.inf))
            p = np.exp(s - L[:, q0:q1, None])
            ds = p * (gt @ vt.transpose(0, 2, 1) - Ds[:, q0:q1, None])
            dvt += p.transpose(0, 2, 1) @ gt
            dkt += ds.transpose(0, 2, 1) @ qt
        dk[:, c0:c1], dv[:, c0:c1] = dkt, dvt
    _put_heads(dqkv, dk, sfx, B, T, H, D, col=1)
    _put_heads(dqkv, dv, sfx, B, T, H, D, col=2)


def _tw_bwd_dq(sfx, dmax, grid, block, args):
    dqkv, B, T, H, D, A, BC, q, k, v, g, L, Ds, scale = _bwd_inputs(sfx, dmax, grid, args)
    dq = np.zeros_like(q)
    for r0 in range(0, T, BR):
        r1 = min(T, r0 + BR)
        qt, gt, rows = q[:, r0:r1], g[:, r0:r1], np.arange(r0, r1)
        acc = np.zeros_like(qt)
        for k0 in range(0, min(T, r0 + BR), BC):
            k1 = min(T, k0 + BC)
            kt = k[:, k0:k1]
            s = qt @ kt.transpose(0, 2, 1)
            s = np.where(np.arange(k0, k1)[None, None, :] <= rows[None, :, None], s, A(-np.inf))
            p = np.exp(s - L[:, r0:r1, None])
            ds = p * (gt @ v[:, k0:k1].transpose(0, 2, 1) - Ds[:, r0:r1, None])
            acc += ds @ kt
        dq[:, r0:r1] = acc * A(scale)
    _put_heads(dqkv, dq, sfx, B, T, H, D, col=0)


def _tw_dec_part(sfx, dmax, grid, block, args):
    q, q_stride, kc, vc, pad, part_o, part_ml, H, D, L, S, chunk, scale, slen = args
    if slen is not None:  # the graph's step: the filled length read from the device
        S = np.asarray(slen).reshape(-1)[0]
    H, D, L, S, chunk, qs = int(H), int(D), int(L), int(S), int(chunk), int(q_stride)
    A = _ACC[sfx]
    BH, nsplit = grid[0], grid[1]
    B = BH // H
    qv = _load(np.asarray(q).reshape(-1)[:B * qs], sfx).reshape(B, qs)[:, :H * D].reshape(B, H, D) * A(scale)
    k = _load(kc, sfx).reshape(B, H, L, D)
    v = _load(vc, sfx).reshape(B, H, L, D)
    p0 = np.zeros(B, dtype=np.int64) if pad is None else np.asarray(pad).astype(np.int64)
    po = np.asarray(part_o).reshape(B, H, nsplit, D)
    pml = np.asarray(part_ml).reshape(B, H, nsplit, 2)
    for sp in range(nsplit):
        j0, j1 = sp * chunk, min(S, sp * chunk + chunk)
        keys = np.arange(j0, j1)
        vis = (keys[None, :] >= p0[:, None]) | (keys[None, :] == S - 1)  # (B, n)
        s = np.einsum("bhd,bhjd->bhj", qv, k[:, :, j0:j1])
        s = np.where(vis[:, None, :], s, A(-np.inf))
        any_vis = vis.any(axis=1)[:, None]  # (B, 1)
        M = np.where(any_vis, s.max(axis=-1, initial=-np.inf), A(-np.inf))
        with np.errstate(invalid="ignore"):
            p = np.where(any_vis[..., None], np.exp(s - M[..., None]), A(0))
        pml[:, :, sp, 0] = M
        pml[:, :, sp, 1] = p.sum(axis=-1)
        po[:, :, sp] = np.einsum("bhj,bhjd->bhd", p, v[:, :, j0:j1])


def _tw_dec_comb(sfx, dmax, grid, block, args):
    part_o, part_ml, y, H, D, nsplit = args
    H, D, nsplit = int(H), int(D), int(nsplit)
    A = _ACC[sfx]
    B = grid[0] // H
    po = np.asarray(part_o).reshape(B, H, nsplit, D)
    pml = np.asarray(part_ml).reshape(B, H, nsplit, 2)
    m, l = pml[..., 0], pml[..., 1]
    ok = l > 0
    M = np.where(ok, m, A(-np.inf)).max(axis=-1, keepdims=True)
    w = np.where(ok, np.exp(np.where(ok, m, M) - M), A(0))
    out = (po * w[..., None]).sum(axis=2) / (l * w).sum(axis=-1)[..., None]
    np.asarray(y).reshape(B, H, D)[...] = _store(out, sfx)


def _tw_kv_append(sfx, dmax, grid, block, args):
    qkv, q_stride, kc, vc, col, H, D, L = args
    H, D, L, qs = int(H), int(D), int(L), int(q_stride)
    B = grid[0] // H
    c = int(np.asarray(col).reshape(-1)[0])
    q = np.asarray(qkv).reshape(-1)[:B * qs].reshape(B, qs)
    C = H * D
    np.asarray(kc).reshape(B, H, L, D)[:, :, c] = q[:, C:2 * C].reshape(B, H, D)
    np.asarray(vc).reshape(B, H, L, D)[:, :, c] = q[:, 2 * C:3 * C].reshape(B, H, D)


KERNEL_TWINS = {"kv_append": _tw_kv_append, "fwd": _tw_fwd, "bwd_pre": _tw_bwd_pre, "bwd_dkdv": _tw_bwd_dkdv, "bwd_dq": _tw_bwd_dq,
                "dec_part": _tw_dec_part, "dec_comb": _tw_dec_comb}


# -- the public functions ---------------------------------------------------------------


def dmax_for(head_size: int):
    """The smallest compiled head-size bound >= head_size, or None (no kernel)."""
    return next((d for d in DMAXES if head_size <= d), None)


def supported(dtype, head_size: int) -> bool:
    """Whether flash attention has a kernel for this storage dtype and head size."""
    return np.dtype(dtype) in _STORAGE and dmax_for(head_size) is not None


def _acc_scalar(sfx, v):
    return _ACC[sfx](v)


def _check_qkv(qkv, n_head, B, T, what="qkv"):
    if qkv.ndim != 2 or qkv.shape[0] != B * T or qkv.shape[1] % 3 or (qkv.shape[1] // 3) % n_head:
        raise ValueError(f"flash attention: {what} has shape {tuple(qkv.shape)}, expected (B*T={B * T}, 3*C) "
                         f"with C divisible by n_head={n_head}")
    if np.dtype(qkv.dtype) not in _STORAGE:
        raise TypeError(f"flash attention: {what} dtype {qkv.dtype} is not float32, float64 or bf16 words (uint16)")
    if not qkv.flags.c_contiguous:
        raise ValueError(f"flash attention: {what} must be C-contiguous, got strides {qkv.strides}")
    D = qkv.shape[1] // 3 // n_head
    if dmax_for(D) is None:
        raise ValueError(f"flash attention: head size {D} exceeds the largest compiled bound {DMAXES[-1]}")
    return D


@dataclass
class FlashCache:
    """What the flash backward needs: the fused qkv, the output and the per-row
    log-sum-exp (B*H, T) — O(T) per row instead of the (B, H, T, T) probabilities."""
    qkv: object
    y: object
    lse: object
    n_head: int
    B: int
    T: int


def flash_attention_forward(qkv, n_head, B, T, pad=None):
    """Causal self-attention of a fused qkv (B*T, 3C) -> (y (B*T, C), FlashCache).

    pad (B,) int or None: row b's first pad[b] positions are left padding, hidden
    from every other query (a padding query sees only itself), as a KV-cache prompt
    needs; the backward assumes no padding."""
    xp = xp_of(qkv)
    D = _check_qkv(qkv, n_head, B, T)
    sfx = _STORAGE[np.dtype(qkv.dtype)]
    C = n_head * D
    if B * n_head > MAX_GRID_Y:
        raise ValueError(f"flash attention: batch {B} x {n_head} heads exceeds {MAX_GRID_Y} blocks per grid column")
    y = xp.empty((B * T, C), dtype=qkv.dtype)
    lse = xp.empty((B * n_head, T), dtype=_ACC[sfx])
    _launch(xp, f"fa_fwd_{sfx}_d{dmax_for(D)}", ((T + BR - 1) // BR, B * n_head), (THREADS,),
            (qkv, y, lse, _pad_arg(xp, pad, B), np.int32(T), np.int32(n_head), np.int32(D),
             _acc_scalar(sfx, 1.0 / math.sqrt(D))))
    return y, FlashCache(qkv, y, lse, n_head, B, T)


def _ptr_arg(xp, a):
    """An optional device array as a kernel argument: itself, or a null pointer."""
    if a is None:
        return None if xp is np else np.uint64(0)
    return a


def kv_append(qkv, k_cache, v_cache, col):
    """Write the new token's k and v (from qkv (B, 3C)) into column ``col`` (a (1,)
    int32 device array) of one layer's caches (B, H, L, D), in one launch whose
    arguments do not change with the column (a CUDA graph's decode step)."""
    xp = xp_of(qkv)
    B, H, L, D = k_cache.shape
    if tuple(qkv.shape) != (B, 3 * H * D) or not qkv.flags.c_contiguous:
        raise ValueError(f"kv_append: qkv {tuple(qkv.shape)} is not a C-contiguous (B, 3*H*D) = ({B}, {3 * H * D})")
    if k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype or not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
        raise ValueError("kv_append: the caches must be C-contiguous and of qkv's dtype")
    if col.dtype != np.int32 or tuple(col.shape) != (1,):
        raise TypeError(f"kv_append: col must be a (1,) int32 array (the kernel reads an int), got {col.dtype} {tuple(col.shape)}")
    sfx = _STORAGE[np.dtype(qkv.dtype)]
    _launch(xp, f"fa_kv_append_{sfx}", (B * H,), (max(32, -(-D // 32) * 32),),
            (qkv, np.int64(3 * H * D), k_cache, v_cache, col, np.int32(H), np.int32(D), np.int32(L)))


def _pad_arg(xp, pad, B):
    """pad as the kernels take it: a contiguous (B,) int64 array, or a null pointer
    (None for the twins, an unsigned 0 for CuPy)."""
    if pad is None:
        return None if xp is np else np.uint64(0)
    if tuple(pad.shape) != (B,):
        raise ValueError(f"flash attention: pad has shape {tuple(pad.shape)}, expected ({B},)")
    return xp.ascontiguousarray(pad.astype(np.int64, copy=False))


def flash_attention_backward(dy, cache: FlashCache):
    """dy (B*T, C) -> dqkv (B*T, 3C), the scores recomputed from the saved log-sum-exp."""
    qkv, y, lse, H, B, T = cache.qkv, cache.y, cache.lse, cache.n_head, cache.B, cache.T
    xp = xp_of(dy)
    D = qkv.shape[1] // 3 // H
    if tuple(dy.shape) != tuple(y.shape) or dy.dtype != y.dtype:
        raise ValueError(f"flash attention backward: dy is {tuple(dy.shape)} {dy.dtype}, expected {tuple(y.shape)} {y.dtype}")
    dy = xp.ascontiguousarray(dy)
    sfx = _STORAGE[np.dtype(qkv.dtype)]
    dmax = dmax_for(D)
    scale = _acc_scalar(sfx, 1.0 / math.sqrt(D))
    dsum = xp.empty((B * H, T), dtype=_ACC[sfx])
    n = B * T * H
    _launch(xp, f"fa_bwd_pre_{sfx}", ((n + PRE_THREADS - 1) // PRE_THREADS,), (PRE_THREADS,),
            (dy, y, dsum, np.int32(B), np.int32(T), np.int32(H), np.int32(D)))
    dqkv = xp.empty_like(qkv)
    grid = ((T + BR - 1) // BR, B * H)
    args = (qkv, dy, lse, dsum, dqkv, np.int32(T), np.int32(H), np.int32(D), scale)
    _launch(xp, f"fa_bwd_dkdv_{sfx}_d{dmax}", grid, (THREADS,), args)
    _launch(xp, f"fa_bwd_dq_{sfx}_d{dmax}", grid, (THREADS,), args)
    return dqkv


def decode_splits(S: int, BH: int):
    """(nsplit, chunk): the cache's S columns cut into splits of >= DEC_MIN_CHUNK
    columns, enough of them that B*H*nsplit blocks fill the GPU."""
    want = max(1, -(-DEC_TARGET_BLOCKS // BH))
    chunk = max(DEC_MIN_CHUNK, -(-S // want))
    return -(-S // chunk), chunk


def decode_attention(qkv, k_cache, v_cache, S, pad=None, slen=None):
    """Attention of one new token per row over the KV cache, fused.

    qkv (B, 3C): the new token's projection (its k and v already written to the
    cache at column S-1); k_cache, v_cache (B, H, L, D) with columns [0, S) filled;
    pad (B,) int64 or None: columns < pad[b] are left padding, masked (except the
    query's own column). Returns y (B, C).

    ``slen``: a (1,) int32 device array holding S instead (a CUDA graph's step,
    replayed at every position): the splits then cover the whole cache (L columns)
    and those past S come out empty, so the launch is the same at every token."""
    xp = xp_of(qkv)
    B, H, L, D = k_cache.shape
    C = H * D
    if tuple(qkv.shape) != (B, 3 * C) or tuple(v_cache.shape) != (B, H, L, D):
        raise ValueError(f"decode attention: qkv {tuple(qkv.shape)}, k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)} "
                         f"do not fit (B, 3*H*D) and (B, H, L, D)")
    if slen is not None:
        if slen.dtype != np.int32 or tuple(slen.shape) != (1,):
            raise TypeError(f"decode attention: slen must be a (1,) int32 array (the kernel reads an int), got {slen.dtype} {tuple(slen.shape)}")
        S = L  # the launch covers every column; the kernel reads the filled length
    if not 1 <= S <= L:
        raise ValueError(f"decode attention: {S} filled columns, the cache has {L}")
    if np.dtype(qkv.dtype) not in _STORAGE or k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype:
        raise TypeError(f"decode attention: dtypes {qkv.dtype}, {k_cache.dtype}, {v_cache.dtype}: expected one of float32, "
                        "float64, bf16 words")
    dmax = dmax_for(D)
    if dmax is None:
        raise ValueError(f"decode attention: head size {D} exceeds the largest compiled bound {DMAXES[-1]}")
    sfx = _STORAGE[np.dtype(qkv.dtype)]
    A = _ACC[sfx]
    qkv, k_cache, v_cache = (xp.ascontiguousarray(a) for a in (qkv, k_cache, v_cache))
    nsplit, chunk = decode_splits(int(S), B * H)
    part_o = xp.empty((B * H * nsplit, D), dtype=A)
    part_ml = xp.empty((B * H * nsplit, 2), dtype=A)
    padarg = _pad_arg(xp, pad, B)
    _launch(xp, f"fa_dec_part_{sfx}_d{dmax}", (B * H, nsplit), (DEC_THREADS,),
            (qkv, np.int64(3 * C), k_cache, v_cache, padarg, part_o, part_ml, np.int32(H), np.int32(D), np.int32(L),
             np.int32(S), np.int32(chunk), A(1.0 / math.sqrt(D)), _ptr_arg(xp, slen)))
    y = xp.empty((B, C), dtype=qkv.dtype)
    _launch(xp, f"fa_dec_comb_{sfx}", (B * H,), (min(1024, max(32, D)),),
            (part_o, part_ml, y, np.int32(H), np.int32(D), np.int32(nsplit)))
    return y


# -- the model's call sites ------------------------------------------------------------


def use_flash(be, dtype, n_head: int, head_size: int, B: int) -> bool:
    """Whether the model's attention runs the flash kernels: on the GPU backend,
    for a storage dtype and head size with a compiled kernel, and a batch x heads
    that fits one grid column. The NumPy path always materialises the scores: it
    is the reference the kernels are checked against."""
    return be.is_gpu and supported(dtype, head_size) and B * n_head <= MAX_GRID_Y


def attention_forward(qkv, n_head, B, T, bias=None, *, be):
    """The model's training self-attention: flash attention on the GPU when a
    kernel fits and the mask is the plain causal one (``bias`` None), else the
    materialised scores of ``ops.attention_forward``. Returns (y, cache) either way."""
    from gptlite.engine import ops

    if bias is None and use_flash(be, qkv.dtype, n_head, qkv.shape[-1] // 3 // n_head, B):
        return flash_attention_forward(be.xp.ascontiguousarray(qkv), n_head, B, T)
    return ops.attention_forward(qkv, n_head, B, T, bias, be=be)


def attention_backward(dy, cache, *, be):
    """dqkv from either forward's cache."""
    if isinstance(cache, FlashCache):
        return flash_attention_backward(dy, cache)
    from gptlite.engine import ops

    return ops.attention_backward(dy, cache, be=be)


def kv_flash(be, dtype, n_head: int, head_size: int, B: int, start: int, t: int) -> bool:
    """Whether KV-cache attention of t new tokens after ``start`` filled columns
    runs the flash kernels: the prompt (start 0: the causal forward, with its left
    padding) or one token (the split-K decode kernel). Other chunks (t > 1 after
    the prompt) take the materialised scores with the model's mask."""
    return use_flash(be, dtype, n_head, head_size, B) and (start == 0 or t == 1)


def kv_attention(qkv, k_cache, v_cache, start, t, pad=None):
    """Flash attention of t new tokens (qkv (B*t, 3C), their k and v already in the
    caches (B, H, L, D) at columns [start, start+t)) -> y (B*t, C); see kv_flash."""
    B, H = k_cache.shape[:2]
    if start == 0:
        return flash_attention_forward(xp_of(qkv).ascontiguousarray(qkv), H, B, t, pad=pad)[0]
    if t != 1:
        raise ValueError(f"flash KV attention: {t} new tokens after column {start}; expected the prompt or one token")
    return decode_attention(qkv, k_cache, v_cache, start + 1, pad=pad)
