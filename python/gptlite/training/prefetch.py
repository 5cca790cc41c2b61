"""The next training batch uploaded while the current step runs (CuPy only).

Batch ``k + 1`` is gathered on the host into page-locked (pinned) memory and
copied to the device on a side stream while the compute stream runs step
``k``; the step then only waits, on the device, for that copy's event. The ids
are range-checked on the host before the copy (so the model reads no device
value to check them: :class:`gptlite.engine.backend.Uploaded`). Two slots
alternate: a slot is refilled only after the compute stream has passed the
step that read it (an event the copy stream waits on), and its pinned buffer
only after its last copy finished.

On NumPy :meth:`Prefetcher.batch` is just ``Batches.batch``.
"""
from __future__ import annotations

import numpy as np

from gptlite.engine.backend import Uploaded


class _Slot:
    __slots__ = ("k", "host_x", "host_y", "dev_x", "dev_y", "copied", "released")

    def __init__(self):
        self.k = None
        self.host_x = self.host_y = self.dev_x = self.dev_y = None
        self.copied = None  # event: this slot's upload finished (copy stream)
        self.released = None  # event: the compute stream passed the step that used it


class Prefetcher:
    """``batch(k)`` -> (x, y) for the model's ``loss_and_grads``; on CuPy also
    starts uploading ``k + 1`` (the next micro-batch of a one-rank run)."""

    def __init__(self, batches, backend):
        self.batches = batches
        self.be = backend
        self.xp = backend.xp
        self.on_gpu = backend.is_gpu
        if self.on_gpu:
            self.stream = self.xp.cuda.Stream(non_blocking=True)
            self.slots = [_Slot(), _Slot()]
            self.turn = 0

    def batch(self, k: int):
        if not self.on_gpu:
            return self.batches.batch(k)
        cp = self.xp
        slot = next((s for s in self.slots if s.k == k), None)
        if slot is None:  # not prefetched (the first step, a resume, another rank's order)
            slot = self._upload(k)
        compute = cp.cuda.get_current_stream()
        compute.wait_event(slot.copied)  # on the device: no host wait
        # the other slot was read by the previous step, which the compute stream has
        # now been given in full: once it passes this point, that slot may be refilled
        other = self.slots[1 - self.slots.index(slot)]
        other.released = compute.record()
        self.turn = self.slots.index(slot)
        self._upload(k + 1, into=other)
        return Uploaded(slot.host_x, slot.dev_x), Uploaded(slot.host_y, slot.dev_y)

    def _upload(self, k: int, into: _Slot | None = None) -> _Slot:
        cp = self.xp
        import cupyx

        slot = into if into is not None else self.slots[1 - self.turn]
        x, y = self.batches.batch(k)
        if slot.copied is not None and not slot.copied.done:
            slot.copied.synchronize()  # its pinned buffer is still being read by the last copy
        if slot.host_x is None or slot.host_x.shape != x.shape:
            slot.host_x, slot.host_y = cupyx.empty_pinned(x.shape, np.int64), cupyx.empty_pinned(y.shape, np.int64)
            slot.dev_x, slot.dev_y = cp.empty(x.shape, np.int64), cp.empty(y.shape, np.int64)
            slot.released = None
        np.copyto(slot.host_x, x)
        np.copyto(slot.host_y, y)
        if slot.released is not None:
            self.stream.wait_event(slot.released)  # the step that read the device buffers is done
        slot.dev_x.set(slot.host_x, stream=self.stream)
        slot.dev_y.set(slot.host_y, stream=self.stream)
        slot.copied = self.stream.record()
        slot.k = k
        return slot
