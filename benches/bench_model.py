"""CPU training-step speed: gptlite's hand-written forward+backward vs PyTorch.

GPT-2 124M shape (random weights, the same in both), batch 4 x 256 tokens,
float32: one step is the loss over all positions plus the gradient of every
parameter. The competitor is HF ``GPT2LMHeadModel`` (eager attention, dropout
off) with ``loss.backward()``, both in this process with their default thread
settings; rounds alternate between the two so that a change in machine load
hits both alike. Reported: tokens/s of each and their ratio (target >= 1.2x),
the achieved GFLOP/s (model FLOPs, ``flops_per_token``) against NumPy's own
sgemm peak measured in the same run, and the peak RSS of a training step
(each in a fresh process, beyond the RSS after building the model).

    python -m pytest benches/bench_model.py --benchmark-only -s
    python benches/bench_model.py            # same, without pytest-benchmark
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import alternate, settle  # noqa: E402

B, T, ROUNDS = 4, 256, 5


def build(with_hf=True):
    """(gptlite model, HF model or None, idx, targets) with identical 124M-shaped weights."""
    from gptlite.engine.model import GPT, GPTConfig

    cfg = GPTConfig.preset("gpt2")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    if not with_hf:
        return GPT(cfg, seed=0, device="cpu"), None, idx, targets
    from hf_reference import hf_model, params_from_hf

    hf = hf_model(cfg, seed=0)
    hf.train()  # dropout is 0: train mode only so autograd keeps what it needs
    model = GPT(cfg, params=params_from_hf(hf, cfg), device="cpu")
    return model, hf, idx, targets


def step_gptlite(model, idx, targets):
    loss, _ = model.loss_and_grads(idx, targets)
    return loss


def step_hf(hf, idx, targets):
    import torch

    hf.zero_grad(set_to_none=True)
    logits = hf(torch.from_numpy(idx)).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), torch.from_numpy(targets).view(-1))
    loss.backward()
    return float(loss.detach())


def sgemm_peak(n=2048, reps=3) -> float:
    """NumPy's own float32 matmul GFLOP/s on an n^3 product (best of reps)."""
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    a @ b
    settle()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def measure(model, hf, idx, targets, rounds=ROUNDS):
    """Median seconds per step of each (1 warm-up, then alternating rounds);
    checks both compute the same loss."""
    l_ours, l_hf = step_gptlite(model, idx, targets), step_hf(hf, idx, targets)
    if abs(l_ours - l_hf) > 1e-3 * abs(l_hf):
        raise AssertionError(f"losses differ: gptlite {l_ours} vs HF {l_hf}")
    return alternate(lambda: step_gptlite(model, idx, targets), lambda r: step_hf(hf, idx, targets), rounds)


def _proc_status_mib(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_peak_rss(which: str) -> dict:
    """RSS (MiB) of a fresh process after building the model, and its peak during one step."""
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_model as m; "
            f"print(json.dumps(m._rss_child({which!r})))")
    # the HF child builds a gptlite model too (for the weights): keep glibc's
    # defaults there so gptlite's malloc setting does not change torch's RSS
    env = {**os.environ, **({"GPTLITE_KEEP_FREED_MEMORY": "0"} if which == "hf" else {})}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_child(which):
    model, hf, idx, targets = build(with_hf=which == "hf")
    if which == "hf":
        del model
        import gc

        gc.collect()
    gc_rss = _proc_status_mib("VmRSS")
    built = gc_rss if (gc_rss is not None and _reset_peak_rss()) else _peak_rss_mib()
    if which == "hf":
        step_hf(hf, idx, targets)
    else:
        step_gptlite(model, idx, targets)
    peak = _peak_rss_mib()
    return {"built_mib": built, "peak_mib": peak, "step_mib": peak - built}


def report(model, s_ours, s_hf, peak=None, rss=None) -> dict:
    import torch

    tokens = B * T
    flops = model.flops_per_token(T) * tokens
    r = {
        "gptlite_tokens_per_s": tokens / s_ours,
        "hf_tokens_per_s": tokens / s_hf,
        "ratio": s_hf / s_ours,
        "gptlite_gflops": flops / s_ours / 1e9,
        "hf_gflops": flops / s_hf / 1e9,
        "numpy_sgemm_peak_gflops": peak,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"\ntrain step 124M, batch {B}x{T}, float32, CPU: gptlite {r['gptlite_tokens_per_s']:.0f} tok/s "
          f"({s_ours:.2f} s/step), HF+torch {r['hf_tokens_per_s']:.0f} tok/s ({s_hf:.2f} s/step) "
          f"-> {r['ratio']:.2f}x (target 1.2x; torch threads {r['torch_threads']})")
    if peak:
        print(f"achieved {r['gptlite_gflops']:.1f} GFLOP/s = {100 * r['gptlite_gflops'] / peak:.0f}% of NumPy's "
              f"sgemm peak {peak:.1f} GFLOP/s (torch: {r['hf_gflops']:.1f} GFLOP/s)")
    if rss:
        r.update({f"rss_{k}_{w}": v for w, d in rss.items() for k, v in d.items()})
        for w, d in rss.items():
            print(f"peak RSS {w}: {d['peak_mib']:.0f} MiB ({d['step_mib']:.0f} MiB for the step on top of "
                  f"{d['built_mib']:.0f} MiB after building)")
    return r


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build()


def test_train_step_vs_torch(benchmark, models):
    model, hf, idx, targets = models
    s_ours, s_hf = measure(model, hf, idx, targets)
    peak = sgemm_peak()
    rss = {"gptlite": step_peak_rss("gptlite"), "hf": step_peak_rss("hf")}
    r = report(model, s_ours, s_hf, peak, rss)
    benchmark.extra_info.update(r)
    assert r["ratio"] >= 1.2, f"train step only {r['ratio']:.2f}x PyTorch eager (target 1.2x)"
    # the pytest-benchmark table: gptlite's own step
    benchmark.pedantic(step_gptlite, args=(model, idx, targets), rounds=1, iterations=1)


if __name__ == "__main__":
    model, hf, idx, targets = build()
    s = measure(model, hf, idx, targets)
    report(model, *s, sgemm_peak(), {"gptlite": step_peak_rss("gptlite"), "hf": step_peak_rss("hf")})


# ----------------------------------------------------------------------------
# GPU: the same step on CuPy vs PyTorch CUDA (skipped without a GPU)


def _gpu_ready():
    from gptlite.engine.backend import cuda_available

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if not cuda_available() or not torch.cuda.is_available():
        pytest.skip("needs CuPy and torch with a visible CUDA GPU")


def measure_gpu(model, hf, idx, targets, rounds=5):
    """Median seconds per step on the GPU (each side synchronised), and the
    peak device memory of a step: CuPy's pool and torch's allocator."""
    import cupy as cp
    import torch

    xi, xt = cp.asarray(idx), cp.asarray(targets)
    ti, tt = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()

    def ours():
        loss, _ = model.loss_and_grads(xi, xt)
        cp.cuda.Device().synchronize()
        return loss

    def theirs():
        hf.zero_grad(set_to_none=True)
        logits = hf(ti).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tt.view(-1))
        loss.backward()
        torch.cuda.synchronize()
        return float(loss.detach())

    l_ours, l_hf = ours(), theirs()  # warm-up (kernel compilation, cuBLAS handles)
    if abs(l_ours - l_hf) > 1e-3 * abs(l_hf):
        raise AssertionError(f"losses differ on the GPU: gptlite {l_ours} vs torch {l_hf}")
    torch.cuda.reset_peak_memory_stats()
    s_ours, s_hf = alternate(ours, lambda r: theirs(), rounds, pause=False)  # GPU: no spinning CPU threads
    return (s_ours, s_hf,
            cp.get_default_memory_pool().total_bytes() / 2 ** 20, torch.cuda.max_memory_allocated() / 2 ** 20)


def test_train_step_gpu_vs_torch_cuda(benchmark):
    _gpu_ready()
    import cupy as cp
    import torch

    from gptlite.engine.model import GPT

    model, hf, idx, targets = build()
    hf = hf.cuda()
    model = GPT(model.config, params=model.params, device="cuda")
    s_ours, s_hf, mib_ours, mib_hf = measure_gpu(model, hf, idx, targets)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    tokens = B * T
    info = {"device": name, "gptlite_tokens_per_s": tokens / s_ours, "torch_tokens_per_s": tokens / s_hf,
            "ratio": s_hf / s_ours, "gptlite_tflops": model.flops_per_token(T) * tokens / s_ours / 1e12,
            "gptlite_pool_mib": mib_ours, "torch_peak_mib": mib_hf}
    benchmark.extra_info.update(info)
    print(f"\ntrain step 124M, batch {B}x{T}, float32, {name}: gptlite (CuPy) {info['gptlite_tokens_per_s']:,.0f} tok/s, "
          f"torch CUDA eager {info['torch_tokens_per_s']:,.0f} tok/s -> {info['ratio']:.2f}x; "
          f"{info['gptlite_tflops']:.1f} TFLOP/s; memory: CuPy pool {mib_ours:,.0f} MiB, torch peak {mib_hf:,.0f} MiB")
    benchmark.pedantic(lambda: model.loss_and_grads(cp.asarray(idx), cp.asarray(targets)), rounds=1, iterations=1)
    torch.cuda.empty_cache()
