#!/usr/bin/env bash
# `cargo test` with the same crate source the wheel build chose.
set -euo pipefail
cd "$(dirname "$0")/.."
home="$(cd build_backend && python3 -c 'import gptlite_build as b; b.configure_cargo_source(); import os; print(os.environ.get("CARGO_HOME",""))' 2>/dev/null)"
if [ -n "$home" ]; then export CARGO_HOME="$home"; fi
# rustup's proxies live in ~/.cargo/bin; keep them reachable under a private CARGO_HOME.
export PATH="$PATH:$HOME/.cargo/bin"
exec cargo test --release "$@"
