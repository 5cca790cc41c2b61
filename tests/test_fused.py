"""The fused kernels' NumPy twins (engine/fused.py) against the reference ops
(engine/ops.py, NumPy), in float64 tightly and float32 at float32 precision."""
import math

import numpy as np
import pytest

from gptlite.engine import fused, ops
from gptlite.training import optim

TOL = {np.float64: 1e-10, np.float32: 2e-5}


def close(a, b, dt, scale=1.0):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=TOL[dt] * scale, atol=TOL[dt] * scale)


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dt(request):
    return request.param


def test_layernorm_with_residual(dt):
    rng = np.random.default_rng(0)
    x, r, dy, dres = (rng.standard_normal((3, 5, 24)).astype(dt) for _ in range(4))
    w, b = rng.standard_normal(24).astype(dt), rng.standard_normal(24).astype(dt)
    y, cache = fused.layernorm_forward(x, w, b, residual=r)
    y_ref, c_ref = ops.layernorm_forward(x + r, w, b)
    close(cache[0], x + r, dt)
    close(y, y_ref, dt)
    dw0, db0 = np.ones(24, dt), np.full(24, 2.0, dt)
    dx, dw, db = fused.layernorm_backward(dy, cache, dw=dw0, db=db0, dresidual=dres)
    dx_ref, dw_ref, db_ref = ops.layernorm_backward(dy, c_ref)
    close(dx, dx_ref + dres, dt, 10)
    assert dw is dw0 and db is db0  # accumulated in place (flat gradient views)
    close(dw, dw_ref + 1, dt, 10)
    close(db, db_ref + 2, dt, 10)
    # the bias of the linear layer that made x, folded in before the residual add
    xb = rng.standard_normal(24).astype(dt)
    y, cache = fused.layernorm_forward(x, w, b, residual=r, x_bias=xb)
    y_ref, _ = ops.layernorm_forward((x + xb) + r, w, b)
    close(cache[0], (x + xb) + r, dt)
    close(y, y_ref, dt)


def test_bias_gelu(dt):
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((7, 40)).astype(dt), rng.standard_normal((7, 40)).astype(dt)
    bias = rng.standard_normal(40).astype(dt)
    y, pre = fused.bias_gelu_forward(x, bias)
    y_ref, c = ops.gelu_forward(x + bias)
    close(y, y_ref, dt)
    dx, dbias = fused.bias_gelu_backward(dy, pre)
    dx_ref = ops.gelu_backward(dy, c)
    close(dx, dx_ref, dt)
    close(dbias, dx_ref.sum(axis=0), dt, 10)


@pytest.mark.parametrize("Tq,Tk", [(6, 6), (3, 7)])
def test_causal_softmax(dt, Tq, Tk):
    rng = np.random.default_rng(2)
    s, dp = rng.standard_normal((2, 3, Tq, Tk)).astype(dt), rng.standard_normal((2, 3, Tq, Tk)).astype(dt)
    scale = 1 / math.sqrt(8)
    p = fused.causal_softmax_forward(s, scale)
    z = s * dt(scale) + ops.causal_bias(np, Tq, Tk, dt, offset=Tk - Tq)
    ref = z.copy()
    ops.softmax_inplace(ref)
    close(p, ref, dt)
    assert np.all(p[..., 0, 1 + Tk - Tq:] == 0)
    ds = fused.causal_softmax_backward(dp, p, scale)
    dz = dp.copy()
    ops.softmax_backward_inplace(dz, ref)
    close(ds, dz * dt(scale), dt, 10)


def test_lm_head_cross_entropy_chunked(dt):
    rng = np.random.default_rng(3)
    N, C, V = 23, 8, 50
    h, wte = rng.standard_normal((N, C)).astype(dt), rng.standard_normal((V, C)).astype(dt)
    t = rng.integers(0, V, N)
    t[[2, 9]] = -1
    logits, hc = ops.lm_head_forward(h, wte)
    loss_ref, cc = ops.cross_entropy_forward(logits, t)
    dh_ref, dwte_ref = ops.lm_head_backward(ops.cross_entropy_backward(cc), hc)
    for chunk in (5, 23, 4096):
        loss, dh, dwte = fused.lm_head_cross_entropy(h, wte, t, chunk=chunk)
        assert loss.shape == () and isinstance(loss, np.ndarray | np.generic)
        close(loss, loss_ref, dt)
        close(dh, dh_ref, dt, 10)
        close(dwte, dwte_ref, dt, 10)
    with pytest.raises(ValueError, match="target id 50 at flat position 4"):
        t[4] = 50
        fused.lm_head_cross_entropy(h, wte, t)


def test_embedding_backward_deterministic(dt):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, (3, 9))
    dout = rng.standard_normal((3, 9, 5)).astype(dt)
    dwte = np.ones((6, 5), dt)
    got = fused.embedding_backward(ids, dout, dwte.copy())
    ref = np.ones((6, 5), dt)
    for i, row in zip(ids.reshape(-1), dout.reshape(-1, 5)):  # position order, as the kernel sums
        ref[i] += row
    close(got, ref, dt)
    if dt == np.float32:  # the same order every time: bitwise
        np.testing.assert_array_equal(got, fused.embedding_backward(ids, dout, dwte.copy()))


@pytest.mark.parametrize("max_norm", [None, 0.5, 1e6])
def test_clip_and_adamw_match_optim(dt, max_norm):
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal((4, 3)).astype(dt), "b": rng.standard_normal(3).astype(dt)}
    grads = {k: rng.standard_normal(p.shape).astype(dt) for k, p in params.items()}
    # the flat layout: decayed 2-D weights first
    P = np.concatenate([params["w"].ravel(), params["b"]])
    G = np.concatenate([grads["w"].ravel(), grads["b"]])
    M, V = np.zeros_like(P), np.zeros_like(P)
    cfg = optim.AdamWConfig(lr=1e-2)
    ref = optim.AdamW({k: p.copy() for k, p in params.items()}, cfg)
    t = np.zeros(1, np.int32)  # AdamW's step count, advanced by the kernel
    for step in (1, 2, 3):
        gref = {k: g.copy() for k, g in grads.items()}
        norm_ref = optim.clip_grads(gref, max_norm)
        ref.step(gref)
        norm, scale, flag = fused.clip_scale(fused.grad_sumsq(G), max_norm)
        close(norm[0], norm_ref, dt)
        assert flag[0] == 0
        fused.adamw_flat(P, G, M, V, scale, flag, t, n_decay=12, lr=cfg.lr, betas=cfg.betas,
                         eps=cfg.eps, weight_decay=cfg.weight_decay)
        assert t[0] == step
        close(P[:12], ref.params["w"].ravel(), dt, 10)
        close(P[12:], ref.params["b"], dt, 10)


def test_nonfinite_step_skipped_on_device(dt):
    P, G = np.ones(5, dt), np.array([1, 2, np.inf, 0, 1], dt)
    M, V = np.zeros(5, dt), np.zeros(5, dt)
    norm, scale, flag = fused.clip_scale(fused.grad_sumsq(G), 1.0)
    assert flag[0] == 1 and scale[0] == 0 and not np.isfinite(norm[0])
    t = np.array([7], np.int32)
    fused.adamw_flat(P, G, M, V, scale, flag, t, n_decay=5, lr=0.1)
    assert np.all(P == 1) and np.all(M == 0) and np.all(V == 0)
    assert t[0] == 7  # a skipped step does not count


def test_launch_checks():
    fused.check_launch("gl_ln_fwd_f32", (4,), (256,), 1024)
    with pytest.raises(ValueError, match="needs 2048"):
        fused.check_launch("gl_ln_fwd_f64", (4,), (256,), 1024)
    with pytest.raises(ValueError, match="power-of-two"):
        fused.check_launch("gl_ce_fwd_bwd_f32", (4,), (96,), 384)
    with pytest.raises(ValueError, match="1..1024"):
        fused.check_launch("gl_adamw_f32", (4,), (2048,), 0)
    with pytest.raises(TypeError, match="float32/float64 only"):
        fused.layernorm_forward(np.ones((2, 4), np.float16), np.ones(4, np.float16), np.ones(4, np.float16))


def test_every_kernel_has_a_twin():
    import re

    src = open(fused.CU_FILE).read()
    names = set(re.findall(r'extern "C" __global__ void gl_(\w+)_f(?:32|64)\(', src))
    assert names == set(fused.KERNEL_TWINS)
    assert fused.REDUCING <= names


def test_fused_on_the_cupy_path_in_float32(monkeypatch):
    """The fused functions' CuPy branch (real launch arguments, null pointers,
    device-side clip) on the stand-in, float32, against the NumPy path."""
    import fake_cupy

    cp = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(6)
    dt = np.float32
    x, r = rng.standard_normal((4, 16)).astype(dt), rng.standard_normal((4, 16)).astype(dt)
    w, b = rng.standard_normal(16).astype(dt), rng.standard_normal(16).astype(dt)
    y_h, c_h = fused.layernorm_forward(x, w, b)
    fake_cupy.reset_counts()
    y_d, c_d = fused.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b))
    assert isinstance(y_d, cp.ndarray) and y_d.dtype == dt
    np.testing.assert_array_equal(cp.asnumpy(y_d), y_h)
    dx_d, dw_d, db_d = fused.layernorm_backward(cp.asarray(r), c_d)
    np.testing.assert_array_equal(cp.asnumpy(dx_d), fused.layernorm_backward(r, c_h)[0])
    h, wte = rng.standard_normal((10, 16)).astype(dt), rng.standard_normal((30, 16)).astype(dt)
    t = rng.integers(0, 30, 10)
    loss_h, dh_h, _ = fused.lm_head_cross_entropy(h, wte, t, chunk=4)
    loss_d, dh_d, _ = fused.lm_head_cross_entropy(cp.asarray(h), cp.asarray(wte), cp.asarray(t), chunk=4)
    assert isinstance(loss_d, cp.ndarray) and loss_d.dtype == dt
    np.testing.assert_allclose(cp.asnumpy(dh_d), dh_h, rtol=1e-6, atol=1e-7)
    G = cp.asarray(rng.standard_normal(50).astype(dt))
    P, M, V = cp.asarray(np.ones(50, dt)), cp.zeros(50, dtype=dt), cp.zeros(50, dtype=dt)
    norm, scale, flag = fused.clip_scale(fused.grad_sumsq(G), 1.0)
    fused.adamw_flat(P, G, M, V, scale, flag, cp.zeros(1, dtype=np.int32), n_decay=20, lr=1e-3)
    ids = cp.asarray(rng.integers(0, 5, 12))
    fused.embedding_backward(ids, cp.asarray(rng.standard_normal((12, 16)).astype(dt)), cp.zeros((5, 16), dtype=dt))
    # the only reads of device values are this test's own asnumpy calls
    assert fake_cupy.COUNTS["syncs"] == 3 and {f for f, _ in fake_cupy.SYNC_SITES} == {"test_fused.py"}
    assert fake_cupy.COUNTS["launches"] > 0
    with pytest.raises(ValueError, match="needs 1024"):
        cp.RawModule().get_function("gl_ln_fwd_f32")((4,), (256,), (x,) * 10, shared_mem=0)


def test_tf32_switch_from_cli_and_config(monkeypatch, tmp_path):
    from gptlite import cli
    from gptlite.training import pretrain

    seen = []
    monkeypatch.setattr(pretrain, "Trainer", lambda cfg, resume=False, **kw: seen.append(cfg.tf32) or (_ for _ in ()).throw(
        pretrain.TrainingError("stop here")))
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text("[optim]\ntf32 = true\n")
    for flag, want in (([], True), (["--no-tf32"], False), (["--tf32"], True)):
        assert cli.main(["train", "--config", str(cfgfile), *flag]) != 0  # the stand-in Trainer stops it
        assert seen[-1] is want
    assert pretrain.TrainConfig().tf32 is True
