"""Flash attention's NumPy twins (the same tiling and online softmax as
engine/cuda/flash_attention.cu) against the materialised-scores reference in
engine/ops.py, forward and backward, causal, T not a multiple of the tile, and
the .cu file's entry points as NVRTC compiles them."""
import re

import numpy as np
import pytest

import cuda_sources as cs
from gptlite.engine import attention as fa
from gptlite.engine import ops

TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("T,H,D", [(37, 2, 32), (70, 2, 64), (45, 1, 128), (5, 3, 8), (33, 2, 100)])
def test_flash_twin_matches_reference(dt, T, H, D):
    rng = np.random.default_rng(T * D)
    B, C = 2, H * D
    qkv = rng.standard_normal((B * T, 3 * C)).astype(dt)
    dy = rng.standard_normal((B * T, C)).astype(dt)
    y0, c0 = ops.attention_forward(qkv.copy(), H, B, T)
    d0 = ops.attention_backward(dy, c0)
    y1, c1 = fa.flash_attention_forward(qkv, H, B, T)
    d1 = fa.flash_attention_backward(dy, c1)
    assert c1.lse.shape == (B * H, T)  # O(T) per row is all the backward keeps
    np.testing.assert_allclose(y1, y0, rtol=TOL[dt], atol=TOL[dt])
    np.testing.assert_allclose(d1, d0, rtol=TOL[dt], atol=TOL[dt])


def test_bf16_words_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, np.nan], dtype=np.float32)
    w = fa.to_bf16(x)
    # 1 + 2^-8 is a tie: rounds to the even 1.0; 1 + 3*2^-8 is a tie: rounds up to 1 + 2^-6
    np.testing.assert_array_equal(fa.from_bf16(w)[:5], np.array([1.0, 1.0, 1.015625, -2.5, np.inf], np.float32))
    assert np.isnan(fa.from_bf16(w)[5])


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="head size 160 exceeds"):
        fa.flash_attention_forward(np.zeros((4, 3 * 160)), 1, 1, 4)
    with pytest.raises(ValueError, match="expected \\(B\\*T=8"):
        fa.flash_attention_forward(np.zeros((4, 96)), 1, 2, 4)
    with pytest.raises(KeyError, match="unknown flash-attention kernel"):
        fa.check_launch("fa_fwd_f32_d48", (1, 1), (fa.THREADS,))
    with pytest.raises(ValueError, match="written for"):
        fa.check_launch("fa_fwd_f32_d64", (1, 1), (64,))


@pytest.mark.skipif(cs.nvrtc() is None, reason="cupy / nvidia-cuda-nvrtc not installed")
def test_every_entry_point_is_in_the_ptx():
    src = open(fa.CU_FILE).read()
    ptx = cs.compile_source(src, "flash_attention.cu", "90").decode()
    entries = set(re.findall(r"\.entry (\w+)", ptx))
    for base in fa.KERNEL_TWINS:
        for sfx in ("f32", "f64", "bf16"):
            names = [f"fa_{base}_{sfx}"] if base in fa.UNTILED else [f"fa_{base}_{sfx}_d{d}" for d in fa.DMAXES]
            for n in names:
                assert n in entries, n
                fa._parse(n)


def test_stand_in_launches_the_fa_kernels_as_their_twins(monkeypatch):
    """On the CuPy path the functions launch fa_* through RawModule; the stand-in runs
    each launch as its twin, so the device results equal the NumPy path's bit for bit,
    and each launch is counted by name."""
    import fake_cupy

    rng = np.random.default_rng(5)
    B, T, H, D = 2, 41, 3, 16
    qkv = rng.standard_normal((B * T, 3 * H * D))
    dy = rng.standard_normal((B * T, H * D))
    y0, c0 = fa.flash_attention_forward(qkv, H, B, T)
    d0 = fa.flash_attention_backward(dy, c0)
    kc, vc = (rng.standard_normal((B, H, 50, D)) for _ in range(2))
    pad = np.array([0, 7])
    dec0 = fa.decode_attention(qkv[:B], kc, vc, 45, pad)
    monkeypatch.setattr(fa, "_module", object())  # a stale module: install() must drop it
    cp = fake_cupy.install(monkeypatch)
    assert fa._module is None
    fake_cupy.reset_counts()
    y1, c1 = fa.flash_attention_forward(cp.asarray(qkv), H, B, T)
    d1 = fa.flash_attention_backward(cp.asarray(dy), c1)
    dec1 = fa.decode_attention(cp.asarray(qkv[:B]), cp.asarray(kc), cp.asarray(vc), 45, cp.asarray(pad))
    for got, want in ((y1, y0), (c1.lse, c0.lse), (d1, d0), (dec1, dec0)):
        assert isinstance(got, cp.ndarray)
        np.testing.assert_array_equal(np.asarray(got), want)
    assert fake_cupy.KERNEL_LAUNCHES == {"fa_fwd_f64_d32": 1, "fa_bwd_pre_f64": 1, "fa_bwd_dkdv_f64_d32": 1,
                                         "fa_bwd_dq_f64_d32": 1, "fa_dec_part_f64_d32": 1, "fa_dec_comb_f64": 1}
    assert fake_cupy.COUNTS["syncs"] == 0
    with pytest.raises(KeyError, match="unknown flash-attention kernel 'fa_fwd_f16_d64'"):
        fa.module().get_function("fa_fwd_f16_d64")
    with pytest.raises(ValueError, match="written for"):
        fa.module().get_function("fa_fwd_f64_d32")((1, 1), (64,), ())


FLASH_CFG = {
    "gpt2": dict(n_layer=2, n_embd=48, n_head=3, n_positions=80, vocab_size=101),
    "gpt1": dict(n_layer=2, n_embd=48, n_head=3, n_positions=80, vocab_size=101, layout="gpt1"),
}
MODEL_TOL = {"float64": 1e-10, "float32": 1e-5}


def _h(a):
    return np.array(a).view(np.ndarray)


def _flash_launches(fake):
    return {k: v for k, v in fake.KERNEL_LAUNCHES.items() if k.startswith("fa_")}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layout", list(FLASH_CFG))
def test_model_on_the_cupy_path_runs_flash_and_matches_numpy(monkeypatch, dtype, layout):
    """Under the stand-in the CuPy path's logits, loss, every gradient and greedy
    KV-cache decoding (a left-padded prompt, then one token at a time) equal the NumPy
    path's (which materialises the scores), and it is the flash kernels that ran:
    one forward per layer per call, three backward launches per layer, two decode
    launches per layer per new token, no row-softmax kernel anywhere."""
    import fake_cupy
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.generate import generate

    cfg = GPTConfig(**FLASH_CFG[layout])
    L, tol = cfg.n_layer, MODEL_TOL[dtype]
    rng = np.random.default_rng(11)
    B, T = 2, 45  # two query tiles, the second partial
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    prompts = [[int(t) for t in idx[0, :37]], [int(t) for t in idx[1, :5]]]  # pad 32: a whole masked key tile
    cpu = GPT(cfg, dtype=dtype, seed=4, device="cpu")
    logits = cpu.logits(idx)
    loss, grads = cpu.loss_and_grads(idx, targets)
    gen = generate(cpu, prompts, 6, temperature=0)

    cp = fake_cupy.install(monkeypatch)
    gpu = GPT(cfg, dtype=dtype, seed=4, device="cuda")
    sfx = {"float64": "f64", "float32": "f32"}[dtype]
    fake_cupy.reset_counts()
    glogits = gpu.logits(idx)
    assert _flash_launches(fake_cupy) == {f"fa_fwd_{sfx}_d32": L}
    fake_cupy.reset_counts()
    gloss, ggrads = gpu.loss_and_grads(idx, targets)
    assert _flash_launches(fake_cupy) == {f"fa_fwd_{sfx}_d32": L, f"fa_bwd_pre_{sfx}": L,
                                          f"fa_bwd_dkdv_{sfx}_d32": L, f"fa_bwd_dq_{sfx}_d32": L}
    assert not any(k.startswith("softmax_") for k in fake_cupy.KERNEL_LAUNCHES), fake_cupy.KERNEL_LAUNCHES
    assert fake_cupy.COUNTS["syncs"] == 0, fake_cupy.SYNC_SITES
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(_h(glogits), logits, rtol=tol, atol=tol * scale)
    assert abs(float(gloss) - loss) <= tol * abs(loss)
    for k, g in grads.items():
        assert isinstance(ggrads[k], cp.ndarray) and ggrads[k].dtype == g.dtype, k
        np.testing.assert_allclose(_h(ggrads[k]), g, rtol=tol * 10, atol=tol * max(1.0, float(np.abs(g).max())), err_msg=k)
    fake_cupy.reset_counts()
    assert generate(gpu, prompts, 6, temperature=0) == gen
    # the prompt: one causal forward with the padding mask; then 5 fed tokens, each two decode launches
    # and (the graphed steps: the column on the device) the KV write
    assert _flash_launches(fake_cupy) == {f"fa_fwd_{sfx}_d32": L, f"fa_dec_part_{sfx}_d32": 5 * L,
                                          f"fa_dec_comb_{sfx}": 5 * L, f"fa_kv_append_{sfx}": 5 * L}
    assert not any(k.startswith("softmax_") for k in fake_cupy.KERNEL_LAUNCHES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kv_cache_decoding_on_the_cupy_path_matches_the_full_forward(monkeypatch, dtype):
    """decode() on the CuPy path, padded and not: the prompt, single tokens (flash) and
    a chunk of several tokens after the prompt (the materialised scores with the mask)
    give the logits of the full forward of the NumPy path."""
    import fake_cupy
    from gptlite.engine.model import GPT, GPTConfig

    cfg = GPTConfig(**FLASH_CFG["gpt2"])
    tol = MODEL_TOL[dtype]
    rng = np.random.default_rng(12)
    B, T = 3, 40
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    cpu = GPT(cfg, dtype=dtype, seed=5, device="cpu")
    full = cpu.logits(idx)
    pad = np.array([0, 3, 34])
    padded = [cpu.logits(idx[b:b + 1, pad[b]:])[0] for b in range(B)]  # each row alone, unpadded
    fake_cupy.install(monkeypatch)
    gpu = GPT(cfg, dtype=dtype, seed=5, device="cuda")
    for p in (None, pad):
        kv = gpu.kv_cache(B, T)
        fake_cupy.reset_counts()
        parts = [gpu.decode(idx[:, :35], kv, pad=p), gpu.decode(idx[:, 35:36], kv), gpu.decode(idx[:, 36:39], kv),
                 gpu.decode(idx[:, 39:], kv)]
        got = np.concatenate([_h(x) for x in parts], axis=1)
        n = cfg.n_layer
        assert _flash_launches(fake_cupy) == {"fa_fwd_%s_d32" % ("f64" if dtype == "float64" else "f32"): n,
                                              "fa_dec_part_%s_d32" % ("f64" if dtype == "float64" else "f32"): 2 * n,
                                              "fa_dec_comb_%s" % ("f64" if dtype == "float64" else "f32"): 2 * n}
        scale = float(np.abs(full).max())
        if p is None:
            np.testing.assert_allclose(got, full, rtol=tol, atol=tol * scale)
        else:
            for b in range(B):
                np.testing.assert_allclose(got[b, pad[b]:], padded[b], rtol=tol, atol=tol * scale, err_msg=f"row {b}")


# -- bf16 entry points, the padded forward, the split-K decode ---------------------------


def _bf16_round(a):
    return fa.from_bf16(fa.to_bf16(a))


@pytest.mark.parametrize("T,H,D", [(37, 2, 32), (70, 2, 64), (45, 1, 128), (33, 2, 100)])
def test_bf16_twin_against_float32_of_the_rounded_inputs(T, H, D):
    """The bf16 kernels' twins: words in, float32 accumulation, words out. Forward
    and backward equal the float32 reference on the bf16-rounded inputs to bf16's
    rounding (half an ulp: 2^-8 relative, forward; the backward also sees y rounded,
    through the dsum term); the forward's words are the float32 twin's output rounded
    to nearest-even, bit for bit (same float32 arithmetic, one rounding on store)."""
    rng = np.random.default_rng(T + D)
    B, C = 2, H * D
    qkv = _bf16_round(rng.standard_normal((B * T, 3 * C)).astype(np.float32))
    dy = _bf16_round(rng.standard_normal((B * T, C)).astype(np.float32))
    y0, c0 = ops.attention_forward(qkv.copy(), H, B, T)
    d0 = ops.attention_backward(dy, c0)
    yw, cw = fa.flash_attention_forward(fa.to_bf16(qkv), H, B, T)
    dw = fa.flash_attention_backward(fa.to_bf16(dy), cw)
    assert yw.dtype == dw.dtype == np.uint16 and cw.lse.dtype == np.float32
    y = fa.from_bf16(yw)
    assert np.all(np.abs(y - y0) <= 2.0 ** -8 * np.abs(y0) + 1e-6)
    yf, _ = fa.flash_attention_forward(qkv, H, B, T)
    np.testing.assert_array_equal(yw, fa.to_bf16(yf))
    d = fa.from_bf16(dw)
    np.testing.assert_allclose(d, d0, rtol=2e-2, atol=2e-2 * float(np.abs(d0).max()))
    np.testing.assert_allclose(cw.lse, fa.flash_attention_forward(qkv, H, B, T)[1].lse, rtol=0, atol=0)


def _padded_reference(qkv, H, B, T, pad):
    """The model's prompt mask, materialised: key j visible to query i if j <= i and
    j >= pad[b], or j == i."""
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    hide = (j > i)[None] | ((j[None] < pad[:, None, None]) & (j != i)[None])
    bias = np.where(hide, -np.inf, 0.0).astype(qkv.dtype)[:, None]
    return ops.attention_forward(qkv.copy(), H, B, T, bias)[0]


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_padded_forward_twin_matches_the_masked_reference(dt):
    """fa_fwd with left padding (KV-cache prompts): pads of 0, one key, a whole key
    tile and more (the skipped tiles of a row), and all but the last position."""
    rng = np.random.default_rng(3)
    B, T, H, D = 5, 70, 2, 24
    qkv = rng.standard_normal((B * T, 3 * H * D)).astype(dt)
    pad = np.array([0, 1, 32, 45, T - 1])
    y, cache = fa.flash_attention_forward(qkv, H, B, T, pad=pad)
    np.testing.assert_allclose(y, _padded_reference(qkv, H, B, T, pad), rtol=TOL[dt], atol=TOL[dt])
    assert np.isfinite(cache.lse).all()
    with pytest.raises(ValueError, match="pad has shape \\(4,\\), expected \\(5,\\)"):
        fa.flash_attention_forward(qkv, H, B, T, pad=pad[:4])


def _decode_reference(q, kc, vc, S, pad):
    """One query per (b, h) over cache columns [0, S), left padding hidden except the
    query's own column S-1; float64."""
    B, H, L, D = kc.shape
    q = q[:, :H * D].reshape(B, H, D).astype(np.float64)
    k, v = kc[:, :, :S].astype(np.float64), vc[:, :, :S].astype(np.float64)
    s = np.einsum("bhd,bhjd->bhj", q, k) / np.sqrt(D)
    j = np.arange(S)
    p0 = np.zeros(B, np.int64) if pad is None else pad
    s = np.where(((j[None] >= p0[:, None]) | (j[None] == S - 1))[:, None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhj,bhjd->bhd", p, v).reshape(B, H * D)


DEC_CASES = [(1, None), (1, "all"), (7, None), (64, None), (65, "mixed"), (129, None), (333, "mixed"), (333, "late")]


@pytest.mark.parametrize("S,padkind", DEC_CASES)
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_split_decode_twin_matches_reference_over_a_cache(dt, S, padkind):
    """The split-K decode twin (fa_dec_part + fa_dec_comb) against softmax attention
    over the filled cache columns: a single key, odd lengths, exactly one split and
    one past it, several splits, splits wholly hidden by padding (their l is 0 and the
    combine skips them); the columns past S hold NaN, so reading one would show."""
    rng = np.random.default_rng(S)
    B, H, D = 3, 2, 40
    L = S + 5
    qkv = rng.standard_normal((B, 3 * H * D)).astype(dt)
    kc, vc = (rng.standard_normal((B, H, L, D)).astype(dt) for _ in range(2))
    kc[:, :, S:] = vc[:, :, S:] = np.nan
    pad = {None: None, "all": np.array([0, 1, 1]), "mixed": np.array([0, S // 2, S - 1]),
           "late": np.array([200, 280, 332])}[padkind]
    pad = None if pad is None else np.minimum(pad, S)  # pad == S: every column but the query's own is padding
    nsplit, chunk = fa.decode_splits(S, B * H)
    assert nsplit == -(-S // chunk) and (S < 2 * fa.DEC_MIN_CHUNK or nsplit > 1)
    y = fa.decode_attention(qkv, kc, vc, S, pad)
    assert y.dtype == dt and y.shape == (B, H * D)
    np.testing.assert_allclose(y, _decode_reference(qkv, kc, vc, S, pad), rtol=TOL[dt], atol=TOL[dt])


@pytest.mark.parametrize("S", [1, 65, 333])
def test_split_decode_bf16_twin(S):
    """bf16 caches and query: the float32 result of the rounded inputs, to bf16's
    rounding of the output."""
    rng = np.random.default_rng(S + 1)
    B, H, D = 2, 3, 64
    qkv = _bf16_round(rng.standard_normal((B, 3 * H * D)).astype(np.float32))
    kc, vc = (_bf16_round(rng.standard_normal((B, H, S, D)).astype(np.float32)) for _ in range(2))
    pad = np.array([0, S // 3])
    ref = _decode_reference(qkv, kc, vc, S, pad)
    yw = fa.decode_attention(fa.to_bf16(qkv), fa.to_bf16(kc), fa.to_bf16(vc), S, pad)
    assert yw.dtype == np.uint16
    assert np.all(np.abs(fa.from_bf16(yw) - ref) <= 2.0 ** -8 * np.abs(ref) + 1e-6)
    np.testing.assert_array_equal(yw, fa.to_bf16(fa.decode_attention(qkv, kc, vc, S, pad)))


def test_decode_refuses_bad_input_by_name():
    kc = np.zeros((2, 2, 10, 8))
    with pytest.raises(ValueError, match="11 filled columns, the cache has 10"):
        fa.decode_attention(np.zeros((2, 48)), kc, kc, 11)
    with pytest.raises(ValueError, match="do not fit"):
        fa.decode_attention(np.zeros((2, 40)), kc, kc, 3)
    with pytest.raises(TypeError, match="dtypes"):
        fa.decode_attention(np.zeros((2, 48), np.float32), kc, kc, 3)


# -- the real kernels (a GPU; run by scripts/gpu_check.sh) -------------------------------

from gptlite.engine import backend as _backend  # noqa: E402

needs_gpu = pytest.mark.skipif(not _backend.cuda_available(), reason="no CUDA device (CuPy + driver + GPU)")
GPU_TOL = {"f64": 1e-11, "f32": 2e-5}


def _gpu_close(dev, want, sfx, what, scale=1.0):
    import cupy

    got = cupy.asnumpy(dev)
    if sfx == "bf16":  # one bf16 ulp (2^-7 relative): the order of float32 sums differs from NumPy's
        got, want = fa.from_bf16(got), fa.from_bf16(want)
        tol = 2.0 ** -7 * scale
    else:
        tol = GPU_TOL[sfx] * scale
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, np.float64), rtol=tol,
                               atol=tol * max(1.0, float(np.abs(want.astype(np.float64)).max())), err_msg=what)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("sfx", ["f64", "f32", "bf16"])
@pytest.mark.parametrize("T,H,D", [(1, 2, 64), (37, 2, 32), (130, 3, 64), (45, 1, 128), (33, 2, 100)])
def test_real_kernels_match_their_twins(sfx, T, H, D):
    """Every fa_* kernel on the GPU against its NumPy twin: forward (plain and left-
    padded), log-sum-exp, the three-kernel backward (and the same bits twice: no
    atomics), the split-K decode over a cache with padding."""
    import cupy as cp

    rng = np.random.default_rng(T * D + len(sfx))
    B, C = 3, H * D
    dt = {"f64": np.float64, "f32": np.float32, "bf16": np.float32}[sfx]

    def store(a):
        a = a.astype(dt)
        return fa.to_bf16(a) if sfx == "bf16" else a

    qkv, dy = store(rng.standard_normal((B * T, 3 * C))), store(rng.standard_normal((B * T, C)))
    pad = np.array([0, min(T - 1, 33), T - 1])
    y_h, c_h = fa.flash_attention_forward(qkv, H, B, T)
    d_h = fa.flash_attention_backward(dy, c_h)
    yp_h, _ = fa.flash_attention_forward(qkv, H, B, T, pad=pad)
    y_d, c_d = fa.flash_attention_forward(cp.asarray(qkv), H, B, T)
    d_d = fa.flash_attention_backward(cp.asarray(dy), c_d)
    yp_d, _ = fa.flash_attention_forward(cp.asarray(qkv), H, B, T, pad=cp.asarray(pad))
    _gpu_close(y_d, y_h, sfx, "y")
    _gpu_close(yp_d, yp_h, sfx, "padded y")
    np.testing.assert_allclose(cp.asnumpy(c_d.lse), c_h.lse, rtol=GPU_TOL.get(sfx, 2e-5), atol=GPU_TOL.get(sfx, 2e-5))
    _gpu_close(d_d, d_h, sfx, "dqkv", scale=2 if sfx == "bf16" else 10)
    again = fa.flash_attention_backward(cp.asarray(dy), c_d)
    np.testing.assert_array_equal(cp.asnumpy(again), cp.asnumpy(d_d))
    S, L = 2 * T + 67, 2 * T + 70  # several splits, columns past S never read (NaN)
    kc, vc = store(rng.standard_normal((B, H, L, D))), store(rng.standard_normal((B, H, L, D)))
    nan = fa.to_bf16(np.float32(np.nan)) if sfx == "bf16" else np.nan
    kc[:, :, S:] = vc[:, :, S:] = nan
    q = qkv[:B]
    for p in (None, np.array([0, S // 2, S - 1])):
        dec_h = fa.decode_attention(q, kc, vc, S, p)
        dec_d = fa.decode_attention(cp.asarray(q), cp.asarray(kc), cp.asarray(vc), S, None if p is None else cp.asarray(p))
        _gpu_close(dec_d, dec_h, sfx, f"decode pad={p}")


@pytest.mark.gpu
@needs_gpu
def test_real_model_flash_matches_the_materialised_path_on_the_gpu(monkeypatch):
    """The model on the GPU, float32 without TF32: flash attention's logits, loss and
    gradients against the same model with the materialised scores (the fallback)."""
    import cupy as cp

    from gptlite.engine import attention, fused
    from gptlite.engine.model import GPT, GPTConfig

    fused.set_tf32(False)
    cfg = GPTConfig(n_layer=2, n_embd=128, n_head=2, n_positions=160, vocab_size=300)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 300, (2, 150)), rng.integers(0, 300, (2, 150))
    m = GPT(cfg, dtype="float32", seed=1, device="cuda")
    loss, grads = m.loss_and_grads(idx, targets)
    monkeypatch.setattr(attention, "use_flash", lambda *a: False)
    loss0, grads0 = m.loss_and_grads(idx, targets)
    assert abs(float(loss) - float(loss0)) <= 2e-6 * abs(float(loss0))
    for k, g in grads0.items():
        g = cp.asnumpy(g)
        np.testing.assert_allclose(cp.asnumpy(grads[k]), g, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(g).max())), err_msg=k)
