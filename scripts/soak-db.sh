#!/usr/bin/env bash
# The results DB under concurrency and kills (issue #16). Not part of `make test`.
#
# ROUNDS times: start RUNNERS `bitnet-pipeline run`s of a mix of small `command`-stage
# pipelines on ONE results DB, kill a random subset of them at random moments
# with SIGKILL or SIGTERM, wait; then `resume` every run that did not complete
# (all at once, again on one DB) until each one completes. Afterwards check:
#   - `PRAGMA integrity_check` is `ok`;
#   - every run is `completed`;
#   - no (run, stage) is recorded completed twice, and no fingerprint is
#     computed (status `completed`, not `cached`) more often than runs were
#     killed while holding it (reported, not asserted);
#   - no run folder under the runs dir lacks a DB row (an orphan).
# Prints one `soak-db:` line with the figures (runs, kills, resumes, checks).
#
#   scripts/soak-db.sh [ROUNDS] [RUNNERS]     # defaults 10 rounds, 8 runners
#
# Needs a built binary (target/debug/bitnet-pipeline, or BIN=...).
set -euo pipefail
ROUNDS=${1:-10}
RUNNERS=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/debug/bitnet-pipeline}
[ -x "$BIN" ] || { echo "error: $BIN not built; run \`cargo build\` first (or set BIN=)" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak-db.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
DB=$WORK/runs/results.db
bp() { "$BIN" --db "$DB" --runs-dir "$WORK/runs" "$@"; }

# Three shapes: a chain with a shared first stage (the cross-runner lock), a
# fan-out/fan-in with parallel stages, and one that reports metrics and params.
cat > chain.yaml <<'EOF'
version: 1
name: chain
params: { tag: a }
stages:
  shared:
    uses: command
    with: { cmd: "sleep 0.3; echo s > $BP_OUT/s" }
  mid:
    uses: command
    needs: [shared]
    with: { cmd: "sleep 0.2; echo ${params.tag} > $BP_OUT/m" }
  last:
    uses: command
    needs: [mid]
    with: { cmd: "echo '{\"score\": 1}' > $BP_OUT/metrics.json" }
EOF
cat > fan.yaml <<'EOF'
version: 1
name: fan
params: { tag: a }
stages:
  root:
    uses: command
    with: { cmd: "echo r > $BP_OUT/r" }
  a:
    uses: command
    needs: [root]
    with: { cmd: "sleep 0.25; echo ${params.tag} > $BP_OUT/a" }
  b:
    uses: command
    needs: [root]
    with: { cmd: "sleep 0.15; echo ${params.tag} > $BP_OUT/b" }
  join:
    uses: command
    needs: [a, b]
    with: { cmd: "cat $BP_IN_A/a $BP_IN_B/b > $BP_OUT/j" }
EOF
cat > metrics.yaml <<'EOF'
version: 1
name: metrics
params: { tag: a, steps: 3 }
stages:
  train:
    uses: command
    cache: false
    with: { cmd: "for i in 1 2 3; do sleep 0.05; done; echo '{\"loss\": 0.5, \"steps\": ${params.steps}}' > $BP_OUT/metrics.json; echo '{\"run.tag\": \"${params.tag}\"}' > $BP_OUT/params.json" }
  eval:
    uses: command
    needs: [train]
    cache: false
    with: { cmd: "echo '{\"acc\": 0.9}' > $BP_OUT/metrics.json" }
EOF
PIPES=(chain.yaml fan.yaml metrics.yaml)

started=0; resumes=0; resume_rounds=0
t0=$(date +%s.%N)
for round in $(seq 1 "$ROUNDS"); do
  pids=()
  for i in $(seq 1 "$RUNNERS"); do
    p=${PIPES[$(( (round + i) % 3 ))]}
    # tags repeat across rounds, so later runs reuse earlier stages (cache hits)
    "$BIN" --db "$DB" --runs-dir "$WORK/runs" run "$p" -q --set "tag=t$(( (round * RUNNERS + i) % 5 ))" >/dev/null 2>&1 &
    pids+=($!); started=$((started + 1))
  done
  killers=()
  for pid in "${pids[@]}"; do
    r=$((RANDOM % 4))
    [ "$r" -eq 0 ] && continue          # a quarter run to completion
    sig=KILL; [ "$r" -eq 1 ] && sig=TERM
    # each kill at its own random moment in the first second of the round
    ( sleep "0.$(( RANDOM % 10 ))$(( RANDOM % 10 ))"
      kill -"$sig" "$pid" 2>/dev/null && echo "$sig" >> "$WORK/kills" ) &
    killers+=($!)
  done
  for pid in "${killers[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
done
# Resume everything that did not complete, all at once, until nothing is left
# (a resumed run may itself find a lock held by a killed runner and take it over).
for attempt in 1 2 3 4 5; do
  todo=$(sqlite3 "$DB" "SELECT id FROM runs WHERE status != 'completed' ORDER BY id")
  [ -z "$todo" ] && break
  resume_rounds=$((resume_rounds + 1))
  pids=()
  for id in $todo; do bp resume "$id" -q >/dev/null 2>"$WORK/resume-$id.err" & pids+=($!); resumes=$((resumes + 1)); done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
done
t1=$(date +%s.%N)
sigkills=$(grep -c KILL "$WORK/kills" 2>/dev/null || true); sigterms=$(grep -c TERM "$WORK/kills" 2>/dev/null || true)

fail=0
integrity=$(sqlite3 "$DB" "PRAGMA integrity_check")
[ "$integrity" = ok ] || { echo "FAILED: integrity_check: $integrity"; fail=1; }
runs=$(sqlite3 "$DB" "SELECT count(*) FROM runs")
not_done=$(sqlite3 "$DB" "SELECT count(*) FROM runs WHERE status != 'completed'")
if [ "$not_done" -ne 0 ]; then
  echo "FAILED: $not_done run(s) not completed after resume:"
  sqlite3 "$DB" "SELECT id, status FROM runs WHERE status != 'completed'"
  for f in "$WORK"/resume-*.err; do [ -s "$f" ] && { echo "== $f"; tail -3 "$f"; }; done
  fail=1
fi
twice=$(sqlite3 "$DB" "SELECT count(*) FROM (SELECT run_id, stage FROM stage_runs WHERE status IN ('completed','cached') GROUP BY run_id, stage HAVING count(*) > 1)")
[ "$twice" -eq 0 ] || { echo "FAILED: $twice (run, stage) pairs recorded completed twice"; fail=1; }
unfinished_stages=$(sqlite3 "$DB" "SELECT count(*) FROM stage_runs WHERE status NOT IN ('completed','cached')")
[ "$unfinished_stages" -eq 0 ] || { echo "FAILED: $unfinished_stages stage rows not completed/cached in completed runs"; fail=1; }
recomputed=$(sqlite3 "$DB" "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM stage_runs s JOIN runs r ON r.id = s.run_id WHERE s.status = 'completed' AND s.stage IN ('shared','root') GROUP BY s.fingerprint)")
orphans=0
for d in "$WORK"/runs/*/; do
  id=$(basename "$d")
  [[ "$id" =~ ^[0-9]+$ ]] || continue
  [ "$(sqlite3 "$DB" "SELECT count(*) FROM runs WHERE id = $id")" -eq 1 ] || { orphans=$((orphans + 1)); echo "orphan run folder: runs/$id"; }
done
[ "$orphans" -eq 0 ] || fail=1
secs=$(echo "$t1 - $t0" | bc)
echo "soak-db: rounds=$ROUNDS runners=$RUNNERS runs=$runs started=$started sigkill=$sigkills sigterm=$sigterms resumes=$resumes resume_rounds=$resume_rounds integrity=$integrity not_completed=$not_done completed_twice=$twice cacheable_recomputed=$recomputed orphan_folders=$orphans secs=$secs load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
[ "$fail" -eq 0 ] && echo "soak-db: ok" || { echo "soak-db: FAILED"; exit 1; }
