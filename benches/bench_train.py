"""Training throughput: gptlite's step (forward + backward + clip + AdamW, the
trainer's flat-buffer update of training/step.py) vs the PyTorch reference
loop (HF GPT2LMHeadModel + torch.optim.AdamW), measured in the same run on the
same batches.

    python -m pytest benches/bench_train.py --benchmark-only -s

Shapes: the shipped default config (the `shakespeare` preset, python/gptlite/configs/shakespeare.toml) and the GPT-2
124M shape (12 x 768, vocab 50257; batch 1 x 128 to keep a CPU step short).
Reported in ``extra_info``: tokens/s of both, their ratio, achieved FLOP/s and
MFU. The peak for MFU is $GPTLITE_PEAK_FLOPS when set, else the float32 GEMM
rate measured here (a 2048^3 matmul on the same array module): on a CPU that
is the most its BLAS can do, so "MFU" reads as "share of GEMM peak".
On a GPU (CuPy present) the gptlite side runs there and the device is named.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gptlite.training import distributed, optim
from gptlite.training.step import Update
from gptlite.engine.backend import default_device, get_xp, to_numpy
from gptlite.engine.model import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import alternate, settle  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPES = {
    # name: (GPTConfig kwargs, batch, context, rounds)
    "default": (dict(vocab_size=2048, n_positions=128, n_embd=192, n_layer=4, n_head=6), 16, 128, 15),
    "124M": (dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), 1, 128, 5),
}


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def _gemm_peak(xp) -> float:
    settle()
    a = xp.ones((2048, 2048), dtype=xp.float32)
    a @ a
    _sync(xp)
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    _sync(xp)
    return 3 * 2 * 2048 ** 3 / (time.perf_counter() - t)


def _device_name(xp) -> str:
    if xp is np:
        return f"CPU ({os.cpu_count()} cores)"
    return xp.cuda.runtime.getDeviceProperties(0)["name"].decode()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step_throughput(benchmark, shape):
    kw, B, T, rounds = SHAPES[shape]
    device = default_device()
    xp = get_xp(device)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).float()
    params = {k.removeprefix("transformer."): v.detach().numpy().copy() for k, v in hf.state_dict().items()
              if k.startswith("transformer.") and not k.endswith((".attn.bias", ".attn.masked_bias"))}
    model = GPT(GPTConfig(**kw), params=params, device=device)
    # the trainer's update (training/step.py): weights, gradients and AdamW's
    # state in one flat buffer each, clipped and updated over those buffers
    update = Update(model.params, optim.AdamWConfig(lr=1e-4), optim.Schedule(1e-4, 10 ** 9, kind="constant"),
                    1.0, distributed.World())
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, kw["vocab_size"], size=(B, T + 1)) for _ in range(4)]
    it = iter(range(10 ** 9))

    def ours():
        step = next(it)
        w = batches[step % len(batches)]
        update.zero()
        loss, grads = model.loss_and_grads(xp.asarray(w[:, :-1]), xp.asarray(w[:, 1:]))
        update.add(grads, 1.0)
        out = update.apply(step, loss)
        _sync(xp)
        return out["loss"]

    decay = [p for p in hf.parameters() if p.dim() == 2]
    rest = [p for p in hf.parameters() if p.dim() != 2]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=1e-4, betas=(0.9, 0.95))

    def theirs(w):
        topt.zero_grad(set_to_none=True)
        x, y = torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, 1:])
        logits = hf(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        topt.step()

    # warm-up each, then alternate rounds so that drift in the machine's
    # speed hits both alike; median of each
    ours()
    theirs(batches[0])
    ours_s, torch_s = alternate(ours, lambda r: theirs(batches[r % len(batches)]), rounds)
    benchmark.pedantic(ours, rounds=1, iterations=1)  # the pytest-benchmark table: gptlite's step

    flops_tok = model.flops_per_token(T)
    peak = float(os.environ.get("GPTLITE_PEAK_FLOPS") or _gemm_peak(xp))
    info = {
        "device": _device_name(xp), "shape": shape, "batch": B, "context": T,
        "params": model.num_parameters(),
        "gptlite_tokens_per_s": B * T / ours_s, "torch_tokens_per_s": B * T / torch_s,
        "speed_vs_torch": torch_s / ours_s,
        "gptlite_flops_per_s": flops_tok * B * T / ours_s, "peak_flops": peak,
        "gptlite_mfu": flops_tok * B * T / ours_s / peak, "torch_mfu": flops_tok * B * T / torch_s / peak,
        "torch_threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(f"\n[{shape}] {info['device']}: gptlite {info['gptlite_tokens_per_s']:,.0f} tok/s "
          f"(MFU {info['gptlite_mfu']:.1%}), torch {info['torch_tokens_per_s']:,.0f} tok/s "
          f"(MFU {info['torch_mfu']:.1%}); gptlite/torch speed {info['speed_vs_torch']:.2f}x; "
          f"peak {peak / 1e9:.1f} GFLOP/s")
    assert np.isfinite(float(to_numpy(xp.asarray(ours()))))
