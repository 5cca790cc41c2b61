"""`gptlite eval`, `gptlite prompt` and `gptlite finetune` (train and predict)."""
from __future__ import annotations

import argparse  # noqa: F401
import re  # noqa: F401
import sys

from gptlite.cli.common import UserError, _check_out_dir  # noqa: F401
from gptlite.cli.generation import _model_and_tokenizer
from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE  # noqa: F401


# --- evaluation and fine-tuning ----------------------------------------------------
def _add_eval_commands(sub) -> None:
    def model_args(p):
        p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
        p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
        p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--no-bos", dest="bos", action="store_false",
                       help="do not put <|endoftext|> before each sequence")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        p.add_argument("--no-progress", dest="progress", action="store_false")

    ev = sub.add_parser("eval", help="zero-shot evaluation: perplexity, LAMBADA, multiple choice")
    evs = ev.add_subparsers(dest="eval_command", metavar="TASK")
    evs.required = True
    p = evs.add_parser("perplexity", help="perplexity / bits per byte of a text file")
    p.add_argument("file")
    p.add_argument("--context", type=int, default=None, help="tokens per window (default: the model's n_positions)")
    p.add_argument("--stride", type=int, default=None,
                   help="window step; default = context (non-overlapping); smaller = sliding window")
    model_args(p)
    p.set_defaults(func=_cmd_eval_perplexity, batch_size=4)
    p = evs.add_parser("lambada", help="LAMBADA last-word accuracy and perplexity (jsonl of {\"text\": ...})")
    p.add_argument("file")
    p.add_argument("--limit", type=int, default=None, help="first N passages only")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    model_args(p)
    p.set_defaults(func=_cmd_eval_lambada)
    p = evs.add_parser("choice", help="multiple choice by log-probability (jsonl/csv: context, choices, label)")
    p.add_argument("file")
    p.add_argument("--normalize", choices=["total", "mean"], default="total",
                   help="total log-prob, or mean per token (length-normalised)")
    p.add_argument("--sep", default=" ", help="text put between context and each choice (default: one space)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--predictions", default=None, help="write one predicted index per line to this file")
    model_args(p)
    p.set_defaults(func=_cmd_eval_choice)

    pr = sub.add_parser("prompt", help="GPT-2-style zero-shot tasks by prompting: TL;DR summaries, translation")
    prs = pr.add_subparsers(dest="prompt_command", metavar="TASK")
    prs.required = True

    def prompt_args(p, max_new_tokens):
        p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
        p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
        p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
        p.add_argument("--show-prompt", action="store_true", help="print the full prompt the model sees first")
        p.add_argument("--json", action="store_true", help="print prompt, completion and answer as one JSON object")

    p = prs.add_parser("tldr", help="summarise: the article, then 'TL;DR:'; sample with top-k 2, keep 3 sentences")
    p.add_argument("file", nargs="?", default="-", help="article text file ('-' or absent: stdin)")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--sentences", type=int, default=3, help="keep this many generated sentences")
    prompt_args(p, 100)
    p.set_defaults(func=_cmd_prompt_tldr)
    p = prs.add_parser("translate", help="few-shot translation: 'source = target' example lines, then the text")
    p.add_argument("text", help="one line to translate ('-': stdin)")
    p.add_argument("--examples", default=None,
                   help="file of 'source<TAB>target' example lines (default: built-in English = French pairs)")
    p.add_argument("--sep", default=" = ", help="what joins source and target in the prompt")
    prompt_args(p, 40)
    p.set_defaults(func=_cmd_prompt_translate)

    p = sub.add_parser("finetune", help="GPT-1 supervised fine-tuning (classification, entailment, similarity, choice)",
                       description="GPT-1 fine-tuning: special tokens, a linear head at the extract token, "
                                   "loss = task loss + lambda * LM loss. Defaults are the GPT-1 paper's.")
    p.add_argument("--task", default=None, choices=["classification", "entailment", "similarity", "choice"],
                   help="input transformation; records need text | premise,hypothesis | text_a,text_b | context,choices")
    p.add_argument("--train", default=None, help="training set (.jsonl or .csv); required")
    p.add_argument("--valid", default=None, help="validation set, evaluated after every epoch")
    p.add_argument("--out", default=None, help="checkpoint directory (model + head + special tokens); required")
    p.add_argument("--model", default=None, help="pre-trained model directory or hub name (default: the shipped default model)")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (the no-pre-training baseline)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in --out exactly (give the same options again; --model is not used)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the fine-tuned model already in --out (never a directory that is not one)")
    p.add_argument("--labels", default=None, help="comma-separated label set (default: the labels seen in --train)")
    p.add_argument("--lr", type=float, default=6.25e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=0.002, help="warmup as a fraction of all steps (then linear decay)")
    p.add_argument("--lm-coef", type=float, default=0.5, help="lambda, weight of the auxiliary LM loss (0 = ablation)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout on the classifier input")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-len", type=int, default=None, help="longest transformed sequence (default: n_positions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=0.0,
                   help="also checkpoint mid-epoch after this much wall time since the last save (0: only per epoch)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--json", action="store_true", help="print the per-epoch history as JSON")
    p.set_defaults(func=_cmd_finetune)
    fsub = p.add_subparsers(dest="finetune_command", metavar="predict")
    fsub.required = False  # plain `gptlite finetune --task ...` trains
    q = fsub.add_parser("predict", help="run a fine-tuned model on a labelled .jsonl/.csv file: one JSON prediction a line")
    q.add_argument("model", help="a `gptlite finetune --out` directory")
    q.add_argument("file", help="records as for training (.jsonl or .csv)")
    q.add_argument("-o", "--out", default=None, help="predictions file (.jsonl; default stdout)")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--device", choices=["cpu", "cuda"], default=None)
    q.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    q.add_argument("--json", action="store_true", help="print the metrics as JSON")
    q.set_defaults(func=_cmd_finetune_predict)


def _print_result(args, d: dict, title: str) -> None:
    import json

    if args.json:
        print(json.dumps(d))
        return
    print(title)
    for k, v in d.items():
        print(f"  {k:16s} {v:.6g}" if isinstance(v, float) else f"  {k:16s} {v}")


def _cmd_eval_perplexity(args) -> int:
    from gptlite.tasks import evaluate
    from gptlite.fileio import read_utf8

    text = read_utf8(args.file)
    if not text:
        raise UserError(f"{args.file} is empty: nothing to evaluate")
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.perplexity(model, tok, text, context=args.context, stride=args.stride, batch_size=args.batch_size,
                            bos=args.bos, progress=args.progress and None)
    _print_result(args, r.as_dict(), f"perplexity of {args.file}")
    return 0


def _cmd_eval_lambada(args) -> int:
    from gptlite.tasks import evaluate

    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.lambada(model, tok, args.file, batch_size=args.batch_size, bos=args.bos, skip_bad=args.skip_bad,
                         limit=args.limit, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    _print_result(args, r.as_dict(), f"LAMBADA on {args.file}")
    return 0


def _cmd_eval_choice(args) -> int:
    from gptlite.tasks import evaluate
    from gptlite.fileio import atomic_write_text

    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.choice(model, tok, args.file, normalize=args.normalize, sep=args.sep, batch_size=args.batch_size,
                        bos=args.bos, skip_bad=args.skip_bad, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    if args.predictions:
        atomic_write_text(args.predictions, "".join(f"{p}\n" for p in r.predictions))
    _print_result(args, r.as_dict(), f"multiple choice on {args.file}")
    return 0


def _read_arg_text(name: str) -> str:
    from gptlite.fileio import read_utf8

    return sys.stdin.read() if name == "-" else read_utf8(name)


def _print_prompt_result(args, r) -> None:
    import json

    if args.json:
        print(json.dumps({"prompt": r.prompt, "completion": r.completion, "output": r.output,
                          "prompt_tokens": r.prompt_tokens, "cropped": r.cropped}))
        return
    if r.cropped:
        print(f"gptlite: the prompt plus --max-new-tokens {args.max_new_tokens} does not fit in the model's context: "
              f"kept the prompt's last {r.prompt_tokens} tokens", file=sys.stderr)
    if args.show_prompt:
        print(r.prompt + "\n" + "-" * 40)
    print(r.output)


def _cmd_prompt_tldr(args) -> int:
    from gptlite.tasks import prompting

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.sentences < 1:
        raise UserError(f"--sentences must be >= 1, got {args.sentences}")
    article = _read_arg_text(args.file)
    if not article.strip():
        raise UserError(f"{'stdin' if args.file == '-' else args.file} is empty: nothing to summarise")
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = prompting.summarize(model, tok, article, args.max_new_tokens, top_k=args.top_k,
                            temperature=args.temperature, seed=args.seed, sentences=args.sentences)
    _print_prompt_result(args, r)
    return 0


def _cmd_prompt_translate(args) -> int:
    from gptlite.tasks import prompting

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise UserError("nothing to translate: the text is empty")
    examples = prompting.read_examples(args.examples) if args.examples else None
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = prompting.translate(model, tok, text, examples, sep=args.sep, max_new_tokens=args.max_new_tokens)
    _print_prompt_result(args, r)
    return 0


def _cmd_finetune(args) -> int:
    from gptlite.tasks.finetune import run_from_args

    missing = [f for f, v in (("--task", args.task), ("--train", args.train), ("--out", args.out)) if v is None]
    if missing:
        raise UserError(f"gptlite finetune needs {', '.join(missing)} (or: gptlite finetune predict MODEL FILE)")
    _check_out_dir(args.out, "--out")
    return run_from_args(args)


def _cmd_finetune_predict(args) -> int:
    import contextlib
    import json

    from gptlite.fileio import atomic_open
    from gptlite.tasks.finetune import load_finetuned

    _check_out_dir(args.out)
    ft = load_finetuned(args.model, device=args.device)
    preds, metrics = ft.predict(args.file, batch_size=args.batch_size, skip_bad=args.skip_bad)
    names = [str(x) for x in ft.labels] if getattr(ft, "labels", None) else None
    out = atomic_open(args.out, "w", encoding="utf-8") if args.out and args.out != "-" else contextlib.nullcontext(sys.stdout)
    with out as f:
        for p in preds:
            p = int(p)
            f.write(json.dumps({"prediction": names[p] if names else p}) + "\n")
    print(json.dumps(metrics) if args.json else "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
    return 0
