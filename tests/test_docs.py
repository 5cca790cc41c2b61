"""Every ```python block in README.md and docs/*.md runs as written.

Each file's blocks run in order in one namespace (a later block may use an
earlier one's names), in a fresh temporary directory. A block that needs
something the test machine cannot have (the model hub, a GPU) is preceded by
``<!-- no-test: reason -->`` on the line before its fence; the reason is
required, and the marker is meant to be rare.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?:<!--\s*no-test:(?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def blocks(path: Path):
    """(line, code, skip reason or None) for each python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    for m in _FENCE.finditer(text):
        why = m.group("why")
        if why is not None and not why.strip():
            raise ValueError(f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: no-test marker without a reason")
        yield text.count("\n", 0, m.start("code")) + 1, m.group("code"), why and why.strip()


CASES = [p for p in DOCS if any(True for _ in blocks(p))]


def test_the_docs_have_python_blocks():
    assert any(p.name == "README.md" for p in CASES)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path, monkeypatch, capsys):

    from conftest import fill_tiktoken_cache

    cache = fill_tiktoken_cache(tmp_path / "tiktoken_cache")  # what a user's cache holds after the first download
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__docs__"}
    ran = 0
    for line, code, why in blocks(path):
        if why:
            continue
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), ns)
        except Exception as exc:
            raise AssertionError(f"{path.name}, block at line {line} failed: {type(exc).__name__}: {exc}") from exc
        ran += 1
    assert ran, f"{path.name}: every block is marked no-test"
