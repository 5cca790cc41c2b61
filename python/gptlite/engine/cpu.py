"""CPU scheduling for the NumPy backend: one thread per core over independent blocks.

The ops in :mod:`gptlite.engine.ops` hold the maths; this module only
decides how a NumPy computation is cut into blocks and run on the cores
(a thread pool, with OpenBLAS held single-threaded meanwhile). Nothing here
is used on CuPy, which schedules its own kernels.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

_POOL_PREFIX = "gptlite-bmm"


class _BlasThreads:
    """Get/set NumPy's OpenBLAS thread count (what threadpoolctl does).

    Linux only (finds the loaded library in /proc/self/maps); a no-op where
    the library or its symbols are not found.
    """

    def __init__(self):
        self.get = self.set = None
        try:
            import ctypes

            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
            for path in paths:
                lib = ctypes.CDLL(path)
                for pre, suf in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
                    name = f"{pre}openblas_%s_num_threads{suf}"
                    if hasattr(lib, name % "set") and hasattr(lib, name % "get"):
                        self.get, self.set = getattr(lib, name % "get"), getattr(lib, name % "set")
                        return
        except OSError:
            pass


_blas_threads = None
_pool = None
_max_workers = None  # set_max_workers: a rank's share of the node's cores


def workers() -> int:
    """Cores this process may run on (capped by set_max_workers)."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        n = max(1, os.cpu_count() or 1)
    return n if _max_workers is None else min(n, _max_workers)


def set_max_workers(n: int | None) -> None:
    """Cap the CPU threads (the engine's pool and OpenBLAS) at ``n``; None: every core.

    Why: N processes on one node (data-parallel ranks) each taking every core
    in the affinity mask would run N x cores threads on the node's cores."""
    global _max_workers, _pool, _blas_threads
    if n is not None and n < 1:
        raise ValueError(f"set_max_workers: need n >= 1 or None, got {n}")
    _max_workers = n
    if _pool is not None:  # sized at creation: the next use makes one of the new size
        _pool.shutdown(wait=True)
        _pool = None
    if _blas_threads is None:
        _blas_threads = _BlasThreads()
    if _blas_threads.set is not None:
        _blas_threads.set(workers())


def parallel_slices(fn, n, inline=False):
    """Run fn(i) for i in range(n) on a thread pool (NumPy releases the GIL in
    BLAS calls and ufuncs) with OpenBLAS single-threaded meanwhile; ``inline``:
    all of them on this thread (still with OpenBLAS single-threaded).

    Why not OpenBLAS's own threads: they spin-wait, and on an oversubscribed
    machine (2 cores, other processes) small and medium GEMMs then run
    orders of magnitude slower; blocking pool threads degrade gracefully, and
    they also parallelise the elementwise passes NumPy runs on one core."""
    global _blas_threads, _pool
    if _blas_threads is None:
        _blas_threads = _BlasThreads()
    nw = min(workers(), n)
    prev = _blas_threads.get() if _blas_threads.get else None
    if prev is not None and prev != 1:
        _blas_threads.set(1)
    try:
        # inline on one core, and inside a pool thread (a nested call waiting
        # on the pool from the pool could wait forever)
        if inline or nw <= 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
            for i in range(n):
                fn(i)
            return
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=workers() - 1, thread_name_prefix=_POOL_PREFIX)
        # blocks handed out one at a time as threads free up (if the OS preempts
        # one, the others take over its share); the calling thread works too
        # rather than sleeping until the pool is done: one hand-off less per
        # call, which at the default model's size is a good part of an op
        blocks = iter(range(n))  # next() on it is atomic under the GIL

        def drain():
            for i in blocks:
                fn(i)

        helpers = [_pool.submit(drain) for _ in range(nw - 1)]
        try:
            drain()
        finally:
            for h in helpers:
                h.result()
    finally:
        if prev is not None and prev != 1:
            _blas_threads.set(prev)


def parallel_rows(fn, n_rows, min_rows=64):
    """fn(slice) over row blocks of an n_rows-row problem, in parallel."""
    nb = min(4 * workers(), max(1, n_rows // min_rows))
    if nb == 1:  # a decoding step's one row: no bounds to compute (np.linspace cost 10 us a call)
        parallel_slices(lambda i: fn(slice(0, n_rows)), 1)
        return
    bounds = [n_rows * i // nb for i in range(nb + 1)]
    parallel_slices(lambda i: fn(slice(bounds[i], bounds[i + 1])), nb)


def parallel_heads(fn, B, H, block):
    """fn(b, heads) over every batch row b and a run of heads (a slice),
    runs sized so a task's (heads, t, S) scores, ``block`` = t*S each, stay
    within ~256 KB (a core's L2), spread in a few groups per core."""
    hc = max(1, min(H, (1 << 16) // max(1, block)))
    tasks = [(b, slice(h, min(H, h + hc))) for b in range(B) for h in range(0, H, hc)]
    ng = min(len(tasks), 4 * workers())
    bounds = [len(tasks) * i // ng for i in range(ng + 1)]  # np.linspace's edges, without its cost

    def group(j):
        for b, hsl in tasks[bounds[j]:bounds[j + 1]]:
            fn(b, hsl)

    parallel_slices(group, ng)


def matmul(a, b, out=None):
    """a (M,K) @ b (K,N) -> (M,N) on NumPy, split into row (or column) blocks
    run in parallel, each one single-threaded sgemm on a BLAS-compatible view."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    nw = workers()
    if M <= 16:
        if M * N * K < _GEMV_BLOCKED_MIN:
            return np.matmul(a, b, out=out)
        return _gemv_blocked(a, b, out)
    if nw == 1 or M * N * K < (1 << 21):
        parallel_slices(lambda i: np.matmul(a, b, out=out), 1)
        return out
    # one block per core: each block is then as large a sgemm as possible
    # (measured faster on the 124M shapes than several smaller blocks per core)
    nb = max(1, min(nw, max(M, N) // 128))
    if M >= N:
        bounds = [M * i // nb for i in range(nb + 1)]
        parallel_slices(lambda i: np.matmul(a[bounds[i]:bounds[i + 1]], b, out=out[bounds[i]:bounds[i + 1]]), nb)
    else:
        bounds = [N * i // nb for i in range(nb + 1)]
        parallel_slices(lambda i: np.matmul(a, b[:, bounds[i]:bounds[i + 1]], out=out[:, bounds[i]:bounds[i + 1]]), nb)
    return out


# Decoding (one or a few rows against a weight matrix) is a memory-bound GEMV.
# OpenBLAS's own threads spin-wait for each other, so when another process holds
# a core they collapse (124M float32 decoding fell from ~40 to under 5 tok/s
# with the machine busy). Instead the columns are cut into blocks fixed by the
# shape alone, each one single-threaded sgemv, and the blocks run either inline
# on this thread or over the pool, whichever has been faster lately for this
# shape: the pool when the cores are free, inline when they are contended. The
# bits do not depend on the choice (same blocks, same single-threaded kernel),
# so decoding stays deterministic whatever the machine's load.
_GEMV_BLOCKED_MIN = 1 << 18  # multiply-adds; below it one sgemv is cheaper than any split
_GEMV_BLOCKS = 4  # fixed, not per core count: the block edges (and so the bits) depend on the shape only
_GEMV_EXPLORE = 16  # every 16th call of a shape tries the strategy not in use


class _GemvChoice:
    __slots__ = ("ema", "calls")

    def __init__(self):
        self.ema = [None, None]  # seconds per call: [inline, pool]
        self.calls = 0

    def pick(self) -> int:
        self.calls += 1
        inline, pool = self.ema
        if inline is None or pool is None:
            return 0 if inline is None else 1
        best = 0 if inline <= pool else 1
        return 1 - best if self.calls % _GEMV_EXPLORE == 0 else best

    def record(self, which: int, seconds: float) -> None:
        old = self.ema[which]
        self.ema[which] = seconds if old is None else 0.8 * old + 0.2 * seconds


_gemv_choices: dict = {}


def _gemv_edges(N: int):
    step = -(-N // _GEMV_BLOCKS)
    step = -(-step // 64) * 64  # block starts on 64-column (256-byte) boundaries
    return [(j, min(N, j + step)) for j in range(0, N, step)]


def _gemv_blocked(a, b, out):
    M, K = a.shape
    N = b.shape[1]
    key = (M, K, N, b.strides)
    choice = _gemv_choices.get(key)
    if choice is None:
        choice = _gemv_choices[key] = _GemvChoice()
    edges = _gemv_edges(N)

    def block(i):
        j0, j1 = edges[i]
        np.matmul(a, b[:, j0:j1], out=out[:, j0:j1])

    which = choice.pick() if workers() > 1 else 0
    t0 = time.perf_counter()
    parallel_slices(block, len(edges), inline=which == 0)
    choice.record(which, time.perf_counter() - t0)
    return out


def bmm(a, b, out=None):
    """Batched matmul over the leading axes on NumPy: one sgemm per 2-D slice.

    NumPy's stacked matmul falls off BLAS for strided (transposed, head-split)
    views; each slice of those views is BLAS-compatible, so no copies."""
    lead = a.shape[:-2]
    if out is None:
        out = np.empty(lead + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    idx = list(np.ndindex(*lead))
    parallel_slices(lambda i: np.matmul(a[idx[i]], b[idx[i]], out=out[idx[i]]), len(idx))
    return out
