#!/usr/bin/env bash
# Engine overhead, two builds interleaved (A B A B ...): the 50-stage no-op
# pipeline of bench-engine.sh, N first runs (fresh folder each) and N fully
# cached re-runs (one folder per build: their DB schemas may differ), with
# the median, min and max of each and the load average.
# Usage: scripts/bench-engine-ab.sh OLD_BINARY NEW_BINARY [N=12]
set -euo pipefail
old="$(realpath "$1")"; new="$(realpath "$2")"; n="${3:-12}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$old" "$new" "$n" "$work" <<'PY'
import os, shutil, statistics, subprocess, sys, time
old, new, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = ["version: 1", "name: noop50", "stages:"]
for i in range(1, 51):
    lines += [f"  s{i}:", "    uses: command"] + ([f"    needs: [s{i-10}]"] if i > 10 else []) + ['    with: { cmd: "true" }']
spec = "\n".join(lines) + "\n"
def run(b, d):
    t = time.perf_counter()
    subprocess.run([b, "run", "noop50.yaml", "-q"], cwd=d, check=True)
    return time.perf_counter() - t
print("load average before:", open("/proc/loadavg").read().split()[:3], "cores:", os.cpu_count())
first = {"old": [], "new": []}; cached = {"old": [], "new": []}
for name, b in (("old", old), ("new", new)):
    d = f"{work}/cached-{name}"; os.makedirs(d); open(f"{d}/noop50.yaml", "w").write(spec); run(b, d)
for i in range(n):
    for name, b in (("old", old), ("new", new)):
        d = f"{work}/first-{name}-{i}"; os.makedirs(d); open(f"{d}/noop50.yaml", "w").write(spec)
        first[name].append(run(b, d)); shutil.rmtree(d)
        cached[name].append(run(b, f"{work}/cached-{name}"))
for what, r in (("first run (50 stages run)", first), ("cached re-run (50 reused)", cached)):
    for name in ("old", "new"):
        v = r[name]
        print(f"{what:27} {name}: median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    print(f"{what:27} new/old median ratio: {statistics.median(r['new']) / statistics.median(r['old']):.2f}")
print("load average after:", open("/proc/loadavg").read().split()[:3])
PY
