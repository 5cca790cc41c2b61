"""Each op's backward against finite differences (float64), plus op-level checks.

The loss for a gradient check is L = sum(out * R) with a fixed random R, so
dL/dout = R; the analytic input gradients from X_backward(R, cache) must match
central differences of L.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from gptlite.engine import ops

RNG = np.random.default_rng(1234)


def numgrad(f, x, eps=1e-6):
    """Central-difference gradient of the scalar f() with respect to array x (in place)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_close_grad(analytic, numeric, tol=1e-6):
    err = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert err < tol, f"relative gradient error {err:.3e}"


def test_embedding_gradcheck_with_repeated_ids():
    V, P, C = 7, 6, 3
    wte, wpe = RNG.standard_normal((V, C)), RNG.standard_normal((P, C))
    idx = np.array([[1, 3, 1, 1, 0], [3, 3, 6, 2, 1]])
    R = RNG.standard_normal((2, 5, C))
    out, cache = ops.embedding_forward(idx, wte, wpe)
    np.testing.assert_array_equal(out[1, 2], wte[6] + wpe[2])
    dwte, dwpe = ops.embedding_backward(R, cache)
    f = lambda: float((ops.embedding_forward(idx, wte, wpe)[0] * R).sum())
    assert_close_grad(dwte, numgrad(f, wte))
    assert_close_grad(dwpe, numgrad(f, wpe))
    # explicit positions per row (the left-padded decoding path)
    pos = np.array([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    out, cache = ops.embedding_forward(idx, wte, wpe, pos)
    _, dwpe2 = ops.embedding_backward(R, cache)
    f2 = lambda: float((ops.embedding_forward(idx, wte, wpe, pos)[0] * R).sum())
    assert_close_grad(dwpe2, numgrad(f2, wpe))


def test_scatter_add_rows_matches_add_at():
    idx = RNG.integers(0, 50, 1000)
    vals = RNG.standard_normal((1000, 4))
    ref = np.zeros((50, 4))
    np.add.at(ref, idx, vals)
    np.testing.assert_allclose(ops._scatter_add_rows(50, idx, vals), ref, rtol=1e-12, atol=1e-12)


def test_layernorm_gradcheck():
    x = RNG.standard_normal((2, 3, 5)) * 3 + 1
    w, b = RNG.standard_normal(5), RNG.standard_normal(5)
    R = RNG.standard_normal(x.shape)
    y, cache = ops.layernorm_forward(x, w, b, 1e-5)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dx, dw, db = ops.layernorm_backward(R, cache)
    f = lambda: float((ops.layernorm_forward(x, w, b, 1e-5)[0] * R).sum())
    assert_close_grad(dx, numgrad(f, x))
    assert_close_grad(dw, numgrad(f, w))
    assert_close_grad(db, numgrad(f, b))


def test_linear_gradcheck():
    x, W, b = RNG.standard_normal((6, 4)), RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    R = RNG.standard_normal((6, 3))
    y, cache = ops.linear_forward(x, W, b)
    np.testing.assert_allclose(y, x @ W + b, rtol=1e-12)
    dx, dW, db = ops.linear_backward(R, cache)
    f = lambda: float((ops.linear_forward(x, W, b)[0] * R).sum())
    assert_close_grad(dx, numgrad(f, x))
    assert_close_grad(dW, numgrad(f, W))
    assert_close_grad(db, numgrad(f, b))


@pytest.mark.parametrize("kind", ["gelu_new", "gelu"])
def test_gelu_gradcheck_and_values(kind):
    x = RNG.standard_normal((4, 7)) * 3
    R = RNG.standard_normal(x.shape)
    y, cache = ops.gelu_forward(x.copy(), kind)
    if kind == "gelu_new":
        ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    else:
        ref = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)
    dx = ops.gelu_backward(R, cache)
    f = lambda: float((ops.gelu_forward(x, kind)[0] * R).sum())
    assert_close_grad(dx, numgrad(f, x))


def test_gelu_rejects_unknown_activation():
    with pytest.raises(ValueError, match="relu"):
        ops.gelu_forward(np.zeros(3), "relu")


def test_gelu_float32_stays_float32():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    for kind in ("gelu_new", "gelu"):
        y, cache = ops.gelu_forward(x, kind)
        assert y.dtype == np.float32
        assert ops.gelu_backward(np.ones_like(x), cache).dtype == np.float32


def test_softmax_and_its_backward():
    a = RNG.standard_normal((3, 4, 6))
    a[..., -1] = -np.inf
    s = ops.softmax_inplace(a.copy())
    e = np.exp(a - a.max(-1, keepdims=True))
    np.testing.assert_allclose(s, e / e.sum(-1, keepdims=True), rtol=1e-12)
    assert (s[..., -1] == 0).all()
    x = RNG.standard_normal((2, 5))
    R = RNG.standard_normal((2, 5))
    p = ops.softmax_inplace(x.copy())
    d = ops.softmax_backward_inplace(R.copy(), p)
    f = lambda: float((ops.softmax_inplace(x.copy()) * R).sum())
    assert_close_grad(d, numgrad(f, x))


def test_bmm_matches_matmul_on_strided_views():
    qkv = RNG.standard_normal((2 * 5, 3 * 8))
    q = ops._split_heads(qkv[:, :8], 2, 5, 2)
    k = ops._split_heads(qkv[:, 8:16], 2, 5, 2)
    np.testing.assert_allclose(ops.bmm(q, k.transpose(0, 1, 3, 2)), q @ k.transpose(0, 1, 3, 2), rtol=1e-12)
    out = np.empty((2, 5, 2, 4))
    ops.bmm(q.transpose(0, 1, 3, 2) @ q, k.transpose(0, 1, 3, 2), out=out.transpose(0, 2, 3, 1)[..., :4, :])
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1), (q.transpose(0, 1, 3, 2) @ q) @ k.transpose(0, 1, 3, 2),
                               rtol=1e-12)


def attention_reference(qkv, H, B, T):
    C = qkv.shape[1] // 3
    q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(B, T, H, C // H).transpose(0, 2, 1, 3) for i in range(3))
    att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(C // H)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    return (att @ v).transpose(0, 2, 1, 3).reshape(B * T, C)


def test_attention_gradcheck_and_causality():
    B, T, C, H = 2, 5, 8, 2
    qkv = RNG.standard_normal((B * T, 3 * C))
    R = RNG.standard_normal((B * T, C))
    y, cache = ops.attention_forward(qkv, H, B, T)
    np.testing.assert_allclose(y, attention_reference(qkv, H, B, T), rtol=1e-12, atol=1e-12)
    dqkv = ops.attention_backward(R, cache)
    f = lambda: float((ops.attention_forward(qkv, H, B, T)[0] * R).sum())
    assert_close_grad(dqkv, numgrad(f, qkv))
    # causality: changing the last token changes nothing before it
    qkv2 = qkv.copy()
    qkv2.reshape(B, T, -1)[:, -1] += 1.0
    y2, _ = ops.attention_forward(qkv2, H, B, T)
    np.testing.assert_array_equal(y2.reshape(B, T, C)[:, :-1], y.reshape(B, T, C)[:, :-1])


@pytest.mark.parametrize("T", [64, 70, 131])
def test_causal_attention_blocks_match_the_masked_scores(T):
    """The causal path (no bias: its own layout, blocks past the diagonal skipped)
    against the same attention with the mask given as a bias, at lengths that
    cut the blocks evenly, unevenly and into three; gradients by differences."""
    B, C, H = 3, 8, 2
    qkv = RNG.standard_normal((B * T, 3 * C))
    R = RNG.standard_normal((B * T, C))
    bias = ops.causal_bias(np, T, T, qkv.dtype)[None, None]
    y, cache = ops.attention_forward(qkv, H, B, T)
    y_ref, cache_ref = ops.attention_forward(qkv, H, B, T, bias)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, attention_reference(qkv, H, B, T), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.attention_backward(R, cache), ops.attention_backward(R, cache_ref),
                               rtol=1e-10, atol=1e-12)
    if T == 70:
        qkv1, R1 = qkv[:T].copy(), R[:T]
        f = lambda: float((ops.attention_forward(qkv1, H, 1, T)[0] * R1).sum())
        assert_close_grad(ops.attention_backward(R1, ops.attention_forward(qkv1, H, 1, T)[1]), numgrad(f, qkv1))


def test_residual():
    x, fx = RNG.standard_normal(4), RNG.standard_normal(4)
    out, cache = ops.residual_forward(x, fx)
    np.testing.assert_array_equal(out, x + fx)
    dx, dfx = ops.residual_backward(np.ones(4), cache)
    np.testing.assert_array_equal(dx, np.ones(4))
    np.testing.assert_array_equal(dfx, np.ones(4))
    want = x + fx
    same, _ = ops.residual_forward(x, fx, inplace=True)
    assert same is x and np.array_equal(x, want)


def test_lm_head_gradcheck():
    """The tied head: logits = h @ wte.T; its backward gives dh and the head's share of dwte."""
    h, wte = RNG.standard_normal((5, 4)), RNG.standard_normal((7, 4))
    R = RNG.standard_normal((5, 7))
    logits, cache = ops.lm_head_forward(h, wte)
    np.testing.assert_allclose(logits, h @ wte.T, rtol=1e-12)
    dh, dwte = ops.lm_head_backward(R, cache)
    f = lambda: float((ops.lm_head_forward(h, wte)[0] * R).sum())
    assert_close_grad(dh, numgrad(f, h))
    assert_close_grad(dwte, numgrad(f, wte))


def test_cross_entropy_gradcheck_with_ignore_index():
    logits = RNG.standard_normal((2, 3, 7)) * 2
    targets = np.array([[1, -1, 6], [0, 2, -1]])
    loss, cache = ops.cross_entropy_forward(logits, targets, -1)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = targets != -1
    ref = -np.mean([lp[b, t, targets[b, t]] for b in range(2) for t in range(3) if valid[b, t]])
    assert abs(loss - ref) < 1e-12
    d = ops.cross_entropy_backward(cache)
    assert d.shape == logits.shape
    assert (d[~valid] == 0).all()
    f = lambda: ops.cross_entropy_forward(logits, targets, -1)[0]
    assert_close_grad(d, numgrad(f, logits))


def test_cross_entropy_inplace_equals_copy_and_against_torch():
    torch = pytest.importorskip("torch")
    logits = RNG.standard_normal((4, 9)).astype(np.float32) * 5
    targets = np.array([3, 100 - 100, -100, 8])
    l1, c1 = ops.cross_entropy_forward(logits, targets, ignore_index=-100)
    d1 = ops.cross_entropy_backward(c1).copy()
    buf = logits.copy()
    l2, c2 = ops.cross_entropy_forward(buf, targets, ignore_index=-100, inplace=True)
    d2 = ops.cross_entropy_backward(c2)
    assert l1 == l2 and np.array_equal(d1, d2) and d2.dtype == np.float32
    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(targets), ignore_index=-100)
    tloss.backward()
    assert abs(l1 - float(tloss.detach())) < 1e-5
    np.testing.assert_allclose(d1, tl.grad.numpy(), atol=1e-6)


def test_cross_entropy_all_ignored_and_bad_targets():
    logits = RNG.standard_normal((2, 5))
    loss, cache = ops.cross_entropy_forward(logits, np.array([-1, -1]))
    assert loss == 0.0
    assert (ops.cross_entropy_backward(cache) == 0).all()
    with pytest.raises(ValueError, match="target id 5 at flat position 1"):
        ops.cross_entropy_forward(logits, np.array([0, 5]))
    with pytest.raises(ValueError, match="target id -2"):
        ops.cross_entropy_forward(logits, np.array([-2, 0]))
    with pytest.raises(ValueError, match="shape"):
        ops.cross_entropy_forward(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        ops.cross_entropy_forward(logits, np.array([0.0, 1.0]))


# --------------------------------------------------------------------------
# CuPy: the same ops (and the fused kernels) against the NumPy reference


def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no usable CUDA runtime")
    from gptlite.engine import backend

    if not backend.cuda_available():
        pytest.skip("CuPy sees no GPU")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_ops_match_numpy(dtype):
    cp = _cupy()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    g = lambda a: cp.asarray(a)
    B, T, C, H = 2, 7, 16, 4
    x = RNG.standard_normal((B * T, C)).astype(dtype)
    w, b = RNG.standard_normal(C).astype(dtype), RNG.standard_normal(C).astype(dtype)
    R = RNG.standard_normal((B * T, C)).astype(dtype)
    # layernorm (fused normalise kernel)
    y, c = ops.layernorm_forward(x, w, b)
    yg, cg = ops.layernorm_forward(g(x), g(w), g(b))
    np.testing.assert_allclose(cp.asnumpy(yg), y, **tol)
    for a, ag in zip(ops.layernorm_backward(R, c), ops.layernorm_backward(g(R), cg)):
        np.testing.assert_allclose(cp.asnumpy(ag), a, **tol)
    # gelu (fused kernels)
    for kind in ("gelu_new", "gelu"):
        y, c = ops.gelu_forward(x, kind)
        yg, cg = ops.gelu_forward(g(x), kind)
        np.testing.assert_allclose(cp.asnumpy(yg), y, **tol)
        np.testing.assert_allclose(cp.asnumpy(ops.gelu_backward(g(R), cg)), ops.gelu_backward(R, c), **tol)
    # softmax (row kernel)
    a = RNG.standard_normal((5, 300)).astype(dtype)
    np.testing.assert_allclose(cp.asnumpy(ops.softmax_inplace(g(a))), ops.softmax_inplace(a.copy()), **tol)
    # attention
    qkv = RNG.standard_normal((B * T, 3 * C)).astype(dtype)
    y, c = ops.attention_forward(qkv, H, B, T)
    yg, cg = ops.attention_forward(g(qkv), H, B, T)
    np.testing.assert_allclose(cp.asnumpy(yg), y, **tol)
    np.testing.assert_allclose(cp.asnumpy(ops.attention_backward(g(R), cg)), ops.attention_backward(R, c), **tol)
    # embedding and cross-entropy
    idx = RNG.integers(0, 11, (B, T))
    wte, wpe = RNG.standard_normal((11, C)).astype(dtype), RNG.standard_normal((T, C)).astype(dtype)
    _, c = ops.embedding_forward(idx, wte, wpe)
    _, cg = ops.embedding_forward(g(idx), g(wte), g(wpe))
    for a, ag in zip(ops.embedding_backward(R.reshape(B, T, C), c), ops.embedding_backward(g(R).reshape(B, T, C), cg)):
        np.testing.assert_allclose(cp.asnumpy(ag), a, **tol)
    logits = RNG.standard_normal((B, T, 11)).astype(dtype)
    targets = idx.copy()
    targets[0, 0] = -1
    l, c = ops.cross_entropy_forward(logits, targets)
    lg, cg = ops.cross_entropy_forward(g(logits), g(targets))
    assert abs(l - lg) < 1e-5
    np.testing.assert_allclose(cp.asnumpy(ops.cross_entropy_backward(cg)), ops.cross_entropy_backward(c), **tol)


def test_embedding_backward_accumulates_into_given_dwte():
    V, P, C = 9, 4, 3
    wte, wpe = RNG.standard_normal((V, C)), RNG.standard_normal((P, C))
    idx = np.array([[2, 2, 5, 0]])
    R = RNG.standard_normal((1, 4, C))
    _, cache = ops.embedding_forward(idx, wte, wpe)
    base = RNG.standard_normal((V, C))
    dwte_alone, _ = ops.embedding_backward(R, cache)
    dwte_acc, _ = ops.embedding_backward(R, cache, dwte=base.copy())
    np.testing.assert_allclose(dwte_acc, base + dwte_alone, rtol=1e-12)


def test_keep_freed_memory_applies_once_and_can_be_turned_off():
    import platform
    import subprocess
    import sys

    code = "from gptlite.engine.backend import keep_freed_memory as k; print(k(), k())"
    from conftest import child_env

    env = child_env()
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    env["GPTLITE_KEEP_FREED_MEMORY"] = "0"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert off == ["False", "False"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert on == ["True", "True"]


@pytest.mark.parametrize("act", ops.ACTIVATIONS)
def test_linear_gelu_gradcheck(act):
    x, W, b = RNG.standard_normal((5, 4)), RNG.standard_normal((4, 6)), RNG.standard_normal(6)
    R = RNG.standard_normal((5, 6))
    y, cache = ops.linear_gelu_forward(x, W, b, act)
    ref, _ = ops.gelu_forward(x @ W + b, act)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)
    dx, dW, db = ops.linear_gelu_backward(R, cache)
    f = lambda: float((ops.linear_gelu_forward(x, W, b, act)[0] * R).sum())  # noqa: E731
    assert_close_grad(dx, numgrad(f, x))
    assert_close_grad(dW, numgrad(f, W))
    assert_close_grad(db, numgrad(f, b))


def test_residual_layernorm_and_its_backward_with_the_residual_gradient():
    """s = x + (fx + bias), y = LN(s): the fused op's outputs and, with the stream's
    own gradient D added through ``dresidual``, the gradients of x, fx and the bias."""
    x, fx = RNG.standard_normal((6, 8)), RNG.standard_normal((6, 8))
    w, b, fb = RNG.standard_normal(8), RNG.standard_normal(8), RNG.standard_normal(8)
    R, D = RNG.standard_normal((6, 8)), RNG.standard_normal((6, 8))

    def loss():  # L = sum(y * R) + sum(s * D): s also flows on down the residual stream
        s, y, _ = ops.residual_layernorm_forward(x, fx.copy(), w, b, fx_bias=fb)
        return float((y * R).sum() + (s * D).sum())

    s, y, cache = ops.residual_layernorm_forward(x, fx.copy(), w, b, fx_bias=fb)
    np.testing.assert_allclose(s, x + (fx + fb), rtol=0, atol=0)
    np.testing.assert_allclose(y, ops.layernorm_forward(x + (fx + fb), w, b)[0], rtol=0, atol=0)
    ds, dw, db = ops.layernorm_backward(R, cache, dresidual=D)
    assert_close_grad(ds, numgrad(loss, x))
    assert_close_grad(ds, numgrad(loss, fx))  # d(x + fx) flows to both branches
    assert_close_grad(ds.sum(axis=0), numgrad(loss, fb))
    assert_close_grad(dw, numgrad(loss, w))
    assert_close_grad(db, numgrad(loss, b))
    _, pending, _ = ops.linear_branch_forward(x, RNG.standard_normal((8, 3)), fb[:3])
    assert pending is None  # NumPy adds the bias itself


@pytest.mark.parametrize("M,K,N,transposed", [(1, 768, 2304, False), (3, 512, 1000, False), (1, 768, 5003, True), (16, 64, 4100, False)])
def test_decode_gemv_gives_the_same_bits_inline_and_on_the_pool(monkeypatch, M, K, N, transposed):
    """Decoding GEMVs run their fixed column blocks inline or over the pool, whichever
    was faster lately; the result must not depend on which (determinism under load)."""
    from gptlite.engine import cpu

    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K)).astype(np.float32).T if transposed else rng.standard_normal((K, N)).astype(np.float32)
    assert M * N * K >= cpu._GEMV_BLOCKED_MIN
    outs = []
    for which in (0, 1):
        monkeypatch.setattr(cpu._GemvChoice, "pick", lambda self, w=which: w)
        monkeypatch.setattr(cpu, "workers", lambda: 2)
        outs.append(cpu.matmul(a, b))
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4 * math.sqrt(K))
    edges = cpu._gemv_edges(N)
    assert edges[0][0] == 0 and edges[-1][1] == N and all(e[1] == f[0] for e, f in zip(edges, edges[1:]))
    assert all(j0 % 64 == 0 for j0, _ in edges)


def test_decode_gemv_strategy_follows_the_measured_time():
    from gptlite.engine import cpu

    c = cpu._GemvChoice()
    assert c.pick() == 0  # nothing measured: try inline first
    c.record(0, 1.0)
    assert c.pick() == 1  # then the pool
    c.record(1, 0.1)
    picks = [c.pick() for _ in range(cpu._GEMV_EXPLORE * 2)]
    assert picks.count(1) > picks.count(0) >= 1  # mostly the faster one, and the other now and then
