#!/usr/bin/env bash
# Start a private single-node Slurm (munged, slurmctld, slurmd) for the tests.
#
#   tests/e2e/slurm/start.sh DIR      # DIR: an empty temp dir; everything lives in it
#
# Installs Debian's slurm-wlm and munge with apt-get when slurmctld is missing
# (root only). Ports: SKYSIEVE_SLURMCTLD_PORT / SKYSIEVE_SLURMD_PORT (default
# 6817 / 6818). The daemons' pids go to DIR/pids (stop.sh kills exactly those).
# On success the last line printed is `SLURM_CONF=DIR/slurm.conf`; on failure
# the exit status is non-zero and the reason is on stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: start.sh DIR}
dir=$(cd "$dir" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

fail() { echo "start.sh: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "slurmctld/munged missing and not root: install slurm-wlm and munge"
    command -v apt-get >/dev/null || fail "slurmctld/munged missing and no apt-get: install slurm-wlm and munge"
    echo "start.sh: installing slurm-wlm and munge with apt-get" >&2
    apt-get update -qq >&2 || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2 \
        || fail "apt-get install slurm-wlm munge failed"
fi
[ "$(id -u)" = 0 ] || fail "the test Slurm runs its daemons as root (SlurmUser=root); run as root"

mkdir -p "$dir/munge" "$dir/spool/slurmd" "$dir/state" "$dir/log"
chmod 700 "$dir/munge"
: > "$dir/pids"

# munge: a private key and socket, so a system munged is never touched.
if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$dir/munge/munge.key" --force >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
else
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 600 "$dir/munge/munge.key"
setsid munged -F --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munge.seed" </dev/null >>"$dir/log/munged.out" 2>&1 &
echo "munged $!" >> "$dir/pids"
for _ in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
[ -S "$dir/munge/munge.socket" ] || fail "munged did not start: $(tail -n 5 "$dir/log/munged.log" 2>/dev/null)"

node=${SKYSIEVE_SLURM_NODE:-localhost}
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
conf=$(<"$here/slurm.conf.in")
conf=${conf//@DIR@/$dir}
conf=${conf//@NODE@/$node}
conf=${conf//@CTLHOST@/localhost}
conf=${conf//@CTLPORT@/${SKYSIEVE_SLURMCTLD_PORT:-6817}}
conf=${conf//@DPORT@/${SKYSIEVE_SLURMD_PORT:-6818}}
conf=${conf//@MEM@/$((mem_kb / 1024 * 9 / 10))}
printf '%s\n' "$conf" > "$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"

setsid slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$dir/pids"
setsid slurmd -D -f "$SLURM_CONF" -N "$node" </dev/null >>"$dir/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$dir/pids"

state=""
for _ in $(seq 120); do
    state=$(sinfo -h -N -n "$node" -o %t 2>/dev/null || true)
    case "$state" in idle*) break ;; esac
    sleep 0.5
done
case "$state" in
    idle*) ;;
    *) fail "node $node not idle after 60 s (state ${state:-none}); slurmctld.log: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null | tr '\n' ' '); slurmd.log: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null | tr '\n' ' ')" ;;
esac
echo "SLURM_CONF=$SLURM_CONF"
