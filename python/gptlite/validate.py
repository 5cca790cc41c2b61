"""Type and range checks for what gptlite reads back from files: a hand-edited
or corrupted value is a one-line ValueError naming the file and field, found
when the file is loaded -- not NaN logits, negative learning rates or a crash
hours into a run."""

from __future__ import annotations

import math

import numpy as np


class ConfigError(ValueError):
    """A config value of the wrong type or out of range."""


def integer(value, where: str, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    v = int(value)
    if lo is not None and v < lo:
        raise ConfigError(f"{where}: {key} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{where}: {key} must be <= {hi}, got {v}")
    return v


def positive_number(value, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{where}: {key} must be a finite number > 0, got {value!r}")
    return v


def token_id(value, where: str, what: str = "id") -> int:
    """An id handed to the Rust core (u32): anything else is a ValueError, not
    PyO3's OverflowError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {what} {value!r} is not an integer")
    v = int(value)
    if not 0 <= v < 2**32 - 1:
        raise ValueError(f"{where}: {what} {v} is out of range (0 <= id < 4294967295)")
    return v


def train_state(state, ostate, ckpt, max_steps: int) -> None:
    """A trainer_state.json about to be resumed from."""
    where = f"checkpoint {ckpt}: trainer_state.json"
    from gptlite.training.pretrain import TrainingError

    def bad(msg):
        return TrainingError(f"{where}: {msg}")

    if not isinstance(state, dict):
        raise bad("not a JSON object")
    try:
        step = integer(state.get("step"), where, "step", lo=0, hi=max_steps)
        t = integer(state.get("adamw_t"), where, "adamw_t", lo=0)
        integer(state.get("tokens_seen", 0), where, "tokens_seen", lo=0)
    except ConfigError as exc:
        raise TrainingError(str(exc)) from None
    if t > step:  # skipped non-finite steps make t smaller, never larger
        raise bad(f"adamw_t={t} is larger than step={step}")
    data = state.get("data")
    if not (isinstance(data, dict) and all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool)
                                           and data.get(k) >= 0 for k in ("seed", "position"))):
        raise bad(f"field 'data' must be {{\"seed\": int >= 0, \"position\": int >= 0}}, got {data!r}")
    val = state.get("val_loss")
    if val is not None and not isinstance(val, (int, float)):
        raise bad(f"val_loss must be a number or null, got {val!r}")


def shard_ids(train, val, vocab: int, data_dir) -> None:
    """Out-of-vocabulary ids in a token shard, found before the first step
    rather than when a batch happens to reach them. Uses the max id that
    `prepare` recorded, scanning the shard when meta.json predates it."""
    for data in (train, val):
        if data is None or len(data) == 0:
            continue
        info = data.meta["splits"][data.split]
        mx = info.get("max_id")
        if mx is None:
            mx = max(int(data.tokens[i:i + (1 << 24)].max()) for i in range(0, len(data), 1 << 24))
        elif isinstance(mx, bool) or not isinstance(mx, int):
            raise ValueError(f"{data_dir}/meta.json: splits.{data.split}.max_id must be an integer, got {mx!r}")
        if mx >= vocab:
            raise ValueError(f"{data_dir}/{info['file']}: holds token id {mx}, outside the model's vocabulary of {vocab}"
                             f" (prepared with another tokenizer?)")
