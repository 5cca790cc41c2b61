"""Text generation: KV-cache decoding with greedy, top-k and nucleus sampling.

The loop is prefill-then-decode: the (left-padded) prompts go through the model
once, filling a preallocated KV cache, then each step feeds one token per row
and reads one row of logits. Nothing in the loop allocates memory that grows
with the context, so a step costs the same at token 10 as at token 1000.

Batched prompts of different lengths are left-padded to a common length; the
model's ``pad`` argument (per-row count of leading pad slots) masks the pad
keys and starts each row's positions at 0, so a row gives the same tokens as
when run alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptlite.engine.backend import to_numpy

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
    kv = model.kv_cache(B, max_len)
    pad_arg = None if not pad.any() else pad
    logits = model.decode(xp.asarray(idx), kv, pad=pad_arg, last_only=True)[:, -1, :]
    done = np.zeros(B, dtype=bool)
    fed = T0
    step_in = xp.empty((B, 1), dtype=xp.int64)
    for step in range(max_new_tokens):
        if cfg.greedy:
            # argmax on the device: only B ids cross to the host
            nxt = to_numpy(logits.argmax(axis=-1)).astype(np.int64)
        else:
            nxt = sample_next(to_numpy(logits), cfg, rng)
        nxt[done] = -1
        yield nxt
        if eot_token is not None:
            done |= nxt == eot_token
        if done.all() or step == max_new_tokens - 1 or fed >= max_len:
            return  # all rows stopped, or the budget / the context is used up
        step_in[:, 0] = xp.asarray(np.where(done, 0, nxt))
        logits = model.decode(step_in, kv, last_only=True)[:, -1, :]  # the cache remembers pad
        fed += 1


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
