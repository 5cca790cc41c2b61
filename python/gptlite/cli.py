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
    pass


# --- model: generate / check-reference ---------------------------------------------
def _add_model_commands(sub) -> None:
    pass


# --- pre-training: prepare / train / plot ------------------------------------------
def _add_training_commands(sub) -> None:
    pass


# --- evaluation and fine-tuning ----------------------------------------------------
def _add_eval_commands(sub) -> None:
    pass


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
