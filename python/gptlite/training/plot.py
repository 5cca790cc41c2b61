"""Loss curves of a training run as PNG, drawn with matplotlib (the ``[plot]`` extra).

Two panels: loss against optimizer steps and against tokens seen, each with
the train curve and the validation points. matplotlib is imported only here,
when a plot is asked for, so training itself does not need it.
"""
from __future__ import annotations

import json
from pathlib import Path

from gptlite.fileio import atomic_open

PLOT_INSTALL = "pip install 'gptlite[plot]'"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {PLOT_INSTALL}") from None
    return plt


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it a `gptlite train` run directory?")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{lineno}: invalid JSON line") from None
    return out


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def loss_series(recs: list[dict]) -> dict:
    """{"train": [(step, tokens, loss)], "val": [(step, tokens, val_loss)]} from metrics records."""
    train = [(r["step"], r.get("tokens"), r["loss"]) for r in recs if _num(r.get("loss")) and "event" not in r]
    val = [(r["step"], r.get("tokens"), r["val_loss"]) for r in recs if _num(r.get("val_loss"))]
    return {"train": train, "val": val}


def loss_figure(series: dict, title: str = "training loss"):
    """A matplotlib Figure: loss vs steps (left) and vs tokens (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100, constrained_layout=True)
    fig.suptitle(title, fontsize=14)
    for ax, col, xlabel in ((axes[0], 0, "optimizer step"), (axes[1], 1, "tokens seen")):
        for name, style in (("train", dict(lw=1.5)), ("val", dict(marker="o", ms=5, lw=1.2))):
            pts = [(p[col], p[2]) for p in series[name] if p[col] is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], label=name, **style)
        ax.set_xlabel(xlabel, fontsize=12)
        ax.set_ylabel("loss (nats/token)", fontsize=12)
        ax.set_title(f"loss vs {xlabel.split()[-1] if col == 0 else 'tokens'}", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=10)
    return fig


def plot_run(run_dir, out_path=None) -> Path:
    """Draw train/val loss of a run directory to ``out_path`` (default RUN_DIR/loss.png)."""
    series = loss_series(read_metrics(run_dir))
    if not series["train"] and not series["val"]:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no loss values yet")
    out = Path(out_path) if out_path else Path(run_dir) / "loss.png"
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory (create it first)")
    fig = loss_figure(series, title=f"training loss: {Path(run_dir).resolve().name}")
    try:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        _pyplot().close(fig)
    return out
