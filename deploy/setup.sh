#!/usr/bin/env bash
# One-command set-up for a fresh Debian machine, then run the demo or the tests.
#
#   bash deploy/setup.sh demo     # install what is missing, run `jobyard demo`
#   bash deploy/setup.sh test     # install what is missing, run the test suite
#   bash deploy/setup.sh install  # only install and start what is missing
#
# Idempotent: installs Debian packages only when their commands are missing, starts
# dockerd only when no engine answers, and reinstalls the virtualenv only when
# pyproject.toml changed. Needs root (or sudo) for apt-get and dockerd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pair in "$@"; do
        local cmd="${pair%%:*}" pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then return; fi
    log "starting dockerd"
    $SUDO mkdir -p /var/log
    $SUDO bash -c 'nohup dockerd >/var/log/jobyard-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then return; fi
        sleep 0.5
    done
    log "dockerd did not start; see /var/log/jobyard-dockerd.log"
    tail -20 /var/log/jobyard-dockerd.log >&2 || true
    exit 1
}

install_venv() {
    local stamp="$VENV/.jobyard-installed"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating the virtualenv at $VENV"
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing jobyard and its test dependencies into $VENV"
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        "$VENV/bin/pip" install -q -e "$ROOT[test]"
        echo "$want" > "$stamp"
    fi
}

install_all() {
    apt_install dockerd:docker.io redis-server:redis-server /bin/busybox:busybox-static \
        ip:iproute2 python3:python3 chromium:chromium chromedriver:chromium-driver \
        debootstrap:debootstrap docker-compose:docker-compose systemd-analyze:systemd \
        docker-registry:docker-registry htpasswd:apache2-utils
    if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
        log "installing python3-venv"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    start_dockerd
    install_venv
}

cmd="${1:-install}"
shift || true
cd "$ROOT"
install_all
case "$cmd" in
    install) log "ready" ;;
    demo) exec "$VENV/bin/jobyard" demo "$@" ;;
    test) exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: bash deploy/setup.sh [install|demo|test] [args...]" >&2; exit 2 ;;
esac
