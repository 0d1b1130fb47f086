#!/usr/bin/env bash
# The wgpu tier (issue #27): CRATE (forward, backward, AdamW), CRATE-α, CRATE-MAE and causal CRATE
# on burn's wgpu backend against the golden files. Without a GPU it runs on Mesa's lavapipe
# (Vulkan on the CPU), installed here from Debian's mesa-vulkan-drivers if no Vulkan driver is
# present. About 6 minutes to build and 3 to run on 2 cores, so it is not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "wgpu-check: installing Mesa's Vulkan drivers (lavapipe)" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --release --features wgpu --test wgpu
