#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (munged + slurmctld + slurmd as root).
#
# Idempotent: when the node already answers `sinfo` as idle/mixed/allocated with the
# config this script writes, nothing is restarted. Used by .ci/run and by developers
# who want to run the `@pytest.mark.slurm` tests locally. Needs root and Debian's
# slurm-wlm + munge packages.
#
# Environment knobs:
#   SLURM_MAX_ARRAY_SIZE  MaxArraySize written to slurm.conf (default 1001)
#   SLURM_CONF_DIR        where slurm.conf goes (default /etc/slurm)
set -euo pipefail

CONF_DIR="${SLURM_CONF_DIR:-/etc/slurm}"
CONF="$CONF_DIR/slurm.conf"
MAX_ARRAY="${SLURM_MAX_ARRAY_SIZE:-1001}"
HOST="$(hostname -s)"
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd
LOGDIR=/var/log/slurm

if [[ "$(id -u)" != 0 ]]; then
    echo "start_slurm.sh: must run as root (munged/slurmctld/slurmd)" >&2
    exit 1
fi
for bin in munged slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || { echo "start_slurm.sh: '$bin' not found; apt-get install slurm-wlm munge" >&2; exit 1; }
done

node_ready() {
    local state
    state="$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)"
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

# --- munge -------------------------------------------------------------------------
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null || { echo "start_slurm.sh: munged does not answer" >&2; exit 1; }

# --- slurm.conf --------------------------------------------------------------------
# The node line (CPUs, sockets, cores, RealMemory) comes from `slurmd -C`, so it
# matches this machine exactly and slurmd does not drain the node.
NODE_LINE="$(slurmd -C | head -n1)"
NODE_LINE="${NODE_LINE/NodeName=* CPUs/NodeName=$HOST CPUs}"
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGDIR"
NEW_CONF="$(mktemp)"
cat >"$NEW_CONF" <<CONF
# Written by .ci/start_slurm.sh: a one-node cluster for the pipeline's end-to-end tests.
ClusterName=ecckv
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
MaxArraySize=$MAX_ARRAY
MaxJobCount=20000
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
$NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

changed=1
if [[ -f "$CONF" ]] && cmp -s "$NEW_CONF" "$CONF"; then changed=0; fi
if [[ $changed == 0 ]] && node_ready && pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null; then
    rm -f "$NEW_CONF"
    echo "start_slurm.sh: Slurm already up on $HOST"
    sinfo
    exit 0
fi
install -m 0644 "$NEW_CONF" "$CONF"
rm -f "$NEW_CONF"

# --- daemons -----------------------------------------------------------------------
stop_daemon() {  # stop by pid file only, never by name pattern
    local pidfile="$1"
    if [[ -f "$pidfile" ]]; then
        local pid; pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        fi
        rm -f "$pidfile"
    fi
}
if [[ $changed == 1 ]]; then
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
fi
fail_daemon() {
    echo "start_slurm.sh: $1 failed to start; log tail:" >&2
    tail -n 30 "$LOGDIR/$1.log" >&2 || true
    exit 1
}
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i || fail_daemon slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || fail_daemon slurmd

for _ in $(seq 1 60); do
    if node_ready; then
        echo "start_slurm.sh: Slurm up on $HOST (MaxArraySize=$MAX_ARRAY)"
        sinfo
        exit 0
    fi
    # A node left DOWN/DRAIN by an earlier run comes back with RESUME.
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
echo "start_slurm.sh: node $HOST did not become idle; last sinfo:" >&2
sinfo -N -l >&2 || true
tail -n 30 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
