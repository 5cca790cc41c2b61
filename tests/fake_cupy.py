"""A stand-in for CuPy, made of NumPy, to run gptlite's CuPy code paths on a
machine without a GPU (test-only).

"Device" arrays are a NumPy subclass, so ``backend.xp_of`` sends them down
the ``xp is cupy`` branches while host arrays stay on the NumPy ones; array
creation and ``asarray`` return device arrays (``asarray`` of a host array
copies, as a host-to-device transfer does). The two small kernels
(``ElementwiseKernel``: GELU forward/backward) and the
row-softmax ``RawModule`` are replaced by NumPy functions computing the same
formulas; the kernels of engine/fused.py run as their NumPy twins
(``fused.KERNEL_TWINS``) after ``fused.check_launch`` has checked block size and
shared memory against the kernel's declared needs, and the flash-attention
kernels of engine/attention.py (``fa_*``) as theirs (``attention.run_twin``),
after ``attention.check_launch``, and the sampling kernels of gptlite/generate.py
(``gs_*``) as ``generate.sample_kernel_twin``. ``COUNTS`` counts launches and
host syncs, ``KERNEL_LAUNCHES`` the launches of each custom kernel by name,
``TRANSFERS`` the arrays copied to the host. What
this can catch: errors in the CuPy-only branches (names, shapes, in-place
aliasing, missing synchronisation helpers). What it cannot: CUDA compilation, numerics of the real kernels, host/device mixing (NumPy
accepts mixed inputs where CuPy raises) — those need a GPU run.
"""
from __future__ import annotations

import math
import sys
import types

import numpy as np

GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


# What a training step would cost on a GPU, as far as the stand-in can see it:
# "launches" counts the custom kernels, the fused kernels' twins and every NumPy
# ufunc call (elementwise, reductions, matmul) on device arrays — a lower bound,
# since copies, fancy indexing and array creation also launch kernels under CuPy
# and are not counted; "syncs" counts reads of device values by the host
# (.get(), float(), int(), bool(), .item(), asnumpy).
COUNTS = {"launches": 0, "syncs": 0}
SYNC_SITES = []  # (file, line) of the caller of each counted sync since reset_counts()
KERNEL_LAUNCHES = {}  # custom kernel name (gl_ln_fwd_f32, gptlite_gelu_tanh_fwd, ...) -> launches
KERNEL_ARGS = {}  # RawModule kernel name (gl_*, fa_*) -> the argument tuple of its latest launch, as passed
TRANSFERS = []  # (shape, dtype) of each device array copied to the host (.get(), asnumpy) since reset_counts()
UPLOADS = []  # (shape, on a side stream?) of each ndarray.set() host -> device copy since reset_counts()
WAITS = []  # events streams were told to wait for (device-side waits, not host syncs)


def reset_counts():
    COUNTS.update(launches=0, syncs=0)
    SYNC_SITES.clear()
    KERNEL_LAUNCHES.clear()
    KERNEL_ARGS.clear()
    TRANSFERS.clear()
    UPLOADS.clear()
    WAITS.clear()
    GEMMS.clear()


def _transfer(a):
    TRANSFERS.append((tuple(a.shape), np.dtype(a.dtype)))


def _kernel_launch(name):
    COUNTS["launches"] += 1
    KERNEL_LAUNCHES[name] = KERNEL_LAUNCHES.get(name, 0) + 1


def _sync():
    COUNTS["syncs"] += 1
    f = sys._getframe(2)
    SYNC_SITES.append((f.f_code.co_filename.rsplit("/", 1)[-1], f.f_lineno))


class DeviceArray(np.ndarray):
    def get(self, stream=None):
        _sync()
        _transfer(self)
        return np.array(self).view(np.ndarray)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        COUNTS["launches"] += 1
        ins = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs)
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in outs)
        r = getattr(ufunc, method)(*ins, **kwargs)
        if outs is not None:  # in place: hand back the caller's (device) arrays
            return outs[0] if len(outs) == 1 else outs
        if isinstance(r, np.generic):  # CuPy reductions give 0-d device arrays, not scalars
            r = np.asarray(r)
        return _dev(r)

    def __float__(self):
        _sync()
        return float(self.view(np.ndarray))

    def __int__(self):
        _sync()
        return int(self.view(np.ndarray))

    def __bool__(self):
        _sync()
        return bool(self.view(np.ndarray))

    def item(self, *args):
        _sync()
        return self.view(np.ndarray).item(*args)

    def set(self, arr, stream=None):  # host -> device copy (asynchronous on a stream in CuPy)
        UPLOADS.append((tuple(np.shape(arr)), stream is not None and stream is not _DEFAULT_STREAM))
        np.copyto(self.view(np.ndarray), arr)

    @property
    def data(self):  # CuPy's MemoryPointer: .ptr is the device address
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _dev(r):
    if isinstance(r, np.ndarray) and not isinstance(r, DeviceArray):
        return r.view(DeviceArray)
    if isinstance(r, tuple):
        return tuple(_dev(x) for x in r)
    return r


def _wrap(fn):
    def device_fn(*args, **kwargs):
        return _dev(fn(*args, **kwargs))

    return device_fn


def _asarray(a, dtype=None, **kwargs):
    if isinstance(a, DeviceArray):
        return a if dtype is None else a.astype(dtype, copy=False)
    return np.array(a, dtype=dtype, copy=True).view(DeviceArray)


def _gelu_fwd(x):
    t = np.tanh(GELU_K * (x + GELU_A * x * x * x))
    return _dev(0.5 * x * (1 + t)), _dev(t)


def _gelu_bwd(x, t, dy):
    return _dev(dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * GELU_A * x * x)))


REDUCTIONS = {"gl_sumsq": lambda g: _dev(np.asarray(np.dot(g.view(np.ndarray), g.view(np.ndarray))).reshape(()))}

KERNELS = {"gptlite_gelu_tanh_fwd": _gelu_fwd, "gptlite_gelu_tanh_bwd": _gelu_bwd}


def _counted(fn, name):
    def launch(*args, **kwargs):
        _kernel_launch(name)
        return _dev(fn(*(_host(a) for a in args), **kwargs))

    return launch


RECORDING = []  # while a fake CUDA graph replays: [(kernel, grid, block, scalar args), ...]


def _record(name, grid, block, args):
    if RECORDING:
        RECORDING[-1].append((name, tuple(grid), tuple(block),
                              tuple(a for a in args if not isinstance(a, np.ndarray))))


class _FakeGraph:
    """What the stand-in makes of a captured CUDA graph: nothing runs at capture,
    and every launch re-runs the step, which must issue the same custom kernels and
    GEMMs with the same grids and scalar arguments as the first replay (a real
    graph replays exactly those: a position passed as a host scalar would be frozen
    at its captured value) and read nothing back from the device (which a capture
    cannot do)."""

    def __init__(self, fn):
        self.fn, self.signature, self.replays = fn, None, 0

    def launch(self):
        syncs, transfers = COUNTS["syncs"], len(TRANSFERS)
        RECORDING.append([])
        try:
            self.fn()
        finally:
            rec = RECORDING.pop()
        if COUNTS["syncs"] != syncs or len(TRANSFERS) != transfers:
            raise RuntimeError(f"fake CUDA graph: the captured step read the device from the host at {SYNC_SITES[syncs:]}")
        if self.signature is None:
            self.signature = rec
        elif rec != self.signature:
            diff = next((i for i, (a, b) in enumerate(zip(rec, self.signature)) if a != b), min(len(rec), len(self.signature)))
            raise RuntimeError(f"fake CUDA graph: replay {self.replays} differs from the captured step at launch {diff}: "
                               f"{rec[diff] if diff < len(rec) else None} vs {self.signature[diff] if diff < len(self.signature) else None}")
        self.replays += 1


GRAPHS = []  # every fake CUDA graph captured since install()


def _fake_capture(fn, be, stream):
    g = _FakeGraph(fn)
    GRAPHS.append(g)
    return g


def _host(a):
    """A kernel argument as the twin takes it: null pointers (an unsigned 0) as None,
    device arrays as plain NumPy views of the same memory (so the twin's own NumPy
    calls are the kernel's insides, not counted as launches of their own)."""
    if isinstance(a, np.uint64) and a == 0:
        return None
    if isinstance(a, DeviceArray):
        return a.view(np.ndarray)
    return a


class _RawModule:
    def __init__(self, code=None, **kwargs):
        self.code = code

    def get_function(self, name):
        if name.startswith("gl_"):  # engine/fused.py: its twin, after checking the launch
            from gptlite.engine import fused

            base = name[3:].rsplit("_", 1)[0]
            twin = fused.KERNEL_TWINS[base]

            def launch(grid, block, args, shared_mem=0):
                _kernel_launch(name)
                KERNEL_ARGS[name] = tuple(args)
                _record(name, grid, block, args)
                fused.check_launch(name, grid, block, shared_mem)
                twin(grid, block, tuple(_host(a) for a in args))

            return launch
        if name.startswith("fa_"):  # engine/attention.py's flash attention: its twin, same launch checks
            from gptlite.engine import attention

            attention._parse(name)  # an unknown name fails here, as get_function would

            def launch(grid, block, args, shared_mem=0):
                _kernel_launch(name)
                KERNEL_ARGS[name] = tuple(args)
                _record(name, grid, block, args)
                attention.check_launch(name, grid, block)
                attention.run_twin(name, grid, block, tuple(_host(a) for a in args))

            return launch
        if name.startswith("gs_"):  # gptlite.generate's device sampler: its twin, after the same launch checks
            import importlib

            gen = importlib.import_module("gptlite.generate")
            if name not in gen.SAMPLE_KERNELS.values():
                raise KeyError(name)

            def launch(grid, block, args, shared_mem=0):
                _kernel_launch(name)
                KERNEL_ARGS[name] = tuple(args)
                _record(name, grid, block, args)
                gen.check_sample_launch(name, grid, block, shared_mem)
                gen.sample_kernel_twin(name, grid, block, tuple(_host(a) for a in args))

            return launch
        if name not in ("softmax_f32", "softmax_f64"):
            raise KeyError(name)

        def launch(grid, block, args, shared_mem=0):  # in-place softmax of grid[0] rows of n
            _kernel_launch(name)
            a, n = _host(args[0]), args[1]
            rows = a.reshape(grid[0], int(n))
            rows -= rows.max(axis=1, keepdims=True)
            np.exp(rows, out=rows)
            rows /= rows.sum(axis=1, keepdims=True)

        return launch


DEVICES_USED = []  # the ordinals passed to cupy.cuda.Device(i).use(), in order


class _Device:
    def __init__(self, index=0):
        self.id = index

    def use(self):
        DEVICES_USED.append(self.id)

    def synchronize(self):
        pass


class _Pool:
    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


class _Nccl:
    """cupy.cuda.nccl for one rank: allReduce of one rank is a copy (in place: nothing)."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = "float32", "float64", "sum"

    def __init__(self):
        self.calls = []
        nccl = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                if (ndev, rank) != (1, 0) or not isinstance(uid, tuple):
                    raise RuntimeError(f"fake NCCL is one rank: got ndev={ndev} rank={rank}")

            def allReduce(self, send, recv, count, dtype, op, stream):
                import ctypes

                nccl.calls.append((count, dtype, op))
                if send != recv:
                    ctypes.memmove(recv, send, count * np.dtype(dtype).itemsize)

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id():
        return tuple(range(128))


class _Event:
    """Work on the stand-in is done when it is issued."""

    done = True

    def synchronize(self):
        pass


class _Stream:
    def __init__(self, non_blocking=False, ptr=0):
        self.ptr = ptr

    def record(self, event=None):
        return event or _Event()

    def wait_event(self, event):
        WAITS.append(event)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


_DEFAULT_STREAM = _Stream()

GEMMS = []  # (transa, transb, m, n, k, Atype, Btype, Ctype, computeType) of each cublas.gemmEx call


def _cublas_module():
    """cupy_backends.cuda.libs.cublas: gemmEx done in NumPy from the raw pointers,
    with cuBLAS's column-major reading of (op, ld), so a wrong transpose flag or
    leading dimension in engine/bf16.py gives wrong numbers here too."""
    import ctypes

    from gptlite.engine.attention import from_bf16

    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
    cublas.CUBLAS_POINTER_MODE_HOST, cublas.CUBLAS_POINTER_MODE_DEVICE = 0, 1
    mode = {"pointer": 0}
    cublas.getPointerMode = lambda handle: mode["pointer"]
    cublas.setPointerMode = lambda handle, m: mode.__setitem__("pointer", m)
    kinds = {0: np.dtype(np.float32), 14: np.dtype(np.uint16)}

    def colmajor(ptr, dtype, rows, cols, ld):
        """The column-major (rows, cols) matrix at ptr with leading dimension ld."""
        n = ld * (cols - 1) + rows
        buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
        flat = np.frombuffer(buf, dtype=dtype, count=n)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))

    def gemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
               computeType, algo):
        COUNTS["launches"] += 1
        KERNEL_LAUNCHES["cublasGemmEx"] = KERNEL_LAUNCHES.get("cublasGemmEx", 0) + 1
        GEMMS.append((transa, transb, m, n, k, Atype, Btype, Ctype, computeType))
        if RECORDING:
            RECORDING[-1].append(("cublasGemmEx", (m, n, k), (transa, transb), (lda, ldb, ldc)))
        if mode["pointer"] != 0:
            raise RuntimeError("fake cuBLAS: alpha/beta given as host pointers under the device pointer mode")
        if lda < max(1, m if transa == 0 else k) or ldb < max(1, k if transb == 0 else n) or ldc < max(1, m):
            raise RuntimeError(f"fake cuBLAS: CUBLAS_STATUS_INVALID_VALUE (lda={lda} ldb={ldb} ldc={ldc} m={m} n={n} k={k})")

        def operand(ptr, kind, trans, rows, cols, ld):  # op(X) as a float64 (rows, cols) matrix
            x = colmajor(ptr, kinds[kind], *((rows, cols) if trans == 0 else (cols, rows)), ld)
            x = from_bf16(x) if kind == 14 else x
            return np.asarray(x, dtype=np.float64) if trans == 0 else np.asarray(x, dtype=np.float64).T

        a = operand(A, Atype, transa, m, k, lda)
        b = operand(B, Btype, transb, k, n, ldb)
        al = np.frombuffer((ctypes.c_char * 4).from_address(alpha), np.float32)[0]
        be = np.frombuffer((ctypes.c_char * 4).from_address(beta), np.float32)[0]
        c = colmajor(C, kinds[Ctype], m, n, ldc)
        if Ctype != 0:
            raise NotImplementedError("fake cuBLAS: only a float32 result")
        c[...] = (al * (a @ b) + (be * c.astype(np.float64) if be != 0 else 0)).astype(np.float32)

    cublas.gemmEx = gemmEx
    return cublas


def _numpy_attr(name):
    """NumPy's attribute; functions wrapped to return device arrays (types,
    dtypes and constants as they are)."""
    attr = getattr(np, name)
    if callable(attr) and not isinstance(attr, type):
        return _wrap(attr)
    return attr


def make_modules() -> dict:
    """sys.modules entries for cupy, cupyx, cupyx.scipy, cupyx.scipy.special."""
    cp = types.ModuleType("cupy")
    cp.__dict__["__getattr__"] = _numpy_attr
    cp.ndarray = DeviceArray
    cp.asarray = _asarray
    cp.array = _asarray
    cp.ascontiguousarray = lambda a, dtype=None: _dev(np.ascontiguousarray(_asarray(a), dtype=dtype))
    cp.asnumpy = lambda a: (_sync(), _transfer(a), np.array(a).view(np.ndarray))[2] if isinstance(a, DeviceArray) else np.array(a)
    cp.ElementwiseKernel = lambda in_params, out_params, operation, name, **kw: _counted(KERNELS[name], name)
    cp.ReductionKernel = lambda *args, **kw: _counted(REDUCTIONS[args[6] if len(args) > 6 else kw["name"]],
                                                      args[6] if len(args) > 6 else kw["name"])
    cp.RawModule = _RawModule
    cp.get_default_memory_pool = lambda: _Pool()
    cp.cuda = types.SimpleNamespace(
        Device=_Device,
        nccl=_Nccl(),
        Stream=_Stream,
        Event=_Event,
        get_current_stream=lambda: _DEFAULT_STREAM,
        device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                      getDeviceProperties=lambda i: {"name": b"fake CuPy (NumPy)"}))
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_FP32, linalg.COMPUTE_TYPE_TF32 = 3, 5
    linalg.compute_types = {}
    linalg.set_compute_type = lambda dtype, ct: linalg.compute_types.__setitem__(np.dtype(dtype), ct)
    core._routines_linalg = linalg
    cp._core = core
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = lambda out, index, values: np.add.at(out, index, values)
    cupyx.empty_pinned = lambda shape, dtype=np.float64: np.empty(shape, dtype)  # page-locked host memory in CuPy
    scipy = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = lambda x: _dev(np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype))
    cupyx.scipy = scipy
    scipy.special = special
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = _cublas_module()
    backends = types.ModuleType("cupy_backends")
    backends.cuda = types.ModuleType("cupy_backends.cuda")
    backends.cuda.libs = libs
    return {"cupy_backends": backends, "cupy_backends.cuda": backends.cuda, "cupy_backends.cuda.libs": libs,
            "cupy_backends.cuda.libs.cublas": libs.cublas, "cupy": cp, "cupy._core": core, "cupy._core._routines_linalg": linalg, "cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}


def install(monkeypatch=None):
    """Make gptlite see the fake as CuPy with one GPU: undone by ``monkeypatch``
    (tests), or for the rest of the process without one (the benches' --stand-in)."""
    from gptlite.engine import attention, backend, cuda_graph, fused, kernels

    set_attr = monkeypatch.setattr if monkeypatch is not None else setattr
    mods = make_modules()
    for name, mod in mods.items():
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, mod)
        else:
            sys.modules[name] = mod
    set_attr(backend, "_cupy", mods["cupy"])
    set_attr(backend, "_cupy_checked", True)
    set_attr(kernels, "_compiled", {})
    set_attr(fused, "_module", None)
    set_attr(fused, "_sumsq_kernel", None)
    # a module compiled by the real CuPy (or another stand-in) must not outlive it
    set_attr(attention, "_module", None)
    GRAPHS.clear()
    set_attr(cuda_graph, "capture", _fake_capture)
    return mods["cupy"]
