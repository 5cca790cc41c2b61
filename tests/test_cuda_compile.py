"""Offline compile of every CUDA source of gptlite with NVRTC (no GPU, no driver):
the .cu files, the RawModule strings, and the ElementwiseKernel/ReductionKernel
bodies wrapped as CuPy wraps them, for sm_90 (H100/H200) and sm_100 (B200)."""
import re

import numpy as np

import pytest

import cuda_sources as cs

pytestmark = pytest.mark.skipif(cs.nvrtc() is None, reason="cupy / nvidia-cuda-nvrtc not installed")

UNITS = cs.all_compile_units() if cs.nvrtc() is not None else []


@pytest.mark.parametrize("arch", cs.ARCHS)
@pytest.mark.parametrize("label,src", UNITS, ids=[u[0] for u in UNITS])
def test_compiles(label, src, arch):
    ptx = cs.compile_source(src, label.replace("/", "_"), arch)
    assert f".target sm_{arch}" in ptx.decode() if isinstance(ptx, bytes) else f".target sm_{arch}" in ptx


def test_every_constructor_is_compiled():
    recorded = cs.recorded_sources()
    from gptlite.engine import kernels

    # every constructor call site is reached (kernels.py's two sites build one kernel per name)
    assert len(recorded) >= cs.constructor_calls_in_source()
    names = {label for label, _, _ in recorded}
    assert {f"gptlite_{n}" for n in kernels._ELEMENTWISE} <= names
    kinds = {k for _, k, _ in recorded}
    assert kinds == {"elementwise", "reduction", "raw"}
    assert any(label.endswith("fused_kernels.cu") for label, _ in UNITS)


def test_fused_kernels_all_exported():
    from gptlite.engine import fused

    src = open(fused.CU_FILE).read()
    ptx = cs.compile_source(src, "fused.cu", "90").decode()
    for base in fused.KERNEL_TWINS:
        for sfx in ("f32",) if base in fused.FLOAT32_ONLY else ("f32", "f64"):
            assert re.search(rf"\.entry gl_{base}_{sfx}\b", ptx), f"gl_{base}_{sfx} missing from the PTX"


@pytest.mark.parametrize("arch", cs.ARCHS)
def test_negative_control_broken_sources_fail(arch):
    # a broken RawModule source and a broken element-wise body must both fail
    with pytest.raises(RuntimeError, match="does not compile"):
        cs.compile_source('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "bad.cu", arch)
    bad = cs.wrap_elementwise("T x", "T y", "y = tanh(x) +* 1", "bad_ew", "float")
    with pytest.raises(RuntimeError, match="does not compile"):
        cs.compile_source(bad, "bad_ew.cu", arch)
    bad = cs.wrap_reduction("T x", "T y", "x * x", "a + ", "y = a", "0", "bad_red", "double")
    with pytest.raises(RuntimeError, match="does not compile"):
        cs.compile_source(bad, "bad_red.cu", arch)


def _ptx_signatures(ptx: str) -> dict:
    """entry name -> its parameters' PTX types ('u64' for pointers and 64-bit ints)."""
    out = {}
    for m in re.finditer(r"\.entry (\w+)\(\s*(.*?)\)", ptx, re.S):
        out[m.group(1)] = re.findall(r"\.param \.(\w+)", m.group(2))
    return out


def _arg_type(a):
    """The PTX parameter type CuPy passes an argument as: arrays are pointers; numpy
    scalars their own width. A Python int or float is refused (CuPy would pick its
    width, not the kernel's signature)."""
    if isinstance(a, np.ndarray) or a is None:
        return "u64"
    for t, name in ((np.int32, "u32"), (np.uint32, "u32"), (np.int64, "u64"), (np.uint64, "u64"),
                    (np.float32, "f32"), (np.float64, "f64")):
        if type(a) is t:
            return name
    raise TypeError(f"kernel argument {a!r} of type {type(a).__name__} is not a numpy scalar or array")


def test_every_raw_launch_matches_its_ptx_signature(monkeypatch):
    """What the CuPy path actually passes to each fa_* and gl_* kernel (recorded by the
    stand-in over a float32, a float64 and a bfloat16 training step, greedy generation with left
    padding and sampled generation (their CUDA-graph steps too), the flash functions in f32/f64/bf16 and the
    optimiser's kernels) has the
    arity and the scalar widths of the compiled entry point: an argument added to a
    kernel and not to its launch (or an int32 passed as a 64-bit value) fails here,
    without a GPU."""
    import fake_cupy
    from gptlite.engine import attention, fused
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.generate import generate

    sigs = {}
    from gptlite.engine import kernels

    for path in (attention.CU_FILE, fused.CU_FILE):
        sigs.update(_ptx_signatures(cs.compile_source(open(path).read(), path.rsplit("/", 1)[-1], "90").decode()))
    sigs.update(_ptx_signatures(cs.compile_source(kernels._PREAMBLE + kernels.source("sampling"), "sampling.cu", "90").decode()))
    cp = fake_cupy.install(monkeypatch)
    fake_cupy.reset_counts()
    seen = {}
    rng = np.random.default_rng(0)
    cfg = GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=40, vocab_size=50)
    for dt in ("float32", "float64", "bfloat16"):
        m = GPT(cfg, dtype=dt, device="cuda")
        m.loss_and_grads(rng.integers(0, 50, (2, 9)), rng.integers(0, 50, (2, 9)))
        generate(m, [[1, 2, 3, 4], [5]], 5, temperature=0)  # 5: the graphed steps' kernels too
        generate(m, [[1, 2, 3, 4], [5]], 5, temperature=0.7, seed=1)
        seen.update(fake_cupy.KERNEL_ARGS)
        if dt == "bfloat16":
            continue
        x = cp.asarray(rng.standard_normal((2, 3, 5, 7)).astype(dt))
        p = fused.causal_softmax_forward(x, 0.5)
        fused.causal_softmax_backward(x, p, 0.5)
        P, G, M, V = (cp.asarray(rng.standard_normal(10).astype(dt)) for _ in range(4))
        V = abs(V)  # a second moment
        norm, scale, flag = fused.clip_scale(fused.grad_sumsq(G), 1.0)
        fused.adamw_flat(P, G, M, V, scale, flag, cp.zeros(1, dtype=np.int32), n_decay=6, lr=1e-3)
        seen.update(fake_cupy.KERNEL_ARGS)
    for sfx, dt in (("bf16", np.float32), ("f32", np.float32), ("f64", np.float64)):
        def st(a):
            a = a.astype(dt)
            return cp.asarray(attention.to_bf16(a) if sfx == "bf16" else a)

        qkv, dy = st(rng.standard_normal((2 * 5, 3 * 16))), st(rng.standard_normal((2 * 5, 16)))
        y, c = attention.flash_attention_forward(qkv, 2, 2, 5, pad=cp.asarray(np.array([0, 2])))
        attention.flash_attention_backward(dy, c)
        kc = st(rng.standard_normal((2, 2, 6, 8)))
        attention.decode_attention(qkv[:2], kc, kc, 6, cp.asarray(np.array([0, 2])))
        attention.decode_attention(qkv[:2], kc, kc, 6)
        attention.kv_append(qkv[:2], kc, kc, cp.asarray(np.array([3], np.int32)))
        attention.decode_attention(qkv[:2], kc, kc, None, slen=cp.asarray(np.array([4], np.int32)))
        seen.update(fake_cupy.KERNEL_ARGS)
    fa_bases = {attention._parse(n)[:2] for n in seen if n.startswith("fa_")}
    assert fa_bases == {(b, s) for b in attention.KERNEL_TWINS for s in ("f32", "f64", "bf16")}
    gl_bases = {n[3:].rsplit("_", 1)[0] for n in seen if n.startswith("gl_")}
    assert gl_bases == set(fused.KERNEL_TWINS), set(fused.KERNEL_TWINS) - gl_bases
    for name, args in seen.items():
        assert name in sigs, f"{name} is launched but not in the PTX"
        assert [_arg_type(a) for a in args] == sigs[name], name
