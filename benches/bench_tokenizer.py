"""Tokenizer benchmarks: gptlite vs tiktoken vs HF tokenizers, measured in the same run.

Run: ``python -m pytest benches/bench_tokenizer.py -s`` (``-s`` shows the summary).
Corpus: every file under ../shared/data/corpora, split into documents at blank
lines (LAMBADA: one document per JSON line), encoded one document per call.
Ratios are stored in each benchmark's ``extra_info`` and printed.

Targets (issue #2): single-thread ``encode_ordinary`` >= 2.0x tiktoken; batch over
2 threads >= 1.7x our single thread; pathological 1 MB inputs < 1 s each with
peak memory proportional to the input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CORPORA, GPT2_DIR, corpus_documents  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return [d for ds in corpus_documents(CORPORA).values() for d in ds]


@pytest.fixture(scope="module")
def n_bytes(docs) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


@pytest.fixture(scope="module")
def ours():
    from gptlite.tokenizer.encoding import Tokenizer

    return Tokenizer.from_files(GPT2_DIR)


@pytest.fixture(scope="module")
def tiktoken_enc():
    import tiktoken
    import tiktoken.load

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(GPT2_DIR / "vocab.bpe"), str(GPT2_DIR / "encoder.json"))
    pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(name="gpt2", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf_tok():
    import tokenizers

    vocab = json.loads((GPT2_DIR / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(m.split()) for m in (GPT2_DIR / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if m]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


def _best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _best_cpu(fn, rounds: int) -> float:
    """CPU time of this process (less disturbed than wall time on a busy machine;
    only meaningful for single-threaded work)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _report(benchmark, name: str, **info) -> None:
    benchmark.extra_info.update(info)
    RESULTS.update({f"{name}.{k}": v for k, v in info.items()})
    print(f"\n[{name}] " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))


def test_single_thread_vs_tiktoken_and_hf(benchmark, docs, n_bytes, ours, tiktoken_enc, hf_tok):
    def run_ours():
        for d in docs:
            ours.encode_ordinary(d)

    def run_tiktoken():
        for d in docs:
            tiktoken_enc.encode_ordinary(d)

    def run_hf():
        for d in docs:
            hf_tok.encode(d, add_special_tokens=False)

    # same ids first: a speed comparison of different outputs would mean nothing
    sample = docs[::50]
    assert [ours.encode_ordinary(d) for d in sample] == [tiktoken_enc.encode_ordinary(d) for d in sample]
    benchmark.pedantic(run_ours, rounds=5, iterations=1, warmup_rounds=1)
    t_ours = benchmark.stats.stats.min
    t_tik = _best(run_tiktoken, 3)
    t_hf = _best(run_hf, 1)
    c_ours, c_tik = _best_cpu(run_ours, 3), _best_cpu(run_tiktoken, 3)
    mb = n_bytes / 1e6
    _report(benchmark, "single_thread", corpus_mb=round(mb, 2), documents=len(docs),
            gptlite_mb_s=mb / t_ours, tiktoken_mb_s=mb / t_tik, hf_tokenizers_mb_s=mb / t_hf,
            ratio_vs_tiktoken=t_tik / t_ours, ratio_vs_hf=t_hf / t_ours,
            cpu_ratio_vs_tiktoken=c_tik / c_ours, load_avg_1m=os.getloadavg()[0])
    assert t_tik / t_ours >= 2.0, f"single-thread encode only {t_tik / t_ours:.2f}x tiktoken (target 2.0x)"
    assert t_hf / t_ours >= 5.0, f"single-thread encode only {t_hf / t_ours:.2f}x HF tokenizers"


def test_batch_two_threads_vs_single(benchmark, docs, n_bytes, ours):
    def single():  # the same output as the batch call: a list of id lists
        return [ours.encode_ordinary(d) for d in docs]

    def batch():
        return ours.encode_ordinary_batch(docs, num_threads=2)

    benchmark.pedantic(batch, rounds=3, iterations=1, warmup_rounds=1)
    # Alternate the two, so that a change in machine load (a shared VM's
    # neighbours) hits both alike; best of 7 each.
    t_batch = t_single = float("inf")
    for _ in range(7):
        t_batch = min(t_batch, _best(batch, 1))
        t_single = min(t_single, _best(single, 1))
    mb = n_bytes / 1e6
    _report(benchmark, "batch_2_threads", batch_mb_s=mb / t_batch, single_mb_s=mb / t_single,
            speedup_vs_single=t_single / t_batch, cpus=os.cpu_count(), load_avg_1m=os.getloadavg()[0])
    if (os.cpu_count() or 1) >= 2:
        assert t_single / t_batch >= 1.7, f"2-thread batch only {t_single / t_batch:.2f}x single (target 1.7x)"


_PATHOLOGICAL = {
    "one_letter_1mb": "'a' * 1_000_000",
    "one_emoji_1mb": "'\\U0001F600' * 250_000",
    "no_spaces_1mb": "('abcdefghijklmnopqrstuvwxyz' * 40_000)[:1_000_000]",
    "digits_1mb": "'7' * 1_000_000",
    "whitespace_1mb": "' \\t\\n' * 333_333",
}

_CHILD = r"""
import resource, sys, time
from gptlite.tokenizer.encoding import Tokenizer
tok = Tokenizer.from_files(sys.argv[1])
text = eval(sys.argv[2])
tok.encode_ordinary("warm up")

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])  # kB

# Reset the peak-RSS mark (Linux: "5" > clear_refs) so that loading the vocabulary
# does not hide the encode's own peak; fall back to ru_maxrss elsewhere.
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS:")
    peak_of = lambda: status("VmHWM:")
except OSError:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); c = time.process_time()
ids = tok.encode_ordinary(text)
wall = time.perf_counter() - t; cpu = time.process_time() - c
peak = peak_of()
print(wall, cpu, (peak - base) / 1024, len(ids), len(text.encode()))
"""


@pytest.mark.parametrize("kind", sorted(_PATHOLOGICAL))
def test_pathological(benchmark, kind):
    """Time and peak-RSS growth (Rust allocations included) of one 1 MB encode, in a fresh process."""
    out = {}

    def run():
        r = subprocess.run([sys.executable, "-c", _CHILD, str(GPT2_DIR), _PATHOLOGICAL[kind]],
                           capture_output=True, text=True, check=True)
        out["v"] = r.stdout.split()

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, cpu, peak_mb, n_ids, n_in = out["v"]
    _report(benchmark, kind, seconds=float(wall), cpu_seconds=float(cpu), peak_rss_growth_mb=float(peak_mb),
            input_mb=int(n_in) / 1e6, tokens=int(n_ids))
    assert float(wall) < 1.0, f"{kind}: {float(wall):.2f} s for 1 MB (target < 1 s)"
    # proportional to the input: the ids as a Python list cost ~8-30 bytes per input byte
    assert float(peak_mb) <= 64 * int(n_in) / 1e6, f"{kind}: RSS grew {float(peak_mb):.0f} MB for 1 MB of input"


def test_zz_summary():
    """Prints every figure measured above (pytest runs this file's tests in order)."""
    print("\n=== tokenizer benchmark summary ===")
    for k, v in RESULTS.items():
        print(f"{k:45s} {v:.3f}" if isinstance(v, float) else f"{k:45s} {v}")
