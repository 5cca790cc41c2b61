"""Train a byte-level BPE tokenizer (the Rust core does the work).

Semantics (docs/design.md, rust/train.rs): the base vocabulary is the 256
single bytes, ids 0-255 in byte order; text is pre-tokenized (GPT-2's pattern
by default; any of ``PATTERNS``: gpt2, cl100k, o200k) and merges never cross pre-token boundaries; each step merges the
pair with the highest total count, ties going to the smallest (left id, right
id); the new token gets the next id; special tokens come after the merges.
Same corpus and options give the same merges on any number of threads.

Counting is exposed on its own so that a corpus too big for one machine can be
counted in shards elsewhere and only the merge phase run here::

    counts = merge_counts([count_pretokens(files=[shard]) for shard in shards])
    tok = train_tokenizer(word_counts=counts, vocab_size=32768)
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from gptlite import _core

PathLike = Union[str, os.PathLike]
Progress = Union[bool, Callable[[str, int, Optional[int]], None], None]

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)
# The pre-tokenization patterns, as the Rust core names them (the one list of them).
PATTERNS = tuple(name for name, _tiktoken_regex, _regex in _core.patterns())


@dataclass
class BPETrainResult:
    """What the merge phase produced.

    merges[i] = (left_id, right_id, new_id); counts[i] = the pair's count when merged.
    tokens[id] = bytes of token id (0..255 are the single bytes, then one per merge).
    special_tokens: name -> id, after the merged tokens.
    """

    merges: list
    counts: list
    tokens: list
    special_tokens: dict
    pattern: str
    stats: dict = field(default_factory=dict)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens) + len(self.special_tokens)

    def mergeable_ranks(self) -> dict:
        """bytes -> rank, where rank == id (what tiktoken calls mergeable_ranks)."""
        return {t: i for i, t in enumerate(self.tokens)}

    def to_tokenizer(self, name: str = "gptlite-bpe"):
        from gptlite.tokenizer.encoding import Tokenizer

        return Tokenizer.from_ranks(self.mergeable_ranks(), dict(self.special_tokens), pattern=self.pattern, name=name)


def _as_paths(files) -> list:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(f) for f in files]
    for p in paths:
        if p.is_dir():
            raise IsADirectoryError(f"{p}: is a directory, not a text file")
    return [str(p) for p in paths]


def _check_pattern(pattern: str) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pre-tokenization pattern {pattern!r}; choose one of {PATTERNS}")
    return pattern


def _check_errors(errors: str) -> str:
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    return errors


def _check_threads(num_threads) -> Optional[int]:
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, not {num_threads!r}")
    return num_threads


class ProgressBar:
    """The counting and merging phases on the shared progress helper (a tqdm bar per phase).

    Called as ``bar(phase, done, total)``; ``stream`` defaults to stderr.
    """

    _PHASES = {"count": ("counting", dict(unit="B", unit_scale=True, unit_divisor=1000)),
               "merge": ("merging", dict(unit="tokens"))}

    def __init__(self, stream=None):
        self.stream = stream
        self.phase = None
        self._bar = None

    def __call__(self, phase: str, done: int, total: Optional[int]) -> None:
        if phase != self.phase:
            self.close()
            from gptlite.progress import Progress

            label, kw = self._PHASES.get(phase, (phase, {}))
            self.phase = phase
            self._bar = Progress(total or None, label, enabled=True, stream=self.stream, **kw)
        self._bar.update(done=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self.phase = None


def _progress_fn(progress: Progress):
    if progress is True:
        return ProgressBar()
    if progress is False or progress is None:
        return None
    if not callable(progress):
        raise ValueError(f"progress must be a bool or a callable(phase, done, total), not {progress!r}")
    return progress


def count_pretokens(
    files: Union[PathLike, Sequence[PathLike], None] = None,
    texts: Optional[Iterable[str]] = None,
    pattern: str = "gpt2",
    errors: str = "strict",
    num_threads: Optional[int] = None,
    progress: Progress = False,
) -> dict:
    """Count the pre-tokens of text files and/or an iterable of documents.

    Returns ``{pre-token: count}`` (sorted by pre-token), suitable for
    ``merge_counts`` and ``train_tokenizer(word_counts=...)``. Files are read
    as UTF-8 in parallel; invalid UTF-8 raises ValueError naming the file and
    byte offset unless ``errors="replace"``.
    """
    paths = _as_paths(files)
    if not paths and texts is None:
        raise ValueError("count_pretokens: give files=... and/or texts=...")
    cb = _progress_fn(progress)
    try:
        return _core.count_pretokens(**_source_args(paths, texts, pattern, errors, num_threads, cb))
    finally:
        if isinstance(cb, ProgressBar):
            cb.close()


def _source_args(paths, texts, pattern, errors, num_threads, progress) -> dict:
    """The checked keyword arguments the Rust core's counting takes (files or texts)."""
    return dict(files=paths or None, texts=texts, pattern=_check_pattern(pattern), errors=_check_errors(errors),
                num_threads=_check_threads(num_threads), progress=progress)


def merge_counts(counts: Iterable[dict]) -> dict:
    """Sum several ``{pre-token: count}`` dicts (e.g. of corpus shards)."""
    total: dict = {}
    for i, c in enumerate(counts):
        if not isinstance(c, dict):
            raise ValueError(f"merge_counts: item {i} is {type(c).__name__}, not a dict of counts")
        get = total.get
        for k, v in c.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"merge_counts: item {i}: count of {k!r} is {v!r}, not a non-negative int")
            total[k] = get(k, 0) + v
    return total


def _check_specials(special_tokens) -> tuple:
    if special_tokens is None:
        return ()
    if isinstance(special_tokens, str):
        special_tokens = (special_tokens,)
    specials = tuple(special_tokens)
    seen = set()
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
        if s in seen:
            raise ValueError(f"duplicate special token {s!r}")
        seen.add(s)
    return specials


def train_bpe(
    files: Union[PathLike, Sequence[PathLike], None] = None,
    texts: Optional[Iterable[str]] = None,
    word_counts: Optional[dict] = None,
    *,
    vocab_size: int,
    special_tokens: Optional[Sequence[str]] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 1,
    pattern: str = "gpt2",
    errors: str = "strict",
    num_threads: Optional[int] = None,
    progress: Progress = False,
) -> BPETrainResult:
    """Learn BPE merges; returns the merge list, token bytes and statistics.

    ``vocab_size`` counts the 256 bytes, the merged tokens and the special
    tokens. Training stops early (a smaller vocabulary) when no pair is left or
    the best pair occurs fewer than ``min_frequency`` times. Sources add up:
    files, texts (an iterable of documents) and precomputed word counts.
    """
    specials = _check_specials(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, not {vocab_size!r}")
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size {vocab_size} is below 256 (the byte tokens) + {len(specials)} special token(s) = {256 + len(specials)}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise ValueError(f"min_frequency must be a non-negative int, not {min_frequency!r}")
    paths = _as_paths(files)
    if not paths and texts is None and word_counts is None:
        raise ValueError("train: no input; give files=..., texts=... or word_counts=...")
    if word_counts is not None and not isinstance(word_counts, dict):
        raise ValueError("word_counts must be a dict {pre-token: count}")
    cb = _progress_fn(progress)
    t0 = time.perf_counter()
    try:
        merges, tokens, stats = _core.train_bpe(
            vocab_size - 256 - len(specials), word_counts=word_counts, min_frequency=max(1, min_frequency),
            **_source_args(paths, texts, pattern, errors, num_threads, cb))
    finally:
        if isinstance(cb, ProgressBar):
            cb.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["requested_vocab_size"] = vocab_size
    first_special = len(tokens)
    return BPETrainResult(
        merges=[(l, r, i) for l, r, i, _ in merges],
        counts=[c for _, _, _, c in merges],
        tokens=tokens,
        special_tokens={s: first_special + k for k, s in enumerate(specials)},
        pattern=pattern,
        stats=stats,
    )


def train_tokenizer(
    files: Union[PathLike, Sequence[PathLike], None] = None,
    texts: Optional[Iterable[str]] = None,
    word_counts: Optional[dict] = None,
    vocab_size: int = 50257,
    special_tokens: Optional[Sequence[str]] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 1,
    pattern: str = "gpt2",
    errors: str = "strict",
    progress: Progress = False,
    num_threads: Optional[int] = None,
):
    """Train a byte-level BPE tokenizer; returns a ``gptlite.tokenizer.encoding.Tokenizer``.

    See ``train_bpe`` for the options; ranks are ids, so the result saves as
    GPT-2 files (``encoder.json`` + ``vocab.bpe``), HF or tiktoken files with
    ``Tokenizer.save``.
    """
    result = train_bpe(
        files,
        texts,
        word_counts,
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        min_frequency=min_frequency,
        pattern=pattern,
        errors=errors,
        num_threads=num_threads,
        progress=progress,
    )
    return result.to_tokenizer()
