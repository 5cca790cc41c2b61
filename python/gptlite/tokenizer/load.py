"""Vocabulary files the way tiktoken finds them, so that both share one cache.

The cache directory is ``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``,
else ``$XDG_CACHE_HOME/gptlite/tiktoken`` (``~/.cache/...``); a file is named
by the sha1 of its URL, as tiktoken names it, so a file either one downloaded
serves the other. Every file is checked against its sha256 before use.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from gptlite.fileio import atomic_write_bytes


class DownloadError(RuntimeError, OSError):
    """A vocabulary file could not be fetched (offline, or a bad download): the
    RuntimeError it always was, and an OSError so the CLI reports it in one line."""


def cache_dir() -> Path:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptlite" / "tiktoken"


def cache_path(url: str) -> Path:
    """Where tiktoken (and gptlite) keep the file downloaded from ``url``."""
    return cache_dir() / hashlib.sha1(url.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_file(url: str, sha256: str) -> Path:
    """The path of a verified local copy of ``url``, downloading it if needed."""
    path = cache_path(url)
    if path.is_file() and _sha256_file(path) == sha256:
        return path
    name = url.rsplit("/", 1)[-1]
    offline_hint = (
        f"To use it offline, copy {name} (sha256 {sha256}) to {path} "
        f"(the cache directory is $TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else {cache_dir()}; "
        f"the file name is the sha1 of {url})."
    )
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as exc:
        stale = f" The cached copy {path} has the wrong sha256." if path.is_file() else ""
        raise DownloadError(f"could not download {name} from {url} ({exc}).{stale} {offline_hint}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DownloadError(f"{url}: downloaded {name} has sha256 {got}, expected {sha256}. {offline_hint}")
    atomic_write_bytes(path, data)
    return path
