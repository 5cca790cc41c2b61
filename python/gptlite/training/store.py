"""The checkpoint store of pre-training and fine-tuning: a directory written whole or not at all.

A checkpoint is one directory, the *slot*: ``RUN_DIR/ckpt`` for pre-training,
the ``--out`` directory itself for fine-tuning (so it stays a model directory
that ``generate --model`` and ``finetune predict`` read). :meth:`Store.save`

1. builds the new checkpoint in a sibling ``.SLOT.tmp-PID`` and fsyncs every
   file and the directory;
2. swaps it in: ``SLOT`` -> ``OLD``, tmp -> ``SLOT``, fsync the parent;
3. renames ``OLD`` to a tmp name and removes it (a removal cut short leaves a
   stale tmp, which the next save clears, never a half-deleted ``OLD``).

So at every instant one complete checkpoint exists on disk: ``SLOT``, or
``OLD`` between the two renames of step 2. :meth:`Store.find` returns that
one; :meth:`Store.recover` (under the run's lock) renames ``OLD`` back.

``OLD`` is ``.SLOT.old`` beside the slot; pre-training keeps its historical
``ckpt.old`` (inside the run directory, so ours), which checkpoints of earlier
versions interrupted mid-swap still have. A directory is taken for one of
ours only when it holds the store's *marker* file (``trainer_state.json``,
``finetune.json``): anything else in the way is refused, never removed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from gptlite.runlock import OutDirError

OPTIM = "optimizer.safetensors"  # AdamW's m and v, in every checkpoint that can be resumed


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Store:
    """``Store(slot, marker)``; ``carry=True`` keeps files in the slot that the
    writer does not write (a user's notes in a fine-tuned model's directory)."""

    def __init__(self, slot, marker: str, old_name: str | None = None, carry: bool = False):
        self.slot = Path(slot)
        self.marker = marker
        self.old = self.slot.parent / (old_name or f".{self.slot.name}.old")
        self.carry = carry

    def _tmp_prefix(self) -> str:
        return f".{self.slot.name}.tmp-"

    def holds(self, d: Path) -> bool:
        """``d`` is a checkpoint of this store's kind."""
        return (d / self.marker).is_file()

    def find(self) -> Path | None:
        """The complete checkpoint: the slot, or the old one when a swap was cut short between its renames."""
        for d in (self.slot, self.old):
            if self.holds(d):
                return d
        return None

    def recover(self) -> Path | None:
        """Put a checkpoint left as ``OLD`` by an interrupted swap back in the slot (call under the run's lock)."""
        if not self.slot.exists() and self.holds(self.old):
            os.replace(self.old, self.slot)
            fsync_dir(self.slot.parent)
        return self.find()

    def clear_stale(self) -> None:
        """Remove what killed writers left: ``.SLOT.tmp-*`` and the staging dirs
        ``save_model`` makes inside them' names (``..SLOT.tmp-*``). Only under the run's lock."""
        for pattern in (f"{self._tmp_prefix()}*", f".{self._tmp_prefix()}*"):
            for stale in self.slot.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)

    def remove(self) -> None:
        """Delete the checkpoint (``--overwrite``): the slot and the old one, each only if it is ours."""
        self.clear_stale()
        for d in (self.slot, self.old):
            if self.holds(d):
                self._discard(d)

    def _discard(self, d: Path) -> None:
        dead = self.slot.parent / f"{self._tmp_prefix()}{os.getpid()}-dead"
        shutil.rmtree(dead, ignore_errors=True)
        os.replace(d, dead)
        shutil.rmtree(dead, ignore_errors=True)

    def save(self, write, what: str = "checkpoint") -> Path:
        """``write(tmp)`` fills the new checkpoint directory ``tmp`` (not yet
        existing); then it replaces the slot. An OSError (a full disk) keeps the
        previous checkpoint and says so."""
        parent = self.slot.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.old.exists() and not self.holds(self.old):
            raise OutDirError(f"{self.old} is in the way of the {what} swap and was not written by gptlite: move it away")
        self.clear_stale()
        tmp = parent / f"{self._tmp_prefix()}{os.getpid()}"
        try:
            write(tmp)
            if self.carry and self.slot.is_dir():
                self._carry_over(tmp)
            for f in tmp.iterdir():
                if f.is_file() and not f.is_symlink():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(tmp)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, OutDirError):
                kept = f"; the previous {what} {self.find()} is kept" if self.find() else ""
                why = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
                raise OSError(exc.errno, f"could not write {what} to {parent}: {why}{kept}") from exc
            raise
        # after the first rename only OLD exists (find() falls back to it)
        if self.slot.exists():
            if self.old.exists():
                self._discard(self.old)
            os.replace(self.slot, self.old)
        os.replace(tmp, self.slot)
        fsync_dir(parent)
        if self.old.exists():
            self._discard(self.old)
        return self.slot

    def _carry_over(self, tmp: Path) -> None:
        """Copy the slot's entries the writer did not write into ``tmp`` (hard
        links where the filesystem allows: they are never modified in place)."""
        for entry in self.slot.iterdir():
            dest = tmp / entry.name
            if dest.exists() or (entry.name.startswith(".") and entry.name.endswith((".tmp", ".old"))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, dest, symlinks=True)
                continue
            try:
                if entry.is_symlink():
                    raise OSError
                os.link(entry, dest)
            except OSError:
                shutil.copy2(entry, dest, follow_symlinks=False)


def write_optimizer(ckpt_dir, state: dict) -> None:
    """AdamW's ``state_dict()`` (m and v; the step count also in the header) into a checkpoint being built."""
    from gptlite.engine.checkpoint import write_safetensors

    write_safetensors(Path(ckpt_dir) / OPTIM, state["tensors"], {"format": "gptlite-adamw", "t": str(state["t"])})


def read_optimizer(ckpt_dir, t) -> dict:
    """The ``load_state_dict()`` input of a checkpoint's AdamW; ``t`` is the step count its
    state file records (checkpoints before the header carried it have only that)."""
    import numpy as np

    from gptlite.engine.checkpoint import read_safetensors

    tensors = read_safetensors(Path(ckpt_dir) / OPTIM)
    return {"t": t, "tensors": {k: np.array(v) for k, v in tensors.items()}}  # copies: the reader memory-maps


def claim_out_dir(out, is_run: bool, resume: bool, overwrite: bool, what: str, ours=()) -> None:
    """The out-directory rules of every run (call under its RunLock): a new or
    empty directory is taken; a non-empty one that is not a gptlite ``what``
    is refused even with ``overwrite``; an existing run needs ``resume`` or
    ``overwrite``, and ``overwrite`` removes only ``ours`` (Stores, and paths
    inside ``out`` this command writes), never anything else there."""
    from gptlite.runlock import check_out_dir

    if resume and overwrite:
        raise OutDirError("--resume continues the run in the directory, --overwrite replaces it: give one of them")
    check_out_dir(out, is_run, resume, overwrite, what)
    if not (is_run and overwrite):
        return
    for item in ours:
        if isinstance(item, Store):
            item.remove()
        else:
            p = Path(item)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
