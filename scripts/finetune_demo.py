#!/usr/bin/env python3
"""GPT-1 fine-tuning demonstration on the shared data: "which word comes next?"

A LAMBADA-style multiple-choice task built from the held-out tail of
tinyshakespeare (the last 10% of the file, the part `gptlite prepare` keeps
out of the default model's training split): given ~40 words of a passage,
choose the word that really follows among 4 candidates -- the true word and 3
distractors drawn from the same passage (so every choice is plausible
vocabulary and only context decides). Chance is 25%.

It fine-tunes four times with the `choice` input transformation
(start context delim answer_k extract, softmax over k):
  pre-trained model, lambda = 0.5   |  pre-trained model, lambda = 0
  random init,      lambda = 0.5   |  random init,      lambda = 0
and reports validation accuracy per epoch, plus the zero-shot accuracy of the
pre-trained LM itself (GPT-2-style scoring of each candidate, no fine-tuning).

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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from gptlite.fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "python" / "gptlite" / "assets" / "default"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "finetune-demo"), help="datasets and checkpoints go here")
    ap.add_argument("--context-words", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=480)
    ap.add_argument("--n-valid", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6.25e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="pre-0.5,pre-0,rand-0.5,rand-0", help="comma list of {pre,rand}-{lambda}")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args(argv)

    from gptlite import checkpoint, evaluate, finetune
    from gptlite.model import GPT

    text = (SHARED / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tail = text[int(len(text) * 0.9):]  # held out of the default model's training split
    cut = int(len(tail) * 2 / 3)  # train passages before, validation passages after: no overlap
    rng = np.random.default_rng(args.seed)
    train = build_examples(tail[:cut], args.context_words, 7, rng)
    valid = build_examples(tail[cut:], args.context_words, 7, rng)
    rng.shuffle(train)
    rng.shuffle(valid)
    train, valid = train[: args.n_train], valid[: args.n_valid]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "valid.jsonl", valid)
    print(f"dataset: {len(train)} train / {len(valid)} valid passages of {args.context_words} words, 4 choices",
          file=sys.stderr)

    model_dir = Path(args.model)
    base = checkpoint.load_model(model_dir, device="cpu")
    tok = checkpoint.load_tokenizer(model_dir)
    if tok is None:
        from gptlite.tokenizer import Tokenizer

        tok = Tokenizer.gpt2()
    results = {"model": str(model_dir), "config": vars(args), "n_train": len(train), "n_valid": len(valid), "runs": {}}

    # zero-shot: the LM's own choice (GPT-2 style), no fine-tuning
    t0 = time.time()
    zs = evaluate.choice(base, tok, work / "valid.jsonl", normalize="total", progress=False)
    zs_mean = evaluate.choice(base, tok, work / "valid.jsonl", normalize="mean", progress=False)
    results["zero_shot"] = {"accuracy_total": zs.accuracy, "accuracy_mean": zs_mean.accuracy,
                            "seconds": time.time() - t0}
    print(f"zero-shot LM scoring: {zs.accuracy:.3f} (total log-prob), {zs_mean.accuracy:.3f} (per token)",
          file=sys.stderr)

    for run in args.runs.split(","):
        init, lam = run.split("-")
        model = base if init == "pre" else GPT(base.config, device="cpu", seed=args.seed)
        if init == "pre":  # fresh copy: fine-tuning updates parameters in place
            model = GPT(base.config, params={k: v.copy() for k, v in base.params.items()}, device="cpu")
        cfg = finetune.FinetuneConfig(task="choice", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                                      lm_coef=float(lam), seed=args.seed)
        t0 = time.time()
        res = finetune.finetune(model, tok, work / "train.jsonl", work / "valid.jsonl", cfg,
                                out_dir=work / f"ckpt-{run}", log=lambda s: print(f"[{run}] {s}", file=sys.stderr))
        results["runs"][run] = {"history": res.history, "valid_accuracy": res.history[-1]["valid_accuracy"],
                                "truncated_train": res.truncated_train, "seconds": time.time() - t0}

    print("\n| init | lambda | " + " | ".join(f"valid acc. epoch {e + 1}" for e in range(args.epochs)) + " | time |")
    print("|---|---|" + "---|" * args.epochs + "---|")
    for run, r in results["runs"].items():
        init, lam = run.split("-")
        accs = " | ".join(f"{h['valid_accuracy']:.3f}" for h in r["history"])
        print(f"| {'pre-trained' if init == 'pre' else 'random'} | {lam} | {accs} | {r['seconds']:.0f} s |")
    print(f"\nzero-shot (no fine-tuning): {zs.accuracy:.3f} total log-prob, {zs_mean.accuracy:.3f} per token; chance 0.25")
    if args.json:
        from gptlite.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
