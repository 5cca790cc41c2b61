"""Generative pre-training: the loop and its resumable checkpoints.

The config is training/config.py's, the update after the gradients
training/step.py's and the checkpoint store training/store.py's, all shared
with fine-tuning (gptlite.tasks.finetune).

A run lives in ``out_dir``::

    out_dir/ckpt/                   the latest checkpoint, itself a model directory:
        config.json model.safetensors    (HF layout, via gptlite.engine.checkpoint)
        encoder.json vocab.bpe           (the data's tokenizer, so `generate --model` works)
        optimizer.safetensors            AdamW m and v
        trainer_state.json               step, AdamW t, data position, config, metrics line count
    out_dir/metrics.jsonl           one JSON object per logged step
    out_dir/train_config.json       the resolved config of the run (written before the first step:
                                    with a checkpoint, what makes out_dir a training run)

A checkpoint is written to a temporary sibling directory, fsynced, and only
then swapped in (``ckpt`` -> ``ckpt.old``, tmp -> ``ckpt``, remove ``ckpt.old``),
so at every instant one complete checkpoint exists on disk (training/store.py).

The loop has no randomness besides the batch sampler, whose state is one
integer (see gptlite.data.Batches), so resuming is exact: N steps, save,
resume, N steps gives bit-identical losses to 2N steps in one go.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from gptlite import validate
from gptlite.training import distributed, optim
from gptlite.data import Batches, TokenData, read_meta
from gptlite.fileio import atomic_write_text
from gptlite.runlock import OutDirError
from gptlite.training.config import (  # noqa: F401  (the config's home is training/config.py; these names stay here too)
    MODEL_KEYS, PRESETS_DIR, SECTIONS, ModelConfig, TrainConfig, apply_overrides, config_from_dict, load_config, presets)
from gptlite.training.step import Update
from gptlite.training.store import OPTIM, Store, claim_out_dir, read_optimizer, write_optimizer  # noqa: F401


class TrainingError(RuntimeError):
    """Training cannot continue (diverged, bad checkpoint); the message says why."""


# --- checkpoints ---------------------------------------------------------------------------
CKPT = "ckpt"
STATE = "trainer_state.json"


RUN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"


def checkpoint_store(out_dir) -> Store:
    # "ckpt.old", not ".ckpt.old": the name earlier versions left mid-swap, so their checkpoints still resume
    return Store(Path(out_dir) / CKPT, STATE, old_name=CKPT + ".old")


def find_checkpoint(out_dir) -> Path | None:
    """The latest complete checkpoint in a run directory (``ckpt``, or ``ckpt.old`` when a
    swap was interrupted between its two renames), or None."""
    return checkpoint_store(out_dir).find()


def is_training_run(out_dir) -> bool:
    """What marks a directory as a gptlite training run: a checkpoint, or the
    ``train_config.json`` every run writes before its first step (a run killed
    before its first checkpoint is still ours). A file of that name that is not
    our resolved config (a JSON object with ``world_size`` and ``data_dir``) is not."""
    out = Path(out_dir)
    if find_checkpoint(out) is not None:
        return True
    try:
        cfg = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "world_size" in cfg and "data_dir" in cfg


def save_checkpoint(out_dir, model, opt: optim.AdamW, state: dict, tokenizer_dir=None) -> Path:
    """Write a complete checkpoint next to the current one, then swap it in."""
    from gptlite.engine.checkpoint import save_model

    ost = opt.state_dict()

    def write(tmp: Path) -> None:
        save_model(model, tmp)  # creates tmp (itself via a temporary + rename)
        write_optimizer(tmp, ost)
        if tokenizer_dir is not None:
            for name in ("encoder.json", "vocab.bpe"):
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copyfile(src, tmp / name)
        (tmp / STATE).write_text(json.dumps({**state, "adamw_t": ost["t"]}, indent=2) + "\n", encoding="utf-8")

    return checkpoint_store(out_dir).save(write)


def load_checkpoint_state(ckpt_dir) -> tuple[dict, dict]:
    """(trainer_state, optimizer_state) of a checkpoint directory."""
    ckpt = Path(ckpt_dir)
    try:
        state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"checkpoint {ckpt} is unreadable ({exc})") from None
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {ckpt}: {STATE} is not a JSON object")
    return state, read_optimizer(ckpt, state.get("adamw_t"))


# --- the loop ------------------------------------------------------------------------------
class Trainer:
    """Pre-training loop over a prepared data directory.

    ``Trainer(cfg, resume=True)`` continues from ``cfg.out_dir``'s checkpoint;
    ``run(steps=None)`` trains until ``max_steps`` (or ``steps`` more steps) and
    saves a checkpoint at the end.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, log=None, overwrite: bool = False):
        from gptlite.engine.backend import get_xp
        from gptlite.engine.model import GPT

        cfg.validate()
        self.world = distributed.world()
        distributed.check_divides(cfg.grad_accum, self.world.size)
        self.cfg = cfg
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
        if not self.world.is_main:  # rank 0 speaks for the job
            self.log = lambda msg: None
        self.out = Path(cfg.out_dir)
        meta = read_meta(cfg.data_dir)
        self.meta = meta
        self.tokenizer_dir = Path(cfg.data_dir) / meta["tokenizer"]["dir"]
        mcfg = cfg.model.resolve(meta["n_vocab"])
        vocab = mcfg.vocab_size
        if vocab < meta["n_vocab"]:
            raise ValueError(f"config: vocab_size={vocab} is smaller than the data's tokenizer ({meta['n_vocab']} tokens)")
        self.train_data = TokenData(cfg.data_dir, "train")
        self.val_data = TokenData(cfg.data_dir, "val") if meta["splits"]["val"]["tokens"] > cfg.block_size else None
        device = None if cfg.device == "auto" else cfg.device
        self.xp = get_xp(device)
        self.device = "cuda" if self.xp is not np else "cpu"
        if self.device == "cuda" and self.world.size > 1:
            self.world.use_gpu()
        if self.device == "cuda" and cfg.dtype in ("float32", "bfloat16"):  # bfloat16: what is left in float32
            from gptlite.engine import fused

            fused.set_tf32(cfg.tf32)

        # checked again under the run's lock in run(); here so a refused run fails before building a model
        from gptlite.runlock import check_out_dir

        self._resume, self._overwrite = resume, overwrite
        if resume and overwrite:
            raise OutDirError("--resume continues the run in out_dir, --overwrite replaces it: give one of them")
        existing = find_checkpoint(self.out)
        if resume and existing is None:
            hint = (": the run there stopped before its first checkpoint; --overwrite starts it again"
                    if is_training_run(self.out) else "")
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {self.out}{hint}")
        check_out_dir(self.out, is_training_run(self.out), resume, overwrite, "training run")

        if resume:
            from gptlite.engine.checkpoint import load_model

            self._check_shape(existing, mcfg)
            self.model = load_model(existing, device=self.device, dtype=cfg.dtype)
            self._check_model(existing, self.model, mcfg)
        elif cfg.init_from != "scratch":
            from gptlite.engine.checkpoint import load_model

            self.model = load_model(cfg.init_from, device=self.device, dtype=cfg.dtype)
            self._check_shape(Path(cfg.init_from), mcfg, what="init_from model")
            self._check_model(Path(cfg.init_from), self.model, mcfg, what="init_from model")
        else:
            try:
                self.model = GPT(mcfg, device=self.device, dtype=cfg.dtype, seed=cfg.seed)
            except MemoryError:
                raise TrainingError(f"config: not enough memory for a model with vocab_size={vocab}, n_embd={mcfg.n_embd}, "
                                    f"n_layer={mcfg.n_layer}, n_positions={mcfg.n_positions}") from None

        self.schedule = optim.Schedule(peak=cfg.lr, total=cfg.max_steps, warmup=cfg.warmup_steps,
                                       min_lr=cfg.min_lr, kind=cfg.schedule)
        self.update = Update(self.model.params, optim.AdamWConfig(  # the model's params become flat-buffer views
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay),
            self.schedule, cfg.grad_clip, self.world)
        self.opt, self.flat_grads = self.update.opt, self.update.flat
        self.batches = Batches(self.train_data, cfg.batch_size, cfg.block_size, seed=cfg.seed)
        from gptlite.training.prefetch import Prefetcher

        self.prefetch = Prefetcher(self.batches, self.model.backend)  # on CuPy: batch k+1 uploads during step k
        self.step = 0
        self.bad_steps = 0
        self.tokens_seen = 0
        self.last_val = None
        if resume:
            state, ostate = load_checkpoint_state(existing)
            validate.train_state(state, ostate, existing, cfg.max_steps)
            self.opt.load_state_dict(ostate)
            self.step = int(state["step"])
            try:
                self.batches.load_state(state["data"])
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise TrainingError(f"checkpoint {existing}: trainer_state.json field 'data' is corrupt ({exc})") from None
            self.tokens_seen = int(state.get("tokens_seen", 0))
            self.last_val = state.get("val_loss")
            self._resume_step = self.step
            self.log(f"resumed from {existing} at step {self.step}")

        self.flops_per_token = float(self.model.flops_per_token(cfg.block_size))  # the one formula: GPT.flops_per_token
        self._stop_requested = False
        self._stop_agreed = False  # several ranks: the stop all of them saw in the last step's reduction
        self._stop_signum = signal.SIGINT
        self._in_step = False
        self._claimed = False  # out_dir checked and taken under the lock (the first run())
        validate.shard_ids(self.train_data, self.val_data, vocab, cfg.data_dir)
        self.world.barrier()  # every rank checked the run directory before rank 0 writes to it

    def _check_shape(self, ckpt: Path, mcfg, what: str = "checkpoint") -> None:
        try:
            saved = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"{what} {ckpt}: config.json unreadable ({exc})") from None
        want = mcfg.to_hf_dict()
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            if key in want and key in saved and saved[key] != want[key]:
                raise ValueError(f"{what} {ckpt} has {key}={saved[key]} but the config asks for {key}={want[key]}: "
                                 f"a resumed model must have the same shape")

    @staticmethod
    def _check_model(ckpt: Path, model, mcfg, what: str = "checkpoint") -> None:
        """The loaded model is the configured one in every [model] field, not only in shape."""
        import dataclasses as dc

        have = dc.replace(model.config, n_inner=model.config.d_ff)
        want = dc.replace(mcfg, n_inner=mcfg.d_ff)  # None and 4 * n_embd are one model
        for f in dc.fields(want):
            a, b = getattr(have, f.name), getattr(want, f.name)
            if a != b:
                raise ValueError(f"{what} {ckpt} has {f.name}={a!r} but the config asks for {f.name}={b!r}: "
                                 f"set model.{f.name} to match it")

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": "gptlite-train-state",
            "step": self.step,
            "data": self.batches.state(),
            "tokens_seen": self.tokens_seen,
            "val_loss": self.last_val,
            "config": dataclasses.asdict(self.cfg),
            "data_meta": {"n_vocab": self.meta["n_vocab"], "splits": self.meta["splits"]},
        }

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (all ranks hold the same weights); every rank waits for it."""
        path = self.out / CKPT
        if self.world.is_main:
            path = save_checkpoint(self.out, self.model, self.opt, self.state(), self.tokenizer_dir)
        self._last_save = time.monotonic()
        self.world.barrier()
        return path

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and raise KeyboardInterrupt at the next step boundary."""
        self._stop_requested = True

    # -- metrics -------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from."""
        if not self.metrics_path.exists() or not self.world.is_main:
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
        atomic_write_text(self.metrics_path, "".join(x + "\n" for x in keep))

    def _write_metrics(self, rec: dict) -> None:
        if not self.world.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    # -- evaluation ----------------------------------------------------------------------
    def val_loss(self) -> float | None:
        """Mean loss over ``eval_batches`` fixed validation batches (the same every time)."""
        from gptlite.engine.ops import cross_entropy_forward

        if self.val_data is None or self.cfg.eval_batches == 0:
            return None
        vb = Batches(self.val_data, self.cfg.batch_size, self.cfg.block_size, seed=self.cfg.seed + 1)
        total = 0.0
        for k in distributed.shard(self.cfg.eval_batches, self.world):  # ranks split the batches
            x, y = vb.batch(k)
            logits = self.model.logits(self.xp.asarray(x))
            loss, _ = cross_entropy_forward(logits, self.xp.asarray(y), -1)
            total += float(loss)
        if self.world.size > 1:
            (total,) = self.world.allreduce_scalars([total])
        return total / self.cfg.eval_batches

    # -- one step ------------------------------------------------------------------------
    def train_step(self, defer: bool = False) -> dict:
        """Forward/backward over ``grad_accum`` micro-batches, then the shared update
        (training/step.py: clip, AdamW, schedule). Returns step stats.

        With several ranks each does its contiguous share of the step's
        micro-batches (micro-batch k is the same window whatever the world
        size); the update sums the gradients and the loss over ranks."""
        cfg, xp = self.cfg, self.xp
        accum = cfg.grad_accum
        loss = 0.0
        views = self.update.zero()
        first = self.batches.position
        mine = distributed.shard(accum, self.world)
        # one micro-batch: the backward writes every gradient straight into the flat
        # buffer (no copy of the 124M gradients per step); with accumulation each
        # micro-batch's gradients are scaled and added instead
        direct = len(mine) == 1 and accum == 1
        for j in mine:
            x, y = self.prefetch.batch(first + j)
            # ids and targets are range-checked on the host (on CuPy: on the pinned copy
            # already uploading), so no device value is read to check them
            l, g = self.model.loss_and_grads(x, y, grads_out=views if direct else None)
            self.update.add(g, 1.0 / accum)
            del g
            if xp is not np and self.world.size == 1:
                loss = l / accum + loss  # stays on the device
            else:
                loss += float(l) / accum
        self.batches.position = first + accum
        several = self.world.size > 1
        st = self.update.apply(self.step, loss, [float(self._stop_requested)] if several else [], defer=defer)
        if several:  # the stop every rank saw in this step's reduction
            self._stop_agreed = st["scalars"][0] > 0
        self.step += 1
        self.tokens_seen += accum * cfg.batch_size * cfg.block_size
        st.pop("scalars", None)
        return st  # loss, grad_norm, lr, finite; deferred on the GPU: until Update.read

    # -- the loop ------------------------------------------------------------------------
    def run(self, steps: int | None = None) -> dict:
        from gptlite.runlock import RunLock

        with RunLock(self.out, "training"):
            if not self._claimed:
                self._claim()
            return self._run(steps)

    def _saved_step(self):
        ck = find_checkpoint(self.out)
        try:
            return json.loads((ck / STATE).read_text(encoding="utf-8")).get("step") if ck else None
        except (OSError, ValueError, AttributeError):
            return None

    def _claim(self) -> None:
        """The out_dir rules, under the lock: what __init__ saw may have changed since
        (another run wrote a checkpoint); ``overwrite`` removes only what a run writes."""
        store = checkpoint_store(self.out)
        if self._resume and self._saved_step() != self._resume_step:
            raise OutDirError(f"{self.out}: another run saved a checkpoint since this one read it (step {self._resume_step}): "
                              f"start the --resume again")
        if self.world.is_main:
            claim_out_dir(self.out, is_training_run(self.out), self._resume, self._overwrite, "training run",
                          ours=[store, self.metrics_path, self.out / RUN_CONFIG])
            if self._resume:  # drop metric lines logged after the checkpoint (only under the lock)
                self._truncate_metrics(self._resume_step)
        self._claimed = True

    def _run(self, steps: int | None) -> dict:
        from gptlite.runlock import Stopped, stop_signals

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._last_save = time.monotonic()
        if self.world.is_main:
            atomic_write_text(self.out / RUN_CONFIG,
                              json.dumps({**dataclasses.asdict(cfg), "world_size": self.world.size}, indent=2) + "\n")
        end = cfg.max_steps if steps is None else min(cfg.max_steps, self.step + steps)
        tokens_per_step = cfg.grad_accum * cfg.batch_size * cfg.block_size
        from gptlite.progress import Progress

        progress = Progress(cfg.max_steps, "step", "step", enabled=cfg.progress and self.world.is_main,
                            initial=self.step, lines=True)

        def on_stop(signum):  # SIGINT, SIGTERM (mpiexec/srun/schedulers), SIGUSR1 (Slurm before preemption)
            if self._stop_requested:  # a second signal: stop now
                raise Stopped(signum)
            self._stop_signum = signum
            self._stop_requested = True

        stopping = stop_signals(on_stop)
        self._drain = lambda: None
        stopping.__enter__()
        losses = []
        window_t, window_tokens = 0.0, 0
        try:
            if self.step == 0 and self.val_data is not None and cfg.eval_batches:
                self.last_val = self.val_loss()
                self._write_metrics({"step": 0, "val_loss": self.last_val})
            # On the GPU with one process a step reads nothing back: its loss, norm and
            # non-finite flag stay on the device until the next log, eval or checkpoint
            # step (or a stop), which reads every pending step at once and accounts for
            # them in order. A run of non-finite steps is then noticed up to log_interval
            # steps late; their updates were skipped on the device meanwhile.
            defer = self.xp is not np and self.world.size == 1
            pending = []

            def account(step: int, st: dict) -> None:
                nonlocal window_t, window_tokens
                if not st["finite"]:
                    self.bad_steps += 1
                    self._write_metrics({"step": step, "event": "skipped_nonfinite", "loss": _json_num(st["loss"]),
                                         "grad_norm": _json_num(st["grad_norm"])})
                    self.log(f"step {step}: non-finite loss/gradient (loss={st['loss']}, grad_norm={st['grad_norm']}); update skipped")
                    if self.bad_steps >= cfg.max_bad_steps:
                        good = find_checkpoint(self.out)
                        raise TrainingError(
                            f"stopped at step {step}: {self.bad_steps} consecutive steps with non-finite loss or gradients "
                            f"(lower lr, raise warmup_steps or check the data); last good checkpoint: {good or 'none written yet'}")
                    return False
                self.bad_steps = 0
                losses.append(st["loss"])
                rec = None
                is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
                if step % cfg.log_interval == 0 or is_eval or step == end:
                    tps = window_tokens / window_t if window_t > 0 else 0.0
                    flops = tps * self.flops_per_token
                    rec = {"step": step, "loss": st["loss"], "lr": st["lr"], "grad_norm": st["grad_norm"],
                           "tokens": self.tokens_seen - (self.step - step) * tokens_per_step, "tokens_per_s": tps,
                           "flops_per_s": flops, "mfu": flops / cfg.peak_flops if cfg.peak_flops else None}
                    window_t, window_tokens = 0.0, 0
                if is_eval and self.val_data is not None and cfg.eval_batches:
                    self.last_val = self.val_loss()
                    rec["val_loss"] = self.last_val
                if rec is not None:
                    self._write_metrics(rec)
                    val = f" val {self.last_val:.4f}" if self.last_val is not None else ""
                    progress.update(done=step, keep=is_eval,
                                    text=f"loss {st['loss']:.4f}{val} lr {st['lr']:.2e} | {rec['tokens_per_s']:,.0f} tok/s")
                return True

            def drain() -> bool:
                """Account for the pending steps; False when the last of them was skipped."""
                nonlocal window_t
                if not pending:
                    return True
                t0 = time.perf_counter()
                self.update.read([st for _, st in pending])  # the one host read of these steps
                window_t += time.perf_counter() - t0  # the device's time behind the steps' launches
                todo = list(pending)
                pending.clear()
                ok = True
                for step, st in todo:
                    ok = account(step, st)
                return ok

            self._drain = drain
            while self.step < end:
                # several ranks stop at the step all of them agreed on, so they all save
                if self._stop_agreed if self.world.size > 1 else self._stop_requested:
                    drain()
                    raise Stopped(self._stop_signum)
                t0 = time.perf_counter()
                self._in_step = True
                st = self.train_step(defer=True) if defer else self.train_step()
                self._in_step = False
                window_t += time.perf_counter() - t0
                window_tokens += tokens_per_step
                pending.append((self.step, st))
                due = cfg.ckpt_minutes > 0 and time.monotonic() - self._last_save >= 60 * cfg.ckpt_minutes
                if cfg.ckpt_minutes > 0 and self.world.size > 1:  # rank 0's clock decides, so every rank joins the save
                    due = self.world.bcast(due)
                ckpt = (self.step % cfg.ckpt_interval == 0 or due) and self.step < end
                if (not defer or ckpt or self._stop_requested or self.step == end or self.step % cfg.log_interval == 0
                        or self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                    if not drain():
                        continue  # no checkpoint right after a skipped step
                if ckpt:
                    self.save()
            path = self.save()
            progress.close()
            return {"step": self.step, "checkpoint": str(path), "losses": losses, "val_loss": self.last_val}
        except KeyboardInterrupt:
            progress.close()
            if not self._in_step:
                try:
                    self._drain()  # steps whose figures were still on the device
                except TrainingError:
                    pass
            if self._in_step:  # a second Ctrl-C mid-step: the state is half-updated, keep the last checkpoint
                self.log(f"interrupted inside step {self.step + 1}: nothing saved; the last checkpoint {find_checkpoint(self.out)} is kept")
                raise
            path = self.save()
            name = signal.Signals(self._stop_signum).name
            self.log(f"interrupted ({name}): checkpoint saved at step {self.step} in {path}; continue with --resume")
            raise
        finally:
            stopping.__exit__(None, None, None)


def _json_num(x: float):
    return x if math.isfinite(x) else str(x)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainConfig, resume: bool = False, steps: int | None = None, overwrite: bool = False) -> dict:
    with distributed.fail_fast(distributed.world()):
        return Trainer(cfg, resume=resume, overwrite=overwrite).run(steps)


# --- held-out evaluation and the unigram baseline ----------------------------------------
def evaluate_split(model, data_dir, split: str = "val", block_size: int | None = None, batch_size: int = 8,
                   max_windows: int | None = None) -> dict:
    """Loss of ``model`` on a whole split, next to a unigram baseline.

    The split is cut into non-overlapping windows of ``block_size`` + 1 tokens, so
    each token after a window's first is predicted exactly once (context restarts
    at each window). The baseline is the cross-entropy of the same targets under
    the training split's unigram distribution (add-one smoothed): what a model
    that ignores context can reach. Bits per byte divide the total by the UTF-8
    bytes of the predicted text, so models with different tokenizers compare.
    """
    from gptlite.engine.backend import to_numpy
    from gptlite.engine.checkpoint import load_tokenizer
    from gptlite.engine.ops import cross_entropy_forward

    meta = read_meta(data_dir)
    T = block_size or model.config.n_positions
    toks = np.asarray(TokenData(data_dir, split).tokens, dtype=np.int64)
    n_win = (len(toks) - 1) // T
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    if n_win < 1:
        raise ValueError(f"{split} split of {data_dir} has {len(toks)} tokens: too few for one window of {T + 1}")
    x_all = np.stack([toks[i * T:i * T + T] for i in range(n_win)])
    y_all = np.stack([toks[i * T + 1:i * T + T + 1] for i in range(n_win)])
    xp = model.xp
    total = 0.0
    for s in range(0, n_win, batch_size):
        x, y = x_all[s:s + batch_size], y_all[s:s + batch_size]
        loss, _ = cross_entropy_forward(model.logits(xp.asarray(x)), xp.asarray(y), -1)
        total += float(to_numpy(xp.asarray(loss))) * y.size
    targets = y_all.ravel()
    n_tok = targets.size
    model_nats = total / n_tok

    train = np.asarray(TokenData(data_dir, "train").tokens, dtype=np.int64)
    V = int(meta["n_vocab"])
    counts = np.bincount(train, minlength=V).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    unigram_nats = float(-logp[targets].mean())

    tok = load_tokenizer(Path(data_dir) / meta["tokenizer"]["dir"])
    eot = meta.get("eot_token")
    text_targets = [int(t) for t in targets if t != eot]
    n_bytes = len(tok.decode_bytes(text_targets)) if tok is not None else None

    def bpb(nats):
        return nats * n_tok / (math.log(2) * n_bytes) if n_bytes else None

    return {"split": split, "tokens": int(n_tok), "bytes": n_bytes, "block_size": T,
            "loss_nats_per_token": model_nats, "bits_per_byte": bpb(model_nats),
            "unigram_nats_per_token": unigram_nats, "unigram_bits_per_byte": bpb(unigram_nats)}
