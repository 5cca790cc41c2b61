"""Run-directory safety shared by ``train``, ``finetune`` and ``tokenizer train``.

- :class:`RunLock`: an advisory ``fcntl.flock`` lock, so two processes never
  write one output directory at once. The lock file sits beside the directory
  (``.NAME.lock``), not inside it, because fine-tuning and tokenizer training
  replace the whole directory by a rename; it is removed on release, and the
  kernel drops the lock when the holder dies (kill -9 included, which leaves
  the file), so a stale file never blocks a later run.
- :func:`check_out_dir`: outputs never clobber what they did not create.
- :func:`stop_signals`: SIGINT, SIGTERM and SIGUSR1 (what ``timeout``,
  ``docker stop``, Kubernetes and Slurm send before killing a job) all ask a
  loop to stop at its next safe point; :class:`Stopped` carries the signal so
  the CLI can exit with 128 + its number.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n))


class RunLockedError(OSError):
    """Another live process holds the run directory's lock."""


class OutDirError(ValueError):
    """An output directory that this command must not write into."""


class Stopped(KeyboardInterrupt):
    """A stop signal ended a loop after its final checkpoint."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def lock_path(directory) -> Path:
    d = Path(directory).absolute()
    return d.parent / f".{d.name}.lock"


class RunLock:
    """``with RunLock(out_dir, "training"):`` -- refuses (RunLockedError) while
    another process holds it, naming that process's pid."""

    def __init__(self, directory, what: str = "run"):
        self.directory = Path(directory)
        self.what = what
        self._fd = None

    def acquire(self) -> "RunLock":
        import fcntl

        from gptlite.training import distributed

        if not distributed.world().is_main:  # under mpiexec rank 0 holds the job's lock
            return self
        path = lock_path(self.directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(f"{self.directory} is in use by another gptlite process (pid {holder}, lock {path}); "
                                     f"wait for it to finish or choose another directory") from None
            except BaseException:
                os.close(fd)
                raise
            # The holder removes the file when it releases: a lock taken on a
            # file already unlinked guards nothing, so take it again on the new one.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:  # the pid is for the message of a refused run; on a full disk the lock works without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        self._path = path
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.unlink(self._path)  # while still holding it: no litter beside the directory
            except FileNotFoundError:
                pass
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_out_dir(path, is_run: bool, resume: bool, overwrite: bool, what: str = "run") -> None:
    """Refuse ``path`` unless writing it loses nothing this tool did not make.

    is_run: ``path`` holds an output of this command (checked by the caller,
    e.g. a ``finetune.json``). A non-empty directory that is not one is never
    replaced, not even with ``overwrite``; a finished run needs ``resume`` or
    ``overwrite``."""
    p = Path(path)
    if not p.exists():
        return
    if not p.is_dir():
        raise OutDirError(f"{p} exists and is not a directory")
    if is_run:
        if not (resume or overwrite):
            raise OutDirError(f"{p} already holds a {what}: pass --resume to continue it, --overwrite to replace it, "
                              f"or choose another directory")
        return
    leftovers = [e.name for e in p.iterdir() if not (e.name.startswith(".") and e.name.endswith((".tmp", ".old")))]
    if leftovers:
        raise OutDirError(f"{p} is not empty and is not a gptlite {what} (it holds {', '.join(sorted(leftovers)[:3])}"
                          f"{', ...' if len(leftovers) > 3 else ''}); refusing to replace it: choose a new or empty directory")


@contextmanager
def stop_signals(on_stop):
    """Route every stop signal to ``on_stop(signum)`` for the duration (in the
    main thread only: elsewhere Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev = {}
    try:
        for s in STOP_SIGNALS:
            prev[s] = signal.signal(s, lambda signum, frame: on_stop(signum))
        yield
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
