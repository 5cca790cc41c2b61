"""Zero-shot evaluation (the GPT-2 paper's procedure): perplexity, LAMBADA,
multiple-choice scoring.

Everything here needs only ``model.logits(idx) -> (B, T, V)`` and
``model.config.n_positions`` from the model, and ``encode_ordinary``,
``eot_token`` and ``decode_bytes`` from the tokenizer, so it works for any
gptlite model on NumPy or CuPy.

Conventions (the tests implement the same procedure on HF transformers):
  * ``bos=True`` puts ``<|endoftext|>`` in front of every sequence, as GPT-2
    saw at document starts; then every token of the text is predicted (and
    bits per byte covers every byte of the text).
  * Log-probabilities are computed in the model's dtype with a max-shifted
    log-sum-exp and accumulated in float64.
  * Sequences longer than the context keep their LAST ``n_positions`` tokens
    (the text nearest the predicted words); such examples are counted.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from gptlite.engine.backend import to_numpy
from gptlite.tasks.datasets import Dataset, read_choice, read_lambada

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------
# progress: the shared helper (a tqdm bar on a terminal)
class Progress:
    """A bar over ``total`` items: ``update(n)`` as batches finish, then ``close()``."""

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, unit: str = "it"):
        from gptlite.progress import Progress as _P

        self._p = _P(max(int(total), 1), desc, unit, enabled=enabled)

    def update(self, n: int = 1) -> None:
        self._p.update(n)

    def close(self) -> None:
        self._p.close()


# ----------------------------------------------------------------------------------
# scoring primitive
def token_logprobs(logits, targets):
    """log p(target) and whether target is the argmax.

    logits (B, T, V) xp array, targets (B, T) int -> (logp (B, T) float64 np, is_argmax (B, T) bool np)
    """
    xp = _xp(logits)
    t = xp.asarray(targets)
    m = logits.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(logits - m).sum(axis=-1)) + m[..., 0]
    picked = xp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    logp = picked.astype(xp.float64) - lse.astype(xp.float64)
    # Greedy would emit the target iff no other token has a strictly larger logit
    # (argmax ties resolve to the lowest id, as in torch/numpy argmax).
    is_max = logits.argmax(axis=-1) == t
    return to_numpy(logp), to_numpy(is_max)


def _xp(a):
    from gptlite.engine.backend import xp_of

    return xp_of(a)


def _model_xp(model):
    xp = getattr(model, "xp", None)
    return xp if xp is not None else np


def score_continuations(model, seqs, batch_size: int = 8, progress: Progress | None = None):
    """Score the last ``n_cont`` tokens of each sequence given what precedes them.

    seqs: list of (tokens: list[int], n_cont: int); len(tokens) - n_cont >= 1 and
    len(tokens) <= n_positions + 1.
    Returns (sum_logp: float64 (N,), n_tokens: int (N,), all_greedy: bool (N,)).
    """
    xp = _model_xp(model)
    n = len(seqs)
    sum_lp = np.zeros(n, np.float64)
    n_tok = np.zeros(n, np.int64)
    greedy = np.zeros(n, bool)
    # Sort by length so a batch has little padding; right padding cannot change
    # earlier positions of a causal model.
    order = sorted(range(n), key=lambda i: len(seqs[i][0]))
    for s in range(0, n, batch_size):
        idxs = order[s : s + batch_size]
        T = max(len(seqs[i][0]) for i in idxs) - 1
        inp = np.zeros((len(idxs), T), np.int64)
        for b, i in enumerate(idxs):
            toks = seqs[i][0]
            inp[b, : len(toks) - 1] = toks[:-1]
        # Only the continuation's positions need logits: take those rows of the
        # final hidden state and apply the (tied) LM head to them alone.
        rows, cols, tg = [], [], []
        for b, i in enumerate(idxs):
            toks, k = seqs[i]
            L = len(toks) - 1
            rows += [b] * k
            cols += range(L - k, L)
            tg += toks[L - k + 1 : L + 1]
        H = model.hidden_states(xp.asarray(inp))
        h = H[xp.asarray(rows), xp.asarray(cols)]  # (M, C)
        del H
        logits = h @ model.params["wte.weight"].T  # (M, V)
        lp, ismax = token_logprobs(logits, xp.asarray(np.asarray(tg, np.int64)))
        del logits
        o = 0
        for b, i in enumerate(idxs):
            k = seqs[i][1]
            sum_lp[i] = lp[o : o + k].sum()
            n_tok[i] = k
            greedy[i] = bool(ismax[o : o + k].all())
            o += k
        if progress is not None:
            progress.update(len(idxs))
    return sum_lp, n_tok, greedy


# ----------------------------------------------------------------------------------
# perplexity
@dataclass
class PerplexityResult:
    n_tokens: int  # tokens predicted (scored)
    n_bytes: int  # UTF-8 bytes those tokens decode to
    total_nats: float  # -sum log p over the scored tokens
    context: int
    stride: int
    n_windows: int

    @property
    def nats_per_token(self) -> float:
        return self.total_nats / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def bits_per_byte(self) -> float:
        return self.total_nats / LN2 / self.n_bytes

    def as_dict(self) -> dict:
        return {
            "tokens": self.n_tokens, "bytes": self.n_bytes, "nats_per_token": self.nats_per_token,
            "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
            "context": self.context, "stride": self.stride, "windows": self.n_windows,
        }


def perplexity_windows(n: int, context: int, stride: int):
    """The windows that score tokens 1..n-1 of a sequence of n tokens, each once.

    Yields (begin, end, first): the model reads tokens[begin:end] (end - begin <=
    context), predicting tokens[begin+1 : end+1]; targets with index >= first
    are scored (earlier ones were scored by a previous window with less context).
    stride == context is non-overlapping evaluation; stride < context slides the
    window so every scored token after the first window has >= context - stride
    tokens of context.
    """
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    begin, first = 0, 1
    while True:
        end = min(begin + context, n - 1)
        yield begin, end, first
        if end >= n - 1:
            return
        first = end + 1
        begin += stride


def perplexity(model, tokenizer, text: str | None = None, tokens=None, context: int | None = None,
               stride: int | None = None, batch_size: int = 4, bos: bool = True,
               progress: bool | None = None) -> PerplexityResult:
    """Perplexity of ``text`` (or of a token list) under the model.

    context: tokens the model reads per window (default: model's n_positions);
    stride: default ``context`` (non-overlapping windows); smaller slides.
    """
    if tokens is None:
        if text is None:
            raise ValueError("give text or tokens")
        if not text:
            raise ValueError("the text is empty: nothing to evaluate")
        tokens = tokenizer.encode_ordinary(text)
    tokens = [int(t) for t in tokens]
    if bos:
        if tokenizer.eot_token is None:
            raise ValueError("bos=True needs a tokenizer with <|endoftext|>; pass bos=False")
        tokens = [tokenizer.eot_token] + tokens
    n_pos = model.config.n_positions
    context = n_pos if context is None else int(context)
    if not 1 <= context <= n_pos:
        raise ValueError(f"context must be in [1, {n_pos}] (the model's n_positions), got {context}")
    stride = context if stride is None else int(stride)
    if len(tokens) < 2:
        raise ValueError("the text is too short: need at least one token to predict (two without bos)")
    seq = np.asarray(tokens, np.int64)
    windows = list(perplexity_windows(len(seq), context, stride))
    xp = _model_xp(model)
    bar = Progress(len(windows), "perplexity", progress, "windows")
    total = 0.0
    scored = 0
    # Batch consecutive windows of the same length (all but the last are full).
    i = 0
    while i < len(windows):
        L = windows[i][1] - windows[i][0]
        j = i
        while j < len(windows) and j - i < batch_size and windows[j][1] - windows[j][0] == L:
            j += 1
        batch = windows[i:j]
        inp = np.stack([seq[b:e] for b, e, _ in batch])
        tgt = np.stack([seq[b + 1 : e + 1] for b, e, _ in batch])
        logits = model.logits(xp.asarray(inp))
        lp, _ = token_logprobs(logits, xp.asarray(tgt))
        del logits
        for r, (b, e, first) in enumerate(batch):
            # target index t sits at window position t - b - 1
            total -= lp[r, first - b - 1 :].sum()
            scored += e - first + 1
        bar.update(len(batch))
        i = j
    bar.close()
    assert scored == len(seq) - 1, (scored, len(seq))
    n_bytes = len(tokenizer.decode_bytes(tokens[1:]))
    return PerplexityResult(scored, n_bytes, float(total), context, stride, len(windows))


# ----------------------------------------------------------------------------------
# LAMBADA
@dataclass
class LambadaResult:
    n: int
    n_correct: int
    total_nats: float  # -sum over examples of log p(target word | passage)
    n_target_tokens: int
    n_truncated: int
    skipped: list = field(default_factory=list)  # (line, reason)
    correct: list = field(default_factory=list)  # per example, in file order

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n

    @property
    def perplexity(self) -> float:
        """exp(mean nats per target WORD) -- the word's probability is the product of its tokens'."""
        return math.exp(self.total_nats / self.n)

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.total_nats / self.n_target_tokens)

    def as_dict(self) -> dict:
        return {
            "examples": self.n, "correct": self.n_correct, "accuracy": self.accuracy,
            "perplexity": self.perplexity, "token_perplexity": self.token_perplexity,
            "target_tokens": self.n_target_tokens, "truncated": self.n_truncated, "skipped_lines": len(self.skipped),
        }


def split_lambada(text: str) -> tuple[str, str]:
    """Passage -> (context, target word): split on the last space."""
    ctx, word = text.rstrip().rsplit(" ", 1)
    return ctx, word


def _fit(tokens: list[int], n_positions: int) -> tuple[list[int], bool]:
    # the model reads len(tokens) - 1 positions; keep the last n_positions + 1 tokens
    if len(tokens) - 1 > n_positions:
        return tokens[len(tokens) - 1 - n_positions :], True
    return tokens, False


def lambada(model, tokenizer, data, batch_size: int = 8, bos: bool = True, skip_bad: bool = False,
            limit: int | None = None, progress: bool | None = None) -> LambadaResult:
    """LAMBADA accuracy and target-word perplexity.

    data: a path to the jsonl file or a ``tasks.Dataset``. The target is the last
    space-separated word; it is encoded with its leading space, the passage
    before it on its own. Correct = greedy decoding reproduces every target
    token (checked with teacher forcing, which is equivalent for greedy).
    """
    ds = data if isinstance(data, Dataset) else read_lambada(data, skip_bad=skip_bad)
    recs = ds.records[:limit] if limit else ds.records
    if bos and tokenizer.eot_token is None:
        raise ValueError("bos=True needs a tokenizer with <|endoftext|>; pass bos=False")
    seqs, n_trunc = [], 0
    for r in recs:
        ctx, word = split_lambada(r.data["text"])
        c = ([tokenizer.eot_token] if bos else []) + tokenizer.encode_ordinary(ctx)
        t = tokenizer.encode_ordinary(" " + word)
        if not c:
            raise ValueError(f"{ds.path}:{r.line}: empty context and bos=False: nothing to condition on")
        toks, cut = _fit(c + t, model.config.n_positions)
        if len(t) > model.config.n_positions:
            raise ValueError(f"{ds.path}:{r.line}: target word has {len(t)} tokens, more than the context")
        n_trunc += cut
        seqs.append((toks, len(t)))
    bar = Progress(len(seqs), "lambada", progress, "examples")
    sum_lp, n_tok, greedy = score_continuations(model, seqs, batch_size, bar)
    bar.close()
    return LambadaResult(len(seqs), int(greedy.sum()), float(-sum_lp.sum()), int(n_tok.sum()), n_trunc,
                         list(ds.skipped), [bool(g) for g in greedy])


# ----------------------------------------------------------------------------------
# multiple choice
@dataclass
class ChoiceResult:
    predictions: list[int]
    scores: list[list[float]]  # per example, per choice (after normalisation)
    labels: list  # per example (None where the file has no label)
    normalize: str
    n_truncated: int
    skipped: list = field(default_factory=list)

    @property
    def n_labelled(self) -> int:
        return sum(lab is not None for lab in self.labels)

    @property
    def accuracy(self) -> float | None:
        pairs = [(p, lab) for p, lab in zip(self.predictions, self.labels) if lab is not None]
        return sum(p == lab for p, lab in pairs) / len(pairs) if pairs else None

    def as_dict(self) -> dict:
        return {"examples": len(self.predictions), "labelled": self.n_labelled, "accuracy": self.accuracy,
                "normalize": self.normalize, "truncated": self.n_truncated, "skipped_lines": len(self.skipped)}


def choice(model, tokenizer, data, normalize: str = "total", sep: str = " ", batch_size: int = 8,
           bos: bool = True, skip_bad: bool = False, progress: bool | None = None) -> ChoiceResult:
    """Pick the continuation with the highest log-probability given the context.

    Each choice is encoded as ``sep + choice`` after the separately encoded
    context. normalize: "total" (sum of token log-probs) or "mean" (divided by
    the choice's token count -- length-normalised). Ties go to the lowest index.
    """
    if normalize not in ("total", "mean"):
        raise ValueError(f"normalize must be 'total' or 'mean', got {normalize!r}")
    ds = data if isinstance(data, Dataset) else read_choice(data, skip_bad=skip_bad)
    if bos and tokenizer.eot_token is None:
        raise ValueError("bos=True needs a tokenizer with <|endoftext|>; pass bos=False")
    seqs, owner, n_trunc = [], [], 0
    for ei, r in enumerate(ds.records):
        c = ([tokenizer.eot_token] if bos else []) + tokenizer.encode_ordinary(r.data["context"])
        if not c:
            raise ValueError(f"{ds.path}:{r.line}: empty context and bos=False: nothing to condition on")
        cut_any = False
        for k, ch in enumerate(r.data["choices"]):
            t = tokenizer.encode_ordinary(sep + ch)
            if not t:
                raise ValueError(f"{ds.path}:{r.line}: choice {k} is empty")
            if len(t) > model.config.n_positions:
                raise ValueError(f"{ds.path}:{r.line}: choice {k} has {len(t)} tokens, more than the context")
            toks, cut = _fit(c + t, model.config.n_positions)
            cut_any |= cut
            seqs.append((toks, len(t)))
            owner.append((ei, k))
        n_trunc += cut_any
    bar = Progress(len(seqs), "choice", progress, "sequences")
    sum_lp, n_tok, _ = score_continuations(model, seqs, batch_size, bar)
    bar.close()
    scores = [[0.0] * len(r.data["choices"]) for r in ds.records]
    for (ei, k), s, m in zip(owner, sum_lp, n_tok):
        scores[ei][k] = float(s / m) if normalize == "mean" else float(s)
    preds = [int(np.argmax(s)) for s in scores]
    labels = [r.data.get("label") for r in ds.records]
    return ChoiceResult(preds, scores, labels, normalize, n_trunc, list(ds.skipped))
