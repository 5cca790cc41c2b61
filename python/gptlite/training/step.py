"""The update of one training step, shared by pre-training and fine-tuning.

A loop computes its loss and gradients its own way (pre-training: micro-batches
of windows; fine-tuning: the task head and the auxiliary LM loss) and adds the
gradients to an :class:`Update`; :meth:`Update.apply` does the rest, the same
for both:

1. with several ranks, sum the flat gradient buffer (one collective) and the
   loss with the loop's other scalars (one more);
2. clip by global norm (torch's ``clip_grad_norm_`` formula);
3. AdamW over the flat buffer at the schedule's rate for this step index,
   skipped (the step count stays) when the loss or the norm is not finite.

The weights, gradients and AdamW's m and v are each one contiguous buffer in
one layout (``distributed.FlatGrads``, weight-decayed tensors first), so the
update is two vectorised passes. On the GPU with one process, steps 2-3 are
fused kernels whose only host read is the loss, norm and flag together.
"""
from __future__ import annotations

import math

import numpy as np

from gptlite.engine.backend import xp_of
from gptlite.training import distributed, optim


class Update:
    """``Update(params, adamw, schedule, grad_clip, world)``.

    ``params``' values are replaced by views of one flat weight buffer (the
    same numbers): a caller that keeps the tensors elsewhere too (a model's
    dict, a task head) points those at ``params[k]`` again."""

    def __init__(self, params: dict, adamw: optim.AdamWConfig, schedule: optim.Schedule,
                 grad_clip: float | None, world: distributed.World):
        self.flat = distributed.FlatGrads(params)
        self.flat.adopt_params(params)
        self.opt = optim.AdamW(params, adamw)
        self.opt.use_flat(self.flat)
        self.schedule = schedule
        self.grad_clip = grad_clip or None  # 0: no clipping
        self.world = world
        self.xp = xp_of(self.flat.buf)

    def zero(self) -> dict:
        """Start a step: the gradient buffer zeroed; returns its per-parameter views."""
        return self.flat.zero()

    def add(self, grads: dict, scale: float = 1.0) -> None:
        self.flat.add(grads, scale)

    def apply(self, step: int, loss, scalars=(), defer: bool = False) -> dict:
        """Finish step number ``step`` (0-based; it picks the learning rate).

        ``loss``: this rank's share of the step's loss (a float, or a device
        scalar on the GPU); ``scalars``: more floats to sum over ranks in the
        same collective (a stop flag, partial losses). Returns ``loss``,
        ``grad_norm``, ``lr``, ``finite`` and the summed ``scalars``.

        ``defer`` (GPU, one process): read nothing now; the returned record holds
        device values until :meth:`read` fills in many steps' records with one
        transfer (a loop reads at its log intervals)."""
        lr = self.schedule(step)
        if self.world.size > 1:
            self.flat.reduce(self.world)
            loss, *scalars = self.world.allreduce_scalars([float(loss), *scalars])
        elif self.xp is not np:
            st = self._apply_on_device(loss, lr, list(scalars))
            return st if defer else self.read([st])[0]
        loss = float(loss)
        norm = optim.clip_grads(self.flat.views, self.grad_clip)
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            self.opt.step(self.flat.views, lr)
        return {"loss": loss, "grad_norm": norm, "lr": lr, "finite": finite, "scalars": list(scalars)}

    def _apply_on_device(self, loss, lr: float, scalars: list) -> dict:
        """Clip and update on the GPU: squared norm (one reduction), clip coefficient
        and non-finite flag (one kernel), AdamW over the flat buffer (one kernel,
        skipped on the device when the flag is set); then the step's one host read,
        of loss, norm and flag together."""
        from gptlite.engine import fused

        xp = self.xp
        loss = xp.asarray(loss)
        norm, scale, flag = fused.clip_scale(fused.grad_sumsq(self.flat.buf), self.grad_clip or 0.0)
        flag |= (~xp.isfinite(loss)).astype(np.int32).reshape(1)
        self.opt.step_flat_device(scale, flag, lr)  # a skipped update does not advance AdamW's count
        packed = xp.concatenate([loss.astype(np.float64).reshape(1), norm.astype(np.float64), flag.astype(np.float64)])
        return {"device": packed, "lr": lr, "scalars": scalars}

    def read(self, records: list) -> list:
        """Fill in ``loss``, ``grad_norm`` and ``finite`` of records :meth:`apply`
        left on the device: one host read for all of them."""
        todo = [r for r in records if "device" in r]
        if todo:
            xp = self.xp
            host = (xp.concatenate([r["device"] for r in todo]) if len(todo) > 1 else todo[0]["device"]).get()
            for i, r in enumerate(todo):
                del r["device"]
                r.update(loss=float(host[3 * i]), grad_norm=float(host[3 * i + 1]), finite=not host[3 * i + 2])
        return records
