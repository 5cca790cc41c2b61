"""GPU training step: gptlite's fused float32/TF32 step vs HF GPT2LMHeadModel eager
(torch.optim.AdamW fused=True), same shape, same GPU, same run.

    python benches/bench_gpu_train.py --out results.json            # on a GPU
    python benches/bench_gpu_train.py --stand-in --batch 1 --context 64   # no GPU

On a GPU it reports, per mode (fp32 = TF32 off, tf32 = TF32 on, on both sides):
tokens/s of both and their ratio, kernel launches and host syncs of one step
(CUPTI via torch.profiler, which sees CuPy's kernels too: they run in the same
process and context), and peak device memory of both. ``--stand-in`` runs the
same step on tests/fake_cupy.py (NumPy) and reports only what the stand-in can
count: custom-kernel launches plus NumPy ufunc calls on device arrays (a lower
bound of real launches) and host reads of device values — no timings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))
from compare import report  # noqa: E402

SHAPE_124M = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
SHAPES = {"124M": SHAPE_124M, "355M": dict(SHAPE_124M, n_embd=1024, n_layer=24, n_head=16),
          "774M": dict(SHAPE_124M, n_embd=1280, n_layer=36, n_head=20)}
# dense bf16 tensor-core peak (FLOP/s, no sparsity) by device name, for MFU
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_bf16(name: str):
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class GptliteStep:
    """The Trainer's step (pretrain.Trainer.train_step with one micro-batch and
    one rank): loss_and_grads, gradients into the flat buffer, device-side clip and
    the AdamW launches, then one host read of loss and norm. The Trainer's loop now
    defers that read to its log intervals (Update.read), so the sync count measured
    here (1 per step) is an upper bound of the loop's."""

    def __init__(self, shape, seed=0, grad_clip=1.0, dtype="float32"):
        from gptlite.engine.model import GPT, GPTConfig
        from gptlite.training import distributed, optim

        self.model = GPT(GPTConfig(**shape), device="cuda", dtype=dtype, seed=seed)
        self.flat = distributed.FlatGrads(self.model.params)
        self.flat.adopt_params(self.model.params)
        self.opt = optim.AdamW(self.model.params, optim.AdamWConfig(lr=3e-4, betas=(0.9, 0.95)))
        self.opt.use_flat(self.flat)
        self.grad_clip = grad_clip

    def __call__(self, x, y):
        from gptlite.engine import fused

        xp = self.model.xp
        self.flat.zero()
        loss, g = self.model.loss_and_grads(x, y)
        self.flat.add(g, 1.0)
        del g
        norm, scale, flag = fused.clip_scale(fused.grad_sumsq(self.flat.buf), self.grad_clip)
        flag |= (~xp.isfinite(loss)).astype(np.int32).reshape(1)
        self.opt.step_flat_device(scale, flag, 3e-4)
        return xp.concatenate([loss.astype(np.float64).reshape(1), norm.astype(np.float64)]).get()


def stand_in(args) -> dict:
    import fake_cupy as fc

    fc.install()
    shape = dict(SHAPES[args.shape], n_positions=max(args.context, 64))
    step = GptliteStep(shape, dtype="bfloat16" if "bf16" in args.modes else "float32")
    rng = np.random.default_rng(0)
    x = rng.integers(0, shape["vocab_size"], (args.batch, args.context))
    y = rng.integers(0, shape["vocab_size"], (args.batch, args.context))
    step(x, y)  # first step builds the kernel caches
    fc.reset_counts()
    step(x, y)
    return {"mode": "stand-in (NumPy fake CuPy)", "shape": args.shape, "batch": args.batch, "context": args.context,
            "dtype": step.model.compute_dtype, "gemms": len(fc.GEMMS),
            "launches_lower_bound": fc.COUNTS["launches"], "host_syncs": fc.COUNTS["syncs"],
            "sync_sites": sorted(set(map(tuple, fc.SYNC_SITES)))}


def _profile_counts(torch, fn):
    """(kernel launches, host syncs) of one call of fn, from CUPTI."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = syncs = 0
    for e in prof.events():
        name = e.name
        if e.device_type == torch.autograd.DeviceType.CUDA and not name.startswith("Memcpy") and not name.startswith("Memset"):
            kernels += 1
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize"):
            syncs += 1
    return kernels, syncs - 1  # less the profiler's own closing synchronize


def gpu(args) -> dict:
    import cupy as cp
    import torch
    import transformers

    from gptlite.engine import backend, fused

    if not backend.cuda_available():
        raise SystemExit("bench_gpu_train: no usable CUDA device (CuPy + driver + GPU); --stand-in counts without one")
    B, T = args.batch, args.context
    shape = SHAPES[args.shape]
    dev_name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    peak = peak_bf16(dev_name)
    rng = np.random.default_rng(0)
    x = rng.integers(0, shape["vocab_size"], (B, T))
    y = rng.integers(0, shape["vocab_size"], (B, T))
    out = {"device": dev_name, "shape": args.shape, "batch": B, "context": T, "steps": args.steps,
           "peak_bf16_flops": peak, "modes": {}}
    for mode in args.modes.split(","):
        if mode not in ("fp32", "tf32", "bf16"):
            raise SystemExit(f"bench_gpu_train: unknown mode {mode!r} (fp32, tf32, bf16)")
        tf32 = mode != "fp32"
        bf16 = mode == "bf16"
        fused.set_tf32(tf32)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        res = {}
        # gptlite
        cp.get_default_memory_pool().free_all_blocks()
        step = GptliteStep(shape, dtype="bfloat16" if bf16 else "float32")
        flops_per_token = step.model.flops_per_token(T)  # 6N + attention, as llm.c and nanoGPT count
        for _ in range(2):
            step(x, y)
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        cp.cuda.Device().synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        k, s = _profile_counts(torch, lambda: step(x, y))
        mfu = lambda tps: None if peak is None else tps * flops_per_token / peak  # noqa: E731
        res["gptlite"] = {"tokens_per_s": B * T / dt, "step_s": dt, "kernel_launches": k, "host_syncs": s,
                          "peak_pool_bytes": cp.get_default_memory_pool().total_bytes(), "mfu_bf16": mfu(B * T / dt)}
        del step
        cp.get_default_memory_pool().free_all_blocks()
        # HF: eager attention in fp32/tf32; in bf16 autocast with SDPA (what a user would run); fused AdamW
        for label, compiled in (("hf", False),) + ((("hf_compile", True),) if args.compile and bf16 else ()):
            if args.no_torch:
                break
            torch.cuda.reset_peak_memory_stats()
            cfg = transformers.GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
            cfg._attn_implementation = "sdpa" if bf16 else "eager"
            model = transformers.GPT2LMHeadModel(cfg).cuda().float()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
            xt, yt = torch.as_tensor(x).cuda(), torch.as_tensor(y).cuda()
            fwd = torch.compile(model) if compiled else model

            def tstep():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    logits = fwd(xt).logits
                    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), yt.view(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                opt.step()
                return loss

            for _ in range(3 if compiled else 2):
                tstep()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tstep()
            torch.cuda.synchronize()
            dtt = (time.perf_counter() - t0) / args.steps
            k, s = _profile_counts(torch, tstep)
            res[label] = {"tokens_per_s": B * T / dtt, "step_s": dtt, "kernel_launches": k, "host_syncs": s,
                          "peak_bytes": torch.cuda.max_memory_allocated(), "mfu_bf16": mfu(B * T / dtt),
                          "attention": cfg._attn_implementation, "autocast_bf16": bf16}
            res[f"speedup_vs_{label}"] = res["gptlite"]["tokens_per_s"] / res[label]["tokens_per_s"]
            del model, opt, fwd
            torch.cuda.empty_cache()
        out["modes"][mode] = res
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stand-in", action="store_true", help="count launches/syncs on the NumPy stand-in (no GPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--shape", choices=sorted(SHAPES), default="124M")
    p.add_argument("--modes", default="fp32,tf32,bf16", help="comma-separated: fp32 (TF32 off), tf32, bf16 (mixed precision)")
    p.add_argument("--compile", action="store_true", help="in bf16 also time HF under torch.compile")
    p.add_argument("--no-torch", action="store_true", help="gptlite only (the larger shapes' MFU)")
    p.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    args = p.parse_args(argv)
    res = stand_in(args) if args.stand_in else gpu(args)
    return report(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
