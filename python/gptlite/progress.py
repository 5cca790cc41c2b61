"""The one progress display: a tqdm bar on a terminal, plain lines (or nothing) elsewhere.

Tokenizer training, pre-training and the evaluations all draw through
:class:`Progress`. On a terminal it is a tqdm bar (redrawn in place, rate
and ETA by tqdm). Written to a file or a pipe, redrawing would fill a log
with carriage returns, so there ``lines=True`` prints one plain line per
update that carries ``text`` (pre-training's log steps) and anything else
prints nothing unless the caller asked for the bar explicitly.
"""
from __future__ import annotations

import sys
import time


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_eta(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Progress of ``total`` units (None: unknown).

    ``enabled``: None = only on a terminal; True = always (a bar, or lines with
    ``lines=True`` when ``stream`` is not a terminal); False = silent.
    ``initial``: units already done (a resumed run), left out of the ETA.
    Extra keywords go to tqdm (``unit_scale``, ``unit_divisor``, ...).
    """

    def __init__(self, total, desc: str = "", unit: str = "it", enabled=None, stream=None, initial: int = 0,
                 lines: bool = False, **tqdm_kw):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.done, self.initial = total, desc, initial, initial
        self.t0 = time.perf_counter()
        self.enabled = _isatty(self.stream) if enabled is None else bool(enabled)
        self.lines = self.enabled and lines and not _isatty(self.stream)
        self._bar = None
        if self.enabled and not self.lines:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream,
                             mininterval=0.1, dynamic_ncols=True, leave=True, **tqdm_kw)

    def eta(self) -> float:
        """Seconds left at the rate since the start (0 when unknown)."""
        done = self.done - self.initial
        if not self.total or done <= 0:
            return 0.0
        return (time.perf_counter() - self.t0) / done * (self.total - self.done)

    def update(self, n: int = 1, *, done=None, text: str | None = None, keep: bool = False) -> None:
        """Advance by ``n`` (or to ``done``); ``text`` is the status after the
        counter; ``keep`` leaves this status on screen as its own line."""
        self.done = done if done is not None else self.done + n
        if not self.enabled:
            return
        if self.lines:
            if text is not None:
                total = f"/{self.total}" if self.total else ""
                self.stream.write(f"{self.desc} {self.done}{total} {text} | ETA {format_eta(self.eta())}\n")
                self.stream.flush()
            return
        bar = self._bar
        if text is not None:
            bar.set_postfix_str(text, refresh=False)
        bar.update(self.done - bar.n)
        if keep:
            bar.write(f"{self.desc} {self.done}/{self.total} {text or ''}".rstrip(), file=self.stream)
        final = self.total is not None and self.done >= self.total
        if final:
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
