"""CPU decoding: gptlite (float32 and int8 weights) vs CTranslate2 (same compute
types) vs HF generate, on the same random GPT-2 124M-shaped weights.

The HF model (seed 0) is saved to a scratch directory and converted with
``ctranslate2.converters.TransformersConverter``; gptlite takes the same
tensors. Batch 1 (32-token prompt, 64 greedy new tokens), then batched
throughput at batch 8 and 32, then batch 1 again with a competing busy
process pinned to one core (``taskset``). Every engine runs with 2 threads;
rounds alternate between engines, so a change in the machine's load (other
jobs share it) hits every engine alike; the report gives the median and the
range of each.

Weight traffic: decoding reads every weight once per step, so
bytes-per-step x steps/s is compared with the bandwidth of a NumPy copy of a
1 GB array (read + write bytes / s), the ceiling for a memory-bound decode.

ctranslate2 is a benchmark-only dependency (``pip install ctranslate2``).

    python benches/bench_quant.py [--rounds 3] [--skip-batched] [--skip-shared]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "python"))

PROMPT_LEN, NEW_TOKENS, THREADS = 32, 64, 2


def memory_bandwidth_gbs(nbytes=1 << 30, reps=3) -> float:
    """Read + write GB/s of np.copyto over a 1 GB array (best of reps)."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def build(workdir: Path):
    import ctranslate2
    import transformers
    from hf_reference import hf_model, params_from_hf

    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.engine.quant import quantize_model

    cfg = GPTConfig.preset("gpt2")
    hf = hf_model(cfg, seed=0)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    hf_dir = workdir / "hf"
    hf.save_pretrained(hf_dir, safe_serialization=True)
    shared = ROOT.parent / "shared" / "data" / "gpt2"
    if not shared.is_dir():
        shared = Path("/work/shared/data/gpt2")
    vocab = json.loads((shared / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(ln.split(" ")) for ln in (shared / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if ln]
    tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(hf_dir)
    ct2_dir = workdir / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), force=True)
    params = params_from_hf(hf, cfg)
    f32 = GPT(cfg, params=params, device="cpu")
    i8 = quantize_model(GPT(cfg, params={k: v.copy() for k, v in params.items()}, device="cpu"))
    gens = {ct: ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=ct, inter_threads=1,
                                      intra_threads=THREADS) for ct in ("float32", "int8")}
    return cfg, hf, tok, f32, i8, gens


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads (the position table: one row)."""
    n = 0
    for name, a in model.params.items():
        if name == "wpe.weight":
            n += a.shape[1] * 4
        else:
            n += int(a.nbytes)
    return n


def engines(hf, tok, f32, i8, gens):
    import torch

    from gptlite.generate import generate

    def ours(model):
        return lambda prompts: generate(model, prompts, NEW_TOKENS, temperature=0)

    def ct2(gen):
        def run(prompts):
            toks = [tok.convert_ids_to_tokens(p) for p in prompts]
            res = gen.generate_batch(toks, max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                                     include_prompt_in_result=False, max_batch_size=0)
            return [r.sequences_ids[0] for r in res]
        return run

    def hf_gen(prompts):
        with torch.inference_mode():
            out = hf.generate(torch.tensor(prompts), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, use_cache=True)
        return out[:, len(prompts[0]):].tolist()

    return {"gptlite int8": ours(i8), "ct2 int8": ct2(gens["int8"]),
            "gptlite float32": ours(f32), "ct2 float32": ct2(gens["float32"]), "hf float32": hf_gen}


def alternate_all(fns: dict, prompts, rounds: int) -> dict:
    """Seconds per call of every engine, rounds interleaved: name -> list."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.3)  # let the previous engine's spinning threads go idle
            t0 = time.perf_counter()
            fn(prompts)
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: dict, batch: int) -> dict:
    out = {}
    for name, ts in times.items():
        tps = [batch * NEW_TOKENS / t for t in ts]
        out[name] = {"tok_s": statistics.median(tps), "min": min(tps), "max": max(tps)}
    return out


def print_table(title, res, ratios=(("gptlite int8", "ct2 int8"), ("gptlite float32", "ct2 float32"),
                                    ("gptlite float32", "hf float32"), ("gptlite int8", "hf float32"))):
    print(f"\n{title}")
    for name, r in res.items():
        print(f"  {name:16s} {r['tok_s']:8.1f} tok/s  (range {r['min']:.1f}-{r['max']:.1f})")
    for a, b in ratios:
        if a in res and b in res:
            print(f"  {a} / {b}: {res[a]['tok_s'] / res[b]['tok_s']:.2f}x")


def busy_core(core: int):
    """A process spinning on one core (the competing load)."""
    return subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-batched", action="store_true")
    ap.add_argument("--skip-shared", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    from gptlite.engine import quant

    results = {"cpu_kernel": quant.kernel_isa(), "threads": THREADS}
    results["memory_bandwidth_gbs"] = bw = memory_bandwidth_gbs()
    print(f"memory bandwidth (NumPy copy of 1 GB, read+write): {bw:.1f} GB/s; int8 kernel: {results['cpu_kernel']}")
    work = Path(tempfile.mkdtemp(prefix="gptlite-bench-quant-"))
    try:
        cfg, hf, tok, f32, i8, gens = build(work)
        fns = engines(hf, tok, f32, i8, gens)
        rng = np.random.default_rng(0)
        prompt = [rng.integers(0, cfg.vocab_size, PROMPT_LEN).tolist()]
        outs = {k: fn(prompt)[0] for k, fn in fns.items()}  # warm-up + agreement
        ref = outs["hf float32"]
        results["greedy_match_vs_hf"] = {k: float(np.mean([a == b for a, b in zip(v, ref)])) for k, v in outs.items()}
        print("share of greedy tokens equal to HF float32:",
              {k: f"{100 * v:.0f}%" for k, v in results["greedy_match_vs_hf"].items()})
        res = summarize(alternate_all(fns, prompt, args.rounds), 1)
        for name, model in (("gptlite int8", i8), ("gptlite float32", f32)):
            # steps/s over the whole call (the 32-token prefill included): a lower bound
            res[name]["weight_gbs"] = weight_bytes_per_step(model) * res[name]["tok_s"] / 1e9
        results["batch1"] = res
        print_table(f"batch 1, {PROMPT_LEN}-token prompt + {NEW_TOKENS} greedy tokens, {THREADS} threads", res)
        for name in ("gptlite int8", "gptlite float32"):
            print(f"  {name}: weight traffic {res[name]['weight_gbs']:.1f} GB/s "
                  f"({100 * res[name]['weight_gbs'] / bw:.0f}% of the measured copy bandwidth)")
        if not args.skip_batched:
            for B in (8, 32):
                prompts = [rng.integers(0, cfg.vocab_size, PROMPT_LEN).tolist() for _ in range(B)]
                sub = {k: v for k, v in fns.items() if k != "hf float32"}
                r = summarize(alternate_all(sub, prompts, max(1, args.rounds - 1)), B)
                results[f"batch{B}"] = r
                print_table(f"batch {B} throughput (new tokens/s over all rows)", r)
        if not args.skip_shared:
            p = busy_core(0)
            try:
                time.sleep(0.5)
                r = summarize(alternate_all(fns, prompt, args.rounds), 1)
            finally:
                p.kill()
                p.wait()
            results["batch1_one_core_busy"] = r
            print_table("batch 1 with a busy process pinned to core 0", r,
                        ratios=(("gptlite int8", "hf float32"), ("gptlite float32", "hf float32"),
                                ("gptlite float32", "ct2 float32"), ("gptlite int8", "ct2 int8"),
                                ("gptlite int8", "ct2 float32")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
