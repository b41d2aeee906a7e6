#!/usr/bin/env bash
# What the CRC-32 check of `.pt` zip records costs (issue #16). Not part of `make test`.
#
# Writes a large state dict with the project's torch (.venv, from scripts/setup.sh),
# then loads it with our reader with the check and without it, interleaved, and
# prints the medians and their ratio with the load average (figures: docs/perf.md).
#
#   scripts/bench-pt-crc.sh [MB] [ITERS]     # default 400 MB, 9 iterations each
set -euo pipefail
MB=${1:-400}
ITERS=${2:-9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "error: $PY missing; run scripts/setup.sh" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-pt-crc.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK/big.pt" "$MB" <<'PY'
import sys, torch
path, mb = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
n = mb * (1 << 20) // 4 // 8          # 8 float32 tensors of equal size
rows = 2048
sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, n // rows, generator=g) for i in range(8)}
torch.save({"model_state_dict": sd, "generation": 1}, path)
PY
ls -l "$WORK/big.pt" | awk '{print "file:", $5, "bytes"}'
HOSTILE_PT_BENCH=$WORK/big.pt HOSTILE_PT_ITERS=$ITERS \
  cargo test -q -p bitnet-torch --lib crc_check_cost_on_a_large_checkpoint -- --ignored --nocapture --test-threads=1 2>&1 | grep -E "^crc-cost:|FAILED|panicked"
