"""AdamW, learning-rate schedules, gradient clipping — by hand, on ``xp`` arrays.

The update is written to match ``torch.optim.AdamW`` operation for operation
(decoupled decay first, then the bias-corrected Adam step with ``eps`` added
after the square root is bias-corrected), so a parity test against PyTorch can
hold to float32 rounding.

Weight decay is applied only to 2-D weight matrices (embeddings and the
linear layers); biases and LayerNorm gains are left alone, as in GPT-2 /
nanoGPT practice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gptlite.engine.backend import to_numpy, xp_of


@dataclass
class AdamWConfig:
    lr: float = 6e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1

    def validate(self) -> None:
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"AdamW eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got {self.lr}")


def decays(name: str, shape) -> bool:
    """Whether a parameter gets weight decay: 2-D weights only (no biases, no LayerNorm)."""
    return len(shape) == 2


class AdamW:
    """AdamW over a ``dict[str, xp.ndarray]`` of parameters, updated in place.

    State: ``m`` and ``v`` (same names/shapes as the params) and ``t`` (number of
    updates applied). ``state_dict()``/``load_state_dict()`` round-trip it exactly.
    """

    def __init__(self, params: dict, config: AdamWConfig | None = None):
        self.config = config or AdamWConfig()
        self.config.validate()
        self.params = params
        self._t = 0
        self._t_dev = None  # (1,) int32 on the GPU once the fused device step runs
        self.m = {k: xp_of(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: xp_of(p).zeros_like(p) for k, p in params.items()}
        self.decay = {k: decays(k, p.shape) for k, p in params.items()}
        self._flat = None  # use_flat: (params' flat buffer, FlatGrads, m buffer, v buffer)

    def use_flat(self, flat) -> None:
        """Keep m and v in the layout of ``flat`` (a distributed.FlatGrads whose
        ``adopt_params`` holds these parameters), so that a step with ``flat.views``
        as the gradients is two vectorised updates instead of one per tensor.
        Elementwise, so the numbers are the same bit for bit."""
        held = flat.adopted
        if held is None or set(held) != set(self.params) or any(self.params[k] is not held[k] for k in held):
            raise ValueError("AdamW.use_flat: the parameters are not views of the layout's parameter buffer")
        xp = xp_of(flat.buf)
        mb, vb = xp.zeros_like(flat.buf), xp.zeros_like(flat.buf)
        for k in self.params:
            mv, vv = flat.view(mb, k), flat.view(vb, k)
            mv[...] = self.m[k]
            vv[...] = self.v[k]
            self.m[k], self.v[k] = mv, vv
        self._flat = (flat.params_buf, flat, mb, vb)

    def step(self, grads: dict, lr: float | None = None) -> None:
        """One update with learning rate ``lr`` (config lr when None)."""
        cfg = self.config
        lr = cfg.lr if lr is None else float(lr)
        b1, b2 = cfg.betas
        self.t += 1
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        step_size = lr / bc1
        bc2_sqrt = math.sqrt(bc2)
        if self._flat is not None and grads is self._flat[1].views:
            P, flat, M, V = self._flat
            G, nd = flat.buf, flat.n_decay
            for a, b, decay in ((0, nd, lr * cfg.weight_decay), (nd, flat.size, 0.0)):
                if b > a:
                    coefs = (decay, b1, b2, bc2_sqrt, cfg.eps, step_size)
                    if xp_of(P) is np:
                        _adamw_chunked(P[a:b], G[a:b], M[a:b], V[a:b], coefs)
                    else:
                        _adamw_update(P[a:b], G[a:b], M[a:b], V[a:b], coefs, xp_of(P).empty(b - a, dtype=P.dtype))
            return
        missing = set(self.params) - set(grads)
        if missing:
            raise KeyError(f"AdamW.step: no gradient for parameter {sorted(missing)[0]!r}")
        for k, p in self.params.items():
            g = grads[k]
            if g.shape != p.shape:
                raise ValueError(f"AdamW.step: gradient for {k!r} has shape {tuple(g.shape)}, parameter has {tuple(p.shape)}")
            decay = lr * cfg.weight_decay if self.decay[k] else 0.0
            coefs = (decay, b1, b2, bc2_sqrt, cfg.eps, step_size)
            m, v = self.m[k], self.v[k]
            if xp_of(p) is np and all(a.flags.c_contiguous for a in (p, g, m, v)):
                _adamw_chunked(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), coefs)
            else:
                _adamw_update(p, g, m, v, coefs, xp_of(p).empty_like(p))

    def step_flat_device(self, scale, nonfinite, lr: float | None = None) -> None:
        """One AdamW update of the whole flat buffer in fused launches, gradients
        times the device-side clip ``scale``, skipped on the device when
        ``nonfinite`` is set (engine/fused.py; for CuPy, where reading the norm back
        to decide would cost a sync). The step count then lives on the device and
        advances there only for a finite step; reading ``t`` reads it back."""
        from gptlite.engine import fused

        if self._flat is None:
            raise ValueError("AdamW.step_flat_device needs use_flat() first")
        cfg = self.config
        lr = cfg.lr if lr is None else float(lr)
        P, flat, M, V = self._flat
        if self._t_dev is None:
            self._t_dev = xp_of(P).asarray(np.array([self._t], dtype=np.int32))
        fused.adamw_flat(P, flat.buf, M, V, scale, nonfinite, self._t_dev, n_decay=flat.n_decay, lr=lr,
                         betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    @property
    def t(self) -> int:
        """AdamW's step count (updates applied); on the device once step_flat_device ran."""
        if self._t_dev is not None:
            self._t = int(self._t_dev[0])  # a device read: at checkpoints, not in the step
        return self._t

    @t.setter
    def t(self, value: int) -> None:
        self._t = int(value)
        if self._t_dev is not None:
            self._t_dev[...] = self._t

    def state_dict(self) -> dict:
        """Host (NumPy) copies of m and v as flat tensors, plus the step count."""
        tensors = {}
        for k in self.params:
            tensors[f"m.{k}"] = to_numpy(self.m[k])
            tensors[f"v.{k}"] = to_numpy(self.v[k])
        return {"t": self.t, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        tensors = state["tensors"]
        for k, p in self.params.items():
            for slot, store in (("m", self.m), ("v", self.v)):
                name = f"{slot}.{k}"
                if name not in tensors:
                    raise ValueError(f"optimizer state is missing tensor {name!r}")
                arr = tensors[name]
                if tuple(arr.shape) != tuple(p.shape):
                    raise ValueError(
                        f"optimizer state tensor {name!r} has shape {tuple(arr.shape)}, model parameter has {tuple(p.shape)}"
                    )
                if self._flat is not None:  # m and v are views of the flat buffers: fill them
                    store[k][...] = xp_of(p).asarray(np.asarray(arr), dtype=p.dtype)
                else:
                    store[k] = xp_of(p).asarray(np.asarray(arr), dtype=p.dtype)
        extra = {n.split(".", 1)[1] for n in tensors} - set(self.params)
        if extra:
            raise ValueError(f"optimizer state has tensor for unknown parameter {sorted(extra)[0]!r}")
        self.t = int(state["t"])


def _adamw_update(p, g, m, v, coefs, tmp) -> None:
    """The AdamW update of one parameter, in place; ``tmp`` is scratch of p's shape.

    m = b1*m + (1-b1)*g and v = b2*v + (1-b2)*g*g in torch's lerp_/addcmul_
    forms, then p -= step_size * m / (sqrt(v)/sqrt(bc2) + eps), after the
    decoupled decay p *= 1 - lr*wd.
    """
    decay, b1, b2, bc2_sqrt, eps, step_size = coefs
    f = p.dtype.type
    if decay:
        p *= f(1.0 - decay)
    xp = xp_of(p)
    xp.subtract(g, m, out=tmp)
    tmp *= f(1.0 - b1)
    m += tmp
    v *= f(b2)
    xp.multiply(g, g, out=tmp)
    tmp *= f(1.0 - b2)
    v += tmp
    xp.sqrt(v, out=tmp)  # tmp = denom
    tmp /= f(bc2_sqrt)
    tmp += f(eps)
    xp.divide(m, tmp, out=tmp)
    tmp *= f(step_size)
    p -= tmp


_CHUNK = 1 << 16  # elements per piece: a piece of p, g, m, v and the scratch stays in cache


def _adamw_chunked(p, g, m, v, coefs) -> None:
    """``_adamw_update`` on 1-D NumPy views, cache-sized pieces at a time, pieces
    spread over the engine's threads.

    Why: done whole, each of the ~12 elementwise passes streams the 124M model's
    parameter-sized arrays through main memory; piecewise they stream once."""
    from gptlite.engine import cpu

    n = p.shape[0]

    def rows(sl):
        tmp = np.empty(min(_CHUNK, sl.stop - sl.start), dtype=p.dtype)
        for a in range(sl.start, sl.stop, _CHUNK):
            b = min(a + _CHUNK, sl.stop)
            _adamw_update(p[a:b], g[a:b], m[a:b], v[a:b], coefs, tmp[: b - a])

    cpu.parallel_rows(rows, n, min_rows=_CHUNK)


# --- gradients ----------------------------------------------------------------------
def global_grad_norm(grads: dict) -> float:
    """L2 norm over all gradients together (as torch.nn.utils.clip_grad_norm_)."""
    total = 0.0
    for g in grads.values():
        xp = xp_of(g)
        n = xp.linalg.norm(g.ravel())
        total += float(n) ** 2
    return math.sqrt(total)


def clip_grads(grads: dict, max_norm: float | None) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``.

    Returns the norm before clipping (inf/nan when a gradient is non-finite; then
    nothing is scaled). Uses torch's ``max_norm / (norm + 1e-6)`` coefficient.
    """
    norm = global_grad_norm(grads)
    if max_norm is None or max_norm <= 0 or not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return norm


def accumulate(total: dict | None, grads: dict, scale: float) -> dict:
    """total += grads * scale (allocating on first use): gradient accumulation."""
    if total is None:
        return {k: g * g.dtype.type(scale) for k, g in grads.items()}
    for k, g in grads.items():
        total[k] += g * g.dtype.type(scale)
    return total


# --- learning-rate schedules ------------------------------------------------------------
@dataclass
class Schedule:
    """Learning rate as a function of the 0-based update index.

    ``warmup`` linear ramp from peak/warmup to peak (GPT-1: 2000 steps to 2.5e-4),
    then ``kind``: "cosine" decays to ``min_lr`` at ``total`` steps, "linear" decays
    linearly to ``min_lr`` at ``total`` (GPT-1 fine-tuning), "constant" stays at peak.
    After ``total`` the rate stays at ``min_lr`` (cosine/linear).
    """

    peak: float
    total: int
    warmup: int = 0
    min_lr: float = 0.0
    kind: str = "cosine"

    KINDS = ("cosine", "linear", "constant")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown lr schedule {self.kind!r}: expected one of {', '.join(self.KINDS)}")
        if self.total < 1:
            raise ValueError(f"schedule needs total steps >= 1, got {self.total}")
        if self.warmup < 0:
            raise ValueError(f"warmup steps must be >= 0, got {self.warmup}")
        if self.peak < 0 or self.min_lr < 0:
            raise ValueError("learning rates must be >= 0")
        if self.min_lr > self.peak:
            raise ValueError(f"min_lr {self.min_lr} is above the peak learning rate {self.peak}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.peak
        span = max(1, self.total - self.warmup)
        frac = min(1.0, (step - self.warmup) / span)
        if self.kind == "linear":
            return self.peak + (self.min_lr - self.peak) * frac
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + math.cos(math.pi * frac))
