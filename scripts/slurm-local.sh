#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the Slurm executor's tests
# (issue #17): Debian's slurm 22.05 (slurmctld + slurmd + client) and munge,
# node and controller on 127.0.0.1, accounting off (so no sacct; the executor
# follows jobs with squeue and files in the stage folder).
#
# Idempotent: installs only what is missing, rewrites the config and restarts
# the daemons only when the config changed, and exits 0 once `sinfo` shows
# the node up. Exit 3 means "cannot be set up here" (not root and no
# passwordless sudo, or no apt-get); callers skip with a visible message.
set -euo pipefail

H=$(hostname -s)
conf=$(mktemp)
trap 'rm -f "$conf"' EXIT
cat > "$conf" <<CONF
# Written by bitnet-pipeline scripts/slurm-local.sh
ClusterName=local
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# Finished jobs stay visible to squeue/scontrol a while (accounting is off).
MinJobAge=600
# Jobs that ask for no memory get a little, not the whole node (else they
# run one at a time).
DefMemPerCPU=256
# Schedule a submitted batch job at once (the default defers it up to 3 s)
# and run the main scheduler at most every 0.1 s.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF

up() { sinfo -h -o '%t' 2>/dev/null | grep -qE 'idle|mix|alloc'; }

if cmp -s "$conf" /etc/slurm/slurm.conf 2>/dev/null && up; then
  echo "slurm-local: already up: $(sinfo -h -o '%P %D %t' | head -1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "slurm-local: needs root or passwordless sudo to install and start slurmctld/slurmd" >&2
    exit 3
  fi
fi
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null \
   || ! command -v slurmd >/dev/null || [ ! -x /usr/sbin/munged ]; then
  if ! command -v apt-get >/dev/null; then
    echo "slurm-local: no apt-get here; install slurm 22.05 (slurmctld, slurmd, slurm-client) and munge by hand" >&2
    exit 3
  fi
  pkgs="slurmctld slurmd slurm-client munge"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null \
    || { $SUDO apt-get update -qq >/dev/null \
         && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null; }
fi

$SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
if [ ! -f /etc/munge/munge.key ]; then
  $SUDO dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
$SUDO chown munge:munge /etc/munge/munge.key /run/munge
$SUDO chmod 400 /etc/munge/munge.key
if ! cmp -s "$conf" /etc/slurm/slurm.conf 2>/dev/null; then
  $SUDO cp "$conf" /etc/slurm/slurm.conf
  $SUDO chmod 644 /etc/slurm/slurm.conf
  # A changed config needs the daemons restarted (stopped by their pid
  # files, never by name).
  for pf in /run/slurmctld.pid /run/slurmd.pid; do
    [ -f "$pf" ] || continue
    pid=$(cat "$pf")
    $SUDO kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
fi
pgrep -x munged >/dev/null || $SUDO su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || $SUDO slurmctld
pgrep -x slurmd >/dev/null || $SUDO slurmd
for _ in $(seq 1 30); do
  if up; then
    echo "slurm-local: up: $(sinfo -h -o '%P %D %t' | head -1)"
    exit 0
  fi
  sleep 1
done
echo "slurm-local: daemons started but the node is not up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
