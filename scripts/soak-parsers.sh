#!/usr/bin/env bash
# Soak of every parser on generated hostile input (issue #16). Not part of `make test`.
#
# Runs each property test of the hostile-input suite for MINUTES minutes with fresh
# random seeds (the same generators `cargo test` runs a bounded number of times),
# one parser after another, and prints a table: cases, cases/s, failures, slowest
# case. A failure prints the shrunk input; put it in
# crates/bitnet-torch/src/checkpoint/hostile/regressions.rs (or tests/hostile_pipeline.rs)
# and fix the parser.
#
#   scripts/soak-parsers.sh [MINUTES] [NAME...]   # default 10 min per parser, all parsers
#
# NAMEs pick properties by substring (`gguf`, `tokenizer`, `pipeline`, ...).
#
# Debug build (the test profile; dependencies are built with opt-level 2), one test
# thread, so the figures are per core. Record the load average with them.
set -euo pipefail
MINUTES=${1:-10}
shift || true
PICK=("$@")
picked() { [ ${#PICK[@]} -eq 0 ] && return 0; for p in "${PICK[@]}"; do [[ "$1" == *"$p"* ]] && return 0; done; return 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=$(awk "BEGIN { printf \"%d\", $MINUTES * 60 }")
[ "$SECS" -ge 1 ] || { echo "error: MINUTES must be at least 1/60" >&2; exit 2; }
LOG=$(mktemp "${TMPDIR:-/tmp}/soak-parsers.XXXXXX")
trap 'rm -f "$LOG"' EXIT

echo "soak: $MINUTES min per parser, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# Build first, so compile time is not soak time.
cargo test -p bitnet-torch --lib hostile_ --no-run -q
cargo test -p bitnet-pipeline --test hostile_pipeline --no-run -q

TORCH_PROPS=(
  hostile_pt_mutations_never_load_changed_weights
  hostile_pt_generated_archives
  hostile_pickle_streams
  hostile_safetensors_headers
  hostile_safetensors_mutations
  hostile_gguf_files
  hostile_config_json
  hostile_tokenizer_json
)
fail=0
for t in "${TORCH_PROPS[@]}"; do
  picked "$t" || continue
  HOSTILE_SOAK_SECS=$SECS cargo test -q -p bitnet-torch --lib "$t" -- --exact "checkpoint::hostile::props::$t" --nocapture --test-threads=1 2>&1 \
    | tee -a "$LOG" | grep -E "^soak:" || fail=1
done
if picked hostile_pipeline_yaml; then
  HOSTILE_SOAK_SECS=$SECS cargo test -q -p bitnet-pipeline --test hostile_pipeline hostile_pipeline_yaml -- --nocapture --test-threads=1 2>&1 \
    | tee -a "$LOG" | grep -E "^soak:" || fail=1
fi

echo
echo "| parser | cases | cases/s | failures | slowest case (ms) |"
echo "|---|---|---|---|---|"
grep -E "^soak: [a-z_]+ cases=" "$LOG" | sed -E 's/^soak: ([a-z_]+) cases=([0-9]+) secs=[0-9.]+ cases_per_s=([0-9.]+) failures=([0-9]+) slowest_case_ms=([0-9.]+)/| \1 | \2 | \3 | \4 | \5 |/'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if grep -q "FAILED" "$LOG" || [ "$fail" -ne 0 ]; then
  grep -E -A12 "minimal failing input" "$LOG" | head -60 || true
  echo "soak: FAILED"
  exit 1
fi
echo "soak: ok"
