"""Text generation: KV-cache decoding with greedy, top-k and nucleus sampling.

The loop is prefill-then-decode: the (left-padded) prompts go through the model
once, filling a preallocated KV cache, then each step feeds one token per row
and reads one row of logits. Nothing in the loop allocates memory that grows
with the context, so a step costs the same at token 10 as at token 1000.

Batched prompts of different lengths are left-padded to a common length; the
model's ``pad`` argument (per-row count of leading pad slots) masks the pad
keys and starts each row's positions at 0, so a row gives the same tokens as
when run alone.

On the GPU the next token is chosen on the device (``sample_next_device``: an
argmax, or the sampling kernel of engine/cuda/sampling.cu over the row sorted
once), so per token only the B chosen ids reach the host — what stopping at
end-of-text and streaming need. Greedy output is the CPU's exactly; sampled
output is reproducible per seed on the GPU, but its draws (SplitMix64 on the
device) are not the CPU's (NumPy's PCG64), so a seed gives different text on
the two devices.

After the first token the per-token step is a CUDA graph (engine/cuda_graph.py):
``GPT.decode_step`` keeps the cache column, the position and the filled length
in device scalars (the KV write and the split-K decode kernel read them; the
decode grid covers the whole cache), the sampler reads its draw counter from the
device, and each step writes the token the next one feeds on, so one capture
replays at every position with one launch from the host. Not for top-k/top-p
(CuPy's row sort is not capturable); ``GPTLITE_CUDA_GRAPHS=0`` turns graphs off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptlite.engine.backend import to_numpy, xp_of

from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE


@dataclass
class SamplingConfig:
    temperature: float = 1.0   # 0 means greedy (argmax)
    top_k: int | None = None   # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches top_p

    def validate(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sample_next(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from last-position logits.

    logits: (B, V) float (host array). Returns (B,) int64 ids.
    Filtering order as HF: temperature, then top-k, then top-p.
    """
    if cfg.greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    B, V = logits.shape
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < V:
        # k-th largest per row; everything strictly below is dropped (ties at the cut stay).
        kth = np.partition(x, V - cfg.top_k, axis=-1)[:, V - cfg.top_k : V - cfg.top_k + 1]
        x[x < kth] = -np.inf
    x -= x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sp = np.take_along_axis(p, order, axis=-1)
        csum = np.cumsum(sp, axis=-1)
        # Keep tokens whose preceding mass is < top_p: the smallest set reaching top_p (always >= 1 token).
        drop_sorted = (csum - sp) >= cfg.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p[drop] = 0.0
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(B) * cdf[:, -1]
    out = np.empty(B, dtype=np.int64)
    for b in range(B):
        i = int(np.searchsorted(cdf[b], u[b], side="right"))
        # float round-off at the top end: fall back to the last token with probability > 0
        out[b] = i if i < V and p[b, i] > 0 else int(np.flatnonzero(p[b])[-1])
    return out


# --- sampling on the GPU -----------------------------------------------------------

SAMPLE_THREADS = 256  # threads per row of the sampling kernel (a power of two: its block reductions)
SAMPLE_KERNELS = {np.dtype(np.float32): "gs_sample_f32", np.dtype(np.float64): "gs_sample_f64"}
_MASK64 = (1 << 64) - 1


def sample_next_device(logits, cfg: SamplingConfig, seed: int, step: int, step_dev=None, out=None):
    """Next token per row, chosen on the device: logits (B, V) a CuPy array ->
    (B,) int64 device ids. Greedy is the argmax (the CPU's choice exactly); else
    the filters of ``sample_next`` (temperature, top-k, top-p) and one uniform
    draw per row, SplitMix64 of (``seed``, ``step`` * B + row), in one kernel
    launch after one sort of the rows (skipped when no filter needs the order).
    ``step_dev``: a (1,) uint64 device array the kernel reads the step from (a
    CUDA graph's step); ``out``: a (B,) int64 device array to write the ids into."""
    xp = xp_of(logits)
    if step_dev is not None and (step_dev.dtype != np.uint64 or tuple(step_dev.shape) != (1,)):
        raise TypeError(f"step_dev must be a (1,) uint64 array (the kernel reads an unsigned 64-bit step), got {step_dev.dtype}")
    if cfg.greedy:
        return logits.argmax(axis=-1, out=out)
    B, V = logits.shape
    if np.dtype(logits.dtype) not in SAMPLE_KERNELS:
        logits = logits.astype(np.float32)
    k = V if cfg.top_k is None else min(int(cfg.top_k), V)
    top_p = 1.0 if cfg.top_p is None else float(cfg.top_p)
    if sorts_rows(cfg, V):
        # descending order: the top-k cut and the top-p prefix are prefixes of the sorted row
        ids = xp.ascontiguousarray(xp.argsort(-logits, axis=-1))
        vals = xp.ascontiguousarray(xp.take_along_axis(logits, ids, axis=-1))
    else:
        vals, ids = xp.ascontiguousarray(logits), np.uint64(0)  # a null pointer: the column is the id
    out = xp.empty(B, dtype=xp.int64) if out is None else out
    name = SAMPLE_KERNELS[np.dtype(vals.dtype)]
    grid, block, shared = (B,), (SAMPLE_THREADS,), SAMPLE_THREADS * 8
    check_sample_launch(name, grid, block, shared)
    from gptlite.engine import kernels

    kernels.kernel("sampling").get_function(name)(
        grid, block, (vals, ids, out, np.int32(V), np.int32(k), np.float64(1.0 / cfg.temperature), np.float64(top_p),
                      np.uint64(seed & _MASK64), np.uint64(step & _MASK64),
                      np.uint64(0) if step_dev is None else step_dev), shared_mem=shared)
    return out


def sorts_rows(cfg: SamplingConfig, V: int) -> bool:
    """Whether the device sampler sorts the rows first: a top-k below V or a top-p below 1."""
    return (cfg.top_k is not None and cfg.top_k < V) or (cfg.top_p is not None and cfg.top_p < 1.0)


def check_sample_launch(name, grid, block, shared_mem) -> None:
    """Raise if a launch of the sampling kernel ``name`` is not the one it is written
    for (checked on every launch, and by the test stand-in for CuPy)."""
    if name not in SAMPLE_KERNELS.values():
        raise KeyError(f"unknown sampling kernel {name!r}: expected one of {sorted(SAMPLE_KERNELS.values())}")
    if tuple(block) != (SAMPLE_THREADS,) or shared_mem != SAMPLE_THREADS * 8:
        raise ValueError(f"{name}: block {tuple(block)} with {shared_mem} bytes of shared memory; the kernel is written "
                         f"for ({SAMPLE_THREADS},) and {SAMPLE_THREADS * 8}")
    if len(grid) != 1 or not 1 <= grid[0] < 2 ** 31:
        raise ValueError(f"{name}: grid {tuple(grid)} is not (rows,)")


def splitmix_uniform(seed: int, counter: int) -> float:
    """The sampling kernel's uniform draw in [0, 1) for (seed, counter), on the host."""
    z = (seed + (counter + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53))


def sample_kernel_twin(name, grid, block, args) -> None:
    """The sampling kernel in NumPy (for the CuPy stand-in): the same filters and
    draw, row by row. A null pointer or a zero unsigned scalar arrives as None."""
    vals, ids, out, V, k, inv_temp, top_p, seed, step, step_dev = args
    V, k = int(V), int(k)
    seed, step = (0 if a is None else int(a) for a in (seed, step))
    if step_dev is not None:
        step = int(np.asarray(step_dev).reshape(-1)[0])
    B = int(grid[0])
    x = np.asarray(vals).reshape(B, V).astype(np.float64)
    res = np.asarray(out)
    for b in range(B):
        kth = x[b, k - 1] if k < V else -np.inf
        p = np.where(x[b] >= kth, np.exp((x[b] - x[b].max()) * float(inv_temp)), 0.0)
        if float(top_p) < 1.0:
            drop = np.flatnonzero(np.cumsum(p) - p >= float(top_p) * p.sum())
            if drop.size:
                p[drop[0]:] = 0.0
        c = np.cumsum(p)
        hit = np.flatnonzero((c > splitmix_uniform(seed, step * B + b) * c[-1]) & (p > 0))
        j = int(hit[0]) if hit.size else int(np.flatnonzero(p)[-1])
        res[b] = j if ids is None else np.asarray(ids).reshape(B, V)[b, j]


def kept_prompt_len(n_positions: int, max_new_tokens: int) -> int:
    """How many prompt tokens ``crop=True`` keeps (the last ones): room for
    max_new_tokens - 1 fed-back tokens, at least one prompt token."""
    return max(1, n_positions - max(max_new_tokens - 1, 0))


def _as_rows(prompt_ids):
    """(rows: list[np.ndarray int64], batched: bool) with clear errors for bad input."""
    if isinstance(prompt_ids, np.ndarray) or hasattr(prompt_ids, "__cuda_array_interface__"):
        arr = to_numpy(prompt_ids)
        if arr.ndim == 1:
            return [arr], False
        if arr.ndim == 2:
            return list(arr), True
        raise ValueError(f"prompt_ids must be 1-D or 2-D, got shape {arr.shape}")
    if isinstance(prompt_ids, (str, bytes)):
        raise TypeError("prompt_ids must be token ids (list[int] or list[list[int]]), not text: encode it with the tokenizer first")
    prompt_ids = list(prompt_ids)
    if prompt_ids and all(not isinstance(r, (int, np.integer)) for r in prompt_ids):
        return [r for r in prompt_ids], True
    return [prompt_ids], False


def _check_row(row, r: int, batched: bool, vocab_size: int) -> np.ndarray:
    where = f"prompt {r}" if batched else "prompt"
    if isinstance(row, np.ndarray):
        arr = row
    else:
        row = list(row)
        for j, t in enumerate(row):
            if not isinstance(t, (int, np.integer)) or isinstance(t, bool):
                raise TypeError(f"{where}: token at position {j} is {t!r}, not an integer id")
        arr = np.asarray(row, dtype=np.int64)
    if arr.size == 0:
        raise ValueError(f"{where} is empty: generation needs at least one token to condition on")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"{where}: token id {int(arr[j])} at position {j} is out of range for vocab_size {vocab_size}")
    return arr


def _steps(model, rows, max_new_tokens, cfg, rng, eot_token):
    """Yield (B,) int64 arrays of new tokens, -1 for rows that have stopped."""
    xp = model.xp
    n_pos = model.config.n_positions
    B = len(rows)
    lens = np.array([len(r) for r in rows])
    T0 = int(lens.max())
    # Room for every token we may feed back: the last sampled token is never fed.
    max_len = min(n_pos, T0 + max(max_new_tokens - 1, 0))
    pad = T0 - lens
    idx = np.zeros((B, T0), dtype=np.int64)  # pad slots hold token 0; the model masks them
    for b, r in enumerate(rows):
        idx[b, pad[b]:] = r
    kv = model.kv_cache(B, max_len)  # every column the generation can fill, allocated once
    pad_arg = None if not pad.any() else pad
    logits = model.decode(idx, kv, pad=pad_arg, last_only=True)[:, -1, :]  # host ids and pad: checked on the host
    done = np.zeros(B, dtype=bool)
    fed = T0
    on_device = xp is not np
    # one draw from the host stream seeds the device's: reproducible per seed, and a
    # Generator passed as the seed still moves on between calls
    dev_seed = int(rng.integers(0, 1 << 64, dtype=np.uint64)) if on_device and not cfg.greedy else 0
    graph = None
    if on_device and _use_graph(model, kv, cfg, max_new_tokens):
        graph = _GraphedSteps(model, kv, cfg, dev_seed)
    for step in range(max_new_tokens):
        if graph is not None:
            # after the first token the step is replayed: the token, its column and
            # the draw's counter advance on the device
            nxt = graph.first(logits) if step == 0 else graph.next(step)
        elif on_device:
            # chosen on the device: only B ids cross to the host
            nxt = xp.asnumpy(sample_next_device(logits, cfg, dev_seed, step)).astype(np.int64)
        elif cfg.greedy:
            nxt = to_numpy(logits.argmax(axis=-1)).astype(np.int64)
        else:
            nxt = sample_next(to_numpy(logits), cfg, rng)
        nxt[done] = -1
        yield nxt
        if eot_token is not None:
            done |= nxt == eot_token
        if done.all() or step == max_new_tokens - 1 or fed >= max_len:
            return  # all rows stopped, or the budget / the context is used up
        if graph is not None:
            kv.length += 1  # the next step's column, counted on the host as decode would
            fed += 1
            continue
        # host ids: decode checks them on the host, so the step reads nothing back from the device
        logits = model.decode(np.where(done, 0, nxt)[:, None], kv, last_only=True)[:, -1, :]  # the cache remembers pad
        fed += 1


def _use_graph(model, kv, cfg: SamplingConfig, max_new_tokens: int) -> bool:
    """CUDA graphs for the per-token step: on the GPU's flash decode path, for
    greedy or plain-temperature sampling (top-k/top-p sort the row, which CuPy does
    with host-side bookkeeping a graph cannot hold), and when there are at least
    two steps after the one that is run eagerly before the capture."""
    from gptlite.engine import cuda_graph

    return (cuda_graph.enabled() and not sorts_rows(cfg, model.config.vocab_size) and max_new_tokens >= 4
            and model.graphable(kv))


class _GraphedSteps:
    """The decode loop after the first token: one eager step (which compiles and
    loads every kernel), then a CUDA graph of the step captured once and replayed;
    each step feeds the token it sampled to the next on the device, and only the B
    ids are copied to the host. Greedy output is the eager loop's exactly; sampled
    output too (the same draws: the step counter lives on the device)."""

    def __init__(self, model, kv, cfg, seed):
        from gptlite.engine import cuda_graph

        self.model, self.kv, self.cfg, self.seed = model, kv, cfg, seed
        self.be = model.backend
        self.stream = cuda_graph.stream_for(self.be)
        self.graph = None

    def first(self, logits):
        """The first token, sampled from the prompt's logits (step 0) into the
        device buffer the steps feed from; the device state of the steps set up."""
        xp = self.be.xp
        B = self.kv.batch
        self.ids = xp.empty((B, 1), dtype=xp.int64)
        sample_next_device(logits, self.cfg, self.seed, 0, out=self.ids.reshape(B))
        self.kv.col = xp.full(1, self.kv.length, dtype=xp.int32)
        self.step_dev = xp.full(1, 1, dtype=xp.uint64)
        # the prompt's work was issued on the current stream: the graph's stream waits for it
        self.stream.wait_event(xp.cuda.get_current_stream().record())
        return xp.asnumpy(self.ids.reshape(B)).astype(np.int64)

    def _step(self):
        B = self.kv.batch
        logits = self.model.decode_step(self.ids, self.kv)
        sample_next_device(logits, self.cfg, self.seed, 0, step_dev=self.step_dev, out=self.ids.reshape(B))
        self.step_dev += np.uint64(1)  # stays uint64 under every casting rule

    def next(self, step):
        from gptlite.engine import cuda_graph

        if step == 1:
            cuda_graph.run_eagerly(self._step, self.stream)
        else:
            if self.graph is None:
                self.graph = cuda_graph.capture(self._step, self.be, self.stream)
            self.graph.launch()
        return self.ids.reshape(-1).get(stream=self.stream).astype(np.int64)


def generate(model, prompt_ids, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = DEFAULT_TEMPERATURE, top_k=None, top_p=None,
             seed=None, eot_token=None, crop: bool = False, stream: bool = False):
    """Continue ``prompt_ids`` with up to ``max_new_tokens`` tokens.

    prompt_ids: list[int] (one prompt) or list[list[int]] (a batch; lengths may differ).
    Returns the NEW tokens only: list[int], or list[list[int]] for a batch.
    With ``stream=True`` returns an iterator yielding, per step, the new token
    (int) — or for a batch a list with one entry per row (None once a row stopped).

    temperature=0 is greedy; ``seed`` makes sampling reproducible. A row stops at
    ``eot_token`` (which is not included in its output) and every row stops when
    the model's context (n_positions) is full. A prompt longer than the context
    raises ValueError unless ``crop`` (keep the last tokens, leaving room for
    ``max_new_tokens`` where possible).
    """
    cfg = SamplingConfig(temperature, top_k, top_p)
    cfg.validate()
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    V, n_pos = model.config.vocab_size, model.config.n_positions
    if eot_token is not None and not 0 <= eot_token < V:
        raise ValueError(f"eot_token {eot_token} is out of range for vocab_size {V}")
    raw, batched = _as_rows(prompt_ids)
    if batched and not raw:
        raise ValueError("empty batch of prompts")
    rows = [_check_row(r, i, batched, V) for i, r in enumerate(raw)]
    for i, r in enumerate(rows):
        # A prompt of L tokens leaves room for n_pos - L + 1 new ones (the last is never fed back).
        if len(r) > n_pos and not crop:
            where = f"prompt {i}" if batched else "prompt"
            raise ValueError(f"{where} has {len(r)} tokens but the model's context is {n_pos} positions "
                             "(pass crop=True / --crop to keep the last tokens)")
        if crop:
            rows[i] = r[-kept_prompt_len(n_pos, max_new_tokens):]
    # seed: None, an int, or a Generator to continue (several samples from one --seed)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    it = _steps(model, rows, int(max_new_tokens), cfg, rng, eot_token) if max_new_tokens > 0 else iter(())

    if stream:
        def gen():
            for nxt in it:
                keep = (nxt >= 0) & ((nxt != eot_token) if eot_token is not None else True)
                if batched:
                    yield [int(t) if k else None for t, k in zip(nxt, keep)]
                elif keep[0]:
                    yield int(nxt[0])
        return gen()
    out = [[] for _ in rows]
    for nxt in it:
        for b, t in enumerate(nxt):
            if t >= 0 and t != eot_token:
                out[b].append(int(t))
    return out if batched else out[0]
