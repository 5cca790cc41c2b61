"""bfloat16 mixed precision (engine/bf16.py) on the NumPy stand-in for CuPy.

What runs here: the cast kernel's twin against torch's own float32 -> bfloat16
rounding, the GEMM's row-major -> column-major mapping through a stand-in cuBLAS
that reads raw pointers the way cuBLAS does, and the model and training loop with
every matmul on bf16 operands. What needs a GPU (tests/test_gpu_fused.py, marked
``gpu``): the real kernel, the real gemmEx and their speed.
"""
from __future__ import annotations

import numpy as np
import pytest

import fake_cupy
from gptlite.engine import bf16
from gptlite.engine.attention import from_bf16, to_bf16
from gptlite.engine.backend import get_backend
from gptlite.engine.model import GPT, GPTConfig

CFG = GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=40, vocab_size=97)


def _host(a):
    return np.array(a).view(np.ndarray)


def test_host_rounding_matches_torch_bfloat16():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-40, 38, 20000).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8],
                 dtype=np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16(x), want)
    back = from_bf16(want)
    np.testing.assert_array_equal(back, torch.from_numpy(want.view(np.int16)).view(torch.bfloat16).float().numpy())
    nan = to_bf16(np.array([np.nan], np.float32))
    assert np.isnan(from_bf16(nan)).all()


def test_cast_kernel_twin_on_the_stand_in(monkeypatch):
    fake_cupy.install(monkeypatch)
    be = get_backend("cuda", matmul_dtype="bfloat16")
    x = np.random.default_rng(1).standard_normal((33, 7)).astype(np.float32)
    w = bf16.to_bf16(be.xp.asarray(x), be=be)
    assert w.dtype == np.uint16 and w.shape == (33, 7)
    np.testing.assert_array_equal(_host(w), to_bf16(x))
    with pytest.raises(TypeError, match="float32"):
        bf16.to_bf16(be.xp.asarray(x.astype(np.float64)), be=be)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("kinds", ["ff", "wf", "fw", "ww"])  # float32 or bf16 words, per operand
def test_gemm_layouts_against_the_rounded_reference(monkeypatch, ta, tb, kinds):
    """Every combination of transposed views and operand kinds through the stand-in
    cuBLAS, which reads (op, ld) column-major: a wrong flag or leading dimension
    gives wrong numbers (M, K, N all differ, so it cannot pass by symmetry)."""
    cp = fake_cupy.install(monkeypatch)
    be = get_backend("cuda", matmul_dtype="bfloat16")
    rng = np.random.default_rng(2)
    M, K, N = 5, 7, 3
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)

    def dev(x, kind):
        d = cp.asarray(to_bf16(x) if kind == "w" else x)
        return d

    da, db = dev(a, kinds[0]), dev(b, kinds[1])
    A, B = (da.T if ta else da), (db.T if tb else db)
    want = bf16.reference_gemm(a.T if ta else a, b.T if tb else b)
    got = bf16.gemm(A, B, be=be)
    np.testing.assert_allclose(_host(got), want, rtol=1e-6, atol=1e-6)
    # accumulate: beta = 1
    out = cp.asarray(np.ones((M, N), np.float32))
    bf16.gemm(A, B, out=out, accumulate=True, be=be)
    np.testing.assert_allclose(_host(out), want + 1, rtol=1e-6, atol=1e-6)
    # the result differs from the float32 product: the operands really were rounded
    if kinds == "ff":
        assert not np.allclose(_host(got), (a.T if ta else a) @ (b.T if tb else b), rtol=1e-7, atol=0)


def test_gemm_rejects_bad_operands(monkeypatch):
    cp = fake_cupy.install(monkeypatch)
    be = get_backend("cuda", matmul_dtype="bfloat16")
    a = cp.asarray(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="do not chain"):
        bf16.gemm(a, cp.asarray(np.ones((4, 3), np.float32)), be=be)
    with pytest.raises(TypeError, match="float64"):
        bf16.gemm(cp.asarray(np.ones((4, 3))), cp.asarray(np.ones((3, 2), np.float32)), be=be)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        bf16.gemm(a, cp.asarray(np.ones((3, 2), np.float32)), out=cp.asarray(np.ones((2, 4), np.float32)).T, be=be)
    # a zero-length inner dimension is an all-zero product
    z = bf16.gemm(cp.asarray(np.ones((4, 0), np.float32)), cp.asarray(np.ones((0, 2), np.float32)), be=be)
    np.testing.assert_array_equal(_host(z), np.zeros((4, 2), np.float32))


def test_model_step_in_bfloat16_on_the_stand_in(monkeypatch):
    """A training step under mixed precision: every matmul is one bf16 gemmEx with
    a float32 result (12 per layer, 3 for the tied head), the linear layers keep
    their operands as bf16 words, the weights and gradients stay float32, and the
    loss and gradients are the float32 model's to bf16 precision (and not equal)."""
    fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, CFG.vocab_size, (2, 16))
    tgt = rng.integers(0, CFG.vocab_size, (2, 16))
    ref = GPT(CFG, device="cuda", seed=5)
    loss32, g32 = ref.loss_and_grads(idx, tgt)
    model = GPT(CFG, device="cuda", dtype="bfloat16", seed=5)
    assert model.dtype == np.float32 and model.compute_dtype == "bfloat16"
    assert model.backend.matmul_dtype == "bfloat16" and ref.backend.matmul_dtype == "float32"
    fake_cupy.reset_counts()
    loss16, g16 = model.loss_and_grads(idx, tgt)
    gemms = fake_cupy.GEMMS
    assert len(gemms) == 12 * CFG.n_layer + 3
    # casts: the 4 matrices per layer and wte once per forward, the attention output per
    # layer, ln_f's output, each linear's output gradient, the head's one chunk of dlogits
    # (ln_1, ln_2 and GELU write bf16 words themselves)
    L = CFG.n_layer
    assert fake_cupy.KERNEL_LAUNCHES["gl_to_bf16_f32"] == (4 * L + 1) + L + 1 + 4 * L + 1
    assert all(g[5] == bf16.CUDA_R_16BF and g[6] == bf16.CUDA_R_16BF and g[7] == bf16.CUDA_R_32F
               and g[8] == bf16.CUBLAS_COMPUTE_32F for g in gemms)
    assert abs(float(loss16) - float(loss32)) <= 1e-2 * abs(float(loss32))
    assert float(loss16) != float(loss32)
    for name, g in g32.items():
        assert g16[name].dtype == np.float32, name
        g, h = _host(g).astype(np.float64), _host(g16[name]).astype(np.float64)
        assert np.linalg.norm(h - g) <= 3e-2 * np.linalg.norm(g) + 1e-7, name
    _, cache = model.forward(idx)
    for name in ("c_attn", "c_proj", "c_fc", "mlp_proj"):  # inputs and weights cached as bf16 words: half the memory
        assert cache.layers[0][name][0].dtype == np.uint16 and cache.layers[0][name][1].dtype == np.uint16, name


def test_generation_in_bfloat16_on_the_stand_in(monkeypatch):
    from gptlite.generate import generate

    fake_cupy.install(monkeypatch)
    prompt = [5, 17, 3, 44, 8]
    model = GPT(CFG, device="cuda", dtype="bfloat16", seed=5)
    ref = GPT(CFG, device="cuda", seed=5)
    out = generate(model, [prompt], 8, temperature=0)[0]
    assert len(out) == 8 and all(0 <= t < CFG.vocab_size for t in out)
    # the weights are cast once per generation: a decode step casts only its activations
    kv = model.kv_cache(1, 20)
    model.decode(np.array([prompt]), kv)
    w = kv.weights
    assert set(w) == {n for n, a in model.params.items() if a.ndim == 2 and n != "wpe.weight"}
    fake_cupy.reset_counts()
    model.decode(np.array([[7]]), kv)
    assert kv.weights is w
    # cast launches per token: the attention output (c_proj's input) per layer and the head's input;
    # ln_1, ln_2 and GELU write their outputs as bf16 words themselves
    assert fake_cupy.KERNEL_LAUNCHES["gl_to_bf16_f32"] == CFG.n_layer + 1
    # the decode step's logits are the float32 model's to bf16 precision
    l16 = _host(model.logits(np.array([prompt])))
    l32 = _host(ref.logits(np.array([prompt])))
    assert np.abs(l16 - l32).max() <= 5e-2 * np.abs(l32).max() and not np.array_equal(l16, l32)


def test_training_in_bfloat16_on_the_stand_in(monkeypatch, tmp_path):
    """`gptlite train` with dtype bfloat16: float32 checkpoints, losses that follow
    the float32 run at bf16 precision, one host read per step, an exact resume."""
    import test_train as tt
    from gptlite.engine.checkpoint import read_safetensors
    from gptlite.training import pretrain as T

    fake_cupy.install(monkeypatch)
    f32 = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "f32"), device="cuda"), log=lambda m: None).run()["losses"]
    tr = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "a"), device="cuda", dtype="bfloat16"), log=lambda m: None)
    assert tr.model.compute_dtype == "bfloat16"
    full = tr.run()["losses"]
    np.testing.assert_allclose(full, f32, rtol=2e-2)
    assert full != f32
    fake_cupy.reset_counts()
    tr.train_step()
    assert fake_cupy.COUNTS["syncs"] == 1, fake_cupy.SYNC_SITES
    ck = tmp_path / "a" / "ckpt" / "model.safetensors"
    assert all(a.dtype == np.float32 for a in read_safetensors(ck).values())
    first = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", dtype="bfloat16"), log=lambda m: None)
    part1 = first.run(steps=4)["losses"]
    second = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", dtype="bfloat16"), resume=True,
                       log=lambda m: None)
    assert second.model.compute_dtype == "bfloat16"
    assert full[:4] == part1 and full == part1 + second.run()["losses"]


def test_bfloat16_on_the_cpu_is_a_clear_error(tmp_path):
    from gptlite.training.config import TrainConfig

    with pytest.raises(ValueError, match="bfloat16 mixed precision runs on the GPU"):
        GPT(CFG, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype bfloat16 is mixed precision on the GPU"):
        TrainConfig(device="cpu", dtype="bfloat16").validate()
    with pytest.raises(ValueError, match="float32, float64 or bfloat16"):
        TrainConfig(dtype="float16").validate()


def test_cli_dtype_bfloat16_without_a_gpu_is_one_line(tmp_path, capsys):
    from gptlite.cli import main

    rc = main(["generate", "--dtype", "bfloat16", "--device", "cpu", "--max-new-tokens", "2", "hi"])
    err = capsys.readouterr().err
    assert rc != 0 and "bfloat16 mixed precision runs on the GPU" in err and "Traceback" not in err
    rc = main(["train", "--config", "tiny", "--dtype", "bfloat16", "--set", "run.device=cpu",
               "--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"data.data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc != 0 and "dtype bfloat16 is mixed precision on the GPU" in err and "Traceback" not in err
