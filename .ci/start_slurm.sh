#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (controller + compute daemon) for tests/test_slurm.py.
#
# Idempotent: does nothing when the controller already answers and the node is usable. Installs Debian's
# slurm-wlm and munge when sbatch is missing. Meant for throwaway CI containers run as root without systemd,
# so it avoids cgroups (proctrack/linuxproc, task/none) and accounting (no slurmdbd, no sacct).
# Exits non-zero with a one-line reason when SLURM cannot be brought up.
set -uo pipefail

SLURM_CONF=/etc/slurm/slurm.conf
MARK="# written by sclabel .ci/start_slurm.sh"
NODE=$(hostname -s)
TIMEOUT=60

fail() { echo "start_slurm: $*" >&2; exit 1; }
log() { echo "start_slurm: $*"; }

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
controller_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

install_packages() {
    command -v apt-get >/dev/null || fail "sbatch missing and no apt-get to install slurm-wlm"
    [[ $(id -u) -eq 0 ]] || fail "sbatch missing; installing slurm-wlm needs root"
    export DEBIAN_FRONTEND=noninteractive
    log "installing slurm-wlm and munge"
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1; } ||
        fail "apt-get install slurm-wlm munge failed"
}

write_conf() {
    if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARK" "$SLURM_CONF"; then
        fail "$SLURM_CONF exists and was not written by this script; not overwriting it"
    fi
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem_mb=$((mem_mb > 4096 ? mem_mb - 2048 : mem_mb * 3 / 4))  # leave room for the OS and the daemons
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$SLURM_CONF" <<EOF
$MARK
ClusterName=sclabel
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups, no accounting: containers without systemd, no slurmdbd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# finished jobs stay visible to scontrol for a day (the status helper reads them there)
MinJobAge=86400
# one placeholder GPU (File=/dev/null) so that sbatch accepts --gres=gpu:1; tests send GPU jobs with --test-only only
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "NodeName=$NODE Name=gpu File=/dev/null Count=1" >/etc/slurm/gres.conf
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    # as the munge user when possible; as root munged needs --force
    runuser -u munge -- munged 2>/dev/null || munged --force 2>/dev/null
    for _ in $(seq 10); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.5
    done
    fail "munged did not start (see /var/log/munge/munged.log)"
}

command -v sbatch >/dev/null || install_packages
command -v slurmctld >/dev/null && command -v slurmd >/dev/null || fail "slurmctld/slurmd not installed"

if controller_up && node_usable; then
    log "already running: node $NODE is $(node_state)"
    exit 0
fi

controller_up || write_conf
start_munge
pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

for ((waited = 0; waited < TIMEOUT; waited++)); do
    if controller_up; then
        state=$(node_state)
        node_usable && { log "node $NODE is $state after ${waited}s"; exit 0; }
        # a node left down/drained by an earlier run comes back on request
        [[ $state =~ ^(down|drained|draining) ]] && scontrol update NodeName="$NODE" State=RESUME 2>/dev/null
    fi
    sleep 1
done
fail "node $NODE not idle after ${TIMEOUT}s (state: $(node_state || true); see /var/log/slurm/)"
