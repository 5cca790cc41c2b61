"""Shared test fixtures: where the shared data lives, and common oracles."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _origin_dir():
    """The checkout this one was cloned from, when that is a local folder."""
    import subprocess

    try:
        url = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    return Path(url).resolve() if url and Path(url).is_dir() else None


def _find_shared() -> Path:
    """$GPTLITE_SHARED, else the nearest ``shared/`` beside an ancestor of the
    checkout or, for a clone of a local checkout (in a scratch folder), of the
    checkout it was cloned from."""
    if os.environ.get("GPTLITE_SHARED"):
        return Path(os.environ["GPTLITE_SHARED"]).resolve()
    roots = [ROOT]
    origin = _origin_dir()
    if origin is not None:
        roots.append(origin)
    for root in roots:
        for parent in root.parents:
            if (parent / "shared" / "data" / "gpt2" / "encoder.json").exists():
                return (parent / "shared").resolve()
    return (ROOT.parent / "shared").resolve()


def child_env(env: dict | None = None) -> dict:
    """The environment for a child ``python -m gptlite``: it must import the
    same gptlite these tests import -- the installed wheel in CI (the source
    tree has no built ``_core`` there), the source tree in development."""
    import gptlite

    env = dict(os.environ if env is None else env)
    here = str(Path(gptlite.__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


SHARED = _find_shared()
DATA = SHARED / "data"

# OpenAI's vocabulary URLs -> the shared copies (a tiktoken cache names each file by
# the sha1 of its URL): what a user's cache holds after the first download
OPENAI_BLOB = "https://openaipublic.blob.core.windows.net"
TIKTOKEN_FILES = {
    f"{OPENAI_BLOB}/gpt-2/encodings/main/encoder.json": DATA / "gpt2" / "encoder.json",
    f"{OPENAI_BLOB}/gpt-2/encodings/main/vocab.bpe": DATA / "gpt2" / "vocab.bpe",
    f"{OPENAI_BLOB}/encodings/cl100k_base.tiktoken": DATA / "openai" / "cl100k_base.tiktoken",
    f"{OPENAI_BLOB}/encodings/o200k_base.tiktoken": DATA / "openai" / "o200k_base.tiktoken",
}


def fill_tiktoken_cache(directory) -> Path:
    """A tiktoken cache directory filled from the shared data (used by tiktoken and gptlite alike)."""
    import hashlib
    import shutil

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for url, src in TIKTOKEN_FILES.items():
        shutil.copy(src, d / hashlib.sha1(url.encode()).hexdigest())
    return d


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    """TIKTOKEN_CACHE_DIR pointing at a filled cache for a module's tests, restored after."""
    d = fill_tiktoken_cache(tmp_path_factory.mktemp("tiktoken_cache"))
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old

GPT2_DIR = DATA / "gpt2"
CORPORA = DATA / "corpora"


def pytest_configure(config):
    if not GPT2_DIR.joinpath("encoder.json").exists():
        raise pytest.UsageError(f"shared data not found at {SHARED} (set GPTLITE_SHARED)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    return GPT2_DIR


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    return CORPORA


# --- tokenizer fixtures (Rust BPE encoder) ------------------------------------------
def corpus_documents(corpora: Path = CORPORA) -> dict[str, list[str]]:
    """Every shared corpus split into documents: at blank lines; LAMBADA at JSON lines."""
    import json

    docs: dict[str, list[str]] = {}
    for path in sorted(corpora.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(corpora))
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                docs[rel] = [json.loads(line)["text"] for line in f if line.strip()]
        elif path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            docs[rel] = [d for d in text.split("\n\n") if d]
    return docs


@pytest.fixture(scope="session")
def corpus_docs() -> dict[str, list[str]]:
    return corpus_documents()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from gptlite.tokenizer.encoding import Tokenizer

    return Tokenizer.from_files(GPT2_DIR)


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """tiktoken's gpt2 encoding, built offline from the shared files."""
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(GPT2_DIR / "vocab.bpe"), str(GPT2_DIR / "encoder.json"))
    pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(name="gpt2", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="session")
def reference_gpt2():
    from reference_bpe import ReferenceEncoder

    return ReferenceEncoder.from_dir(GPT2_DIR)
