#!/usr/bin/env bash
# Build the jobyard image (agent, autoscaler, Flower) on a machine with no registry.
#
#   bash deploy/build-image.sh                 # jobyard/jobyard:latest from a local base
#   JOBYARD_IMAGE=me/jobyard:1 bash deploy/build-image.sh
#   BASE_IMAGE=python:3.11-slim-bookworm bash deploy/build-image.sh   # from an official image
#
# With a registry at hand, `docker build -f deploy/Dockerfile -t jobyard/jobyard .` from the
# project root is all it takes. Without one (as on the CI machines), this script:
#
#   1. makes the base image jobyard/base:bookworm from Debian's mirror, once: debootstrap
#      --variant=minbase with python3, python3-venv and redis-server, then `docker import`.
#      It is skipped when the image exists (delete it to rebuild).
#   2. makes jobyard/redis:bookworm from that base: Debian's redis-server as user redis in
#      /data, a stand-in for the official redis image the compose file uses by default.
#   3. downloads jobyard's dependencies as wheels on this host (pip, through its own
#      index configuration; deploy/wheelhouse.py adds what the base's Python version
#      needs) into a clean build context, so the build itself needs no network.
#   4. builds deploy/Dockerfile from that context: `pip install` of the source tree.
#
# Idempotent; needs root (or sudo) for debootstrap, and docker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${JOBYARD_IMAGE:-jobyard/jobyard:latest}"
LOCAL_BASE="${JOBYARD_LOCAL_BASE:-jobyard/base:bookworm}"
REDIS_IMAGE="${JOBYARD_LOCAL_REDIS:-jobyard/redis:bookworm}"
BASE_IMAGE="${BASE_IMAGE:-$LOCAL_BASE}"
# Extras of jobyard the image installs (aws: boto3, for `jobyard autoscale --provider aws`).
EXTRAS="${JOBYARD_EXTRAS:-aws}"
MIRROR="${JOBYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf '\033[1m[build-image]\033[0m %s\n' "$*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/jobyard-build.XXXXXX")"
trap '$SUDO rm -rf "$WORK"' EXIT

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_local_base() {
    if has_image "$LOCAL_BASE"; then
        log "$LOCAL_BASE exists; not rebuilding it"
        return
    fi
    command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
    local rootfs="$WORK/rootfs"
    log "debootstrap $SUITE (minbase + python3, python3-venv, redis-server) from $MIRROR"
    $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,redis-server \
        "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
    $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    log "importing the root filesystem as $LOCAL_BASE"
    $SUDO tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE from $MIRROR" - "$LOCAL_BASE" >/dev/null
}

build_local_redis() {
    log "building $REDIS_IMAGE from $LOCAL_BASE"
    docker build -q --network none -t "$REDIS_IMAGE" --build-arg "BASE_IMAGE=$LOCAL_BASE" - >/dev/null <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN install -d -o redis -g redis -m 0750 /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
EOF
}

assemble_context() {
    local context="$WORK/context"
    mkdir -p "$context/deploy/wheels"
    cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$context/"
    cp -r "$ROOT/tasks" "$ROOT/executor" "$ROOT/autoscaler" "$ROOT/jobyard" "$context/"
    find "$context" -name __pycache__ -prune -exec rm -rf {} +
    cp "$ROOT/deploy/Dockerfile" "$context/deploy/"
    local version
    version="$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')"
    log "downloading jobyard's dependencies as wheels for Python $version"
    "$PYTHON" "$ROOT/deploy/wheelhouse.py" "$context/deploy/wheels" "$version" "$ROOT/pyproject.toml" "$EXTRAS" \
        >"$WORK/wheels.log" 2>&1 || { tail -30 "$WORK/wheels.log" >&2; exit 1; }
    echo "$context"
}

pip_args=""
network=default
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
    build_local_base
    build_local_redis
    # No registry in reach: the wheels in the context are all there is, and the build
    # needs no network at all.
    pip_args="--no-index"
    network=none
fi
context="$(assemble_context)"
log "building $IMAGE from $BASE_IMAGE"
docker build -q --network "$network" -f "$context/deploy/Dockerfile" -t "$IMAGE" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_INSTALL_ARGS=$pip_args" --build-arg "JOBYARD_EXTRAS=$EXTRAS" \
    --label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$context" >/dev/null
log "built $IMAGE"
