#!/usr/bin/env bash
# Engine overhead benchmark (issue #2): a 50-stage pipeline of no-op
# `command` stages, end to end, then a fully cached re-run of it.
# Usage: scripts/bench-engine.sh [path/to/bitnet-pipeline] (default: release build)
set -euo pipefail
bin="$(cd "$(dirname "${1:-target/release/bitnet-pipeline}")" && pwd)/$(basename "${1:-target/release/bitnet-pipeline}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
{
  echo "version: 1"
  echo "name: noop50"
  echo "stages:"
  for i in $(seq 1 50); do
    echo "  s$i:"
    echo "    uses: command"
    # A chain of 5 layers of 10 independent stages each.
    if (( i > 10 )); then echo "    needs: [s$((i - 10))]"; fi
    echo "    with: { cmd: \"true\" }"
  done
} > "$work/noop50.yaml"
cd "$work"
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "cores: $(nproc)"
echo "first run (50 stages run):   $(t "$bin" run noop50.yaml -q) s"
echo "cached re-run (50 reused):   $(t "$bin" run noop50.yaml -q) s"
"$bin" runs list --limit 2
