#!/usr/bin/env bash
# Start a real single-node Slurm cluster on 127.0.0.1 for `ctrbench run/tune --executor slurm`.
#
# Installs Slurm and MUNGE from the Debian packages when they are missing (apt-get: slurmctld,
# slurmd, slurm-client, munge), writes a one-node configuration (this host, CPUS cores,
# default 2; partition `debug`; no accounting daemon), starts munged, slurmctld and slurmd, waits
# until the node accepts jobs, and prints on stdout
#
#     export SLURM_CONF=/etc/slurm/slurm.conf
#     export CTRBENCH_TEST_SLURM=1
#
# (everything else goes to stderr). Idempotent: a second call keeps running daemons, restarts
# only those that died (or all of them when the configuration changed) and resumes a node left
# DOWN or DRAINED. Usage:
#
#     eval "$(bash .ci/slurm.sh)"     # start (or reuse) the cluster
#     bash .ci/slurm.sh stop          # cancel this cluster's jobs and stop the daemons
#
# Runs as root (daemons as root, job steps as the submitting user). State, spool and logs live
# in $CTRBENCH_SLURM_DIR (default /tmp/ctrbench-slurm). An /etc/slurm/slurm.conf that this
# script did not write (a real cluster's) is never overwritten.
set -euo pipefail

SLURM_DIR="${CTRBENCH_SLURM_DIR:-/tmp/ctrbench-slurm}"
CPUS="${CTRBENCH_SLURM_CPUS:-2}"
CONF=/etc/slurm/slurm.conf
MARK="# written by ctrbench .ci/slurm.sh"

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ "$(id -u)" == "0" ]] || die "run as root (the daemons and /etc/slurm need it)"

if [[ ! -x /usr/sbin/slurmctld || ! -x /usr/sbin/slurmd || ! -x /usr/sbin/munged \
      || ! -x /usr/bin/sbatch ]]; then
    log "Slurm not found: installing slurmctld slurmd slurm-client munge with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >&2
fi

# a daemon is alive when its pid file names a process that is not a zombie
pid_alive() {
    local stat
    [[ -f "$1" ]] || return 1
    stat="$(ps -o stat= -p "$(cat "$1" 2>/dev/null)" 2>/dev/null || true)"
    [[ -n "$stat" && "$stat" != Z* ]]
}

# run a daemon in the foreground of its own session, so that no half-daemonised parent is
# left as a zombie where PID 1 does not reap (containers)
start_daemon() {
    local name="$1"; shift
    setsid "$@" -D >>"$SLURM_DIR/log/$name.out" 2>&1 </dev/null &
}

stop_daemons() {
    local f
    for f in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid"; do
        if pid_alive "$f"; then
            kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$f" || break; sleep 0.1; done
        fi
        rm -f "$f"
    done
}

if [[ "${1:-}" == "stop" ]]; then
    if [[ -f "$CONF" ]] && grep -qF "$MARK" "$CONF" && scontrol ping >/dev/null 2>&1; then
        scancel --full --partition=debug >/dev/null 2>&1 || true  # every job of this cluster
    fi
    stop_daemons
    log "stopped slurmctld and slurmd (munged keeps running; state kept in $SLURM_DIR)"
    exit 0
fi

# --- MUNGE (authentication between the daemons and the client commands) -----------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --force >&2 2>/dev/null || \
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force >&2
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# --- configuration ----------------------------------------------------------------------------
HOST="$(hostname -s)"
mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/log" /etc/slurm
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script (a real cluster's?): not touching it"
fi
NEW_CONF="$(mktemp)"
cat >"$NEW_CONF" <<EOF
$MARK
# A one-node test cluster: controller and compute node on 127.0.0.1, $CPUS CPUs, no accounting.
ClusterName=ctrbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=300
MaxArraySize=10001
SchedulerParameters=batch_sched_delay=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    log "writing $CONF"
    install -m 644 "$NEW_CONF" "$CONF"
    CHANGED=1
fi
rm -f "$NEW_CONF"
export SLURM_CONF="$CONF"

if [[ "$CHANGED" == "1" ]]; then
    stop_daemons  # a changed configuration: restart both daemons
fi

# --- daemons ----------------------------------------------------------------------------------
if ! pid_alive "$SLURM_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    start_daemon slurmctld /usr/sbin/slurmctld
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q "is UP" || die "slurmctld does not answer; see $SLURM_DIR/log/slurmctld.log"

if ! pid_alive "$SLURM_DIR/slurmd.pid"; then
    log "starting slurmd"
    start_daemon slurmd /usr/sbin/slurmd
fi
STATE=""
for _ in $(seq 100); do
    STATE="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)"
    case "$STATE" in
        idle*|mixed*|allocated*|completing*) break ;;
        down*|drain*|fail*)
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
case "$STATE" in
    idle*|mixed*|allocated*|completing*) ;;
    *) die "node $HOST is '$STATE', not accepting jobs; see $SLURM_DIR/log/slurmd.log" ;;
esac

log "ready: node $HOST ($CPUS CPUs, $STATE), partition debug, logs in $SLURM_DIR/log"
echo "export SLURM_CONF=$CONF"
echo "export CTRBENCH_TEST_SLURM=1"
