"""Timing two programs against each other in one process (shared by the benches).

Rounds alternate between the two sides, so drift in the machine's speed hits
both alike, and each timed call starts after a short pause: OpenMP and
OpenBLAS worker threads keep spinning for a while after their work and would
otherwise steal cores from whichever side runs next.
"""
from __future__ import annotations

import statistics
import time

PAUSE_S = 0.3


def settle(pause: bool = True) -> None:
    if pause:
        time.sleep(PAUSE_S)


def alternate(ours, theirs, rounds: int, pause: bool = True) -> tuple[float, float]:
    """Median seconds of ``ours()`` and of ``theirs(r)`` (r = round index)
    over ``rounds`` alternating rounds."""
    t_ours, t_theirs = [], []
    for r in range(rounds):
        settle(pause)
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
        settle(pause)
        t0 = time.perf_counter()
        theirs(r)
        t_theirs.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_theirs)


def report(res: dict, out=None, echo: bool = True) -> int:
    """Print a bench's results as JSON (when ``echo``) and write them atomically to ``out``."""
    import json

    text = json.dumps(res, indent=2, default=float)
    if echo:
        print(text)
    if out:
        from gptlite.fileio import atomic_write_text

        atomic_write_text(out, text + "\n")
    return 0
