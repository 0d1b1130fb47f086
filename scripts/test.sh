#!/usr/bin/env bash
# Every test: the Rust suite, then the Python package (built with maturin through pip into
# .venv, with numpy and pytest from PyPI) and its pytest suite. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
PY="$(command -v python3 || command -v python)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=23" numpy pytest
.venv/bin/python -m pip install --quiet ./python
.venv/bin/python -m pytest -q python/tests
