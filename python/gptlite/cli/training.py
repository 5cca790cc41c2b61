"""`gptlite prepare` / `train` / `plot` / `val-loss` / `export`."""
from __future__ import annotations

import argparse  # noqa: F401
import re  # noqa: F401
import sys

from gptlite.cli.common import UserError, _check_out_dir  # noqa: F401
from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE  # noqa: F401


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
    p.add_argument("--config", required=True,
                   help="TOML config file, or a shipped preset: tiny, shakespeare (python/gptlite/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in out_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the training run already in out_dir (its checkpoint, metrics.jsonl, train_config.json; "
                        "nothing else there, and never a directory that is not a run)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many more steps (the schedule still spans max_steps)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="float32 matmuls on TF32 tensor cores on the GPU (default: the config's optim.tf32, true)")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default=None,
                   help="bfloat16: mixed precision on the GPU (bf16 tensor-core matmuls, float32 weights, statistics "
                        "and checkpoints); default: the config's run.dtype, float32")
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

    from gptlite.engine.checkpoint import load_model
    from gptlite.training.pretrain import evaluate_split

    model = load_model(args.model)
    print(json.dumps(evaluate_split(model, args.data, args.split, args.block_size), indent=2))
    return 0


def _cmd_export(args) -> int:
    from gptlite.engine.checkpoint import load_model, load_tokenizer, save_model

    _check_out_dir(args.out, "out")
    model = load_model(args.checkpoint)
    tok = load_tokenizer(args.checkpoint)
    if tok is None:
        raise UserError(f"{args.checkpoint} holds no tokenizer (encoder.json + vocab.bpe)")
    save_model(model, args.out, tokenizer=tok, dtype=args.dtype)
    print(args.out)
    return 0


def _cmd_prepare(args) -> int:
    from gptlite.data import prepare

    _check_out_dir(args.out)
    meta = prepare(args.files, args.tokenizer, args.out, val_fraction=args.val_fraction,
                   text_field=args.text_field, seed=args.seed)
    sp = meta["splits"]
    print(f"{args.out}: train {sp['train']['tokens']:,} tokens ({sp['train']['documents']} docs), "
          f"val {sp['val']['tokens']:,} tokens ({sp['val']['documents']} docs), {meta['dtype']}, vocab {meta['n_vocab']}")
    return 0


def _cmd_train(args) -> int:
    from gptlite.training.pretrain import Trainer, TrainingError, load_config

    flags = [f"optim.tf32={str(args.tf32).lower()}"] if args.tf32 is not None else []
    flags += [f"run.dtype={args.dtype}"] if args.dtype is not None else []
    cfg = load_config(args.config, args.overrides + flags)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    try:
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        result = trainer.run(args.steps)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    if not trainer.world.is_main:  # rank 0 reports for the job
        return 0
    val = f", val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else ""
    print(f"step {result['step']}{val}; checkpoint {result['checkpoint']}")
    return 0


def _cmd_plot(args) -> int:
    from gptlite.training.plot import plot_run

    _check_out_dir(args.out)
    try:
        print(plot_run(args.run_dir, args.out))
    except ImportError as exc:  # matplotlib is the optional [plot] extra
        raise UserError(str(exc)) from None
    return 0
