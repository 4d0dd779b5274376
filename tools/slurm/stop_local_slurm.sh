#!/usr/bin/env bash
# stop_local_slurm.sh: stop the daemons that start_local_slurm.sh started.
#
#   bash tools/slurm/stop_local_slurm.sh [--purge] [--quiet]
#
# It ends only the processes named by the pid files under CONFAGG_SLURM_DIR (default
# /tmp/confagg-slurm), and only after checking that each pid still runs the expected program:
# slurmd and slurmctld first, then slurmdbd, then MariaDB and munged. Running jobs end with
# slurmd. A daemon that ignores TERM for 10 s gets KILL.
#   --purge  also delete the state folder (jobs, accounting data, logs, munge key) and the
#            config files in /etc/slurm that carry start_local_slurm.sh's marker
#   --quiet  print only problems
set -uo pipefail

STATE="${CONFAGG_SLURM_DIR:-/tmp/confagg-slurm}"
RUN="$STATE/run"
MARKER="# confagg-local-slurm: written by tools/slurm/start_local_slurm.sh"
PURGE=0 QUIET=0
for a in "$@"; do
    case "$a" in
        --purge) PURGE=1 ;;
        --quiet) QUIET=1 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done
say() { [ $QUIET -eq 1 ] || echo "[stop_local_slurm] $*"; }

PIDS=() NAMES=()
term() { # term NAME: send TERM to the pid in $RUN/NAME.pid if it still runs NAME
    local f="$RUN/$1.pid" pid comm
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null)
    if [ "$comm" != "$1" ]; then
        say "$1: pid $pid no longer runs $1 (now: ${comm:-nothing}): left alone"
        rm -f "$f"
        return 0
    fi
    kill -TERM "$pid" && PIDS+=("$pid") NAMES+=("$1")
}
reap() { # wait up to 10 s for each TERMed pid, KILL the ones still there
    local i
    for i in "${!PIDS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "${PIDS[$i]}" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "${PIDS[$i]}" 2>/dev/null; then
            say "${NAMES[$i]}: pid ${PIDS[$i]} ignored TERM: KILL"
            kill -KILL "${PIDS[$i]}" 2>/dev/null
        fi
        rm -f "$RUN/${NAMES[$i]}.pid"
        say "${NAMES[$i]}: stopped (pid ${PIDS[$i]})"
    done
    PIDS=() NAMES=()
}

term slurmd
term slurmctld
reap
term slurmdbd
reap
term mariadbd
term munged
reap

if [ $PURGE -eq 1 ]; then
    for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf /etc/slurm/gres.conf; do
        if [ -e "$f" ] && grep -qxF "$MARKER" "$f"; then rm -f "$f"; fi
    done
    case "$STATE" in
        / | "") ;;
        *) rm -rf "$STATE" && say "purged $STATE and the configs it wrote" ;;
    esac
fi
exit 0
