"""CPU generation speed: gptlite's KV-cache decoding vs HF ``generate``.

GPT-2 124M shape (random weights, the same in both), batch 1, a 32-token
prompt, 64 new tokens, greedy. Both run in this process with their default
thread settings; rounds alternate between the two so that a change in machine
load hits both alike. The figure is the ratio of tokens/s (target >= 1.5x),
with default threads and again with one BLAS thread each.

    python -m pytest benches/bench_generate.py --benchmark-only -s
    python benches/bench_generate.py            # same, without pytest-benchmark
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import alternate  # noqa: E402

PROMPT_LEN, NEW_TOKENS, ROUNDS = 32, 64, 3


def build():
    """(gptlite model, HF model, prompt) with identical 124M-shaped weights."""
    from hf_reference import hf_model, params_from_hf

    from gptlite.engine.model import GPT, GPTConfig

    cfg = GPTConfig.preset("gpt2")
    hf = hf_model(cfg, seed=0)
    hf.generation_config.eos_token_id = None  # never stop early: exactly NEW_TOKENS each
    hf.generation_config.pad_token_id = 0
    model = GPT(cfg, params=params_from_hf(hf, cfg), device="cpu")
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, cfg.vocab_size, PROMPT_LEN)]
    return model, hf, prompt


def run_gptlite(model, prompt):
    from gptlite.generate import generate

    return generate(model, prompt, NEW_TOKENS, temperature=0)


def run_hf(hf, prompt):
    import torch

    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                          do_sample=False, use_cache=True)
    return out[0, len(prompt):].tolist()


class single_thread:
    """Both libraries on one BLAS thread: the like-for-like comparison of the code
    itself, and robust when other jobs oversubscribe the cores (spinning BLAS
    threads then collapse, in both libraries)."""

    def __enter__(self):
        import torch

        from gptlite.engine.cpu import _BlasThreads

        self.blas = _BlasThreads()
        self.prev = (torch.get_num_threads(), self.blas.get() if self.blas.get else None)
        torch.set_num_threads(1)
        if self.blas.set:
            self.blas.set(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.prev[0])
        if self.blas.set and self.prev[1]:
            self.blas.set(self.prev[1])


def measure(model, hf, prompt, rounds=ROUNDS):
    """Median seconds per call of each, alternating; checks both give the same tokens."""
    ours, theirs = run_gptlite(model, prompt), run_hf(hf, prompt)  # warm-up
    if ours != theirs:
        raise AssertionError(f"greedy outputs differ: gptlite {ours[:8]}... vs HF {theirs[:8]}...")
    return alternate(lambda: run_gptlite(model, prompt), lambda r: run_hf(hf, prompt), rounds)


def report(s_ours, s_hf, label="") -> dict:
    import torch

    r = {
        "gptlite_tokens_per_s": NEW_TOKENS / s_ours,
        "hf_tokens_per_s": NEW_TOKENS / s_hf,
        "ratio": s_hf / s_ours,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"\ngenerate 124M, batch 1, {PROMPT_LEN}-token prompt, {NEW_TOKENS} new, greedy, CPU{label}: "
          f"gptlite {r['gptlite_tokens_per_s']:.1f} tok/s, HF generate {r['hf_tokens_per_s']:.1f} tok/s "
          f"-> {r['ratio']:.2f}x (target 1.5x; torch threads {r['torch_threads']})")
    return r


def run_all(model, hf, prompt) -> dict:
    out = {"default_threads": report(*measure(model, hf, prompt), label=", default threads")}
    with single_thread():
        out["one_thread"] = report(*measure(model, hf, prompt), label=", 1 thread each")
    return out


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build()


def test_generate_vs_hf(benchmark, models):
    model, hf, prompt = models
    results = run_all(model, hf, prompt)
    for label, r in results.items():
        benchmark.extra_info.update({f"{label}.{k}": v for k, v in r.items()})
    # the pytest-benchmark table: gptlite's own timing
    benchmark.pedantic(run_gptlite, args=(model, prompt), rounds=2, iterations=1)
    ratio = results["default_threads"]["ratio"]
    assert ratio >= 1.5, f"generation only {ratio:.2f}x HF generate (target 1.5x)"


if __name__ == "__main__":
    run_all(*build())


# ----------------------------------------------------------------------------
# GPU: the same generation on CuPy vs HF generate on torch CUDA (skipped without a GPU)


def test_generate_gpu_vs_hf_cuda(benchmark):
    from gptlite.engine.backend import cuda_available

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if not cuda_available() or not torch.cuda.is_available():
        pytest.skip("needs CuPy and torch with a visible CUDA GPU")
    import cupy as cp

    from gptlite.engine.model import GPT

    model, hf, prompt = build()
    model = GPT(model.config, params=model.params, device="cuda")
    hf = hf.cuda()

    def theirs():
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=NEW_TOKENS,
                              do_sample=False, use_cache=True)
        return out[0, len(prompt):].tolist()  # .tolist() synchronises

    ours = run_gptlite(model, prompt)  # returns host ints: synchronised
    ref = theirs()
    # float32 on two GPU stacks: greedy paths may part after a near-tie; the first tokens must agree
    assert ours[:8] == ref[:8], f"greedy outputs differ early: gptlite {ours[:8]} vs HF {ref[:8]}"
    s_ours, s_hf = alternate(lambda: run_gptlite(model, prompt), lambda r: theirs(), ROUNDS, pause=False)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    info = {"device": name, "gptlite_tokens_per_s": NEW_TOKENS / s_ours, "hf_tokens_per_s": NEW_TOKENS / s_hf,
            "ratio": s_hf / s_ours}
    benchmark.extra_info.update(info)
    print(f"\ngenerate 124M, batch 1, {PROMPT_LEN}-token prompt, {NEW_TOKENS} new, greedy, {name}: "
          f"gptlite (CuPy) {info['gptlite_tokens_per_s']:.1f} tok/s, HF generate (CUDA) "
          f"{info['hf_tokens_per_s']:.1f} tok/s -> {info['ratio']:.2f}x")
    benchmark.pedantic(run_gptlite, args=(model, prompt), rounds=1, iterations=1)
