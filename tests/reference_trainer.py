"""A naive byte-level BPE trainer: the oracle for gptlite's Rust trainer.

Deliberately simple and independent of gptlite: pre-tokenization with the
`regex` package and the published patterns (GPT-2's, cl100k_base's and
o200k_base's, spelled as tiktoken spells them), and every pair recounted from
scratch at every step. Same documented semantics as rust/train.rs:

- base vocabulary = the 256 bytes, ids 0..255 in byte order;
- pair count = sum over distinct pre-tokens of count * adjacent occurrences;
- merge the pair with the highest count, ties -> smallest (left id, right id);
- occurrences are replaced left to right, non-overlapping;
- the merged token gets the next id, unless its bytes already are a token
  (then that id is reused and no new token is made);
- stop after n_new tokens, when no pair is left, or when the best count < min_frequency.
"""
from __future__ import annotations

from collections import Counter

import regex

PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # o200k_base's pat_str exactly as tiktoken_ext/openai_public.py builds it
    "o200k": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}


def pretokenize(text: str, pattern: str = "gpt2") -> list:
    return regex.findall(PATTERNS[pattern], text)


def count_words(texts, pattern: str = "gpt2") -> Counter:
    """{pre-token: count} over independent documents."""
    counts = Counter()
    for t in texts:
        counts.update(pretokenize(t, pattern))
    return counts


def train(word_counts: dict, n_new: int, min_frequency: int = 1):
    """-> (merges [(left, right, id)], tokens [bytes])."""
    words = [(list(w.encode("utf-8") if isinstance(w, str) else w), c) for w, c in word_counts.items() if c > 0]
    tokens = [bytes([b]) for b in range(256)]
    ids = {t: i for i, t in enumerate(tokens)}
    merges = []
    added = 0
    while added < n_new:
        pairs = Counter()
        for w, c in words:
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        (a, b), best = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if best < max(1, min_frequency):
            break
        new_bytes = tokens[a] + tokens[b]
        if new_bytes in ids:
            new = ids[new_bytes]
        else:
            new = len(tokens)
            tokens.append(new_bytes)
            ids[new_bytes] = new
            added += 1
        merges.append((a, b, new))
        for k, (w, c) in enumerate(words):
            if len(w) < 2:
                continue
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = (out, c)
    return merges, tokens
