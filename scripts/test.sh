#!/usr/bin/env bash
# The whole test suite: the Rust core's unit tests, then the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/cargo-test.sh
python3 -m pytest -q tests "$@"
