#!/usr/bin/env bash
# whitebox vs the official PyTorch CRATE computation, in one run on this machine.
# Times (median of --steps after warm-up) a training step (forward, backward, AdamW) and an
# inference forward for two models, with 2 threads each, and prints a table. Not run by CI.
# Each side runs ROUNDS times (default 3), alternating; the table shows median img/s, max RSS.
# Usage: bash bench/compare.sh [steps]    (creates .bench-venv with torch on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5}
ROUNDS=${ROUNDS:-3}
VENV=${BENCH_VENV:-.bench-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, safetensors" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch safetensors numpy
fi
cargo build --release --quiet
TMP=$(mktemp -d)
cat > "$TMP/cifar_d384.json" <<'JSON'
{"image_size": 32, "patch_size": 4, "num_classes": 10, "dim": 384, "depth": 12, "heads": 6, "dim_head": 64, "channels": 3}
JSON
./target/release/whitebox info --config fmnist | sed -n '/^{/,/^}/p' > "$TMP/fmnist.json"
export OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2
row() { # name config batch
  local name=$1 cfg=$2 bs=$3
  # alternate the two sides ROUNDS times so drifts of a shared VM hit both alike; medians are reported
  for r in $(seq "$ROUNDS"); do
    /usr/bin/time -v ./target/release/whitebox bench --config "$cfg" --batch-size "$bs" --steps "$STEPS" --json > "$TMP/wb$r.json" 2> "$TMP/wb$r.time"
    /usr/bin/time -v "$VENV/bin/python" bench/crate_torch.py --config "$cfg" --batch-size "$bs" --steps "$STEPS" --threads 2 \
        --golden tests/golden/crate_A.safetensors > "$TMP/pt$r.json" 2> "$TMP/pt$r.time"
  done
  python3 - "$name" "$bs" "$TMP" "$ROUNDS" <<'PY'
import json, re, statistics, sys
name, bs, tmp, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def side(p):
    js = [json.loads(open(f"{tmp}/{p}{r}.json").read().strip().splitlines()[-1]) for r in range(1, rounds + 1)]
    rss = [int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{tmp}/{p}{r}.time").read()).group(1)) / 1024
           for r in range(1, rounds + 1)]
    return (statistics.median(j["train_img_s"] for j in js), statistics.median(j["infer_img_s"] for j in js), max(rss))
(wt, wi, wr), (pt, pi, pr) = side("wb"), side("pt")
print(f"| {name} | {bs} | {wt:.1f} | {pt:.1f} | {wt/pt:.2f} | {wi:.1f} | {pi:.1f} | {wi/pi:.2f} | {wr:.0f} | {pr:.0f} |")
open(f"{tmp}/last_ratio", "w").write(f"{wt/pt:.2f}")
PY
}
echo "rounds: $ROUNDS alternating, steps: $STEPS; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
echo "| model | batch | whitebox train img/s | PyTorch train img/s | train ratio | whitebox infer img/s | PyTorch infer img/s | infer ratio | whitebox peak RSS MiB | PyTorch peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
row "fmnist default (28², patch 7, d 96, depth 6)" "$TMP/fmnist.json" 128
row "d 384, depth 12, 6 heads, 32², patch 4 (65 tokens)" "$TMP/cifar_d384.json" 64
echo "train ratio (d 384 model): $(cat "$TMP/last_ratio")"
