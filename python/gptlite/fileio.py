"""Atomic file writes: a reader never sees a half-written file.

Write to a temporary file in the same directory, fsync, then rename over the
target; an interrupted write leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


FILE_MODE = 0o666
DIR_MODE = 0o777


def current_umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(directory: Path, names=None) -> None:
    """Give a temp directory (0700, files 0600) the modes an ordinary write would have.

    ``names`` limits the change to the files we wrote (copies keep their own modes).
    """
    mask = current_umask()
    directory = Path(directory)
    paths = directory.iterdir() if names is None else (directory / n for n in names)
    for p in paths:
        if p.is_file() and not p.is_symlink():
            os.chmod(p, FILE_MODE & ~mask)
    os.chmod(directory, DIR_MODE & ~mask)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary sibling of ``path``; on clean exit it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            # mkstemp creates 0600; the result should look like an ordinary write
            os.fchmod(f.fileno(), FILE_MODE & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_utf8(path) -> str:
    """The whole text of ``path``; invalid UTF-8 raises ValueError naming the file and byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: not valid UTF-8 text (byte {exc.start}, line {line})") from None


def iter_utf8(raw, block: int, name: str):
    """The text of the binary stream ``raw`` in pieces of at most ``block``
    characters; invalid UTF-8 is a ValueError with the byte's offset in the
    stream (not inside some read buffer) and its line."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    pos = 0  # bytes handed to the decoder so far
    lines = 1
    while True:
        data = raw.read(block)
        pending = len(dec.getstate()[0])  # an incomplete character carried over from the last block
        try:
            text = dec.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            at = pos - pending + exc.start
            raise ValueError(f"{name}: not valid UTF-8 ({exc.reason} at byte {at}, line {lines + exc.object[:exc.start].count(10)})") from None
        pos += len(data)
        if text:
            lines += text.count("\n")
            yield text
        if not data:
            return


@contextlib.contextmanager
def staged_dir(path):
    """A fresh temporary sibling of directory ``path`` to build its new contents in.

    The caller finishes with ``publish_modes`` and ``swap_dir(tmp, path, ...)``
    inside the block; whatever is still there when the block ends (an error,
    Ctrl-C) is removed, so an interrupted write leaves ``path`` as it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def swap_dir(new, path, replaced=None) -> None:
    """Make the fully written directory ``new`` become ``path``.

    With ``replaced`` (a set of names) an existing ``path``'s other entries
    are carried over into ``new`` first (logs, plots, files of other formats;
    not leftovers of interrupted writes). The old directory is renamed away,
    ``new`` renamed in, and only then the old one removed: an interruption
    leaves either the old directory or the new one, never a mix."""
    new, path = Path(new), Path(path)
    if not path.exists():
        os.replace(new, path)
        return
    if replaced is not None:
        for entry in path.iterdir():
            if entry.name in replaced or (new / entry.name).exists():
                continue
            if entry.name.startswith(".") and entry.name.endswith((".tmp", ".old")):
                continue
            dest = new / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, dest, symlinks=True)
            else:
                shutil.copy2(entry, dest, follow_symlinks=False)
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rmdir(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the previous directory back
        raise
    shutil.rmtree(old, ignore_errors=True)
