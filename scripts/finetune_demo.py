#!/usr/bin/env python3
"""GPT-1 fine-tuning demonstration on the shared data.

Shakespeare text is only taken from the held-out tail of tinyshakespeare (the
last 10% of the file, the part `gptlite prepare --val-fraction 0.1` keeps out
of the default model's training split); training examples come from the first
two thirds of each source and validation examples from the last third (no
overlap).

--task corpus (default; classification, `start text extract`):
    which corpus is this 12-word snippet from -- Shakespeare, Project Gutenberg
    prose (big.txt), WikiText-2, or LAMBADA's novels? 4 balanced classes.
--task shuffle (classification):
    is this 24-word passage GENUINE or are its words SHUFFLED? Both kinds are
    re-joined with single spaces, so they hold the same words and spacing:
    only word order -- what a language model knows -- tells them apart.
--task nextword (multiple choice, `start context delim answer_k extract`):
    LAMBADA-style: which of 4 words (the true next word and 3 distractors from
    the same passage) follows the passage? Also reports the zero-shot accuracy
    of the LM itself (GPT-2-style log-prob scoring).

It fine-tunes four times -- pre-trained vs random init, lambda = 0.5 vs 0 --
and prints validation accuracy per epoch as a markdown table.

    python scripts/finetune_demo.py                       # the shipped default model
    python scripts/finetune_demo.py --model runs/shakespeare/ckpt --json runs/ft-demo.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORD = re.compile(r"[A-Za-z]{3,}")


def build_examples(text: str, context_words: int, stride: int, rng: np.random.Generator) -> list[dict]:
    """Passages of `context_words` words; the next word (alphabetic, >= 3 letters) is the answer."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    out = []
    for i in range(context_words, len(spans), stride):
        s, e = spans[i]
        m = WORD.fullmatch(text[s:e].rstrip(".,;:!?'\"-)"))
        if not m:
            continue
        answer = m.group(0)
        ctx = text[spans[i - context_words][0] : spans[i - 1][1]]
        pool = sorted({w for w in WORD.findall(ctx) if w.lower() != answer.lower()})
        if len(pool) < 3:
            continue
        choices = list(rng.choice(pool, size=3, replace=False)) + [answer]
        rng.shuffle(choices)
        out.append({"context": ctx, "choices": [str(c) for c in choices], "label": int(choices.index(answer))})
    return out


def build_shuffle_examples(text: str, n_words: int, stride: int, rng: np.random.Generator) -> list[dict]:
    """Passages of `n_words` words, half of them with their words shuffled.

    Both kinds are re-joined with single spaces, so the multiset of words and
    the spacing are identical: only word order tells them apart.
    """
    words = text.split()
    out = []
    for i in range(0, len(words) - n_words, stride):
        w = words[i : i + n_words]
        label = "shuffled" if rng.random() < 0.5 else "genuine"
        if label == "shuffled":
            perm = rng.permutation(n_words)
            if (perm == np.arange(n_words)).all():
                continue
            w = [w[j] for j in perm]
        out.append({"text": " ".join(w), "label": label})
    return out


CORPORA = {  # label -> (file, part of it): Shakespeare only from the held-out tail
    "shakespeare": ("tinyshakespeare.txt", (0.9, 1.0)),
    "gutenberg": ("big.txt", (0.0, 1.0)),
    "wikitext": ("wikitext-2/valid.txt", (0.0, 1.0)),
    "lambada": ("lambada_test.jsonl", (0.0, 1.0)),
}


def corpus_words(label: str) -> list[str]:
    name, (a, b) = CORPORA[label]
    text = (SHARED / "corpora" / name).read_text(encoding="utf-8")
    if name.endswith(".jsonl"):
        text = "\n".join(json.loads(ln)["text"] for ln in text.splitlines() if ln.strip())
    return text[int(len(text) * a) : int(len(text) * b)].split()


def build_corpus_examples(n_words: int, n_per_class: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Which corpus is this `n_words`-word snippet from? Train snippets from the
    first two thirds of each source, validation snippets from the last third."""
    train, valid = [], []
    for label in CORPORA:
        words = corpus_words(label)
        cut = len(words) * 2 // 3
        for lo, hi, out, n in ((0, cut, train, n_per_class), (cut, len(words), valid, n_per_class // 2)):
            starts = rng.choice(np.arange(lo, hi - n_words, n_words), size=n, replace=False)
            out += [{"text": " ".join(words[s : s + n_words]), "label": label} for s in starts]
    return train, valid


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from gptlite.fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "python" / "gptlite" / "assets" / "default"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "finetune-demo"), help="datasets and checkpoints go here")
    ap.add_argument("--task", choices=["corpus", "shuffle", "nextword"], default="corpus")
    ap.add_argument("--context-words", type=int, default=12)
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--n-valid", type=int, default=512, help="(corpus task: half of --n-train)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="GPT-1's 6.25e-5 is for a 117M model and large data sets; this tiny model needs more")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data set")
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (head/token init, dropout, order, random init)")
    ap.add_argument("--runs", default="pre-0.5,pre-0,rand-0.5,rand-0", help="comma list of {pre,rand}-{lambda}")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args(argv)

    from gptlite.engine import checkpoint
    from gptlite.tasks import evaluate
    from gptlite.tasks import finetune
    from gptlite.engine.model import GPT

    text = (SHARED / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tail = text[int(len(text) * 0.9):]  # held out of the default model's training split
    cut = int(len(tail) * 2 / 3)  # train passages before, validation passages after: no overlap
    rng = np.random.default_rng(args.seed)
    if args.task == "nextword":
        train = build_examples(tail[:cut], args.context_words, 7, rng)
        valid = build_examples(tail[cut:], args.context_words, 7, rng)
    elif args.task == "corpus":
        train, valid = build_corpus_examples(args.context_words, args.n_train // len(CORPORA), rng)
    else:
        train = build_shuffle_examples(tail[:cut], args.context_words, args.context_words // 2, rng)
        valid = build_shuffle_examples(tail[cut:], args.context_words, args.context_words, rng)
    rng.shuffle(train)
    rng.shuffle(valid)
    train, valid = train[: args.n_train], valid[: args.n_valid]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "valid.jsonl", valid)
    print(f"dataset ({args.task}): {len(train)} train / {len(valid)} valid passages of {args.context_words} words",
          file=sys.stderr)

    model_dir = Path(args.model)
    base = checkpoint.load_model(model_dir, device="cpu")
    tok = checkpoint.load_tokenizer(model_dir)
    if tok is None:
        from gptlite.tokenizer.encoding import Tokenizer

        tok = Tokenizer.gpt2()
    results = {"model": str(model_dir), "config": vars(args), "n_train": len(train), "n_valid": len(valid), "runs": {}}

    zs = zs_mean = None
    if args.task == "nextword":  # zero-shot: the LM's own choice (GPT-2 style), no fine-tuning
        t0 = time.time()
        zs = evaluate.choice(base, tok, work / "valid.jsonl", normalize="total", progress=False)
        zs_mean = evaluate.choice(base, tok, work / "valid.jsonl", normalize="mean", progress=False)
        results["zero_shot"] = {"accuracy_total": zs.accuracy, "accuracy_mean": zs_mean.accuracy,
                                "seconds": time.time() - t0}
        print(f"zero-shot LM scoring: {zs.accuracy:.3f} (total log-prob), {zs_mean.accuracy:.3f} (per token)",
              file=sys.stderr)
    task = "choice" if args.task == "nextword" else "classification"

    seeds = [int(x) for x in args.seeds.split(",")]
    for run in args.runs.split(","):
        init, lam = run.split("-")
        hists, secs = [], []
        for seed in seeds:
            if init == "pre":  # a fresh copy: fine-tuning updates parameters in place
                model = GPT(base.config, params={k: v.copy() for k, v in base.params.items()}, device="cpu")
            else:
                model = GPT(base.config, device="cpu", seed=seed)
            cfg = finetune.FinetuneConfig(task=task, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                                          lm_coef=float(lam), seed=seed)
            t0 = time.time()
            res = finetune.finetune(model, tok, work / "train.jsonl", work / "valid.jsonl", cfg,
                                    out_dir=work / f"ckpt-{run}-s{seed}",
                                    log=lambda s: print(f"[{run} seed {seed}] {s}", file=sys.stderr))
            hists.append(res.history)
            secs.append(time.time() - t0)
        acc = np.array([[h["valid_accuracy"] for h in hist] for hist in hists])  # (seeds, epochs)
        results["runs"][run] = {"seeds": seeds, "histories": hists, "valid_accuracy_mean": acc.mean(0).tolist(),
                                "valid_accuracy_min": acc.min(0).tolist(), "valid_accuracy_max": acc.max(0).tolist(),
                                "truncated_train": res.truncated_train, "seconds_per_run": float(np.mean(secs))}

    print(f"\nvalidation accuracy, mean over seeds {seeds} (min-max)\n")
    print("| init | lambda | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs)) + " | time/run |")
    print("|---|---|" + "---|" * args.epochs + "---|")
    for run, r in results["runs"].items():
        init, lam = run.split("-")
        cells = " | ".join(f"{m:.3f} ({lo:.3f}-{hi:.3f})" for m, lo, hi in
                           zip(r["valid_accuracy_mean"], r["valid_accuracy_min"], r["valid_accuracy_max"]))
        print(f"| {'pre-trained' if init == 'pre' else 'random init'} | {lam} | {cells} | {r['seconds_per_run']:.0f} s |")
    if zs is not None:
        print(f"\nzero-shot (no fine-tuning): {zs.accuracy:.3f} total log-prob, {zs_mean.accuracy:.3f} per token; chance 0.25")
    else:
        from collections import Counter

        top = Counter(r["label"] for r in valid).most_common(1)[0][1] / len(valid)
        print(f"\nmajority-class baseline: {top:.3f}")
    if args.json:
        from gptlite.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
