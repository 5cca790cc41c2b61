"""The `gptlite` command line.

Each area is a module (tokenizer, generation, training, tasks) that registers
its subcommands in its ``_add_*`` functions; handlers import their area's
library code lazily so `gptlite encode` never loads the model code.
Errors that users can cause (bad files, bad ids, bad options) are printed as one
line ``gptlite: error: ...`` with exit status 2; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import sys

from gptlite.cli.common import UserError, _HelpFormatter, _Parser, _check_out_dir  # noqa: F401
from gptlite.cli.generation import _add_model_commands
from gptlite.cli.tasks import _add_eval_commands
from gptlite.cli.tokenizer import _add_tokenizer_commands, _add_tokenizer_train_commands, _safe_cut, _stream_pieces  # noqa: F401
from gptlite.cli.training import _add_training_commands


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gptlite", description="GPT-1/GPT-2 from first principles")
    from gptlite import __version__

    parser.add_argument("--version", action="version", version=f"gptlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_tokenizer_commands(sub)
    _add_tokenizer_train_commands(sub)
    _add_model_commands(sub)
    _add_training_commands(sub)
    _add_eval_commands(sub)
    return parser


# What a user's input or environment causes (ValueError subclasses carry the
# file/field/id; OSError the path). KeyError, TypeError and the rest are bugs.
USER_ERRORS = (UserError, ValueError, OSError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gptlite.training.distributed import fail_fast

    try:
        with fail_fast():  # under mpiexec: a failing rank prints its error and ends the whole job
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `gptlite ... | head`: the reader left, which is not an error (before OSError)
        _silence_stdout()
        return 0
    except USER_ERRORS as exc:  # one line; anything else is a bug and keeps its traceback
        print(f"gptlite: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or runlock.Stopped by SIGTERM/SIGUSR1: exit 128 + the signal
        print("gptlite: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush into the closed pipe stays quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
