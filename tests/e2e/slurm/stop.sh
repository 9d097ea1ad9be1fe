#!/usr/bin/env bash
# Stop the Slurm that start.sh started in DIR: cancel its jobs, then kill the
# daemons by the pids start.sh recorded in DIR/pids (never by name).
#
#   tests/e2e/slurm/stop.sh DIR
set -uo pipefail

dir=${1:?usage: stop.sh DIR}
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$dir/slurm.conf"

if [ -f "$SLURM_CONF" ] && command -v scancel >/dev/null; then
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        [ -z "$(squeue -h 2>/dev/null)" ] && break
        sleep 0.5
    done
fi

[ -f "$dir/pids" ] || exit 0
# slurmd and slurmctld first, munged last (they need it to shut down cleanly).
pids=$(tac "$dir/pids" | awk '{print $2}')
for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 50); do
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && exit 0
    sleep 0.1
done
for pid in $alive; do kill -KILL "$pid" 2>/dev/null || true; done
exit 0
