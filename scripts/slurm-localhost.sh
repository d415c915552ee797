#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for testing the SLURM profile for real.
#
#   scripts/slurm-localhost.sh install   # apt packages + config files (idempotent)
#   scripts/slurm-localhost.sh start     # install if needed, start the daemons, wait for `idle`
#   scripts/slurm-localhost.sh status    # daemons we started, their PIDs, sinfo
#   scripts/slurm-localhost.sh stop      # stop the daemons this script started, by PID, in reverse
#
# Needs root and apt-get (Debian 12: Slurm 22.05, MariaDB 10.11). Works without systemd:
# every daemon is started by hand and its PID recorded under $DSM_SLURM_STATE; `stop` only
# ever signals those PIDs. The node is this machine: real CPUs and memory (minus 1 GiB), and one
# fake GPU (gres `gpu`, File=/dev/null) so that GPU jobs are scheduled and accounted
# (AllocTRES gres/gpu=1) without a device. Accounting goes through slurmdbd into a local
# MariaDB, so `sacct` works (the Snakemake SLURM executor polls it).
#
# Environment:
#   DSM_SLURM_STATE      state directory (PIDs, logs)      default /var/lib/dsm-slurm-localhost
#   DSM_SLURM_PARTITION  partition name                    default debug
#   DSM_SLURM_ACCOUNT    account created for the caller    default dsm
#   DSM_SLURM_TIMEOUT    seconds to wait for each daemon   default 60
#   DSM_SLURM_GPUS       fake GPUs on the node             default 1
set -euo pipefail

STATE=${DSM_SLURM_STATE:-/var/lib/dsm-slurm-localhost}
PARTITION=${DSM_SLURM_PARTITION:-debug}
ACCOUNT=${DSM_SLURM_ACCOUNT:-dsm}
WAIT=${DSM_SLURM_TIMEOUT:-60}
GPUS=${DSM_SLURM_GPUS:-1}
CLUSTER=localcluster
DB_PASS=dsm-slurm-localhost
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
# Daemons in start order; `stop` walks this list backwards.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { echo "slurm-localhost: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
}

# --- install ----------------------------------------------------------------------------

have_packages() {
    local b
    for b in munged mariadbd slurmdbd slurmctld slurmd sinfo sacct sacctmgr; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || return 1
    done
}

install_packages() {
    if have_packages; then
        log "packages already installed"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found (Debian/Ubuntu only)"
    # Keep apt from starting services itself (it would on a machine with systemd).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    timeout 300 apt-get update -qq
    log "apt-get install ${PACKAGES[*]}"
    timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    if [[ $made_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    have_packages || die "packages installed but binaries missing"
}

write_configs() {
    local host cpus mem_kb mem_mb defmem
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$(( mem_kb / 1024 - 1024 ))
    (( mem_mb > 512 )) || mem_mb=512
    defmem=$(( mem_mb / cpus ))
    (( defmem < 2048 )) || defmem=2048

    id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
    mkdir -p /etc/slurm "$STATE" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
    chown slurm: /var/lib/slurm/slurmctld /var/log/slurm /run/slurm
    chmod 755 "$STATE"

    cat >/etc/slurm/slurm.conf <<EOF
# Written by scripts/slurm-localhost.sh: a single-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups needed (containers, machines without systemd)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
# accounting through slurmdbd (local MariaDB), so that sacct works; keep the GPU TRES
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
# without a default, one job would take all memory and block the next
DefMemPerCPU=$defmem
MinJobAge=600
KillWait=30
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # Fake GPUs: schedulable and accounted (jobs see CUDA_VISIBLE_DEVICES), but the
    # "device files" are harmless character devices, not GPUs.
    local fake=(/dev/null /dev/zero /dev/full /dev/urandom) k
    [[ $GPUS =~ ^[1-4]$ ]] || die "DSM_SLURM_GPUS: expected 1 to 4, got '$GPUS'"
    {
        echo "AutoDetect=off"
        for ((k = 0; k < GPUS; k++)); do echo "NodeName=$host Name=gpu File=${fake[k]}"; done
    } >/etc/slurm/gres.conf
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chown slurm: /etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf

    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --force; else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    fi
    chown munge: /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
}

cmd_install() {
    need_root
    install_packages
    write_configs
    log "installed; configs in /etc/slurm"
}

# --- PIDs -------------------------------------------------------------------------------

pidfile() { echo "$STATE/$1.pid"; }

# The PID we recorded for daemon $1, if that process is still that daemon.
our_pid() {
    local f pid
    f=$(pidfile "$1")
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    [[ $(</proc/$pid/comm) == "$1" ]] || return 1
    echo "$pid"
}

# Record the PID a self-daemonizing daemon wrote to its own pid file.
record_pid() {
    local name=$1 file=$2 i
    for ((i = 0; i < WAIT * 10; i++)); do
        if [[ -s $file ]] && [[ -r /proc/$(<"$file")/comm ]]; then
            cp "$file" "$(pidfile "$name")"
            return 0
        fi
        sleep 0.1
    done
    die "$name did not write $file within ${WAIT}s (log: ${3:-none})"
}

wait_for() {  # wait_for DESCRIPTION COMMAND...
    local what=$1 i
    shift
    for ((i = 0; i < WAIT * 4; i++)); do
        if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "timed out after ${WAIT}s waiting for $what"
}

foreign() {  # a daemon of that name runs, but not one we started
    local name=$1
    our_pid "$name" >/dev/null && return 1
    pgrep -x "$name" >/dev/null
}

# --- start ------------------------------------------------------------------------------

start_munged() {
    if our_pid munged >/dev/null; then return; fi
    if foreign munged; then log "munged already running (not ours): using it"; return; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    record_pid munged /run/munge/munged.pid /var/log/munge/munged.log
    wait_for munge bash -c 'munge -n | unmunge'
}

start_mariadb() {
    if our_pid mariadbd >/dev/null; then return; fi
    if foreign mariadbd; then log "mariadbd already running (not ours): using it"; else
        mkdir -p /run/mysqld
        chown mysql: /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
            --log-error="$STATE/mariadbd.log" </dev/null >>"$STATE/mariadbd.log" 2>&1 &
        echo $! >"$(pidfile mariadbd)"
    fi
    wait_for "MariaDB" mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    timeout 30 mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurm_daemon() {  # name binary pidfile log readiness-command...
    local name=$1 bin=$2 pf=$3 lg=$4
    shift 4
    if our_pid "$name" >/dev/null; then return; fi
    foreign "$name" && die "$name is already running and was not started by this script; refusing"
    rm -f "$pf"
    "$bin" </dev/null >>"$STATE/$name.out" 2>&1 || die "$name failed to start (see $lg)"
    record_pid "$name" "$pf" "$lg"
    if (( $# )); then wait_for "$name" "$@"; fi
}

cmd_start() {
    need_root
    install_packages
    # (Re)write the configs unless our cluster is already up (then `start` is a no-op).
    our_pid slurmctld >/dev/null || write_configs
    mkdir -p "$STATE" /run/slurm
    chown slurm: /run/slurm
    start_munged
    start_mariadb
    start_slurm_daemon slurmdbd /usr/sbin/slurmdbd /run/slurm/slurmdbd.pid /var/log/slurm/slurmdbd.log \
        sacctmgr -n list cluster
    start_slurm_daemon slurmctld /usr/sbin/slurmctld /run/slurm/slurmctld.pid /var/log/slurm/slurmctld.log \
        scontrol ping
    start_slurm_daemon slurmd /usr/sbin/slurmd /run/slurm/slurmd.pid /var/log/slurm/slurmd.log
    # slurmctld registers the cluster in slurmdbd itself; give the caller an account.
    wait_for "cluster registration" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    local user=${SUDO_USER:-root}
    timeout 30 sacctmgr -i add account "$ACCOUNT" Description=dsm-tests Organization=dsm >/dev/null 2>&1 || true
    timeout 30 sacctmgr -i add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null 2>&1 || true
    # Node up: `idle` (resume it if slurmctld still remembers it as down).
    local i state
    for ((i = 0; i < WAIT * 2; i++)); do
        state=$(timeout 10 sinfo -h -N -o %T 2>/dev/null | head -1 || true)
        case $state in
            idle*) break ;;
            down*|drain*) timeout 10 scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    [[ $state == idle* ]] || die "node not idle after ${WAIT}s (state: '${state:-?}'); see /var/log/slurm/"
    log "SLURM is up: partition $PARTITION, account $ACCOUNT, node $(hostname -s) idle"
}

# --- stop / status ----------------------------------------------------------------------

stop_one() {
    local name=$1 pid i
    pid=$(our_pid "$name") || { rm -f "$(pidfile "$name")"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) still running after 20s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pidfile "$name")"
}

cmd_stop() {
    need_root
    # Jobs still running would outlive slurmd as orphaned slurmstepd processes.
    if our_pid slurmctld >/dev/null; then
        local jobs
        jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling leftover jobs: $(echo $jobs)"
            timeout 10 scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 40; i++)); do
                [[ -z $(timeout 10 squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    local k
    for ((k = ${#DAEMONS[@]} - 1; k >= 0; k--)); do
        stop_one "${DAEMONS[k]}"
    done
    log "stopped"
}

cmd_status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(our_pid "$name"); then echo "$name: running (pid $pid)"; else
            echo "$name: not running (or not started by this script)"; rc=3; fi
    done
    timeout 5 sinfo 2>/dev/null || { echo "sinfo: no answer"; rc=3; }
    return $rc
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
