#!/usr/bin/env bash
# whitebox vs PyTorch in one run on this machine, 2 threads each. Times (median of --steps after
# warm-up) a training step (forward, backward, AdamW) and an inference forward of two CRATE
# classifiers, and a causal-CRATE training step at `lm train`'s char-level size. PyTorch runs in
# three forms: the official computation (bench/crate_torch.py: 3-GEMM ISTA, f32), whitebox's
# algebra in PyTorch (one-GEMM ISTA + scaled_dot_product_attention, f32) and the official form
# under autocast bf16, against whitebox in f32 and (where the CPU has AVX512-BF16) in
# `--precision bf16`; the LM row runs crate-lm's crate_overcomplete.py computation
# (bench/lm_torch.py, f32 and autocast bf16). Every PyTorch model is checked against the golden
# outputs before timing. Each side runs ROUNDS times (default 3), alternating; the tables show
# medians and max RSS. Not run by CI.
# Usage: bash bench/compare.sh [steps]    (creates .bench-venv with torch from PyPI on first use)
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
PY="$VENV/bin/python"
FORMS="official algebra bf16"
timed() { # out-prefix cmd...: run under /usr/bin/time -v, JSON to $TMP/<prefix>.json
  local out=$1; shift
  # a failed run is reported and left out of the medians (a shared machine may kill one)
  /usr/bin/time -v "$@" > "$TMP/$out.json" 2> "$TMP/$out.time" || { echo "compare.sh: failed: $* (see $TMP/$out.time)" >&2; rm -f "$TMP/$out.json"; }
}
row() { # name config batch
  local name=$1 cfg=$2 bs=$3
  # alternate the sides ROUNDS times so drifts of a shared machine hit all alike; medians are reported
  for r in $(seq "$ROUNDS"); do
    timed "wb$r" ./target/release/whitebox bench --config "$cfg" --batch-size "$bs" --steps "$STEPS" --json
    if [ -n "$WB_BF16" ]; then
      timed "wbbf16$r" ./target/release/whitebox bench --config "$cfg" --batch-size "$bs" --steps "$STEPS" --json --precision bf16
    fi
    for f in $FORMS; do
      timed "pt_$f$r" "$PY" bench/crate_torch.py --config "$cfg" --batch-size "$bs" --steps "$STEPS" --threads 2 \
          --golden tests/golden/crate_A.safetensors --form "$f"
    done
  done
  python3 - "$name" "$bs" "$TMP" "$ROUNDS" "$FORMS" <<'PY'
import json, re, statistics, sys
name, bs, tmp, rounds, forms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split()
import os
def ok(p):  # the rounds whose run succeeded
    return [r for r in range(1, rounds + 1) if os.path.exists(f"{tmp}/{p}{r}.json")]
def side(p, key):
    js = [json.loads(open(f"{tmp}/{p}{r}.json").read().strip().splitlines()[-1]) for r in ok(p)]
    return statistics.median(j[key] for j in js)
def rss(p):
    return max(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{tmp}/{p}{r}.time").read()).group(1)) / 1024
               for r in ok(p))
def cpu(p):  # median CPU % of /usr/bin/time over the rounds
    return statistics.median(int(re.search(r"Percent of CPU this job got: (\d+)%", open(f"{tmp}/{p}{r}.time").read()).group(1))
                             for r in ok(p))
for key, what in (("train_img_s", "train"), ("infer_img_s", "infer")):
    w = side("wb", key)
    pts = [side(f"pt_{f}", key) for f in forms]
    cells = " | ".join(f"{p:.1f} | {w / p:.2f}" for p in pts)
    # whitebox --precision bf16 against PyTorch autocast bf16 (the last form)
    bf = f"{side('wbbf16', key):.1f} | {side('wbbf16', key) / pts[-1]:.2f}" if ok("wbbf16") else "– | –"
    print(f"{what}| {name} | {bs} | {w:.1f} | {cells} | {bf} | {rss('wb'):.0f} | {rss('pt_official'):.0f} | {cpu('wb')} % |")
PY
}
lm_row() { # LM training step: whitebox bench --task lm vs bench/lm_torch.py (f32, bf16)
  for r in $(seq "$ROUNDS"); do
    timed "lwb$r" ./target/release/whitebox bench --task lm --batch-size 16 --context 64 --steps $((STEPS * 4)) --warmup 3 --json
    timed "lpt_f32$r" "$PY" bench/lm_torch.py --batch-size 16 --context 64 --steps $((STEPS * 4)) --threads 2 \
        --golden tests/golden/crate_lm_overcomplete.safetensors
    timed "lpt_bf16$r" "$PY" bench/lm_torch.py --batch-size 16 --context 64 --steps $((STEPS * 4)) --threads 2 --bf16
  done
  python3 - "$TMP" "$ROUNDS" <<'PY'
import json, re, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
import os
def ok(p):
    return [r for r in range(1, rounds + 1) if os.path.exists(f"{tmp}/{p}{r}.json")]
def side(p):
    return statistics.median(json.loads(open(f"{tmp}/{p}{r}.json").read().strip().splitlines()[-1])["train_tok_s"]
                             for r in ok(p))
def cpu(p):
    return statistics.median(int(re.search(r"Percent of CPU this job got: (\d+)%", open(f"{tmp}/{p}{r}.time").read()).group(1))
                             for r in ok(p))
w, f, b = side("lwb"), side("lpt_f32"), side("lpt_bf16")
print(f"| causal CRATE (crate-lm-overcomplete, 4 layers, 4 heads, d 128, context 64) | 16 | {w:.0f} | {f:.0f} | {w / f:.2f} | {b:.0f} | {w / b:.2f} | {cpu('lwb')} % |")
PY
}
# whitebox's bf16 kernel needs AVX512-BF16; without it the bf16 column shows –
WB_BF16=$(grep -qm1 'avx512_bf16' /proc/cpuinfo && echo 1 || true)
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|amx_tile|amx_bf16|amx_int8' | xargs)
echo "rounds: $ROUNDS alternating, steps: $STEPS; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); ISA: $FLAGS; $(date -u '+%F %H:%M UTC'); torch $("$PY" -c 'import torch; print(torch.__version__)')"
ROWS=$(row "fmnist default (28², patch 7, d 96, depth 6)" "$TMP/fmnist.json" 128; row "d 384, depth 12, 6 heads, 32², patch 4 (65 tokens)" "$TMP/cifar_d384.json" 64)
for what in train infer; do
  echo
  echo "$what (images/s; ratio = whitebox / PyTorch):"
  echo "| model | batch | whitebox f32 | PyTorch official f32 | ratio | PyTorch our algebra + SDPA f32 | ratio | PyTorch autocast bf16 | ratio | whitebox bf16 | ratio to autocast bf16 | whitebox peak RSS MiB | PyTorch official peak RSS MiB | whitebox CPU (/usr/bin/time) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  echo "$ROWS" | sed -n "s/^$what|/|/p"
done
echo
echo "causal LM training step (tokens/s; whitebox bench --task lm = the step of lm train):"
echo "| model | batch | whitebox f32 | PyTorch crate-lm f32 | ratio | PyTorch crate-lm autocast bf16 | ratio | whitebox CPU (/usr/bin/time) |"
echo "|---|---|---|---|---|---|---|---|"
lm_row
