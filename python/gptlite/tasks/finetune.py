"""GPT-1 supervised fine-tuning (Radford et al. 2018, section 3.2-3.3).

The pre-trained transformer is kept whole and trained jointly with a linear
head. Structured inputs become one token sequence through task-specific input
transformations with three learned special tokens appended to the vocabulary
(new rows of ``wte``, initialised N(0, 0.02)):

    classification  start text extract
    entailment      start premise delim hypothesis extract
    similarity      start a delim b extract  +  start b delim a extract   (extract states summed)
    choice          start context delim answer_k extract   for every k    (softmax over k)

The head reads the final hidden state at the extract token:
``z = dropout(h_extract) @ W + b`` and the loss is
``L = CE(z, label) + lm_coef * LM(sequence)`` (GPT-1's L3 = L2 + lambda L1,
lambda = 0.5). Every gradient is hand-written: head and dropout here, the
transformer through ``model.backward(cache, dlogits=..., dhidden=...)``.

Truncation rule (examples longer than ``max_len``): the special tokens are
always kept; the text fields share the remaining budget "water-filling"
style -- the longest field is shortened first, until all fit. Fields lose
tokens at their END, except a choice task's context, which loses tokens at its
START (the text nearest the answer is kept). Truncated examples are counted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptlite.engine.backend import device_of
from gptlite.tasks.datasets import FINETUNE_SCHEMAS, Dataset, DatasetError, read_records
from gptlite.training.store import OPTIM, read_optimizer

TASKS = tuple(FINETUNE_SCHEMAS)
SPECIALS = ("start", "delim", "extract")
HEAD_FILE = "head.safetensors"
META_FILE = "finetune.json"
OPTIM_FILE = OPTIM  # AdamW's m and v, for resuming


@dataclass
class FinetuneConfig:
    task: str = "classification"
    lr: float = 6.25e-5  # GPT-1: 6.25e-5
    batch_size: int = 32  # GPT-1: 32
    epochs: int = 3  # GPT-1: 3
    warmup: float = 0.002  # fraction of all updates (GPT-1: 0.2%), then linear decay to 0
    lm_coef: float = 0.5  # lambda of the auxiliary LM loss (GPT-1: 0.5)
    dropout: float = 0.1  # on the classifier input (GPT-1: 0.1)
    weight_decay: float = 0.01  # GPT-1's L2 w = 0.01 on non-bias weights, as decoupled decay
    betas: tuple = (0.9, 0.999)
    max_grad_norm: float | None = 1.0  # as in OpenAI's finetune-transformer-lm
    max_len: int | None = None  # longest transformed sequence; None = model's n_positions
    seed: int = 0
    ckpt_minutes: float = 0.0  # with out_dir, also checkpoint mid-epoch when this much wall time passed since the last save; 0: off

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lm_coef < 0:
            raise ValueError(f"lm_coef must be >= 0, got {self.lm_coef}")
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup is a fraction of the updates, in [0, 1]; got {self.warmup}")
        if not (math.isfinite(self.ckpt_minutes) and self.ckpt_minutes >= 0):
            raise ValueError(f"ckpt_minutes must be >= 0, got {self.ckpt_minutes}")


# ----------------------------------------------------------------------------------
# special tokens
def add_special_tokens(model, seed: int = 0):
    """A new GPT whose vocabulary has start/delim/extract appended.

    Returns (model, {"start": id, "delim": id, "extract": id}). The new wte rows
    are N(0, 0.02); every other parameter is shared with the input model.
    """
    from gptlite.engine.model import GPT
    from gptlite.engine.backend import device_of

    xp = model.xp
    V = model.config.vocab_size
    wte = model.params["wte.weight"]
    rng = np.random.default_rng(seed)
    new_rows = xp.asarray(rng.normal(0.0, 0.02, size=(len(SPECIALS), wte.shape[1])), dtype=wte.dtype)
    params = dict(model.params)
    params["wte.weight"] = xp.concatenate([wte, new_rows], axis=0)
    config = dataclasses.replace(model.config, vocab_size=V + len(SPECIALS))
    new = GPT(config, params=params, device=device_of(wte), dtype=model.dtype)
    return new, {name: V + i for i, name in enumerate(SPECIALS)}


# ----------------------------------------------------------------------------------
# input transformations
def _budget_caps(lengths: list[int], budget: int) -> list[int]:
    """Water-filling: kept lengths with sum <= budget, shortening the longest first."""
    if sum(lengths) <= budget:
        return list(lengths)
    if budget < len(lengths):
        raise ValueError(f"max_len leaves {budget} tokens for {len(lengths)} text fields")
    lo, hi = 0, max(lengths)  # largest cap c with sum(min(l, c)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep = [min(n, lo) for n in lengths]
    spare = budget - sum(keep)
    for i, n in enumerate(lengths):  # hand out the remainder, first fields first
        if spare and n > keep[i]:
            keep[i] += 1
            spare -= 1
    return keep


def _join(fields: list[list[int]], from_start: list[bool], specials: list[list[int]], max_len: int):
    """specials[0] f0 specials[1] f1 ... specials[-1], fitted into max_len. -> (tokens, truncated)."""
    budget = max_len - sum(len(s) for s in specials)
    keep = _budget_caps([len(f) for f in fields], budget)
    out = list(specials[0])
    for f, k, fs, sp in zip(fields, keep, from_start, specials[1:]):
        out += (f[len(f) - k :] if fs else f[:k]) + list(sp)
    return out, keep != [len(f) for f in fields]


@dataclass
class Example:
    seqs: list[list[int]]  # 1 (classification, entailment), 2 (similarity) or K (choice) sequences
    label: int
    line: int
    truncated: bool


def transform(task: str, data: dict, encode, ids: dict, max_len: int) -> tuple[list[list[int]], bool]:
    """GPT-1 input transformation of one record -> (token sequences, truncated?)."""
    s, d, e = [ids["start"]], [ids["delim"]], [ids["extract"]]
    if task == "classification":
        seq, cut = _join([encode(data["text"])], [False], [s, e], max_len)
        return [seq], cut
    if task == "entailment":
        seq, cut = _join([encode(data["premise"]), encode(data["hypothesis"])], [False, False], [s, d, e], max_len)
        return [seq], cut
    if task == "similarity":
        a, b = encode(data["text_a"]), encode(data["text_b"])
        ab, c1 = _join([a, b], [False, False], [s, d, e], max_len)
        ba, c2 = _join([b, a], [False, False], [s, d, e], max_len)
        return [ab, ba], c1 or c2
    if task == "choice":
        ctx = encode(data["context"])
        seqs, cut = [], False
        for ans in data["choices"]:
            seq, c = _join([ctx, encode(" " + ans)], [True, False], [s, d, e], max_len)
            seqs.append(seq)
            cut |= c
        return seqs, cut
    raise ValueError(f"unknown task {task!r}")


def label_set(task: str, train: Dataset, labels=None) -> list[str] | None:
    """Class names (as strings) in index order; None for the choice task (label = choice index)."""
    if task == "choice":
        return None
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label in the label set {labels}")
    else:
        labels = sorted({str(r.data["label"]) for r in train.records}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if len(labels) < 2:
        raise ValueError(f"need at least 2 classes, the label set is {labels}")
    return labels


def encode_dataset(task: str, ds: Dataset, tokenizer, ids: dict, max_len: int, labels) -> list[Example]:
    index = {lab: i for i, lab in enumerate(labels)} if labels is not None else None
    n_choices = None
    out = []
    for r in ds.records:
        lab = r.data["label"]
        if index is not None:
            if str(lab) not in index:
                raise DatasetError(f"{ds.path}:{r.line}: label {lab!r} is not in the label set {labels}")
            y = index[str(lab)]
        else:
            k = len(r.data["choices"])
            if n_choices is None:
                n_choices = k
            if k != n_choices:
                raise DatasetError(f"{ds.path}:{r.line}: {k} choices, earlier records have {n_choices}")
            if not 0 <= lab < k:
                raise DatasetError(f"{ds.path}:{r.line}: label {lab} out of range for {k} choices")
            y = lab
        seqs, cut = transform(task, r.data, tokenizer.encode_ordinary, ids, max_len)
        out.append(Example(seqs, y, r.line, cut))
    return out


def collate(examples: list[Example], xp):
    """-> idx (N,T) int, extract positions (N,), LM targets (N,T) (-1 = ignored), labels (B,)

    N = B * sequences-per-example, row-major by example. Rows are right-padded
    with token 0 (causal attention: padding never affects earlier positions).
    The LM target of position t is token t+1; the extract token predicts nothing.
    """
    seqs = [s for ex in examples for s in ex.seqs]
    T = max(len(s) for s in seqs)
    idx = np.zeros((len(seqs), T), np.int64)
    tgt = np.full((len(seqs), T), -1, np.int64)
    pos = np.zeros(len(seqs), np.int64)
    for i, s in enumerate(seqs):
        idx[i, : len(s)] = s
        tgt[i, : len(s) - 1] = s[1:]
        pos[i] = len(s) - 1
    labels = np.array([ex.label for ex in examples], np.int64)
    return xp.asarray(idx), xp.asarray(pos), xp.asarray(tgt), xp.asarray(labels)


# ----------------------------------------------------------------------------------
# the head: paired forward / backward
def head_forward(H, pos, W, b, mask, n_seq: int, task: str):
    """Classifier scores from the final hidden states.

    H (N,T,C) hidden, pos (N,) extract positions, W (C,K) b (K,), mask (B,C) or None
    (dropout keep-mask already scaled by 1/(1-p)); n_seq sequences per example.
    -> z (B,K) classification/entailment/similarity, (B,n_seq) choice; cache
    """
    xp = model_xp(H)
    N, C = H.shape[0], H.shape[2]
    h = H[xp.arange(N), pos]  # (N,C)
    if task == "similarity":
        h = h.reshape(N // n_seq, n_seq, C).sum(axis=1)  # both orders summed -> (B,C)
    x = h * mask if mask is not None else h
    z = x @ W + b  # (B or N, K)
    if task == "choice":
        z = z.reshape(N // n_seq, n_seq)  # W is (C,1): one score per choice
    return z, (x, mask, W, pos, H.shape, n_seq, task)


def head_backward(dz, cache):
    """dz like z -> (dH (N,T,C) nonzero only at the extract rows, dW, db)."""
    x, mask, W, pos, Hshape, n_seq, task = cache
    xp = model_xp(dz)
    if task == "choice":
        dz = dz.reshape(-1, 1)
    dW = x.T @ dz
    db = dz.sum(axis=0)
    dx = dz @ W.T
    dh = dx * mask if mask is not None else dx
    if task == "similarity":
        dh = xp.repeat(dh, n_seq, axis=0)  # the sum's gradient goes to every order
    N, T, C = Hshape
    dH = xp.zeros(Hshape, dtype=dh.dtype)
    dH[xp.arange(N), pos] = dh  # one extract row per sequence: no collisions
    return dH, dW, db


def model_xp(a):
    from gptlite.engine.backend import xp_of

    return xp_of(a)


def dropout_mask(shape, p: float, rng: np.random.Generator, xp, dtype):
    """Inverted-dropout keep mask scaled by 1/(1-p), drawn on the host (same on CPU and GPU)."""
    if p <= 0:
        return None
    keep = rng.random(shape) >= p
    return xp.asarray(keep / (1.0 - p), dtype=dtype)


def loss_and_grads(model, head: dict, batch, task: str, lm_coef: float, mask=None, n_seq: int = 1,
                   task_weight: float = 1.0, lm_weight: float = 1.0):
    """One fine-tuning step's loss and every gradient.

    batch: collate(...) output. head: {"head.weight": (C,K), "head.bias": (K,)}.
    Returns (total, task_loss, lm_loss, grads) with grads holding the model's
    parameter names plus head.weight / head.bias.

    ``task_weight``/``lm_weight`` scale the two mean losses (and their
    gradients): a data-parallel rank holding part of a batch weighs its means
    by its share of the batch's labels / LM targets, so the ranks' sums are
    the whole batch's means.
    """
    from gptlite.engine import ops

    idx, pos, tgt, labels = batch
    logits, cache = model.forward(idx)
    z, hcache = head_forward(cache.hidden, pos, head["head.weight"], head["head.bias"], mask, n_seq, task)
    task_loss, ccache = ops.cross_entropy_forward(z, labels, ignore_index=-1)
    dz = ops.cross_entropy_backward(ccache, dloss=task_weight)
    task_loss = task_loss * task_weight
    dH, dW, db = head_backward(dz, hcache)
    if lm_coef > 0:
        lm_loss, lcache = ops.cross_entropy_forward(logits, tgt, ignore_index=-1, inplace=True)
        dlogits = ops.cross_entropy_backward(lcache, dloss=lm_coef * lm_weight)
        lm_loss = lm_loss * lm_weight
    else:
        lm_loss, dlogits = float("nan"), None
    del logits
    grads = model.backward(cache, dlogits=dlogits, dhidden=dH)
    grads["head.weight"] = dW
    grads["head.bias"] = db
    total = task_loss + (lm_coef * lm_loss if lm_coef > 0 else 0.0)
    return total, task_loss, lm_loss, grads


def predict_scores(model, head: dict, batch, task: str, n_seq: int):
    """Scores (B,K) without dropout and without computing the LM logits."""
    idx, pos, _, _ = batch
    H = model.hidden_states(idx)
    z, _ = head_forward(H, pos, head["head.weight"], head["head.bias"], None, n_seq, task)
    return z


# ----------------------------------------------------------------------------------
# metrics
def metrics(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict:
    """accuracy; for 2 classes also precision/recall/F1 of class index 1 (the positive class)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    out = {"accuracy": float((pred == gold).mean())}
    if n_classes == 2:
        tp = int(((pred == 1) & (gold == 1)).sum())
        fp = int(((pred == 1) & (gold == 0)).sum())
        fn = int(((pred == 0) & (gold == 1)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out.update(precision=prec, recall=rec, f1=2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return out


# ----------------------------------------------------------------------------------
# the fine-tuned model: model + head + special tokens
@dataclass
class Finetuned:
    model: object
    head: dict
    task: str
    labels: list | None  # class names; None for choice
    special_tokens: dict
    max_len: int
    tokenizer: object = None
    history: list = field(default_factory=list)

    def predict(self, data, batch_size: int = 32, tokenizer=None, skip_bad: bool = False):
        """Predicted class index per record (for choice: the choice index) and the metrics when labelled."""
        tok = tokenizer or self.tokenizer
        ds = data if isinstance(data, Dataset) else read_records(data, FINETUNE_SCHEMAS[self.task], skip_bad=skip_bad)
        exs = encode_dataset(self.task, ds, tok, self.special_tokens, self.max_len, self.labels)
        return evaluate_examples(self, exs, batch_size)

    def save(self, path, tokenizer=None, resume: dict | None = None, optimizer: dict | None = None) -> Path:
        """Model + head + metadata into ``path``, replacing it atomically; with
        ``resume`` (the loop's position) and ``optimizer`` (AdamW's state_dict)
        also what ``finetune(..., resume=True)`` needs to continue exactly."""
        from gptlite.engine.backend import to_numpy
        from gptlite.engine.checkpoint import save_model, write_safetensors
        from gptlite.fileio import atomic_write_text
        from gptlite.training.store import write_optimizer

        def write(tmp: Path) -> None:
            save_model(self.model, tmp, tokenizer=tokenizer or self.tokenizer)
            write_safetensors(tmp / HEAD_FILE, {k: to_numpy(v) for k, v in self.head.items()})
            meta = {"task": self.task, "labels": self.labels, "special_tokens": self.special_tokens,
                    "max_len": self.max_len, "history": self.history}
            if resume is not None and optimizer is not None:
                write_optimizer(tmp, optimizer)
                meta["resume"] = {**resume, "adamw_t": optimizer["t"]}
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")

        return checkpoint_store(path).save(write, "fine-tuned model")


def checkpoint_store(path):
    """A fine-tuned model's directory is its own checkpoint slot; files a user put
    in it are carried over to every new checkpoint."""
    from gptlite.training.store import Store

    return Store(path, META_FILE, carry=True)


def load_finetuned(path, device=None, dtype="float32") -> Finetuned:
    from gptlite.engine.checkpoint import load_model, load_tokenizer, read_safetensors

    path = checkpoint_store(path).find() or Path(path)  # the previous one, if a save was cut short mid-swap
    if not (path / META_FILE).is_file() or not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a fine-tuned checkpoint (needs {META_FILE} and {HEAD_FILE})")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    model = load_model(path, device=device, dtype=dtype)
    # copies: the safetensors reader hands out read-only memory maps
    head = {k: model.xp.array(v, dtype=model.dtype) for k, v in read_safetensors(path / HEAD_FILE).items()}
    for k in ("head.weight", "head.bias"):
        if k not in head:
            raise ValueError(f"{path / HEAD_FILE}: missing tensor {k!r}")
    if head["head.weight"].shape[0] != model.config.n_embd:
        raise ValueError(f"{path / HEAD_FILE}: head.weight has {head['head.weight'].shape[0]} rows, the model has n_embd={model.config.n_embd}")
    return Finetuned(model, head, meta["task"], meta["labels"], {k: int(v) for k, v in meta["special_tokens"].items()},
                     int(meta["max_len"]), load_tokenizer(path), meta.get("history", []))


def evaluate_examples(ft: Finetuned, exs: list[Example], batch_size: int = 32):
    preds = []
    for s in range(0, len(exs), batch_size):
        batch = collate(exs[s : s + batch_size], ft.model.xp)
        z = predict_scores(ft.model, ft.head, batch, ft.task, len(exs[0].seqs))
        preds.append(np.asarray(z.argmax(axis=1).get() if hasattr(z, "get") else z.argmax(axis=1)))
    pred = np.concatenate(preds)
    gold = np.array([ex.label for ex in exs])
    n_classes = len(ft.labels) if ft.labels is not None else len(exs[0].seqs)
    return pred, metrics(pred, gold, n_classes)


# ----------------------------------------------------------------------------------
# training
@dataclass
class FinetuneResult:
    finetuned: Finetuned
    history: list  # per epoch: train losses, validation metrics, seconds
    n_train: int
    n_valid: int
    truncated_train: int
    truncated_valid: int
    skipped: list  # (file, line, reason)


_NOT_TRAJECTORY = ("ckpt_minutes",)  # may differ on resume: the updates are the same


def _config_dict(cfg: FinetuneConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


def _resume_state(out_dir, ft: Finetuned, cfg: FinetuneConfig) -> dict:
    """The saved loop position and optimizer state of a fine-tuning checkpoint,
    checked against this run's configuration."""
    meta = json.loads((Path(out_dir) / META_FILE).read_text(encoding="utf-8"))
    st = meta.get("resume")
    if st is None or not (Path(out_dir) / OPTIM_FILE).is_file():
        raise ValueError(f"{out_dir}: the checkpoint holds no optimizer state or loop position to resume from")
    now = _config_dict(cfg)
    was = {**_config_dict(FinetuneConfig()), **st["config"]}  # keys added since the checkpoint was written: defaults
    diff = sorted(k for k in now if k not in _NOT_TRAJECTORY and was.get(k) != now[k])
    if diff:
        raise ValueError(f"{out_dir}: cannot resume with a different configuration: "
                         + ", ".join(f"{k} {st['config'].get(k)!r} -> {now[k]!r}" for k in diff))
    if st["epoch"] >= cfg.epochs:
        raise ValueError(f"{out_dir}: the run already finished its {cfg.epochs} epochs")
    st["optimizer"] = read_optimizer(out_dir, st["adamw_t"])
    return st


def finetune(model, tokenizer, train, valid=None, config: FinetuneConfig | None = None, labels=None,
             out_dir=None, skip_bad: bool = False, log=print, resume: bool = False,
             overwrite: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` into ``out_dir`` (see :func:`_finetune`), holding the
    directory's lock. ``out_dir`` must be new, empty, or a fine-tuning checkpoint
    given with ``resume`` or ``overwrite``: anything else is never replaced."""
    if out_dir is None:
        return _finetune(model, tokenizer, train, valid, config, labels, out_dir, skip_bad, log, resume)
    from gptlite.runlock import RunLock
    from gptlite.training.store import claim_out_dir

    with RunLock(out_dir, "fine-tuning"):
        checkpoint_store(out_dir).recover()  # a save killed between its two renames
        # overwrite: the first checkpoint replaces the run (files a user put there are carried over)
        claim_out_dir(out_dir, (Path(out_dir) / META_FILE).is_file(), resume, overwrite, "fine-tuned model")
        return _finetune(model, tokenizer, train, valid, config, labels, out_dir, skip_bad, log, resume)


def _finetune(model, tokenizer, train, valid=None, config: FinetuneConfig | None = None, labels=None,
              out_dir=None, skip_bad: bool = False, log=print, resume: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` (a GPT, or a Finetuned to continue) on ``train``.

    train / valid: paths (.jsonl / .csv) or tasks.Dataset. Validation metrics are
    computed after every epoch; with ``out_dir`` the checkpoint is saved (atomically)
    after every epoch, with the optimizer state and the loop's position, and on
    Ctrl-C (at the next step boundary; KeyboardInterrupt is then re-raised).
    ``resume=True`` continues the run saved in ``out_dir`` exactly where it
    stopped (``model`` is then ignored; ``config`` must equal the saved one):
    the same updates, losses and weights as a run that was never interrupted.
    """
    from gptlite.training import distributed
    from gptlite.training.optim import AdamWConfig, Schedule
    from gptlite.training.step import Update

    cfg = config or FinetuneConfig()
    cfg.validate()
    world = distributed.world()
    if not world.is_main:  # rank 0 speaks for the job
        log = lambda s: None  # noqa: E731
    schema = FINETUNE_SCHEMAS[cfg.task]
    tr = train if isinstance(train, Dataset) else read_records(train, schema, skip_bad=skip_bad)
    va = None
    if valid is not None:
        va = valid if isinstance(valid, Dataset) else read_records(valid, schema, skip_bad=skip_bad)
    skipped = [(tr.path, ln, why) for ln, why in tr.skipped] + ([(va.path, ln, why) for ln, why in va.skipped] if va else [])

    saved = None
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs out_dir, the checkpoint to continue")
        m = model.model if isinstance(model, Finetuned) else model  # a given model sets device and dtype
        model = load_finetuned(out_dir, device=None if m is None else device_of(m.params["wte.weight"]),
                               dtype="float32" if m is None else m.dtype)
        saved = _resume_state(out_dir, model, cfg)
        tokenizer = tokenizer or model.tokenizer
    if isinstance(model, Finetuned):
        ft = model
        if ft.task != cfg.task:
            raise ValueError(f"the checkpoint was fine-tuned for {ft.task!r}, not {cfg.task!r}")
        labs = ft.labels
    else:
        labs = label_set(cfg.task, tr, labels)
        if "wte.weight" not in model.params:
            raise ValueError("model has no wte.weight")
        model, ids = add_special_tokens(model, seed=cfg.seed)
        C = model.config.n_embd
        K = 1 if cfg.task == "choice" else len(labs)
        rng = np.random.default_rng(cfg.seed + 1)
        xp = model.xp
        head = {"head.weight": xp.asarray(rng.normal(0.0, 0.02, size=(C, K)), dtype=model.dtype),
                "head.bias": xp.zeros((K,), dtype=model.dtype)}
        max_len = cfg.max_len or model.config.n_positions
        if max_len > model.config.n_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's n_positions {model.config.n_positions}")
        ft = Finetuned(model, head, cfg.task, labs, ids, max_len, tokenizer)
    model, xp = ft.model, ft.model.xp
    tr_ex = encode_dataset(cfg.task, tr, tokenizer, ft.special_tokens, ft.max_len, labs)
    va_ex = encode_dataset(cfg.task, va, tokenizer, ft.special_tokens, ft.max_len, labs) if va else []
    n_trunc_tr = sum(e.truncated for e in tr_ex)
    n_trunc_va = sum(e.truncated for e in va_ex)
    n_seq = len(tr_ex[0].seqs)
    if cfg.task == "choice" and va_ex and len(va_ex[0].seqs) != n_seq:
        raise DatasetError(f"{va.path}: {len(va_ex[0].seqs)} choices per record, the training set has {n_seq}")
    if n_trunc_tr or n_trunc_va:
        log(f"truncated to max_len={ft.max_len}: {n_trunc_tr}/{len(tr_ex)} training and "
            f"{n_trunc_va}/{len(va_ex)} validation examples")

    steps_per_epoch = math.ceil(len(tr_ex) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = Schedule(peak=cfg.lr, total=total, warmup=math.ceil(cfg.warmup * total) if cfg.warmup > 0 else 0,
                     kind="linear")
    params = dict(model.params)
    params.update(ft.head)
    # the step pre-training takes too (training/step.py): flat buffers, clip, AdamW, the schedule
    update = Update(params, AdamWConfig(lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, weight_decay=cfg.weight_decay),
                    sched, cfg.max_grad_norm, world)
    for held in (model.params, ft.head):  # the model and the head read the flat buffer's views
        for k in held:
            held[k] = params[k]
    opt = update.opt
    rng = np.random.default_rng(cfg.seed + 2)  # data order and dropout masks
    history = list(ft.history)
    step, start_epoch, pos, order, sums = 0, 0, 0, None, np.zeros(3)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        step, start_epoch, pos = saved["step"], saved["epoch"], saved["pos"]
        order = None if saved["order"] is None else np.asarray(saved["order"], dtype=np.int64)
        sums = np.asarray(saved["sums"], dtype=np.float64)
        log(f"resuming {out_dir} at epoch {start_epoch + 1}, step {step}")

    def checkpoint(epoch, pos, order, sums):
        ft.history = history
        state = {"config": _config_dict(cfg), "step": step, "epoch": epoch, "pos": pos,
                 "order": None if order is None else order.tolist(), "sums": sums.tolist(),
                 "rng": rng.bit_generator.state}
        if world.is_main:  # every rank holds the same weights
            ft.save(out_dir, tokenizer, resume=state, optimizer=opt.state_dict())
        world.barrier()
        last_save[0] = time.monotonic()

    last_save = [time.monotonic()]

    from gptlite.runlock import Stopped, stop_signals

    stop = []  # the number of a stop signal (SIGINT/SIGTERM/SIGUSR1): save at the next step boundary, then stop
    signals = stop_signals(stop.append)
    signals.__enter__()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            if order is None:
                order, pos, sums = rng.permutation(len(tr_ex)), 0, np.zeros(3)
            for s in range(pos, len(order), cfg.batch_size):
                exs = [tr_ex[i] for i in order[s : s + cfg.batch_size]]
                batch = collate(exs, xp)
                K_rows = len(exs) * n_seq if cfg.task == "choice" else len(exs)
                mask = dropout_mask((K_rows, model.config.n_embd), cfg.dropout, rng, xp, model.dtype)
                update.zero()
                if world.size == 1:
                    tot, tl, ll, grads = loss_and_grads(model, ft.head, batch, cfg.task, cfg.lm_coef, mask, n_seq)
                    update.add(grads)
                    del grads
                    st = update.apply(step, tot)
                    stopping = bool(stop)
                else:  # several ranks stop at the step all of them agreed on, so they all save
                    st = update.apply(step, *_rank_share(update, world, model, ft.head, exs, batch, mask, cfg, n_seq, xp, bool(stop)))
                    tot, (tl, ll, stopped) = st["loss"], st["scalars"]
                    ll, stopping = ll if cfg.lm_coef > 0 else float("nan"), stopped > 0
                if not st["finite"]:
                    log(f"step {step + 1}: non-finite loss or gradient (loss={st['loss']}, grad_norm={st['grad_norm']}); "
                        f"update skipped")
                step += 1
                sums += (tot, tl, ll if cfg.lm_coef > 0 else 0.0)
                if stopping:
                    signum = stop[0] if stop else signal.SIGINT  # another rank may have been the one signalled
                    if out_dir is not None:
                        checkpoint(epoch, s + cfg.batch_size, order, sums)
                        log(f"interrupted ({signal.Signals(signum).name}): saved at epoch {epoch + 1}, step {step} "
                            f"in {out_dir}; continue with --resume")
                    raise Stopped(signum)
                if out_dir is not None and cfg.ckpt_minutes > 0 and s + cfg.batch_size < len(order):  # (the epoch's end saves anyway)
                    due = time.monotonic() - last_save[0] >= 60 * cfg.ckpt_minutes
                    if world.bcast(due):  # rank 0's clock decides, so every rank joins the save
                        checkpoint(epoch, s + cfg.batch_size, order, sums)
            n = steps_per_epoch
            rec = {"epoch": len(history) + 1, "train_loss": sums[0] / n, "train_task_loss": sums[1] / n,
                   "train_lm_loss": (sums[2] / n) if cfg.lm_coef > 0 else None}
            if va_ex:
                m = _evaluate_sharded(ft, va_ex, cfg.batch_size, world)
                rec.update({f"valid_{k}": v for k, v in m.items()})
            rec["seconds"] = time.time() - t0
            history.append(rec)
            ft.history = history
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            order = None
            if out_dir is not None:
                checkpoint(epoch + 1, 0, None, np.zeros(3))
    finally:
        signals.__exit__(None, None, None)
    return FinetuneResult(ft, history, len(tr_ex), len(va_ex), n_trunc_tr, n_trunc_va, skipped)


def _rank_share(update, world, model, head, exs, batch, mask, cfg, n_seq, xp, stop):
    """This rank's part of a data-parallel step: its contiguous share of the batch's
    examples, its means weighted by its share of the labels / LM targets, its
    gradients added to ``update``. Returns what ``update.apply`` takes: this rank's
    loss and (task loss, LM loss, stop flag), summed there over ranks with the
    flat gradient buffer (one collective each). Every rank draws the whole
    batch's dropout mask, so the rng stays in step."""
    from gptlite.training import distributed

    r = distributed.shard(len(exs), world)
    rows = n_seq if cfg.task == "choice" else 1  # mask rows per example
    labels, tgt = batch[3], batch[2]
    n_labels = int((labels != -1).sum())
    n_tokens = int((tgt != -1).sum())
    tot = tl = ll = 0.0
    if len(r):
        mine = collate(exs[r.start:r.stop], xp)
        m = None if mask is None else mask[r.start * rows:r.stop * rows]
        task_w = int((mine[3] != -1).sum()) / max(1, n_labels)
        lm_w = int((mine[2] != -1).sum()) / max(1, n_tokens)
        tot, tl, ll, g = loss_and_grads(model, head, mine, cfg.task, cfg.lm_coef, m, n_seq, task_w, lm_w)
        update.add(g)
        tot, tl, ll = float(tot), float(tl), float(ll) if cfg.lm_coef > 0 else 0.0
    return tot, [tl, ll, float(stop)]


def _evaluate_sharded(ft, exs, batch_size, world) -> dict:
    """Validation metrics with the examples split across ranks (predictions gathered)."""
    if world.size == 1:
        return evaluate_examples(ft, exs, batch_size)[1]
    from gptlite.training import distributed

    r = distributed.shard(len(exs), world)
    mine = exs[r.start:r.stop]
    pred = evaluate_examples(ft, mine, batch_size)[0] if mine else np.zeros(0, np.int64)
    pred = np.concatenate([np.asarray(p, np.int64) for p in world.allgather(pred)])
    gold = np.array([ex.label for ex in exs])
    n_classes = len(ft.labels) if ft.labels is not None else len(exs[0].seqs)
    return metrics(pred, gold, n_classes)


def run_from_args(args) -> int:
    """`gptlite finetune` (arguments defined in gptlite/cli/tasks.py)."""
    import sys

    from gptlite.engine import checkpoint
    from gptlite.engine.backend import cuda_available
    from gptlite.training import distributed

    w = distributed.world()
    if w.size > 1 and args.device != "cpu" and cuda_available():
        w.use_gpu()  # before any model is loaded: one GPU per rank
    cfg = FinetuneConfig(task=args.task, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                         warmup=args.warmup, lm_coef=args.lm_coef, dropout=args.dropout,
                         weight_decay=args.weight_decay, max_len=args.max_len, seed=args.seed,
                         ckpt_minutes=args.ckpt_minutes)
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
    labels = args.labels.split(",") if args.labels else None
    if args.resume:
        if args.random_init:
            raise ValueError("--resume continues the saved run; --random-init does not apply")
        res = finetune(None, None, args.train, args.valid, cfg, labels=labels, out_dir=args.out,
                       skip_bad=args.skip_bad, log=log, resume=True, overwrite=getattr(args, "overwrite", False))
        return _report(args, res) if w.is_main else 0
    d = checkpoint.resolve_model_dir(args.model)  # None: the shipped default model
    if (d / META_FILE).is_file():
        if args.random_init:
            raise ValueError(f"--random-init starts from random weights of a pre-trained model's shape; "
                             f"{d} is a fine-tuned checkpoint (continue from it without --random-init)")
        model = load_finetuned(d, device=args.device)
        tok = model.tokenizer
    else:
        model = checkpoint.load_model(d, device=args.device)
        tok = checkpoint.load_tokenizer(d)
        if args.random_init:
            from gptlite.engine.model import GPT

            model = GPT(model.config, device=args.device, seed=args.seed)
    if tok is None:
        from gptlite.tokenizer.encoding import Tokenizer

        tok = Tokenizer.gpt2()
    res = finetune(model, tok, args.train, args.valid, cfg, labels=labels, out_dir=args.out,
                   skip_bad=args.skip_bad, log=log, overwrite=getattr(args, "overwrite", False))
    return _report(args, res) if w.is_main else 0


def _report(args, res) -> int:
    import sys

    for f, ln, why in res.skipped:
        print(f"gptlite: skipped {f}:{ln}: {why}", file=sys.stderr)
    summary = {"train_examples": res.n_train, "valid_examples": res.n_valid, "truncated_train": res.truncated_train, "truncated_valid": res.truncated_valid,
               "skipped_lines": len(res.skipped), "history": res.history, "checkpoint": str(args.out)}
    if args.json:
        print(json.dumps(summary))
    else:
        last = res.history[-1]
        print(f"fine-tuned {args.task} on {res.n_train} examples ({res.truncated_train} truncated); "
              f"checkpoint: {args.out}")
        if "valid_accuracy" in last:
            print(f"validation accuracy {last['valid_accuracy']:.4f}" +
                  (f", F1 {last['valid_f1']:.4f}" if "valid_f1" in last else ""))
    return 0
