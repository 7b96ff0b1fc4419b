#!/usr/bin/env bash
# Start a private Docker engine for the tests and make it ready to use:
#   - dockerd with its own socket, data and exec dirs under DIR, so it never touches a
#     Docker engine the machine may already run;
#   - the image interlook-test-busybox:latest, imported from Debian's busybox-static,
#     because CI has no access to a container registry;
#   - a single-node swarm, because the swarm provider needs a manager.
#
# Usage: start-dockerd.sh [DIR]   (default /tmp/interlook-dockerd)
# Progress goes to stderr; the last line on stdout is the docker host URL
# (unix://DIR/docker.sock), which is also written to DIR/docker-host.
# Running it again against a live engine only re-checks the image and the swarm.
set -euo pipefail

IMAGE=interlook-test-busybox:latest
START_TIMEOUT=60
# Applets the tests rely on; every other applet busybox offers is linked too.
REQUIRED_APPLETS=(sh httpd sleep echo cat)

say() { echo "start-dockerd: $*" >&2; }
die() { say "error: $*"; exit 1; }

dir=${1:-/tmp/interlook-dockerd}

[[ $(id -u) -eq 0 ]] || die "must run as root: dockerd needs it"
command -v dockerd >/dev/null || die "dockerd not found; install the Debian package docker.io"
command -v docker >/dev/null || die "docker CLI not found; install the Debian package docker.io"

dir=$(realpath -m -- "$dir")
sock=$dir/docker.sock
# The kernel limits unix socket paths to 108 bytes; keep a margin.
if (( ${#sock} > 100 )); then
    die "socket path $sock is ${#sock} characters; pass a shorter DIR (at most 100 in all)"
fi
mkdir -p "$dir" || die "cannot create $dir"
host=unix://$sock
log=$dir/dockerd.log

dk() { docker -H "$host" "$@"; }

engine_answers() { dk info >/dev/null 2>&1; }

start_engine() {
    local pid waited=0
    say "starting dockerd in $dir (log: $log)"
    # stdin/stdout/stderr are detached so that a caller capturing our output with
    # $(...) or a pipe does not wait for the daemon to exit. setsid keeps a Ctrl-C
    # aimed at the caller from killing the daemon before the caller's cleanup runs.
    # dockerd uses a system containerd when one listens on /run/containerd; the
    # namespaces keep our containers apart from another engine's in that case.
    setsid dockerd \
        --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
        -H "$host" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.pid" \
        --containerd-namespace interlook-test \
        --containerd-plugins-namespace interlook-test-plugins \
        </dev/null >>"$log" 2>&1 &
    pid=$!
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited before answering; its log follows"
            tail -n 60 "$log" >&2 || true
            die "dockerd failed to start (full log: $log)"
        fi
        if (( waited >= START_TIMEOUT )); then
            say "dockerd did not answer on $sock within ${START_TIMEOUT}s; its log follows"
            tail -n 60 "$log" >&2 || true
            die "dockerd is not ready (pid $pid still running; full log: $log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd is ready after about ${waited}s"
}

# A package that is installed, as opposed to removed with its config files kept.
package_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

import_image() {
    local tmp busybox root applet applets
    if dk image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image $IMAGE already present"
        return
    fi
    tmp=$(mktemp -d /tmp/interlook-image.XXXXXX)
    # shellcheck disable=SC2064  # the path is fixed now, expand it now
    trap "rm -rf '$tmp'" EXIT
    # Only the busybox-static build works in an empty root filesystem; the plain
    # busybox package is dynamically linked, so /bin/busybox alone is not enough.
    if package_installed busybox-static; then
        busybox=$(dpkg -L busybox-static | grep -m1 -E '/bin/busybox$') \
            || die "package busybox-static is installed but ships no bin/busybox"
    else
        say "busybox-static is not installed; downloading it with apt-get"
        # apt drops to the _apt user for downloads; let it write here.
        chmod 0777 "$tmp"
        (cd "$tmp" && apt-get download busybox-static >&2) \
            || die "apt-get download busybox-static failed (is apt-get update done?)"
        dpkg -x "$tmp"/busybox-static_*.deb "$tmp/pkg" || die "cannot unpack busybox-static"
        busybox=$tmp/pkg/bin/busybox
    fi
    [[ -x $busybox ]] || die "$busybox is missing or not executable"

    root=$tmp/root
    mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,var/www}
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    # Read the list once: "busybox --list | grep -q" can fail under pipefail when
    # grep exits early and busybox dies of SIGPIPE.
    applets=$("$busybox" --list) || die "$busybox --list failed"
    for applet in "${REQUIRED_APPLETS[@]}"; do
        grep -qx -- "$applet" <<<"$applets" \
            || die "$busybox has no applet '$applet', which the tests need"
    done
    for applet in $applets; do
        [[ $applet == busybox || $applet == */* ]] && continue
        ln -s busybox "$root/bin/$applet"
    done

    say "importing $IMAGE from $busybox"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -c . \
        | dk import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null \
        || die "docker import of $IMAGE failed"
}

init_swarm() {
    local state out
    state=$(dk info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}') \
        || die "docker info failed on $host"
    if [[ $state == "active true" ]]; then
        say "engine is already a swarm manager"
        return
    fi
    say "initialising a single-node swarm (state was: $state)"
    if ! out=$(dk swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 2>&1); then
        if grep -q "already part of a swarm" <<<"$out"; then
            say "engine is already part of a swarm"
            return
        fi
        echo "$out" >&2
        die "docker swarm init failed"
    fi
}

if engine_answers; then
    say "dockerd already answers on $sock; reusing it"
else
    if [[ -S $sock ]]; then
        # A socket nobody answers on is left over from a daemon that died; dockerd
        # would refuse to bind over it.
        rm -f "$sock"
    fi
    start_engine
fi
import_image
init_swarm

echo "$host" >"$dir/docker-host"
echo "$host"
