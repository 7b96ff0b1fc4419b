#!/usr/bin/env bash
# Stop the private Docker engine started by start-dockerd.sh.
#
# Usage: stop-dockerd.sh [DIR]   (default /tmp/interlook-dockerd)
# Removes all containers and leaves the swarm first, so that a later start from the
# same DIR begins clean and shutdown does not wait for containers that ignore SIGTERM.
# Exits 0 when no engine runs from DIR.
set -euo pipefail

STOP_TIMEOUT=30

say() { echo "stop-dockerd: $*" >&2; }
die() { say "error: $*"; exit 1; }

dir=${1:-/tmp/interlook-dockerd}
if [[ ! -d $dir ]]; then
    say "$dir does not exist; nothing to stop"
    exit 0
fi
dir=$(cd "$dir" && pwd)
sock=$dir/docker.sock
host=unix://$sock
pidfile=$dir/dockerd.pid

dk() { docker -H "$host" "$@"; }

remove_containers() {
    local containers
    mapfile -t containers < <(dk ps -aq 2>/dev/null || true)
    if (( ${#containers[@]} > 0 )); then
        dk rm -f "${containers[@]}" >/dev/null 2>&1 || say "could not remove every container"
    fi
}

if [[ -S $sock ]] && command -v docker >/dev/null && dk info >/dev/null 2>&1; then
    # Containers go first with SIGKILL: a swarm leave or a daemon shutdown would stop
    # them with SIGTERM and wait out the grace period for each one that ignores it
    # (a busybox "sleep" running as pid 1 does). Once more after leaving, for any
    # container the swarm started in between.
    remove_containers
    dk swarm leave --force >/dev/null 2>&1 || true
    remove_containers
fi

if [[ ! -s $pidfile ]]; then
    say "no pidfile at $pidfile; nothing to stop"
    exit 0
fi
pid=$(<"$pidfile")
[[ $pid =~ ^[0-9]+$ ]] || die "$pidfile does not hold a process id: '$pid'"
if ! kill -0 "$pid" 2>/dev/null; then
    say "dockerd (pid $pid) is not running"
    rm -f "$pidfile"
    exit 0
fi
# A stale pidfile may name a pid that now belongs to something else.
comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
[[ $comm == dockerd ]] || die "pid $pid from $pidfile is '$comm', not dockerd; not killing it"

say "stopping dockerd (pid $pid)"
kill -TERM "$pid"
for ((i = 0; i < STOP_TIMEOUT; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
if kill -0 "$pid" 2>/dev/null; then
    say "dockerd did not stop within ${STOP_TIMEOUT}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) survived SIGKILL"
fi
rm -f "$pidfile"
# dockerd leaves its bind mount of the host network namespace behind; unmount it and
# anything else under DIR so that DIR can be deleted.
awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r \
    | while read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || say "could not unmount $mnt"
    done
say "dockerd stopped"
