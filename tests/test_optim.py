"""AdamW, clipping and schedules against torch.optim.AdamW / clip_grad_norm_."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gptlite.training import optim

torch = pytest.importorskip("torch")

SHAPES = {"wte.weight": (11, 6), "h.0.attn.c_attn.weight": (6, 18), "h.0.attn.c_attn.bias": (18,), "ln_f.weight": (6,)}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _torch_opt(params, lr, wd, betas=(0.9, 0.95), eps=1e-8):
    tp = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in params.items()}
    decay = [p for k, p in tp.items() if p.dim() == 2]
    no_decay = [p for k, p in tp.items() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps)
    return tp, opt


def test_decay_only_2d():
    assert optim.decays("wte.weight", (5, 3)) and optim.decays("h.0.mlp.c_fc.weight", (3, 12))
    assert not optim.decays("h.0.mlp.c_fc.bias", (12,)) and not optim.decays("ln_f.weight", (3,))


@pytest.mark.parametrize("clip", [None, 0.5])
def test_adamw_matches_torch(clip):
    params = _params()
    ours = optim.AdamW(params, optim.AdamWConfig(lr=1e-2, weight_decay=0.1))
    tp, topt = _torch_opt(params, 1e-2, 0.1)
    sched = optim.Schedule(peak=1e-2, total=12, warmup=3, min_lr=1e-3)
    rng = np.random.default_rng(1)
    for step in range(12):
        grads = {k: (rng.standard_normal(v.shape) * (step + 1)).astype(np.float32) for k, v in params.items()}
        lr = sched(step)
        for k, p in tp.items():
            p.grad = torch.tensor(grads[k].copy())
        tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), clip) if clip else None
        norm = optim.clip_grads(grads, clip)
        if clip:
            assert norm == pytest.approx(float(tnorm), rel=1e-5)
        for g in topt.param_groups:
            g["lr"] = lr
        topt.step()
        ours.step(grads, lr)
        for k in params:
            np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=2e-6, atol=2e-6, err_msg=f"{k} step {step}")


def test_weight_decay_is_decoupled():
    """Zero gradient: 2-D weights shrink by exactly (1 - lr*wd), 1-D ones do not move."""
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    opt = optim.AdamW(params, optim.AdamWConfig(lr=0.1, weight_decay=0.5))
    opt.step({k: np.zeros_like(v) for k, v in params.items()})
    for k, v in params.items():
        expect = before[k] * np.float32(1 - 0.05) if v.ndim == 2 else before[k]
        np.testing.assert_allclose(v, expect, rtol=1e-7)


def test_state_dict_round_trip_continues_exactly():
    rng = np.random.default_rng(2)
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(6)]
    a = _params()
    oa = optim.AdamW(a)
    for g in grads:
        oa.step({k: v.copy() for k, v in g.items()}, 3e-3)
    b = _params()
    ob = optim.AdamW(b)
    for g in grads[:3]:
        ob.step({k: v.copy() for k, v in g.items()}, 3e-3)
    state = ob.state_dict()
    c = {k: v.copy() for k, v in b.items()}
    oc = optim.AdamW(c)
    oc.load_state_dict(state)
    for g in grads[3:]:
        oc.step({k: v.copy() for k, v in g.items()}, 3e-3)
    for k in a:
        assert np.array_equal(a[k], c[k]), k


def test_bad_inputs():
    params = _params()
    opt = optim.AdamW(params)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    with pytest.raises(KeyError, match="ln_f.weight"):
        opt.step({k: v for k, v in grads.items() if k != "ln_f.weight"})
    grads["wte.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="wte.weight"):
        opt.step(grads)
    state = opt.state_dict()
    state["tensors"]["m.wte.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="m.wte.weight"):
        optim.AdamW(_params()).load_state_dict(state)
    with pytest.raises(ValueError, match="betas"):
        optim.AdamW(params, optim.AdamWConfig(betas=(1.0, 0.9)))


def test_clip_nonfinite_leaves_grads():
    g = {"a": np.array([np.inf, 1.0], np.float32), "b": np.ones((2, 2), np.float32)}
    assert not math.isfinite(optim.clip_grads(g, 1.0))
    assert g["b"][0, 0] == 1.0


def test_clip_matches_definition():
    g = {"a": np.full(4, 3.0, np.float32), "b": np.full((2, 2), 4.0, np.float32)}
    n = optim.clip_grads(g, 1.0)
    assert n == pytest.approx(10.0)
    assert optim.global_grad_norm(g) == pytest.approx(1.0, rel=1e-5)
    g2 = {"a": np.full(4, 0.1, np.float32)}
    optim.clip_grads(g2, 1.0)  # below the threshold: untouched
    assert np.all(g2["a"] == np.float32(0.1))


def test_accumulate_is_mean():
    a = {"w": np.ones(3, np.float32)}
    b = {"w": np.full(3, 3.0, np.float32)}
    t = optim.accumulate(None, a, 0.5)
    t = optim.accumulate(t, b, 0.5)
    assert np.allclose(t["w"], 2.0) and a["w"][0] == 1.0


def test_schedules():
    gpt1 = optim.Schedule(peak=2.5e-4, total=100_000, warmup=2000, kind="cosine")
    assert gpt1(0) == pytest.approx(2.5e-4 / 2000)
    assert gpt1(999) == pytest.approx(2.5e-4 / 2)
    assert gpt1(1999) == pytest.approx(2.5e-4)
    assert gpt1(2000) == pytest.approx(2.5e-4)
    assert gpt1(51_000) == pytest.approx(1.25e-4)
    assert gpt1(100_000) == pytest.approx(0.0, abs=1e-12)
    cos = optim.Schedule(peak=1.0, total=10, warmup=0, min_lr=0.1)
    vals = [cos(s) for s in range(12)]
    assert vals[0] == 1.0 and all(a >= b for a, b in zip(vals, vals[1:])) and vals[10] == pytest.approx(0.1) == vals[11]
    lin = optim.Schedule(peak=6.25e-5, total=100, warmup=2, kind="linear")  # GPT-1 fine-tuning: 0.2% warmup, linear decay
    assert lin(1) == pytest.approx(6.25e-5) and lin(51) == pytest.approx(6.25e-5 / 2) and lin(100) == 0.0
    const = optim.Schedule(peak=3e-4, total=10, warmup=5, kind="constant")
    assert const(2) == pytest.approx(3e-4 * 3 / 5) and const(9) == 3e-4
    with pytest.raises(ValueError, match="unknown lr schedule"):
        optim.Schedule(peak=1.0, total=10, kind="step")
    with pytest.raises(ValueError, match="min_lr"):
        optim.Schedule(peak=1.0, total=10, min_lr=2.0)
