"""On a real GPU (skipped without CUDA): every fused kernel against its NumPy
twin, the model against HF transformers (float32: logits <= 1e-4 absolute,
every gradient <= 1e-3 relative; TF32: logits <= 2e-2, gradients <= 2e-2 relative,
TF32's 10-bit mantissa in every GEMM), the float32 trajectory of `gptlite train`
against the CPU's, and bit-exact resume on the GPU. Run by scripts/gpu_check.sh."""
import math

import numpy as np
import pytest

from gptlite.engine import backend, fused

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.cuda_available(), reason="no CUDA device (CuPy + driver + GPU)")]

TOL = {np.float32: 2e-5, np.float64: 1e-11}


@pytest.fixture
def cp():
    import cupy

    fused.set_tf32(False)
    return cupy


def _close(dev, host, dt, scale=1.0):
    import cupy

    np.testing.assert_allclose(cupy.asnumpy(dev).astype(np.float64), np.asarray(host, dtype=np.float64),
                               rtol=TOL[dt] * scale, atol=TOL[dt] * scale)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_every_kernel_matches_its_twin(cp, dt):
    rng = np.random.default_rng(0)
    x, r, dy = (rng.standard_normal((6, 7, 200)).astype(dt) for _ in range(3))  # C=200: not a multiple of the block
    w, b = rng.standard_normal(200).astype(dt), rng.standard_normal(200).astype(dt)
    y_h, c_h = fused.layernorm_forward(x, w, b, residual=r, x_bias=b)
    y_d, c_d = fused.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), residual=cp.asarray(r),
                                       x_bias=cp.asarray(b))
    _close(y_d, y_h, dt)
    for dh, dd in zip(fused.layernorm_backward(dy, c_h, dresidual=r),
                      fused.layernorm_backward(cp.asarray(dy), c_d, dresidual=cp.asarray(r))):
        _close(dd, dh, dt, 10)
    yh, ph = fused.bias_gelu_forward(x, b)
    yd, pd = fused.bias_gelu_forward(cp.asarray(x), cp.asarray(b))
    _close(yd, yh, dt)
    for a, c in zip(fused.bias_gelu_backward(dy, ph), fused.bias_gelu_backward(cp.asarray(dy), pd)):
        _close(c, a, dt, 10)
    for Tq, Tk in ((33, 33), (5, 40), (300, 300)):
        s, dp = rng.standard_normal((2, 3, Tq, Tk)).astype(dt), rng.standard_normal((2, 3, Tq, Tk)).astype(dt)
        p_h = fused.causal_softmax_forward(s, 0.125)
        p_d = fused.causal_softmax_forward(cp.asarray(s), 0.125)
        _close(p_d, p_h, dt)
        _close(fused.causal_softmax_backward(cp.asarray(dp), p_d, 0.125), fused.causal_softmax_backward(dp, p_h, 0.125), dt, 10)
    N, C, V = 70, 64, 1000
    h, wte = rng.standard_normal((N, C)).astype(dt), rng.standard_normal((V, C)).astype(dt) * 0.1
    t = rng.integers(0, V, N)
    t[3] = -1
    lh, dhh, dwh = fused.lm_head_cross_entropy(h, wte, t, chunk=32)
    ld, dhd, dwd = fused.lm_head_cross_entropy(cp.asarray(h), cp.asarray(wte), t, chunk=32)
    _close(ld, lh, dt)
    _close(dhd, dhh, dt, 10)
    _close(dwd, dwh, dt, 10)
    G = rng.standard_normal(10_000).astype(dt)
    P, M, Vv = rng.standard_normal(10_000).astype(dt), np.zeros(10_000, dt), np.zeros(10_000, dt)
    Pd, Gd, Md, Vd = (cp.asarray(a) for a in (P, G, M, Vv))
    for max_norm in (1.0, 0.0):
        nh, sh, fh = fused.clip_scale(fused.grad_sumsq(G), max_norm)
        nd, sd, fd = fused.clip_scale(fused.grad_sumsq(Gd), max_norm)
        _close(nd, nh, dt, 10)
        _close(sd, sh, dt, 10)
        th, td = np.zeros(1, np.int32), cp.zeros(1, dtype=np.int32)
        fused.adamw_flat(P, G, M, Vv, sh, fh, th, n_decay=6000, lr=1e-3)
        fused.adamw_flat(Pd, Gd, Md, Vd, sd, fd, td, n_decay=6000, lr=1e-3)
        assert int(td.get()[0]) == int(th[0]) == 1
        _close(Pd, P, dt, 10)
        _close(Vd, Vv, dt, 10)
    bad = cp.asarray(np.array([1.0, np.nan], dt))
    _, s_bad, f_bad = fused.clip_scale(fused.grad_sumsq(bad), 1.0)
    assert int(f_bad.get()[0]) == 1 and float(s_bad.get()[0]) == 0.0
    ids = rng.integers(0, 50, (4, 300))
    dout = rng.standard_normal((4, 300, 48)).astype(dt)
    e_h = fused.embedding_backward(ids, dout, np.zeros((50, 48), dt))
    e1 = fused.embedding_backward(cp.asarray(ids), cp.asarray(dout), cp.zeros((50, 48), dtype=dt))
    e2 = fused.embedding_backward(cp.asarray(ids), cp.asarray(dout), cp.zeros((50, 48), dtype=dt))
    _close(e1, e_h, dt, 10)
    np.testing.assert_array_equal(cp.asnumpy(e1), cp.asnumpy(e2))  # no atomics: the same bits


def _hf_case():
    """A 2-layer GPT-2 and a batch, with HF's float64 logits, loss and gradients."""
    pytest.importorskip("torch")
    import hf_reference as hf
    from gptlite.engine.model import GPTConfig

    cfg = GPTConfig(vocab_size=1000, n_positions=128, n_embd=128, n_layer=2, n_head=4)
    ref = hf.hf_model(cfg, seed=0, dtype="float64")
    params = hf.params_from_hf(ref, cfg, dtype="float32")
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 1000, (2, 96)), rng.integers(0, 1000, (2, 96))
    return cfg, params, idx, targets, hf.hf_loss_and_grads(ref, idx, targets, cfg)


@pytest.mark.parametrize("tf32,tol_logits,tol_grad", [(False, 1e-4, 1e-3), (True, 2e-2, 2e-2)], ids=["fp32", "tf32"])
def test_model_matches_hf_on_gpu(cp, tf32, tol_logits, tol_grad):
    import hf_reference as hf
    from gptlite.engine.model import GPT

    cfg, params, idx, targets, (hl, hloss, hgrads) = _hf_case()
    fused.set_tf32(tf32)
    try:
        m = GPT(cfg, params=params, dtype="float32", device="cuda")
        logits = cp.asnumpy(m.logits(idx))
        assert np.abs(logits - hl).max() <= tol_logits * max(1.0, np.abs(hl).max())
        loss, grads = m.loss_and_grads(idx, targets)
        assert abs(float(loss) - hloss) <= tol_logits * max(1.0, abs(hloss))
        worst = max((hf.rel_err(grads[k], hgrads[k]), k) for k in hgrads)
        assert worst[0] <= tol_grad, worst
    finally:
        fused.set_tf32(False)


def _trainer(tmp_path, name, **kw):
    import test_train as tt
    from gptlite.training import pretrain as T

    return T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / name), **kw), log=lambda m: None)


def test_ten_step_trajectory_and_bitexact_resume_on_gpu(cp, tmp_path):
    cpu = _trainer(tmp_path, "cpu", device="cpu", max_steps=10).run()["losses"]
    full = _trainer(tmp_path, "a", device="cuda", max_steps=10, tf32=False).run()["losses"]
    np.testing.assert_allclose(full, cpu, rtol=1e-4)
    part1 = _trainer(tmp_path, "b", device="cuda", max_steps=10, tf32=False).run(steps=4)["losses"]
    from gptlite.training import pretrain as T
    import test_train as tt

    rest = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", max_steps=10, tf32=False),
                     resume=True, log=lambda m: None).run()["losses"]
    assert full == part1 + rest  # the same bits on the GPU too
    assert all(math.isfinite(v) for v in full)


def test_memory_pool_reaches_a_steady_state_after_step_two(cp, tmp_path):
    """No allocation grows step by step: after step 2 the pool holds the same bytes,
    with the next batch's prefetch slots (pinned host + device) in place."""
    tr = _trainer(tmp_path, "pool", device="cuda", max_steps=8, batch_tokens=64)
    pool = cp.get_default_memory_pool()
    sizes = []
    for _ in range(6):
        tr.train_step()
        cp.cuda.get_current_stream().synchronize()
        sizes.append(pool.total_bytes())
    assert len(set(sizes[1:])) == 1, sizes
    assert any(s.k == tr.batches.position for s in tr.prefetch.slots)


def test_bf16_cast_and_gemm_match_their_twins_on_gpu(cp):
    """The real gl_to_bf16_f32 against the host rounding bit for bit, and the
    real gemmEx (every transposed layout) against the rounded float64 product."""
    from gptlite.engine import bf16
    from gptlite.engine.attention import to_bf16

    be = backend.get_backend("cuda", matmul_dtype="bfloat16")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(100_003) * 10.0 ** rng.integers(-30, 30, 100_003)).astype(np.float32)
    x[:4] = [np.inf, -np.inf, np.nan, -0.0]
    np.testing.assert_array_equal(cp.asnumpy(bf16.to_bf16(cp.asarray(x), be=be)), to_bf16(x))
    M, K, N = 300, 257, 130
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
            b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
            A, B = cp.asarray(a), cp.asarray(b)
            got = bf16.gemm(A.T if ta else A, B.T if tb else B, be=be)
            want = bf16.reference_gemm(a.T if ta else a, b.T if tb else b)
            np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_bf16_word_outputs_of_layernorm_and_gelu_on_gpu(cp):
    """ln_fwd and bias_gelu_fwd writing bf16 words (mixed precision) against their
    twins: the same values to bf16's rounding (one step of it at most)."""
    from gptlite.engine.attention import from_bf16

    rng = np.random.default_rng(3)
    x, r = (rng.standard_normal((64, 300)).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    yh, _ = fused.layernorm_forward(x, w, b, residual=r, words=True)
    yd, _ = fused.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), residual=cp.asarray(r), words=True)
    assert yd.dtype == np.uint16
    np.testing.assert_allclose(from_bf16(cp.asnumpy(yd)), from_bf16(yh), rtol=2 ** -7, atol=1e-6)
    gh, _ = fused.bias_gelu_forward(x, b, words=True)
    gd, _ = fused.bias_gelu_forward(cp.asarray(x), cp.asarray(b), words=True)
    np.testing.assert_allclose(from_bf16(cp.asnumpy(gd)), from_bf16(gh), rtol=2 ** -7, atol=1e-6)


def test_bf16_model_against_hf_float64_on_gpu(cp):
    """Mixed precision against the float64 reference: logits within 3e-2 of the
    largest logit and every gradient within 5e-2 relative (bf16 keeps 8 bits of
    mantissa in every matmul operand; the accumulation is float32)."""
    import hf_reference as hf
    from gptlite.engine.model import GPT

    cfg, params, idx, targets, (hl, hloss, hgrads) = _hf_case()
    m = GPT(cfg, params=params, dtype="bfloat16", device="cuda")
    logits = cp.asnumpy(m.logits(idx))
    assert np.abs(logits - hl).max() <= 3e-2 * max(1.0, np.abs(hl).max())
    loss, grads = m.loss_and_grads(idx, targets)
    assert abs(float(loss) - hloss) <= 1e-2 * max(1.0, abs(hloss))
    worst = max((hf.rel_err(grads[k], hgrads[k]), k) for k in hgrads)
    assert worst[0] <= 5e-2, worst


def test_bf16_training_follows_float32_and_resumes_bitexact_on_gpu(cp, tmp_path):
    f32 = _trainer(tmp_path, "f32", device="cuda", max_steps=10, tf32=False).run()["losses"]
    full = _trainer(tmp_path, "a", device="cuda", max_steps=10, dtype="bfloat16").run()["losses"]
    np.testing.assert_allclose(full, f32, rtol=3e-2)
    part1 = _trainer(tmp_path, "b", device="cuda", max_steps=10, dtype="bfloat16").run(steps=4)["losses"]
    from gptlite.training import pretrain as T
    import test_train as tt

    rest = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", max_steps=10, dtype="bfloat16"),
                     resume=True, log=lambda m: None).run()["losses"]
    assert full == part1 + rest
