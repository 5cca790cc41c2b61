"""PEP 517 backend: maturin, plus a choice of where cargo gets its crates.

On a machine that reaches crates.io nothing changes. On one that does not
(Debian build hosts behind a registry-only firewall), cargo is pointed at
Debian's packaged crates (``apt-get install librust-pyo3-dev ...`` puts them in
/usr/share/cargo/registry) through a private CARGO_HOME, so no cargo config is
ever committed to the repository or written into the user's own ~/.cargo.

Override with GPTLITE_CARGO_SOURCE=crates-io|debian.
"""
import os
import socket
import sys
from pathlib import Path

import maturin

DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")
DEBIAN_PACKAGES = "librust-pyo3-dev librust-fancy-regex-dev librust-rayon-dev librust-serde-json-dev librust-regex-syntax-dev"


def _crates_io_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("index.crates.io", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _debian_cargo_home() -> Path:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptlite" / "cargo-debian"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    text = (
        '[source.crates-io]\nreplace-with = "debian"\n\n'
        f'[source.debian]\ndirectory = "{DEBIAN_REGISTRY}"\n\n'
        "[net]\noffline = true\n"
    )
    if not config.exists() or config.read_text() != text:
        tmp = config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, config)
    return home


_chosen = None


def configure_cargo_source() -> str:
    global _chosen
    if _chosen is not None:
        return _chosen
    choice = os.environ.get("GPTLITE_CARGO_SOURCE", "").strip().lower()
    if not choice:
        choice = "crates-io" if _crates_io_reachable() else "debian"
    if choice == "debian":
        if not any(DEBIAN_REGISTRY.glob("pyo3-0.17*")):
            raise RuntimeError(
                "gptlite: crates.io is unreachable and Debian's Rust crates are not installed; "
                f"run: apt-get install -y {DEBIAN_PACKAGES}"
            )
        os.environ["CARGO_HOME"] = str(_debian_cargo_home())
    elif choice != "crates-io":
        raise RuntimeError(f"gptlite: GPTLITE_CARGO_SOURCE must be 'crates-io' or 'debian', not {choice!r}")
    print(f"gptlite build: cargo crates from {choice}", file=sys.stderr)
    _chosen = choice
    return choice


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    configure_cargo_source()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    configure_cargo_source()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    return maturin.build_sdist(sdist_directory, config_settings)


get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_sdist = maturin.get_requires_for_build_sdist
get_requires_for_build_editable = getattr(maturin, "get_requires_for_build_editable", maturin.get_requires_for_build_wheel)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    configure_cargo_source()
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    configure_cargo_source()
    hook = getattr(maturin, "prepare_metadata_for_build_editable", maturin.prepare_metadata_for_build_wheel)
    return hook(metadata_directory, config_settings)

if __name__ == "__main__":  # used by scripts/cargo-env.sh for `cargo test`
    configure_cargo_source()
    print(os.environ.get("CARGO_HOME", ""))
