#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader with cargo-fuzz (libFuzzer + AddressSanitizer, on the
# nightly toolchain): IDX, CIFAR, safetensors, torch .pth (zip + pickle), config JSON, token
# metadata, pictures, text corpora. Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET] [JOBS]
# (default 450 s × 8 targets = 1 hour of CPU). The corpus grows in fuzz/corpus/<target>/ (seeds
# committed); a crashing input lands in fuzz/artifacts/<target>/. Prints the CPU and one table row
# per target. A benchmark-style command, not a test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-450}"; JOBS="${2:-1}"
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
cargo +nightly fuzz build -O --debug-assertions
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%FT%TZ); $SECS s per target, $JOBS job(s)"
printf "| %-12s | %12s | %8s | %8s | %7s | %7s |\n" target executions coverage features corpus crashes
printf "|---|---|---|---|---|---|\n"
for t in idx cifar safetensors pth config_json token_meta image corpus; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="$(mktemp)"
  max=4096; [ "$t" = pth ] && max=131072
  cargo +nightly fuzz run -O --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$SECS" -max_len="$max" -jobs="$JOBS" -workers="$JOBS" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
  execs=$(grep -ho 'stat::number_of_executed_units: [0-9]*' "$log" fuzz-*.log 2>/dev/null | awk '{s+=$2} END {print s+0}')
  last=$(grep -h 'DONE\|pulse\|NEW' "$log" fuzz-*.log 2>/dev/null | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
  corp=$(ls "corpus/$t" | wc -l)
  crashes=$(ls "artifacts/$t" | wc -l)
  printf "| %-12s | %12s | %8s | %8s | %7s | %7s |\n" "$t" "$execs" "${cov:-?}" "${ft:-?}" "$corp" "$crashes"
  rm -f "$log" fuzz-*.log
done
