"""What every CLI area shares: the user-error class, the --help formatter, output checks."""
from __future__ import annotations

import argparse


class UserError(Exception):
    """An error in the user's input: printed without a traceback."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help; None and off switches have nothing worth showing."""

    @staticmethod
    def _shows_default(action) -> bool:
        return (bool(action.option_strings) and action.default not in (None, argparse.SUPPRESS)
                and not isinstance(action, argparse._StoreConstAction) and action.default != [])

    def _get_help_string(self, action):
        help = action.help or ""
        if "%(default)" in help or not self._shows_default(action):
            return help
        return super()._get_help_string(action)

    def _format_action(self, action):
        if not action.help and self._shows_default(action):
            action.help = "default: %(default)s"  # an option without help text still shows its default
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = _HelpFormatter
        super().__init__(*args, **kwargs)


def _check_out_dir(path, what: str = "-o") -> None:
    """An output path's directory must exist: a typo should not silently grow a new tree."""
    from pathlib import Path

    if path and path != "-":
        parent = Path(path).expanduser().absolute().parent
        if not parent.is_dir():
            raise UserError(f"{what} {path}: the directory {parent} does not exist (create it first)")
