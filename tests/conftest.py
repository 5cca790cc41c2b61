"""Shared test fixtures: where the shared data lives, and common oracles."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GPTLITE_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
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
