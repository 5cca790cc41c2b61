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
            names = [f"fa_{base}_{sfx}"] if base in ("bwd_pre", "dec_comb") else [f"fa_{base}_{sfx}_d{d}" for d in fa.DMAXES]
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
