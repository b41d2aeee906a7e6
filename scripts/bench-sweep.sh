#!/usr/bin/env bash
# A 12-point sweep of the shrunk demo (issue #17): train.lr x
# train.distill_weight (4 x 3), 2 training steps, 512 held-out bytes, up to
# `evaluate`. Compared with the same 12 points run as 12 separate `run`
# commands, (a) each on a fresh DB (no reuse at all) and (b) one after another
# on one DB (the cache reuses load/convert/thoughts from the first).
# Counts how often each stage executed (stage_runs rows with status
# `completed`), and the wall time of each way.
# Usage: scripts/bench-sweep.sh [path/to/bitnet-pipeline] (needs the torch
# plugin built next to it: cargo build -p bitnet-torch)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
b="${1:-target/release/bitnet-pipeline}"
bin="$(cd "$(dirname "$b")" && pwd)/$(basename "$b")"
work="$(mktemp -d /tmp/bench-sweep.XXXXXX)"
trap 'rm -rf "$work"' EXIT
p="$root/pipelines/phase4.yaml"
common=(--until evaluate --set train.steps=2 --set eval.tokens=512 -q -j 2)
lrs=(1e-3 2e-3 3e-3 4e-3); dws=(0 0.5 1)
now() { date +%s.%N; }
counts() {
  python3 - "$@" <<'PY'
import sqlite3, sys, collections
c = collections.Counter()
for db in sys.argv[1:]:
    for (s,) in sqlite3.connect(db).execute("SELECT stage FROM stage_runs WHERE status = 'completed'"):
        c[s] += 1
print("  executions: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
PY
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), cores: $(nproc), binary: $bin"
s=$(now)
"$bin" --db "$work/sweep/results.db" --runs-dir "$work/sweep/runs" run "$p" "${common[@]}" \
  --sweep "train.lr=$(IFS=,; echo "${lrs[*]}")" --sweep "train.distill_weight=$(IFS=,; echo "${dws[*]}")" >/dev/null
e=$(now)
echo "sweep, 12 points, --jobs 2:                  $(echo "$e - $s" | bc) s"
counts "$work/sweep/results.db"
s=$(now); i=0
for lr in "${lrs[@]}"; do for dw in "${dws[@]}"; do
  i=$((i + 1))
  "$bin" --db "$work/fresh$i/results.db" --runs-dir "$work/fresh$i/runs" run "$p" "${common[@]}" \
    --set "train.lr=$lr" --set "train.distill_weight=$dw" >/dev/null
done; done
e=$(now)
echo "12 separate runs, fresh DB each (no reuse):  $(echo "$e - $s" | bc) s"
counts "$work"/fresh*/results.db
s=$(now)
for lr in "${lrs[@]}"; do for dw in "${dws[@]}"; do
  "$bin" --db "$work/seq/results.db" --runs-dir "$work/seq/runs" run "$p" "${common[@]}" \
    --set "train.lr=$lr" --set "train.distill_weight=$dw" >/dev/null
done; done
e=$(now)
echo "12 separate runs, one DB, one after another: $(echo "$e - $s" | bc) s"
counts "$work/seq/results.db"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
