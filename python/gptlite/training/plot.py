"""Loss curves as PNG, drawn on a NumPy canvas and encoded with zlib + struct.

No plotting library: runtime dependencies are NumPy only. The chart has axes,
tick labels in a built-in 5x7 pixel font, a train curve and a validation curve
(with dots) and a legend — enough to see a run converge or diverge.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from gptlite.fileio import atomic_write_bytes

# 5x7 glyphs: 7 rows of 5 columns, '#' = ink.
_FONT_SRC = {
    '0': ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    '1': "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    '2': ".###.|#...#|....#|...#.|..#..|.#...|#####",
    '3': "#####|...#.|..#..|...#.|....#|#...#|.###.",
    '4': "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    '5': "#####|#....|####.|....#|....#|#...#|.###.",
    '6': "..##.|.#...|#....|####.|#...#|#...#|.###.",
    '7': "#####|....#|...#.|..#..|.#...|.#...|.#...",
    '8': ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    '9': ".###.|#...#|#...#|.####|....#|...#.|.##..",
    '.': ".....|.....|.....|.....|.....|.##..|.##..",
    '-': ".....|.....|.....|.###.|.....|.....|.....",
    '+': ".....|..#..|..#..|#####|..#..|..#..|.....",
    'e': ".....|.....|.###.|#...#|#####|#....|.###.",
    'k': "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",
    'M': "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    's': ".....|.....|.####|#....|.###.|....#|####.",
    't': ".#...|.#...|####.|.#...|.#...|.#..#|..##.",
    'p': ".....|.....|####.|#...#|####.|#....|#....",
    'l': ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    'o': ".....|.....|.###.|#...#|#...#|#...#|.###.",
    'r': ".....|.....|#.##.|##..#|#....|#....|#....",
    'a': ".....|.....|.###.|....#|.####|#...#|.####",
    'i': "..#..|.....|.##..|..#..|..#..|..#..|.###.",
    'n': ".....|.....|#.##.|##..#|#...#|#...#|#...#",
    'v': ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    'd': "....#|....#|.##.#|#..##|#...#|#...#|.####",
    '(': "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ')': ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    '/': ".....|....#|...#.|..#..|.#...|#....|.....",
    'b': "#....|#....|#.##.|##..#|#...#|#...#|####.",
    'c': ".....|.....|.###.|#....|#....|#...#|.###.",
    'u': ".....|.....|#...#|#...#|#...#|#..##|.##.#",
    'g': ".....|.####|#...#|#...#|.####|....#|.###.",
    'x': ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    ' ': ".....|.....|.....|.....|.....|.....|.....",
    '_': ".....|.....|.....|.....|.....|.....|#####",
}
_FONT = {c: np.array([[ch == "#" for ch in row] for row in s.split("|")]) for c, s in _FONT_SRC.items()}
_FALLBACK = np.ones((7, 5), dtype=bool)

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (225, 225, 225)
BLUE = (31, 119, 180)
ORANGE = (230, 110, 20)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes for an (H, W, 3) uint8 image (8-bit RGB, no interlace)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png wants an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from PNG bytes (used by tests)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


class Canvas:
    def __init__(self, width: int, height: int):
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)
        self.h, self.w = height, width

    def dot(self, x: float, y: float, color, r: int = 1) -> None:
        xi, yi = int(round(x)), int(round(y))
        self.img[max(0, yi - r):max(0, yi + r + 1), max(0, xi - r):max(0, xi + r + 1)] = color

    def line(self, x0, y0, x1, y1, color, width: int = 1) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, n)).astype(int)
        ys = np.rint(np.linspace(y0, y1, n)).astype(int)
        for d in range(-(width // 2), width - width // 2):
            for a, b in ((xs, ys + d), (xs + d, ys)):
                ok = (a >= 0) & (a < self.w) & (b >= 0) & (b < self.h)
                self.img[b[ok], a[ok]] = color

    def polyline(self, xs, ys, color, width: int = 2) -> None:
        for i in range(len(xs) - 1):
            self.line(xs[i], ys[i], xs[i + 1], ys[i + 1], color, width)

    def text(self, x: int, y: int, s: str, color=BLACK, scale: int = 1, anchor: str = "left") -> None:
        wpx = len(s) * 6 * scale
        if anchor == "right":
            x -= wpx
        elif anchor == "center":
            x -= wpx // 2
        for i, ch in enumerate(s):
            g = _FONT.get(ch, _FONT.get(ch.lower(), _FALLBACK))
            g = np.kron(g, np.ones((scale, scale), dtype=bool))
            gx, gy = x + i * 6 * scale, y
            h, w = g.shape
            ys, xs = np.nonzero(g)
            ys, xs = ys + gy, xs + gx
            ok = (xs >= 0) & (xs < self.w) & (ys >= 0) & (ys < self.h)
            self.img[ys[ok], xs[ok]] = color


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick positions covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def line_chart(series: list[tuple[str, list, list, tuple]], xlabel: str = "step", ylabel: str = "loss",
               width: int = 800, height: int = 500) -> np.ndarray:
    """Draw ``[(name, xs, ys, color)]`` on shared axes; returns the RGB image."""
    c = Canvas(width, height)
    left, right, top, bottom = 70, 20, 30, 50
    pw, ph = width - left - right, height - top - bottom
    allx = [x for _, xs, _, _ in series for x in xs]
    ally = [y for _, _, ys, _ in series for y in ys if math.isfinite(y)]
    if not allx or not ally:
        raise ValueError("nothing to plot: no finite points")
    x0, x1 = min(allx), max(allx)
    y0, y1 = min(ally), max(ally)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    if x1 == x0:
        x1 = x0 + 1

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    for t in _ticks(y0, y1):
        yy = py(t)
        c.line(left, yy, left + pw, yy, GREY)
        c.text(left - 6, int(yy) - 3, _fmt(t), anchor="right")
    for t in _ticks(x0, x1, 6):
        xx = px(t)
        c.line(xx, top, xx, top + ph, GREY)
        c.text(int(xx), top + ph + 8, _fmt(t), anchor="center")
    c.line(left, top, left, top + ph, BLACK)
    c.line(left, top + ph, left + pw, top + ph, BLACK)
    c.text(left + pw // 2, height - 18, xlabel, scale=2, anchor="center")
    c.text(4, top - 22, ylabel, scale=2)
    for i, (name, xs, ys, color) in enumerate(series):
        pts = [(px(x), py(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(pts) > 1:
            c.polyline([p[0] for p in pts], [p[1] for p in pts], color, width=2)
        if len(pts) <= 60 or name.startswith("val"):
            for p in pts:
                c.dot(*p, color, r=2)
        lx, ly = left + pw - 150, top + 10 + 20 * i
        c.line(lx, ly + 6, lx + 30, ly + 6, color, width=3)
        c.text(lx + 38, ly, name, scale=2)
    return c.img


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


def plot_run(run_dir, out_path=None, width: int = 800, height: int = 500) -> Path:
    """Draw train/val loss of a run directory to ``out_path`` (default RUN_DIR/loss.png)."""
    recs = read_metrics(run_dir)
    tr = [(r["step"], r["loss"]) for r in recs if isinstance(r.get("loss"), (int, float)) and "event" not in r]
    va = [(r["step"], r["val_loss"]) for r in recs if isinstance(r.get("val_loss"), (int, float))]
    series = []
    if tr:
        series.append(("train", [s for s, _ in tr], [v for _, v in tr], BLUE))
    if va:
        series.append(("val", [s for s, _ in va], [v for _, v in va], ORANGE))
    if not series:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no loss values yet")
    img = line_chart(series, "step", "loss (nats/token)", width, height)
    out = Path(out_path) if out_path else Path(run_dir) / "loss.png"
    atomic_write_bytes(out, encode_png(img))
    return out
