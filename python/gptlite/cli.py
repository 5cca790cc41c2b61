"""The `gptlite` command line.

Each area registers its subcommands in its own ``_add_*`` function below;
handlers import their area lazily so `gptlite encode` never loads the model code.
Errors that users can cause (bad files, bad ids, bad options) are printed as one
line ``gptlite: error: ...`` with exit status 2; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """An error in the user's input: printed without a traceback."""


# --- tokenizer: encode / decode (issue: Rust BPE encoder) -------------------------
def _add_tokenizer_commands(sub) -> None:
    pass


# --- tokenizer training ------------------------------------------------------------
def _add_tokenizer_train_commands(sub) -> None:
    # `gptlite tokenizer train`: reuse a `tokenizer` group if another area made one.
    group = sub.choices.get("tokenizer")
    if group is None:
        group = sub.add_parser("tokenizer", help="tokenizer tools: train a byte-level BPE vocabulary")
    tsub = next((a for a in group._actions if isinstance(a, argparse._SubParsersAction)), None)
    if tsub is None:
        tsub = group.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
        tsub.required = True
    p = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files",
                        description="Train a byte-level BPE tokenizer (GPT-2 style) on UTF-8 text files.")
    p.add_argument("files", nargs="+", metavar="FILES", help="UTF-8 text files (each file is a separate document)")
    p.add_argument("--vocab-size", type=int, required=True,
                   help="total vocabulary: 256 bytes + merges + special tokens")
    p.add_argument("--out", required=True, help="output directory (created; files replaced atomically)")
    p.add_argument("--special", action="append", default=None, metavar="TOKEN",
                   help="special token appended after the merges (repeatable; default <|endoftext|>)")
    p.add_argument("--no-special", action="store_true", help="no special tokens at all")
    p.add_argument("--min-frequency", type=int, default=1, help="stop when the best pair occurs fewer times")
    p.add_argument("--pattern", choices=["gpt2", "cl100k"], default="gpt2", help="pre-tokenization pattern")
    p.add_argument("--format", action="append", choices=["gpt2", "hf", "tiktoken"], default=None,
                   help="output format(s) (repeatable; default: gpt2 and tiktoken)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8: fail naming file and offset (strict) or substitute U+FFFD")
    p.add_argument("--threads", type=int, default=None, help="counting threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_train(args) -> int:
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from . import trainer

    specials = () if args.no_special else tuple(args.special or trainer.DEFAULT_SPECIAL_TOKENS)
    formats = list(dict.fromkeys(args.format or ["gpt2", "tiktoken"]))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    result = trainer.train_bpe(
        args.files, vocab_size=args.vocab_size, special_tokens=specials, min_frequency=args.min_frequency,
        pattern=args.pattern, errors=args.errors, num_threads=args.threads, progress=not args.quiet,
    )
    tok = result.to_tokenizer(name=out.name or "gptlite-bpe")
    # Save everything into a fresh sibling directory first, then move it into
    # place: an interrupted run leaves no half-written output behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for fmt in formats:
            tok.save(tmp, format=fmt)
        if not out.exists():
            os.rename(tmp, out)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    st = result.stats
    n_merged = len(result.tokens) - 256
    print(f"trained {args.pattern} byte-level BPE in {st['seconds']:.2f}s "
          f"(counting {st['count_seconds']:.2f}s, merging {st['merge_seconds']:.2f}s)")
    print(f"  corpus:       {st['corpus_bytes']:,} bytes in {len(args.files)} file(s)")
    print(f"  pre-tokens:   {st['pretokens']:,} ({st['unique_pretokens']:,} unique)")
    print(f"  vocabulary:   {result.n_vocab:,} = 256 bytes + {n_merged:,} merges + {len(specials)} special")
    if result.n_vocab < args.vocab_size:
        print(f"  note:         stopped before --vocab-size {args.vocab_size:,}: "
              f"no pair left with count >= {max(1, args.min_frequency)}")
    if st["training_tokens"]:
        print(f"  compression:  {st['corpus_bytes'] / st['training_tokens']:.3f} bytes/token on the training text "
              f"({st['training_tokens']:,} tokens)")
    print(f"  saved:        {out}/ ({', '.join(formats)}): {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


# --- model: generate / check-reference ---------------------------------------------
def _add_model_commands(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a model, streaming the text")
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text; '-' or absent reads stdin (absent on a terminal: start from <|endoftext|>)")
    p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--crop", action="store_true", help="keep the last tokens of a prompt longer than the context")
    p.add_argument("--no-prompt", dest="echo", action="store_false", help="print only the generated text")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("check-reference",
                       help="run gptlite and transformers on the same weights and compare logits, loss, gradients")
    p.add_argument("--model", required=True, help="model directory or hub name")
    p.add_argument("--text", default=None, help="sample text (default: a built-in paragraph)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-tokens", type=int, default=128, help="evaluate on at most this many tokens")
    p.add_argument("--tol-logits", type=float, default=None, help="max |logit diff| allowed (default by dtype)")
    p.add_argument("--tol-loss", type=float, default=None, help="max |loss diff| allowed (default by dtype)")
    p.add_argument("--tol-grad", type=float, default=None, help="max relative gradient diff allowed (default by dtype)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_cmd_check_reference)


def _default_model_dir():
    from pathlib import Path

    d = Path(__file__).resolve().parent / "assets" / "default"
    if not (d / "config.json").is_file():
        raise UserError("no --model given and the default model (gptlite/assets/default) is not installed; "
                        "pass --model DIR or a hub name such as gpt2")
    return d


def _model_and_tokenizer(model_arg, device, dtype):
    from . import checkpoint

    d = _default_model_dir() if model_arg is None else checkpoint.resolve_model_dir(model_arg)
    model = checkpoint.load_model(d, device=device, dtype=dtype)
    tok = checkpoint.load_tokenizer(d)
    if tok is None:
        if model.config.vocab_size != 50257:
            raise UserError(f"{d} holds no tokenizer (encoder.json + vocab.bpe) and its vocab_size "
                            f"{model.config.vocab_size} is not GPT-2's 50257")
        from .tokenizer import Tokenizer

        tok = Tokenizer.gpt2()
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(f"{d}: the tokenizer has {tok.n_vocab} tokens but the model only {model.config.vocab_size}")
    return model, tok


def _cmd_generate(args) -> int:
    import codecs

    import numpy as np

    from .generate import generate

    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
    else:
        prompt = args.prompt or ""
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    ids = tok.encode(prompt, allowed_special="all") if prompt else []
    if not ids:
        if tok.eot_token is None:
            raise UserError("empty prompt, and the tokenizer has no <|endoftext|> to start from")
        ids = [tok.eot_token]  # unconditional sampling, as GPT-2's samples
    rng = np.random.default_rng(args.seed)  # one stream across samples: --seed fixes them all
    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write("\n" + "-" * 40 + "\n")
        if args.echo and prompt:
            out.write(prompt)
        out.flush()
        # Print only complete UTF-8 characters: a token may end inside one.
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for t in generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=rng, eot_token=tok.eot_token, crop=args.crop, stream=True):
            text = dec.decode(tok.decode_bytes([t]))
            if text:
                out.write(text)
                out.flush()
        out.write(dec.decode(b"", final=True) + "\n")
        out.flush()
    return 0


def _cmd_check_reference(args) -> int:
    import json

    from . import checkpoint
    from .reference import check_reference, format_report

    d = checkpoint.resolve_model_dir(args.model)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UserError(f"check-reference needs PyTorch and transformers ({exc.name} is not installed): "
                        "pip install torch transformers") from None
    r = check_reference(d, text=args.text, dtype=args.dtype, max_tokens=args.max_tokens,
                        tol_logits=args.tol_logits, tol_loss=args.tol_loss, tol_grad=args.tol_grad)
    print(json.dumps(r) if args.json else format_report(r))
    return 0 if r["passed"] else 1


# --- pre-training: prepare / train / plot ------------------------------------------
def _add_training_commands(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text/JSONL files into train/val token shards")
    p.add_argument("files", nargs="+", help="text files (one document each) or .jsonl files (one document a line)")
    p.add_argument("-o", "--out", required=True, help="output directory (train.bin, val.bin, meta.json, tokenizer/)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', 'default' (the shipped model's) or a tokenizer directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents (or of the tail of a single document) held out")
    p.add_argument("--text-field", default=None, help="JSON field holding the text (treats every input as JSONL)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val document split")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="pre-train a model from a TOML config")
    p.add_argument("--config", required=True, help="TOML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in out_dir")
    p.add_argument("--steps", type=int, default=None, help="stop after this many more steps (the schedule still spans max_steps)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plot", help="draw a run's train/val loss curves to PNG")
    p.add_argument("run_dir", help="a `gptlite train` output directory (holding metrics.jsonl)")
    p.add_argument("-o", "--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("val-loss", help="a model's loss on a prepared split, next to a unigram baseline")
    p.add_argument("--model", required=True, help="model directory (e.g. RUN_DIR/ckpt)")
    p.add_argument("--data", required=True, help="`gptlite prepare` output directory")
    p.add_argument("--split", default="val")
    p.add_argument("--block-size", type=int, default=None, help="window length (default: the model's n_positions)")
    p.set_defaults(func=_cmd_val_loss)

    p = sub.add_parser("export", help="copy a checkpoint's model + tokenizer to a model directory (e.g. as float16)")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN_DIR/ckpt)")
    p.add_argument("out", help="output model directory")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.set_defaults(func=_cmd_export)


def _cmd_val_loss(args) -> int:
    import json

    from .checkpoint import load_model
    from .train import evaluate_split

    model = load_model(args.model)
    print(json.dumps(evaluate_split(model, args.data, args.split, args.block_size), indent=2))
    return 0


def _cmd_export(args) -> int:
    from .checkpoint import load_model, load_tokenizer, save_model

    model = load_model(args.checkpoint)
    tok = load_tokenizer(args.checkpoint)
    if tok is None:
        raise UserError(f"{args.checkpoint} holds no tokenizer (encoder.json + vocab.bpe)")
    save_model(model, args.out, tokenizer=tok, dtype=args.dtype)
    print(args.out)
    return 0


def _cmd_prepare(args) -> int:
    from .data import prepare

    meta = prepare(args.files, args.tokenizer, args.out, val_fraction=args.val_fraction,
                   text_field=args.text_field, seed=args.seed)
    sp = meta["splits"]
    print(f"{args.out}: train {sp['train']['tokens']:,} tokens ({sp['train']['documents']} docs), "
          f"val {sp['val']['tokens']:,} tokens ({sp['val']['documents']} docs), {meta['dtype']}, vocab {meta['n_vocab']}")
    return 0


def _cmd_train(args) -> int:
    from .train import Trainer, TrainingError, load_config

    cfg = load_config(args.config, args.overrides)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    try:
        result = Trainer(cfg, resume=args.resume).run(args.steps)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    val = f", val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else ""
    print(f"step {result['step']}{val}; checkpoint {result['checkpoint']}")
    return 0


def _cmd_plot(args) -> int:
    from .plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


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

    p = sub.add_parser("finetune", help="GPT-1 supervised fine-tuning (classification, entailment, similarity, choice)",
                       description="GPT-1 fine-tuning: special tokens, a linear head at the extract token, "
                                   "loss = task loss + lambda * LM loss. Defaults are the GPT-1 paper's.")
    p.add_argument("--task", required=True, choices=["classification", "entailment", "similarity", "choice"],
                   help="input transformation; records need text | premise,hypothesis | text_a,text_b | context,choices")
    p.add_argument("--train", required=True, help="training set (.jsonl or .csv)")
    p.add_argument("--valid", default=None, help="validation set, evaluated after every epoch")
    p.add_argument("--out", required=True, help="checkpoint directory (model + head + special tokens)")
    p.add_argument("--model", default=None, help="pre-trained model directory or hub name (default: the shipped default model)")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (the no-pre-training baseline)")
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
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--json", action="store_true", help="print the per-epoch history as JSON")
    p.set_defaults(func=_cmd_finetune)


def _load_eval_model(args):
    from pathlib import Path

    from . import checkpoint

    if args.model is None:
        d = Path(__file__).resolve().parent / "assets" / "default"
        if not (d / "config.json").is_file():
            raise UserError("no --model given and the default model (gptlite/assets/default) is not installed")
    else:
        d = checkpoint.resolve_model_dir(args.model)
    model = checkpoint.load_model(d, device=args.device, dtype=args.dtype)
    tok = checkpoint.load_tokenizer(d)
    if tok is None:
        from .tokenizer import Tokenizer

        tok = Tokenizer.gpt2()
    return model, tok


def _print_result(args, d: dict, title: str) -> None:
    import json

    if args.json:
        print(json.dumps(d))
        return
    print(title)
    for k, v in d.items():
        print(f"  {k:16s} {v:.6g}" if isinstance(v, float) else f"  {k:16s} {v}")


def _cmd_eval_perplexity(args) -> int:
    from . import evaluate

    with open(args.file, "r", encoding="utf-8") as f:
        text = f.read()
    if not text:
        raise UserError(f"{args.file} is empty: nothing to evaluate")
    model, tok = _load_eval_model(args)
    r = evaluate.perplexity(model, tok, text, context=args.context, stride=args.stride, batch_size=args.batch_size,
                            bos=args.bos, progress=args.progress and None)
    _print_result(args, r.as_dict(), f"perplexity of {args.file}")
    return 0


def _cmd_eval_lambada(args) -> int:
    from . import evaluate

    model, tok = _load_eval_model(args)
    r = evaluate.lambada(model, tok, args.file, batch_size=args.batch_size, bos=args.bos, skip_bad=args.skip_bad,
                         limit=args.limit, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    _print_result(args, r.as_dict(), f"LAMBADA on {args.file}")
    return 0


def _cmd_eval_choice(args) -> int:
    from . import evaluate
    from .fileio import atomic_write_text

    model, tok = _load_eval_model(args)
    r = evaluate.choice(model, tok, args.file, normalize=args.normalize, sep=args.sep, batch_size=args.batch_size,
                        bos=args.bos, skip_bad=args.skip_bad, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    if args.predictions:
        atomic_write_text(args.predictions, "".join(f"{p}\n" for p in r.predictions))
    _print_result(args, r.as_dict(), f"multiple choice on {args.file}")
    return 0


def _cmd_finetune(args) -> int:
    from .finetune import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptlite", description="GPT-1/GPT-2 from first principles")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gptlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_tokenizer_commands(sub)
    _add_tokenizer_train_commands(sub)
    _add_model_commands(sub)
    _add_training_commands(sub)
    _add_eval_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError, KeyError, OSError) as exc:  # user-caused
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gptlite: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptlite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
