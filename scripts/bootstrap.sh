#!/usr/bin/env bash
# Installs what building gptlite needs on a Debian machine, idempotently:
# Rust (if missing) and, when crates.io is unreachable, Debian's crate packages.
set -euo pipefail
need_apt=()
if ! command -v cargo >/dev/null 2>&1; then need_apt+=(cargo rustc); fi
if ! timeout 5 bash -c '</dev/tcp/index.crates.io/443' 2>/dev/null; then
  if ! ls -d /usr/share/cargo/registry/pyo3-0.17* >/dev/null 2>&1 || ! ls -d /usr/share/cargo/registry/regex-syntax-0.6* >/dev/null 2>&1; then
    need_apt+=(librust-pyo3-dev librust-fancy-regex-dev librust-rayon-dev librust-serde-json-dev librust-regex-syntax-dev)
  fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -m pip install -q --upgrade "maturin>=1.4,<2"
