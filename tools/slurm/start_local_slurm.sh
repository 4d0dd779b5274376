#!/usr/bin/env bash
# start_local_slurm.sh: a single-node Slurm cluster on loopback, for tests and CI.
#
#   bash tools/slurm/start_local_slurm.sh [--restart]
#   bash tools/slurm/stop_local_slurm.sh [--purge]
#
# What it starts (Debian 12 packages, installed here when missing; run as root, no systemd):
#   munged, MariaDB (socket only, no TCP), slurmdbd (so `sacct` works as on a real cluster),
#   slurmctld and slurmd for this one host, with CONFAGG_SLURM_GPUS fake GPUs declared as
#   gres/gpu (File= symlinks to /dev/null, AutoDetect=off). It waits until the node is idle.
#   Jobs run as the submitting user on this machine; nothing is confined (task/none), Slurm only
#   schedules, accounts and sets CUDA_VISIBLE_DEVICES.
#
# Where things go: everything the daemons write (pid files, logs, Slurm state and spool, the
# MariaDB data, the munge key and socket, the fake GPU files) lives under CONFAGG_SLURM_DIR
# (default /tmp/confagg-slurm). Only the config files go to /etc/slurm, where sbatch, srun and
# sacct look for them; they carry a marker line, and a config without it (a real Slurm
# installation) is never overwritten.
#
# Idempotent: when the daemons it started are still running, it only checks that the node
# answers and exits (about 1 s); --restart stops them and starts afresh with new configs.
#
# Knobs (environment):
#   CONFAGG_SLURM_DIR         state folder (default /tmp/confagg-slurm)
#   CONFAGG_SLURM_GPUS        fake GPUs on the node (default 2; 0 = none)
#   CONFAGG_SLURM_GPU_TYPE    their gres type, what `gpu_model` / --gpus=<type>:N names (default fake)
#   CONFAGG_SLURM_PARTITIONS  comma-separated partitions, all on the node; the first is the
#                             default (default debug)
# The account to submit with is "root" (sacctmgr creates it with the cluster).
set -euo pipefail

STATE="${CONFAGG_SLURM_DIR:-/tmp/confagg-slurm}"
FAKE_GPUS="${CONFAGG_SLURM_GPUS:-2}"
FAKE_GPU_TYPE="${CONFAGG_SLURM_GPU_TYPE:-fake}"
PARTITIONS="${CONFAGG_SLURM_PARTITIONS:-debug}"
RESTART=0
for a in "$@"; do
    case "$a" in
        --restart) RESTART=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $a (see --help)" >&2; exit 2 ;;
    esac
done

CLUSTER=confagg
CONF_DIR=/etc/slurm
MARKER="# confagg-local-slurm: written by tools/slurm/start_local_slurm.sh"
RUN="$STATE/run"        # pid files
LOG="$STATE/log"
MUNGE="$STATE/munge"    # key, socket, seed
DB_DIR="$STATE/mysql"   # MariaDB data
DB_SOCK="$STATE/mysqld/mysqld.sock"
DB_PASS=slurmdb         # a local, socket-only database user: not a secret
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

t0=$EPOCHREALTIME
log() { printf '[start_local_slurm %5.1fs] %s\n' "$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN{print a-b}')" "$*"; }
# die() reports on fd 3 even from inside wait_for's silenced checks; the daemons started below
# get it closed (3>&-), or a caller reading this script's output would wait for them to end.
exec 3>&2
die() { log "ERROR: $*" >&3; exit 1; }
wait_for() { # wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds
    local limit=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}
alive() { # alive PIDFILE COMM: the pid file names a running COMM
    local pid
    [ -s "$1" ] && pid=$(cat "$1") && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
[[ "$FAKE_GPUS" =~ ^[0-9]+$ ]] || die "CONFAGG_SLURM_GPUS must be a number, not '$FAKE_GPUS'"
[[ "$FAKE_GPU_TYPE" =~ ^[A-Za-z0-9_]+$ ]] || die "CONFAGG_SLURM_GPU_TYPE must be a plain name"

# ------------------------------------------------------------------------- already up?
if [ $RESTART -eq 0 ] && alive "$RUN/munged.pid" munged && alive "$RUN/mariadbd.pid" mariadbd &&
    alive "$RUN/slurmdbd.pid" slurmdbd && alive "$RUN/slurmctld.pid" slurmctld &&
    alive "$RUN/slurmd.pid" slurmd && scontrol ping >/dev/null 2>&1; then
    log "already running (state in $STATE); --restart to start afresh"
    sinfo -o '%P %a %D %T %N %c %m %G'
    exit 0
fi

# ------------------------------------------------------------------------------ packages
pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d-less containers would try to start the services: they fail harmlessly
    # (no systemd); we start the daemons ourselves below.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "packages ok: slurm $(slurmd -V | awk '{print $2}'), $(mariadbd --version | awk '{print $3}')"

for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && ! grep -qxF "$MARKER" "$CONF_DIR/$f"; then
        die "$CONF_DIR/$f exists and was not written by this script: refusing to replace it"
    fi
done

# --------------------------------------------------- stop what this script started before
CONFAGG_SLURM_DIR="$STATE" bash "$HERE/stop_local_slurm.sh" --quiet

mkdir -p "$STATE" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool" "$MUNGE" "$DB_DIR" "$(dirname "$DB_SOCK")" "$CONF_DIR"
chmod 0755 "$STATE" "$RUN" "$LOG"

# --------------------------------------------------------------------------------- munge
chown munge:munge "$MUNGE"
chmod 0711 "$MUNGE" # the socket must be reachable by every user; the key stays 0400
if [ ! -s "$MUNGE/munge.key" ]; then
    dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$MUNGE/munge.key"
chmod 0400 "$MUNGE/munge.key"
touch "$RUN/munged.pid" "$LOG/munged.log"
chown munge:munge "$RUN/munged.pid" "$LOG/munged.log"
# --force: munged distrusts socket folders below the world-writable /tmp; ours is 0700.
runuser -u munge -- /usr/sbin/munged --socket="$MUNGE/munge.socket" \
    --key-file="$MUNGE/munge.key" --pid-file="$RUN/munged.pid" --seed-file="$MUNGE/munged.seed" \
    --log-file="$LOG/munged.log" 3>&-
wait_for 10 munged bash -c "munge -n --socket='$MUNGE/munge.socket' | unmunge --socket='$MUNGE/munge.socket'"
log "munged up (pid $(cat "$RUN/munged.pid"))"
# Our munged listens on its own socket: AuthInfo tells Slurm (AccountingStoragePass below does
# for connections to slurmdbd).
AUTH_INFO="AuthInfo=socket=$MUNGE/munge.socket"

# ------------------------------------------------------------------------------- configs
HOST="$(hostname -s)"
# The node line from slurmd -C (what this machine has), memory trimmed to 90 %.
read -r CPUS BOARDS SOCKETS CORES THREADS MEM < <(slurmd -C | head -1 | tr ' ' '\n' |
    awk -F= '/^CPUs=/{c=$2} /^Boards=/{b=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2}
             /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2} END{print c,b,s,k,t,m}')
REALMEM=$((MEM * 9 / 10))

GRES_NODE="" GRES_TYPES=""
rm -rf "$STATE/fakegpu"
rm -f "$CONF_DIR/gres.conf"
if [ "$FAKE_GPUS" -gt 0 ]; then
    # slurmd drops a gres/gpu without a File= device; /dev/null symlinks satisfy it, and with
    # task/none nothing is constrained: Slurm only counts them and sets CUDA_VISIBLE_DEVICES.
    mkdir -p "$STATE/fakegpu"
    for i in $(seq 0 $((FAKE_GPUS - 1))); do ln -s /dev/null "$STATE/fakegpu/gpu$i"; done
    GRES_NODE=" Gres=gpu:${FAKE_GPU_TYPE}:${FAKE_GPUS}"
    GRES_TYPES="GresTypes=gpu"
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
AutoDetect=off
NodeName=${HOST} Name=gpu Type=${FAKE_GPU_TYPE} File=$STATE/fakegpu/gpu[0-$((FAKE_GPUS - 1))]
EOF
fi

cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
# A single-node cluster on loopback; state in $STATE. Undo: tools/slurm/stop_local_slurm.sh
ClusterName=${CLUSTER}
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
${AUTH_INFO}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePass=$MUNGE/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
${GRES_TYPES}
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} Boards=${BOARDS} SocketsPerBoard=${SOCKETS} CoresPerSocket=${CORES} ThreadsPerCore=${THREADS} RealMemory=${REALMEM}${GRES_NODE} State=UNKNOWN
EOF
first=YES
for part in ${PARTITIONS//,/ }; do
    echo "PartitionName=${part} Nodes=ALL Default=${first} MaxTime=INFINITE State=UP" >>"$CONF_DIR/slurm.conf"
    first=NO
done
log "wrote $CONF_DIR/slurm.conf: node $HOST (${CPUS} CPUs, ${REALMEM} MB, ${FAKE_GPUS} fake GPUs of type $FAKE_GPU_TYPE), partitions $PARTITIONS"

# ------------------------------------------------------------- MariaDB, socket only
chown mysql:mysql "$DB_DIR" "$(dirname "$DB_SOCK")"
touch "$LOG/mariadb.log" "$RUN/mariadbd.pid"
chown mysql:mysql "$LOG/mariadb.log" "$RUN/mariadbd.pid"
if [ ! -d "$DB_DIR/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || {
        cat "$LOG/mariadb-install.log" >&2
        die "mariadb-install-db failed"
    }
    log "initialised MariaDB data in $DB_DIR"
fi
# --no-defaults: ignore /etc/mysql (a TCP port, other paths); everything is on this line.
runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$DB_DIR" --skip-networking \
    --socket="$DB_SOCK" --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 3>&- &
db_launcher=$!
disown
db_up() { # answers pings; fails fast once the server has exited
    kill -0 "$db_launcher" 2>/dev/null || { tail -5 "$LOG/mariadb.log" >&3; die "MariaDB exited"; }
    mariadb-admin --no-defaults --socket="$DB_SOCK" ping >/dev/null 2>&1
}
wait_for 60 MariaDB db_up
wait_for 10 "MariaDB pid file" test -s "$RUN/mariadbd.pid"
mariadb --no-defaults --socket="$DB_SOCK" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;"
log "MariaDB up (pid $(cat "$RUN/mariadbd.pid"), socket $DB_SOCK)"

# -------------------------------------------------------------------------- slurmdbd
cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
${AUTH_INFO}
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$CONF_DIR/slurmdbd.conf" # slurmdbd refuses a readable one
# The MariaDB client library takes the socket from MYSQL_UNIX_PORT (slurmdbd.conf has no key).
MYSQL_UNIX_PORT="$DB_SOCK" /usr/sbin/slurmdbd 3>&-
wait_for 30 slurmdbd sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null # also adds account root with user root
fi
log "slurmdbd up (pid $(cat "$RUN/slurmdbd.pid")), cluster $CLUSTER registered"

# ------------------------------------------------------------------ slurmctld + slurmd
/usr/sbin/slurmctld 3>&-
wait_for 30 slurmctld scontrol ping
/usr/sbin/slurmd 3>&-
wait_for 10 "slurmd pid file" test -s "$RUN/slurmd.pid"
log "slurmctld up (pid $(cat "$RUN/slurmctld.pid")), slurmd up (pid $(cat "$RUN/slurmd.pid"))"

end=$(($(date +%s) + 60)) resumed=0
while :; do
    st="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)"
    case "$st" in
        idle | mixed | allocated) break ;;
        drain* | down* | inval* | fail*)
            if [ $resumed -eq 0 ]; then
                log "node state '$st' ($(sinfo -h -n "$HOST" -o %E)): resuming it"
                scontrol update nodename="$HOST" state=resume || true
                resumed=1
            fi
            ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
        tail -20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
        die "node $HOST never became idle (state '$st')"
    fi
    sleep 0.2
done
sinfo -o '%P %a %D %T %N %c %m %G'
log "cluster ready: submit with account root (sbatch -A root), stop with tools/slurm/stop_local_slurm.sh"
