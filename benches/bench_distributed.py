"""Data-parallel training step: 1 process (all cores) vs N MPI processes (cores shared out).

    python benches/bench_distributed.py [--steps 3] [--shapes default,124m] [-n 2]

For each shape, one optimizer step = ``accum`` micro-batches (forward, backward,
gradients added into the flat buffer), the allreduce of the flat float32
gradient buffer, clipping and AdamW, exactly as gptlite.training.pretrain does:

* 1 process: every micro-batch, the engine's threads on every core;
* ``mpiexec -n N``: N processes, each doing accum/N micro-batches with
  cores/N threads (gptlite.training.distributed.limit_threads), then one
  ``Allreduce`` of the whole gradient buffer.

Printed: tokens/s of both, the speed-up, the allreduce time per step and its
share of the step, and the time the faster rank waited for the slower one
before the collective (a barrier the benchmark adds so that the two are told apart) (rank 0's medians over ``--steps`` after one warm-up step).
Shapes: ``default`` is the shipped default model (4 layers, 192 wide, 128
positions, 2048 tokens); ``124m`` is GPT-2 124M at block 256, batch 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # name: (model config, batch_size, block_size, micro-batches per step)
    "default": (dict(vocab_size=2048, n_positions=128, n_embd=192, n_layer=4, n_head=6), 8, 128, 4),
    "124m": (dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), 1, 256, 2),
}


def worker(shape: str, steps: int, use_mpi: bool) -> None:
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.training import distributed, optim

    w = distributed.world(use_mpi=use_mpi)
    mcfg, B, T, accum = SHAPES[shape]
    model = GPT(GPTConfig(**mcfg), seed=0)
    flat = distributed.FlatGrads(model.params)
    flat.adopt_params(model.params)  # as the Trainer: flat weights, gradients, m and v
    opt = optim.AdamW(model.params, optim.AdamWConfig(lr=1e-4))
    opt.use_flat(flat)
    step_t, red_t, wait_t = [], [], []
    for s in range(steps + 1):
        w.barrier()
        t0 = time.perf_counter()
        grads = flat.zero()
        loss = 0.0
        for j in distributed.shard(accum, w):
            rng = np.random.default_rng([s, j])  # micro-batch j of step s: the same on any world size
            x = rng.integers(0, mcfg["vocab_size"], size=(B, T))
            y = rng.integers(0, mcfg["vocab_size"], size=(B, T))
            l, g = model.loss_and_grads(x, y)
            flat.add(g, 1.0 / accum)
            del g
            loss += float(l) / accum
        t1 = time.perf_counter()
        w.barrier()  # bench only: so the allreduce time below is the collective, not a wait for the slower rank
        tw = time.perf_counter()
        if w.size > 1:
            flat.reduce(w)
            (loss,) = w.allreduce_scalars([loss])
        t2 = time.perf_counter()
        optim.clip_grads(grads, 1.0)
        opt.step(grads, 1e-4)
        t3 = time.perf_counter()
        if s:  # the first step warms up allocations and thread pools
            step_t.append(t3 - t0)
            red_t.append(t2 - tw)
            wait_t.append(tw - t1)
    if w.is_main:
        from gptlite.engine import cpu

        print(json.dumps({"shape": shape, "world": w.size, "threads": cpu.workers(), "step_s": statistics.median(step_t),
                          "allreduce_s": statistics.median(red_t),
                          "wait_s": statistics.median(wait_t), "tokens_per_step": accum * B * T,
                          "grad_mb": flat.buf.nbytes / 1e6}), flush=True)


def _launch(n: int, shape: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", shape, "--steps", str(steps)]
    if n > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(n)] + cmd + ["--mpi"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", default=None)
    ap.add_argument("--mpi", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--shapes", default="default,124m")
    ap.add_argument("-n", type=int, default=2)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.mpi)
    print(f"| shape | grad buffer | 1 process ({os.cpu_count()} threads) tok/s | {a.n} processes tok/s | speed-up "
          f"| allreduce / step | share of step | rank imbalance wait |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in a.shapes.split(","):
        one = _launch(1, shape, a.steps)
        many = _launch(a.n, shape, a.steps)
        tps1 = one["tokens_per_step"] / one["step_s"]
        tpsn = many["tokens_per_step"] / many["step_s"]
        print(f"| {shape} | {many['grad_mb']:.1f} MB | {tps1:,.0f} | {tpsn:,.0f} | {tpsn / tps1:.2f}x "
              f"| {many['allreduce_s'] * 1e3:.1f} ms | {100 * many['allreduce_s'] / many['step_s']:.1f}% "
              f"| {many['wait_s'] * 1e3:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
