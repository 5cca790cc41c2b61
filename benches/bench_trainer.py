"""BPE training speed: gptlite vs HF tokenizers' BpeTrainer, in the same run.

    python -m pytest benches/bench_trainer.py --benchmark-only -s

Vocabulary 32,768 (256 bytes + merges + <|endoftext|>) on tinyshakespeare.txt +
big.txt + wikitext-2/{valid,test}.txt (6.3 MB). HF gets a ByteLevel
pre-tokenizer (GPT-2's regex) and the 256-byte initial alphabet, so both learn
the same kind of vocabulary of the same size from the same files. Wall time
includes reading and counting the files. Reported in ``extra_info``: both
times (median of ROUNDS) and gptlite/HF (the target is <= 0.5).
The scaling table (1x/4x/16x corpus, peak memory) is benches/trainer_scaling.py.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from gptlite.tokenizer import bpe_train as trainer

tokenizers = pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("GPTLITE_SHARED", ROOT.parent / "shared")) / "data" / "corpora"
FILES = [str(CORPORA / f) for f in ("tinyshakespeare.txt", "big.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt")]
VOCAB = 32768
ROUNDS = 3


def _hf_train():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(FILES, tr)
    return tok


def test_train_32k_vs_hf(benchmark):
    result = {}

    def ours():
        result["r"] = trainer.train_bpe(files=FILES, vocab_size=VOCAB)

    benchmark.pedantic(ours, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    ours_s = benchmark.stats.stats.median

    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        hf = _hf_train()
        times.append(time.perf_counter() - t)
    hf_s = statistics.median(times)

    r = result["r"]
    info = {
        "corpus_bytes": r.stats["corpus_bytes"], "unique_pretokens": r.stats["unique_pretokens"],
        "gptlite_s": ours_s, "gptlite_count_s": r.stats["count_seconds"], "gptlite_merge_s": r.stats["merge_seconds"],
        "hf_s": hf_s, "ratio_gptlite_over_hf": ours_s / hf_s,
        "gptlite_vocab": r.n_vocab, "hf_vocab": hf.get_vocab_size(), "cores": os.cpu_count(),
    }
    benchmark.extra_info.update(info)
    print(f"\nBPE training, vocab {VOCAB}, {info['corpus_bytes'] / 1e6:.1f} MB: gptlite {ours_s:.2f}s "
          f"(count {info['gptlite_count_s']:.2f}s + merge {info['gptlite_merge_s']:.2f}s), HF {hf_s:.2f}s, "
          f"gptlite/HF = {info['ratio_gptlite_over_hf']:.2f}")
    assert r.n_vocab == VOCAB
    assert hf.get_vocab_size() == VOCAB
    assert info["ratio_gptlite_over_hf"] <= 0.5, f"gptlite took {info['ratio_gptlite_over_hf']:.2f} of HF's time (target <= 0.5)"
