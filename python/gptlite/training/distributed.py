"""Data parallelism over MPI (CPU, mpi4py) and NCCL (GPU, CuPy).

``mpiexec -n N gptlite train ...`` (or ``srun``) starts N copies of the same
program; ``world()`` tells each one its rank. A plain ``gptlite train`` is a
world of one: nothing is imported and every collective is a no-op, so one
process behaves exactly as it did before this module existed.

What the trainers need from here:

* ``World``: rank, size, local rank/size (ranks on this node), ``barrier``,
  ``allreduce_sum`` of ONE flat buffer (gradients: one collective per step),
  ``allreduce_scalars`` (loss, stop flag, eval sums: float64), ``gather`` of
  Python objects (tokenizer counts), ``abort``.
* ``FlatGrads``: one contiguous buffer whose views are the gradients, so the
  sum across ranks is a single ``Allreduce`` (NCCL ``allReduce`` on GPU).
* ``shard(n, world)``: the contiguous slice of n work items (micro-batches,
  eval batches, files) a rank does; item k is the same whatever the size.
* ``fail_fast()``: a rank that raises prints its error and calls MPI Abort,
  so the job ends instead of the other ranks waiting in a collective forever.

The NCCL path: the communicator's unique id is made on rank 0 and broadcast
over MPI; each process uses GPU ``local_rank % device_count``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

# launcher variables that announce the world size: MPICH/Intel MPI (PMI), Open MPI, Slurm's
# srun steps (not SLURM_NTASKS, which a batch script's plain process sees too)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")
# set by launchers that announce no size (PMIx, PMI-2 over a socket): ask MPI
_LAUNCHED_VARS = ("PMIX_RANK", "PMI_FD", "PMI_RANK")


def launched_size() -> int:
    """The world size a launcher announces in the environment: 1 without a launcher,
    0 when started by one that does not say how many processes there are."""
    for var in _SIZE_VARS:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 0 if any(os.environ.get(v) for v in _LAUNCHED_VARS) else 1


class World:
    """One process's view of the job. A single-process world has ``comm=None``."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            from mpi4py import MPI

            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        self._nccl = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, local_size={self.local_size})"

    # -- collectives ------------------------------------------------------------------
    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def allreduce_sum(self, buf) -> None:
        """Sum a contiguous float buffer over all ranks, in place (NumPy: MPI; CuPy: NCCL)."""
        if self.size == 1 and self._nccl is None:
            return
        from gptlite.engine.backend import xp_of

        if xp_of(buf) is np:
            from mpi4py import MPI

            if not buf.flags.c_contiguous:
                raise ValueError("allreduce_sum needs a contiguous buffer (the flat gradient buffer)")
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            self.nccl().allreduce_sum(buf)

    def allreduce_scalars(self, values) -> list:
        """Sums over ranks of a few float64 numbers (losses, flags, counts)."""
        a = np.asarray(values, dtype=np.float64)
        if self.comm is not None and self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return [float(x) for x in a]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere); pickled."""
        if self.comm is None or self.size == 1:
            return [obj]
        return self.comm.gather(obj, root=0)

    def allgather(self, obj) -> list:
        if self.comm is None or self.size == 1:
            return [obj]
        return self.comm.allgather(obj)

    def bcast(self, obj):
        if self.comm is None or self.size == 1:
            return obj
        return self.comm.bcast(obj, root=0)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort); a plain exit for one process."""
        sys.stderr.flush()
        sys.stdout.flush()
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        raise SystemExit(code)

    # -- GPU --------------------------------------------------------------------------
    def use_gpu(self):
        """Select this rank's GPU (local rank modulo the node's GPU count); returns the device id."""
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError(f"rank {self.rank}: no CUDA device visible")
        dev = self.local_rank % n
        cupy.cuda.Device(dev).use()
        return dev

    def nccl(self) -> "NcclAllreduce":
        if self._nccl is None:
            self._nccl = NcclAllreduce(self)
        return self._nccl


class NcclAllreduce:
    """A NCCL communicator over the world's ranks (one GPU each); the id travels over MPI."""

    def __init__(self, world: World):
        import cupy

        nccl = getattr(cupy.cuda, "nccl", None)  # a CuPy stand-in (tests/fake_cupy.py) has it as an attribute only
        if nccl is None:
            from cupy.cuda import nccl
        if not getattr(nccl, "available", True) or not hasattr(nccl, "NcclCommunicator"):
            raise RuntimeError(f"rank {world.rank}: CuPy cannot load NCCL (libnccl.so.2), needed to sum gradients "
                               "across GPUs: pip install nvidia-nccl-cu12 (or -cu13, matching the CuPy build)")
        self._nccl = nccl
        uid = nccl.get_unique_id() if world.is_main else None
        uid = world.bcast(uid)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.size = world.size

    def allreduce_sum(self, buf) -> None:
        import cupy

        nccl = self._nccl
        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        if np.dtype(buf.dtype) not in kinds:
            raise ValueError(f"NCCL allreduce: unsupported dtype {buf.dtype}")
        if not buf.flags.c_contiguous:
            raise ValueError("NCCL allreduce needs a contiguous buffer (the flat gradient buffer)")
        ptr = buf.data.ptr
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(ptr, ptr, buf.size, kinds[np.dtype(buf.dtype)], nccl.NCCL_SUM, stream.ptr)


_WORLD: World | None = None


def world(use_mpi: bool | None = None) -> World:
    """This process's world, made on first use.

    ``use_mpi=None``: MPI when the launcher announced more than one process and
    mpi4py imports (a launched job without mpi4py is an error: N independent
    copies would each train alone and overwrite each other's checkpoints).
    ``True``: MPI even for one process (e.g. to test the MPI code paths).
    ``False``: a single-process world, never importing mpi4py."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    announced = launched_size()
    want = announced != 1 if use_mpi is None else use_mpi
    if not want:
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError:
        if announced == 0 and use_mpi is None:  # a launcher of unknown size: most likely one process
            _WORLD = World()
            return _WORLD
        raise RuntimeError(
            f"this process was started by an MPI launcher with {announced} processes, but mpi4py is not "
            "installed: pip install 'gptlite[mpi]'") from None
    _WORLD = World(MPI.COMM_WORLD)
    if _WORLD.size > 1:
        limit_threads(_WORLD)
    return _WORLD


def current() -> World | None:
    """The world if one was made (does not make one)."""
    return _WORLD


def threads_per_rank(w: World, affinity: int | None = None, cpus: int | None = None) -> int:
    """CPU threads one rank should use: its share of the node's cores.

    When the launcher bound the rank to a subset of the cores (srun
    --cpu-bind, mpiexec -bind-to) that subset is already its share; when every
    rank sees every core, the cores are divided among the node's ranks."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:
            affinity = os.cpu_count() or 1
    cpus = cpus or os.cpu_count() or affinity
    if affinity < cpus:
        return max(1, affinity)
    return max(1, affinity // max(1, w.local_size))


def limit_threads(w: World) -> int:
    """Cap the engine's thread pool and OpenBLAS at this rank's share of the node."""
    from gptlite.engine import cpu

    n = threads_per_rank(w)
    cpu.set_max_workers(n)
    return n


def check_divides(accum: int, size: int) -> None:
    """A world size must divide the micro-batches of a step (each rank does the same number)."""
    if accum % size:
        raise ValueError(
            f"config: the world size {size} does not divide the {accum} gradient-accumulation micro-batches per "
            f"step (batch_tokens / (batch_size * block_size)): launch a number of processes that divides {accum}, "
            f"or change batch_tokens")


def shard(n: int, w: World) -> range:
    """The contiguous part of range(n) rank ``w.rank`` does (sizes differ by at most one)."""
    lo = n * w.rank // w.size
    hi = n * (w.rank + 1) // w.size
    return range(lo, hi)


class FlatGrads:
    """The gradients of a parameter dict as views into one contiguous buffer.

    ``add(grads, scale)`` accumulates a micro-batch (``view += g * scale``, the
    same arithmetic as optim.accumulate, so one process computes the same
    numbers as before); ``reduce(world)`` sums the buffer across ranks in one
    collective. The layout puts the weight-decayed parameters (2-D weights)
    first, so ``adopt_params`` + ``optim.AdamW.use_flat`` update all of them
    in two vectorised passes (decayed, then the rest)."""

    def __init__(self, params: dict):
        from gptlite.engine.backend import xp_of
        from gptlite.training.optim import decays

        first = next(iter(params.values()))
        xp = xp_of(first)
        dtypes = {np.dtype(p.dtype) for p in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"FlatGrads: parameters have mixed dtypes {sorted(map(str, dtypes))}")
        order = sorted(params, key=lambda k: not decays(k, params[k].shape))  # stable: decayed first
        self.layout = {}  # name -> (offset, shape)
        off = 0
        self.n_decay = 0
        for k in order:
            n = int(np.prod(params[k].shape))
            self.layout[k] = (off, tuple(params[k].shape))
            off += n
            if decays(k, params[k].shape):
                self.n_decay = off
        self.size = off
        self.buf = xp.zeros(off, dtype=first.dtype)
        self.views = {k: self.view(self.buf, k) for k in params}  # the params' order
        self.params_buf = self.adopted = None
        self.fresh = True  # no micro-batch added since zero()

    def view(self, buf, name: str):
        off, shape = self.layout[name]
        return buf[off:off + int(np.prod(shape))].reshape(shape)

    def adopt_params(self, params: dict):
        """Move ``params`` (a model's dict, changed in place) into one flat buffer of this
        layout; returns the buffer. The values are copied exactly."""
        from gptlite.engine.backend import xp_of

        if set(params) != set(self.layout):
            raise ValueError("FlatGrads.adopt_params: not the parameters this layout was made for")
        buf = xp_of(self.buf).empty_like(self.buf)
        for k in list(params):
            v = self.view(buf, k)
            v[...] = params[k]
            params[k] = v
        self.params_buf = buf
        self.adopted = dict(params)  # the views handed out, for AdamW.use_flat's check
        return buf

    def zero(self) -> dict:
        self.buf[...] = 0
        self.fresh = True
        return self.views

    def add(self, grads: dict, scale: float) -> None:
        for k, v in self.views.items():
            g = grads.get(k)
            if g is None:
                raise KeyError(f"FlatGrads.add: no gradient for parameter {k!r}")
            if tuple(g.shape) != tuple(v.shape):
                raise ValueError(f"FlatGrads.add: gradient for {k!r} has shape {tuple(g.shape)}, parameter has {tuple(v.shape)}")
            if g is v:  # written into the buffer by the backward (loss_and_grads(grads_out=))
                if not (scale == 1.0 and self.fresh):
                    raise ValueError(f"FlatGrads.add: the gradient of {k!r} is the buffer itself; only a first "
                                     f"micro-batch with scale 1 may be written in place")
                continue
            if scale == 1.0 and self.fresh:
                v[...] = g
            else:
                v += g * g.dtype.type(scale)
        self.fresh = False

    def reduce(self, w: World) -> None:
        w.allreduce_sum(self.buf)


@contextlib.contextmanager
def fail_fast(w: World | None = None):
    """Under more than one rank: print an escaping exception (naming the rank) and MPI-Abort
    the job. KeyboardInterrupt and SystemExit pass through (a stop all ranks agreed on)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        w = w or current()  # the world is often made inside the block
        if w is None or w.size == 1:
            raise
        report_and_abort(w, exc)


def report_and_abort(w: World, exc: BaseException, code: int = 1) -> None:
    """Print ``exc`` as this rank's error, with the traceback for internal errors, then abort the job."""
    user = isinstance(exc, (ValueError, FileNotFoundError, OSError, KeyError, RuntimeError))
    head = f"gptlite: rank {w.rank}/{w.size} failed: {type(exc).__name__}: {exc}"
    # the one-line reason first: MPI_Abort can end mpiexec's output forwarding before
    # a long traceback is through, and the reason is what the user needs
    print(head, file=sys.stderr, flush=True)
    if not user:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"gptlite: aborting all {w.size} processes (MPI_Abort)", file=sys.stderr, flush=True)
    time.sleep(0.3)  # let mpiexec forward what this rank printed before the job is torn down
    w.abort(code)
