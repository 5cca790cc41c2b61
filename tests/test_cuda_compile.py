"""Offline compile of every CUDA source of gptlite with NVRTC (no GPU, no driver):
the .cu files, the RawModule strings, and the ElementwiseKernel/ReductionKernel
bodies wrapped as CuPy wraps them, for sm_90 (H100/H200) and sm_100 (B200)."""
import re

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
        for sfx in ("f32", "f64"):
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
