"""The backend: NumPy on the CPU or CuPy on an NVIDIA GPU, chosen once.

A :class:`Backend` holds what differs between the two: the array module ``xp``,
the device (name and CUDA ordinal) and the kernel set — the NumPy reference
kernels (``engine.ops.NumpyKernels``, blocked over the cores, with the NumPy twins
of the fused kernels) or the CUDA ones (``engine.kernels.CudaKernels``). A model
gets its backend when it is built (``get_backend(device)``) and hands it to every
op, so an op picks its implementation through ``be.kernels`` instead of asking
what module an array belongs to. ``backend_of(array)`` recovers the backend of an
array for ops called on their own.
"""
from __future__ import annotations

import numpy as np

_cupy = None
_cupy_checked = False


class DeviceUnavailable(RuntimeError, ValueError):
    """The requested device is missing: a user error (one line in the CLI), and
    still the RuntimeError it always was."""


def _try_cupy():
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401

            if cupy.cuda.runtime.getDeviceCount() > 0:
                _cupy = cupy
        except Exception:  # no CuPy, no driver, or no device
            _cupy = None
    return _cupy


def cuda_available() -> bool:
    return _try_cupy() is not None


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def get_xp(device: str | None = None):
    """NumPy for "cpu", CuPy for "cuda"; None means cuda when a GPU is visible."""
    device = default_device() if device is None else device
    if device == "cpu":
        return np
    if device == "cuda":
        cp = _try_cupy()
        if cp is None:
            raise DeviceUnavailable("device='cuda' requested but CuPy with a visible CUDA GPU is not available (pip install gptlite[cuda])")
        return cp
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


class Backend:
    """One device's array module and kernel set (build with :func:`get_backend`)."""

    def __init__(self, name: str, xp, index: int | None = None, matmul_dtype: str = "float32"):
        self.name = name  # "cpu" or "cuda"
        self.xp = xp
        self.index = index  # the CUDA device ordinal; None: the process's current device
        self.is_gpu = name == "cuda"
        # "bfloat16": mixed precision, the matmuls on bf16 tensor cores (engine/bf16.py)
        self.matmul_dtype = matmul_dtype
        self._kernels = None

    @property
    def device(self) -> str:
        return self.name if self.index is None else f"{self.name}:{self.index}"

    @property
    def kernels(self):
        """The kernel set, built on first use (CUDA sources compile lazily too)."""
        if self._kernels is None:
            if self.is_gpu:
                from gptlite.engine.kernels import CudaKernels

                self._kernels = CudaKernels(self)
            else:
                from gptlite.engine.ops import NumpyKernels

                self._kernels = NumpyKernels(self)
        return self._kernels

    def use(self) -> None:
        """Make this backend's GPU the current device of the process (no-op on the CPU)."""
        if self.is_gpu and self.index is not None:
            self.xp.cuda.Device(self.index).use()

    def __repr__(self) -> str:
        extra = "" if self.matmul_dtype == "float32" else f", matmul_dtype={self.matmul_dtype!r}"
        return f"Backend({self.device!r}{extra})"


CPU = Backend("cpu", np)
_gpu_backends = {}  # (cupy module, index, matmul dtype) -> Backend
MATMUL_DTYPES = ("float32", "bfloat16")


def get_backend(device: str | None = None, index: int | None = None, matmul_dtype: str = "float32") -> Backend:
    """The backend of ``device`` ("cpu", "cuda" or "cuda:N"; None: cuda when a GPU
    is visible). The same object for the same device, so kernels compile once.
    ``matmul_dtype="bfloat16"``: the GPU's mixed-precision kernel set."""
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}")
    device = default_device() if device is None else device
    if isinstance(device, str) and device.startswith("cuda:"):
        head, _, num = device.partition(":")
        if not num.isdigit():
            raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        device, index = head, int(num)
    xp = get_xp(device)
    if xp is np:
        if matmul_dtype != "float32":
            raise ValueError(f"{matmul_dtype} mixed precision runs on the GPU (device='cuda'); "
                             "on the CPU use float32 or float64")
        return CPU
    key = (xp, index, matmul_dtype)
    be = _gpu_backends.get(key)
    if be is None:
        be = _gpu_backends[key] = Backend("cuda", xp, index, matmul_dtype)
    return be


def backend_of(array) -> Backend:
    """The backend an array lives on (for ops called without one)."""
    cp = _cupy
    if cp is not None and isinstance(array, cp.ndarray):
        return get_backend("cuda")
    return CPU


def xp_of(array):
    """The array module an array belongs to."""
    cp = _cupy
    if cp is not None and isinstance(array, cp.ndarray):
        return cp
    return np


def to_numpy(array) -> np.ndarray:
    """Host copy of any array (no-op for NumPy arrays)."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


def device_of(array) -> str:
    return "cuda" if xp_of(array) is not np else "cpu"


_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed activation-sized blocks for reuse.

    A training step allocates and frees the same few-MB activation arrays
    every layer. By default glibc serves such sizes with fresh mmap()s (or
    trims them back to the OS), so every array is page-faulted and zeroed
    again: measured 2.5x slower GELU on the default model's shapes and ~20%
    of a CPU step. Raising the mmap threshold to its maximum (32 MiB) and
    disabling trimming keeps them in the heap; the process's peak memory is
    unchanged, it just is not handed back between steps.

    Called once when a CPU model is built. Process-wide, so it can be turned
    off with GPTLITE_KEEP_FREED_MEMORY=0. Returns whether it was applied
    (glibc only)."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    import os
    import platform

    if os.environ.get("GPTLITE_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, ctypes.c_int(32 << 20)) == 1
    ok = mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1)) == 1 and ok
    _malloc_tuned = ok
    return ok


class Uploaded:
    """A host array and its device copy, made by an asynchronous upload (see
    training/prefetch.py). Checks of the values (token ids in range, targets
    counted) read ``host``, so they cost no device sync; the maths uses ``dev``."""

    __slots__ = ("host", "dev")

    def __init__(self, host: np.ndarray, dev):
        if tuple(host.shape) != tuple(dev.shape):
            raise ValueError(f"Uploaded: host shape {tuple(host.shape)} differs from device shape {tuple(dev.shape)}")
        self.host, self.dev = host, dev

    shape = property(lambda self: self.host.shape)
    ndim = property(lambda self: self.host.ndim)
    dtype = property(lambda self: self.host.dtype)

    def reshape(self, *shape) -> "Uploaded":
        return Uploaded(self.host.reshape(*shape), self.dev.reshape(*shape))
