"""Every CUDA source of gptlite, gathered without a GPU, and an offline NVRTC
compile of each (test helper for test_cuda_compile.py and the GPU tests).

Sources: every ``.cu`` file under python/gptlite; every ``RawModule`` code string
and every ``ElementwiseKernel``/``ReductionKernel`` the package builds, recorded by
calling its kernel factories against a recording stand-in for ``cupy``. The
element-wise and reduction bodies are wrapped as CuPy wraps them (CArray/CIndexer
parameters, CUPY_FOR, REDUCE/POST_MAP macros, CuPy's own headers), once per dtype.
"""
from __future__ import annotations

import glob
import os
import re
import sys
import types

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "gptlite")
ARCHS = ("90", "100")
DTYPES = ("float", "double")


def nvrtc():
    """cupy.cuda.nvrtc when it can compile (None otherwise)."""
    try:
        from cupy.cuda import nvrtc as n

        n.getVersion()
        return n
    except Exception:
        return None


def cupy_include_dirs():
    import cupy

    inc = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
    cccl = os.path.join(inc, "cupy", "_cccl")
    return [inc] + [os.path.join(cccl, d) for d in ("libcudacxx", "thrust", "cub")]


def compile_source(src: str, name: str, arch: str) -> bytes:
    """PTX of ``src`` for compute_<arch>; raises RuntimeError with NVRTC's log."""
    n = nvrtc()
    prog = n.createProgram(src, name, [], [])
    opts = [f"--gpu-architecture=compute_{arch}", "-std=c++17"] + [f"-I{d}" for d in cupy_include_dirs()]
    try:
        n.compileProgram(prog, opts)
    except Exception as e:
        raise RuntimeError(f"{name} (sm_{arch}) does not compile: {e}\n{n.getProgramLog(prog)}") from None
    return n.getPTX(prog)


_HEADER = "#include <cupy/complex.cuh>\n#include <cupy/carray.cuh>\n#include <cupy/atomics.cuh>\n"


def _params(spec: str):
    """'T x, float32 y' -> [(type, name)]; CuPy's type letters stay names of a typedef."""
    out = []
    for p in filter(None, (s.strip() for s in spec.split(","))):
        parts = p.split()
        if parts[0] == "raw":
            parts = parts[1:]
        t, n = parts
        out.append(({"float32": "float", "float64": "double", "int32": "int", "int64": "long long"}.get(t, t), n))
    return out


def wrap_elementwise(in_params, out_params, operation, name, dtype, preamble=""):
    ins, outs = _params(in_params), _params(out_params)
    types_ = sorted({t for t, _ in ins + outs if len(t) == 1})
    args = [f"const CArray<{t}, 1, 1, 1> _raw_{n}" for t, n in ins] + [f"CArray<{t}, 1, 1, 1> _raw_{n}" for t, n in outs]
    loads = "".join(f"const {t} &{n} = _raw_{n}[_ind.get()];\n" for t, n in ins)
    loads += "".join(f"{t} &{n} = _raw_{n}[_ind.get()];\n" for t, n in outs)
    return (_HEADER + "".join(f"typedef {dtype} {t};\n" for t in types_) + preamble + "\n"
            f'extern "C" __global__ void {name}({", ".join(args)}, CIndexer<1> _ind) {{\n'
            f"  CUPY_FOR(i, _ind.size()) {{ _ind.set(i);\n{loads}{operation};\n  }}\n}}\n")


def wrap_reduction(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name, dtype):
    ins, outs = _params(in_params), _params(out_params)
    types_ = sorted({t for t, _ in ins + outs if len(t) == 1})
    args = [f"const CArray<{t}, 1, 1, 1> _raw_{n}" for t, n in ins] + [f"CArray<{t}, 1, 1, 1> _raw_{n}" for t, n in outs]
    loads = "".join(f"const {t} &{n} = _raw_{n}[_in_ind.get()];\n" for t, n in ins)
    outref = "".join(f"{t} &{n} = _raw_{n}[_out_ind.get()];\n" for t, n in outs)
    rt = ins[0][0]
    return (_HEADER + "".join(f"typedef {dtype} {t};\n" for t in types_) + f"typedef {rt} _type_reduce;\n"
            f"#define REDUCE(a, b) ({reduce_expr})\n#define POST_MAP(a) ({post_map_expr})\n"
            f'extern "C" __global__ void {name}({", ".join(args)}, CIndexer<1> _in_ind, CIndexer<1> _out_ind) {{\n'
            "  extern __shared__ unsigned char _sdata_raw[];\n"
            "  _type_reduce *_sdata = reinterpret_cast<_type_reduce*>(_sdata_raw);\n"
            f"  _type_reduce _s = _type_reduce({identity});\n"
            "  for (ptrdiff_t i = threadIdx.x; i < _in_ind.size(); i += blockDim.x) { _in_ind.set(i);\n"
            f"{loads}    _type_reduce _a = static_cast<_type_reduce>({map_expr}); _s = REDUCE(_s, _a);\n  }}\n"
            "  _sdata[threadIdx.x] = _s; __syncthreads();\n"
            "  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) { if (threadIdx.x < s) { _type_reduce a = _sdata[threadIdx.x], b = _sdata[threadIdx.x + s]; _sdata[threadIdx.x] = REDUCE(a, b); } __syncthreads(); }\n"
            f"  if (threadIdx.x == 0) {{ _out_ind.set(0);\n{outref}    _type_reduce a = _sdata[0]; POST_MAP(a); }}\n}}\n")


class _Recorder:
    def __init__(self):
        self.sources = []  # (label, kind, payload)
        rec = self

        class ElementwiseKernel:
            def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **kw):
                rec.sources.append((name, "elementwise", (in_params, out_params, operation, name, preamble)))

        class ReductionKernel:
            def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce", **kw):
                rec.sources.append((name, "reduction", (in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name)))

        class RawModule:
            def __init__(self, code=None, options=(), **kw):
                rec.sources.append((f"RawModule#{len(rec.sources)}", "raw", code))

        class RawKernel:
            def __init__(self, code, name, options=(), **kw):
                rec.sources.append((name, "raw", code))

        self.module = types.SimpleNamespace(ElementwiseKernel=ElementwiseKernel, ReductionKernel=ReductionKernel,
                                            RawModule=RawModule, RawKernel=RawKernel)


def kernel_factories():
    """(module, factory name, [kernel names]) of every lazily-built kernel cache in
    gptlite.engine: a function ``_cupy_kernel(name)`` with ``name == "..."`` branches."""
    import importlib
    import inspect

    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "engine", "*.py"))):
        modname = "gptlite.engine." + os.path.basename(path)[:-3]
        mod = importlib.import_module(modname)
        fn = getattr(mod, "_cupy_kernel", None)
        if fn is not None and getattr(fn, "__module__", None) == modname:
            names = re.findall(r'name == "(\w+)"', inspect.getsource(fn))
            out.append((mod, names))
    return out


def recorded_sources():
    """[(label, kind, payload)] of every kernel the package constructs."""
    from gptlite.engine import fused

    rec = _Recorder()
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = rec.module
    try:
        for mod, names in kernel_factories():
            cache = getattr(mod, "_cupy_kernels", None)
            old = dict(cache) if cache is not None else None
            if cache is not None:
                cache.clear()
            try:
                for n in names:
                    mod._cupy_kernel(n)
            finally:
                if cache is not None:
                    cache.clear()
                    cache.update(old)
        rec.module.ReductionKernel(*fused.SUMSQ_KERNEL)
        from gptlite.engine import kernels

        saved_compiled = dict(kernels._compiled)
        kernels._compiled.clear()
        try:
            for n in list(kernels._ELEMENTWISE) + list(kernels._RAW):
                kernels.kernel(n)  # records the constructor, compiled above from its .cu file
        finally:
            kernels._compiled.clear()
            kernels._compiled.update(saved_compiled)
        old_module, fused._module = fused._module, None
        try:
            fused.module()  # records the RawModule built from the .cu file
        finally:
            fused._module = old_module
        from gptlite.engine import attention

        old_module, attention._module = attention._module, None
        try:
            attention.module()  # flash attention's RawModule, built from its .cu file
        finally:
            attention._module = old_module
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
    return rec.sources


def constructor_calls_in_source() -> int:
    """How many kernel constructor calls the package's Python source contains."""
    n = 0
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            code = "\n".join(line.split("#", 1)[0] for line in f)  # calls, not comments
            n += len(re.findall(r"\b(?:ElementwiseKernel|ReductionKernel|RawModule|RawKernel)\(", code))
    return n


def all_compile_units():
    """[(label, source)] — one unit per .cu file / RawModule, and per dtype for the
    element-wise and reduction kernels."""
    from gptlite.engine import kernels

    units = []
    # kernels.py's sources: ElementwiseKernel bodies wrapped as CuPy wraps them, RawModules with the preamble
    for name, (ins, outs) in kernels._ELEMENTWISE.items():
        body = "\n".join(line for line in kernels.source(name).splitlines() if not line.lstrip().startswith("//"))
        for dt in DTYPES:
            units.append((f"engine/cuda/{name}.cu[{dt}]", wrap_elementwise(ins, outs, body, f"gptlite_{name}", dt,
                                                                          preamble=kernels._PREAMBLE)))
    for name in kernels._RAW:
        units.append((f"engine/cuda/{name}.cu", kernels._PREAMBLE + kernels.source(name)))
    owned = {f"{n}.cu" for n in list(kernels._ELEMENTWISE) + list(kernels._RAW)}
    for path in sorted(glob.glob(os.path.join(ROOT, "**", "*.cu"), recursive=True)):
        if os.path.basename(path) in owned:
            continue
        with open(path, encoding="utf-8") as f:
            units.append((os.path.relpath(path, ROOT), f.read()))
    files = {src for _, src in units}
    for label, kind, payload in recorded_sources():
        if kind == "raw":
            if payload not in files:  # a module built from a .cu file is compiled once, above
                units.append((label, payload))
            continue
        for dt in DTYPES:
            src = (wrap_elementwise(*payload[:4], dt, preamble=payload[4]) if kind == "elementwise"
                   else wrap_reduction(*payload, dt))
            units.append((f"{label}[{dt}]", src))
    return units
