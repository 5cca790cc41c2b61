"""The long-piece merge against tiktoken on long pathological and random pieces.

Pieces longer than 128 bytes leave the array scan: up to 2 KB they go to a
binary heap, beyond that to the bucket merge (`LongMerge` in rust/encode.rs),
which must pop in exactly the heap's order. Timing is not tested here; the
scaling ratios are printed by ``benches/bench_encodings.py``.
"""
from __future__ import annotations

import random

import pytest

tiktoken = pytest.importorskip("tiktoken")

ENCODINGS = ("gpt2", "cl100k_base", "o200k_base")
SIZE = 100_000  # bytes


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tiktoken_cache):
    """tiktoken and gptlite load from one cache filled from the shared data (conftest.tiktoken_cache)."""
    return tiktoken_cache


def _repeat(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit.encode()))


def _random(alphabet: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEXTS = {
    "letter": _repeat("a"),
    "digits": _repeat("7"),
    "cjk": _repeat("中"),
    "emoji": _repeat("😀"),
    "punctuation": _repeat("!?"),
    "whitespace": _repeat(" "),
    "newlines": _repeat("\n"),
    "tabs": _repeat("\t"),
    "two_letters": _repeat("ab"),
    "odd_run": "a" * 99_999,
    "random_letters": _random(LETTERS, SIZE, 1),
    "random_cased": _random("aAeEnNtTsS", SIZE, 2),
    "random_cjk": _random("中文字符的是一了不", SIZE // 3, 3),
    "random_whitespace": _random(" \t\n\r", SIZE, 4),
    "random_digits": _random("0123456789", SIZE, 5),
    # pieces on both sides of the heap/bucket threshold (2 KB) and near it
    "pieces_of_many_lengths": " ".join(_random(LETTERS, n, 6 + n) for n in
                                       (129, 500, 2047, 2048, 2049, 3000, 20_000)),
    "runs_between_words": ("word " + "z" * 5000 + " " * 3000 + "中" * 1000 + "\n") * 3,
}


@pytest.fixture(scope="module", params=ENCODINGS)
def pair(request):
    import gptlite

    return gptlite.get_encoding(request.param), tiktoken.get_encoding(request.param)


@pytest.mark.parametrize("kind", list(TEXTS))
def test_long_pieces_match_tiktoken(pair, kind):
    ours, theirs = pair
    text = TEXTS[kind]
    got, want = ours.encode_ordinary(text), theirs.encode_ordinary(text)
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        pytest.fail(f"{ours.name} {kind}: {len(got)} ids vs tiktoken's {len(want)}; first difference at id {at}: "
                    f"{got[at:at + 5]} vs {want[at:at + 5]}")
    assert ours.decode(got) == text


def test_long_piece_inside_a_batch_matches(pair):
    """The batch path runs the same merge on pool threads with their own scratch."""
    ours, theirs = pair
    texts = [TEXTS["letter"], TEXTS["random_letters"], TEXTS["whitespace"], TEXTS["cjk"]]
    assert ours.encode_ordinary_batch(texts, num_threads=2) == [theirs.encode_ordinary(t) for t in texts]
