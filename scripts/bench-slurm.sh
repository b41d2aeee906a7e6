#!/usr/bin/env bash
# Slurm executor overhead (issue #17): a 20-stage chain of no-op `command`
# stages run as Slurm jobs on the local Slurm (scripts/slurm-local.sh).
#
# Per stage, the runner's view (submitted -> ingested) minus the job's own
# run time (written by the job) is what Slurm plus this runner cost. The
# controller's own submission-to-start latency is measured separately with
# bare `sbatch --wrap` jobs, one after another, and subtracted, leaving the
# runner's overhead per stage.
# Usage: scripts/bench-slurm.sh [path/to/bitnet-pipeline] (default: release build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
b="${1:-target/release/bitnet-pipeline}"
bin="$(cd "$(dirname "$b")" && pwd)/$(basename "$b")"
"$here/slurm-local.sh" >/dev/null
work="$(mktemp -d /tmp/bench-slurm.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
{
  echo "version: 1"
  echo "name: chain20"
  echo "stages:"
  for i in $(seq 1 20); do
    echo "  s$i:"
    echo "    uses: command"
    if (( i > 1 )); then echo "    needs: [s$((i - 1))]"; fi
    echo "    with: { cmd: \"true\" }"
  done
} > chain20.yaml
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), cores: $(nproc)"
# Controller latency: bare jobs, submit -> the job's first instruction.
lat=()
for i in $(seq 1 10); do
  s=$(date +%s.%N)
  id=$(sbatch --parsable --output=/dev/null --wrap "date +%s.%N > $work/start.$i")
  while [ ! -s "$work/start.$i" ]; do sleep 0.02; done
  lat+=("$(echo "$(cat "$work/start.$i") - $s" | bc)")
done
s=$(date +%s.%N)
"$bin" run chain20.yaml -q --executor slurm
e=$(date +%s.%N)
python3 - "$work/runs/results.db" "$(echo "$e - $s" | bc)" "${lat[@]}" <<'PY'
import sqlite3, sys, statistics
from datetime import datetime
db, wall, lat = sys.argv[1], float(sys.argv[2]), [float(x) for x in sys.argv[3:]]
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
rows = sqlite3.connect(db).execute(
    "SELECT started_at, ended_at, job_started_at, job_ended_at FROM stage_runs WHERE run_id = 1").fetchall()
runner = [t(b) - t(a) for a, b, _, _ in rows]
job = [t(d) - t(c) for _, _, c, d in rows]
to_start = [t(c) - t(a) for a, _, c, _ in rows]
ingest = [t(b) - t(d) for _, b, _, d in rows]
ctl = statistics.median(lat)
over = [r - j - ctl for r, j in zip(runner, job)]
med = statistics.median
print(f"controller submit->start latency, bare sbatch (median of {len(lat)}): {ctl*1000:.0f} ms (min {min(lat)*1000:.0f}, max {max(lat)*1000:.0f})")
print(f"20-stage chain on Slurm: wall {wall:.2f} s, {len(rows)} jobs")
print(f"per stage, median: runner submit->ingest {med(runner)*1000:.0f} ms, job's own run time {med(job)*1000:.0f} ms")
print(f"  runner submit -> job start {med(to_start)*1000:.0f} ms; job end -> ingested {med(ingest)*1000:.0f} ms")
print(f"runner overhead per stage (submit->ingest - job time - controller latency): median {med(over)*1000:.0f} ms, max {max(over)*1000:.0f} ms (target <= 1000 ms)")
PY
