#!/usr/bin/env bash
# Proves the README's front door on a clean Debian: in a fresh bookworm root
# (debootstrap, nothing but apt), clone this repository and run exactly what
# the README says: `make test`, then `make up`, one payment, the summary,
# `make down`.
#
#   tools/fresh_debian.sh [--keep] [--root DIR] [--test-args 'ARGS']
#
# What the root gets before the README's commands, as a newcomer's machine
# would have or the README asks for: `make` and `git` (the README's
# prerequisite line), curl (to try the gateway as the README shows), and this
# host's network settings for reaching the package index (its extra CA
# certificates and PIP_CERT: a TLS-intercepting proxy sits in front of PyPI
# here). Everything else (python3-venv, nginx, the Python packages) must be
# installed by `make` itself.
#
# Needs: root, debootstrap, network access to a Debian mirror and PyPI.
# Ports: `make up` takes 9999, 8001 and 8002 of this host for a few seconds.
# Environment: BRUTO_DEBIAN_MIRROR (default: http://deb.debian.org/debian).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
KEEP=0
ROOT=""
TEST_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --root) ROOT=$2; shift ;;
        --test-args) TEST_ARGS=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[fresh_debian %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (debootstrap and chroot need it)"; exit 1; }
command -v debootstrap >/dev/null || { log "no debootstrap (apt-get install -y debootstrap)"; exit 1; }

ROOT=${ROOT:-$(mktemp -d /tmp/bruto-fresh.XXXXXX)}
MOUNTS=()
cleanup() {
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -R -l "${MOUNTS[$i]}" 2>/dev/null || true; done
    # Never remove through a mount that is still there (it would reach the host's /dev/shm).
    if awk -v root="$ROOT/" 'index($2, root) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "mounts remain under $ROOT; not removing it"
    elif [ "$KEEP" = 0 ]; then
        rm -rf "$ROOT"
    else
        log "root kept at $ROOT"
    fi
}
trap cleanup EXIT

mirror=${BRUTO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log "debootstrap bookworm (minbase) from $mirror into $ROOT"
debootstrap --variant=minbase bookworm "$ROOT" "$mirror" > "$ROOT.debootstrap.log" 2>&1 \
    || { tail -n 30 "$ROOT.debootstrap.log" >&2; exit 1; }
rm -f "$ROOT.debootstrap.log"

# /sys recursively, with the cgroup hierarchies below it (the stack's --limits).
for fs in proc sys dev dev/pts dev/shm; do
    if [ "$fs" = sys ]; then
        mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"
    else
        mount --bind "/$fs" "$ROOT/$fs"
    fi
    MOUNTS+=("$ROOT/$fs")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The repository, read-only: cloned inside as a newcomer would.
mkdir -p "$ROOT/mnt/origin"
mount --bind "$REPO" "$ROOT/mnt/origin"
mount -o remount,bind,ro "$ROOT/mnt/origin"
MOUNTS+=("$ROOT/mnt/origin")
# This host's extra CA certificates (for the package index's TLS proxy).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi

inside() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 \
        bash -euo pipefail -c "$1"
}

log "the machine: apt-get install make git curl ca-certificates (the README's prerequisites)"
inside 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            make git curl ca-certificates >/dev/null && update-ca-certificates >/dev/null'
inside 'for c in python3 nginx pip3; do command -v $c >/dev/null && echo "already there: $c" || echo "not there: $c"; done'
inside 'git config --global --add safe.directory /mnt/origin/.git && git clone -q /mnt/origin /root/bruto \
        && git -C /root/bruto log --oneline -1'

log "README: make test"
inside "cd /root/bruto && make test PYTEST_ARGS='$TEST_ARGS'"

log "README: make up, a payment, the summary, make down"
inside 'cd /root/bruto && make up
        curl -sS -o /dev/null -w "POST /payments -> %{http_code}\n" -XPOST localhost:9999/payments \
             -H "Content-Type: application/json" \
             -d "{\"correlationId\":\"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3\",\"amount\":19.90}"
        for i in $(seq 50); do
            summary=$(curl -sS localhost:9999/payments-summary)
            case "$summary" in *"\"totalRequests\":1,"*) break ;; esac
            sleep 0.1
        done
        echo "GET /payments-summary -> $summary"
        .venv/bin/bruto-shm | head -3
        make down
        case "$summary" in *"\"default\":{\"totalRequests\":1,\"totalAmount\":19.90}"*) ;; *) echo "summary does not show the payment" >&2; exit 1 ;; esac'
log "fresh Debian: make test green, make up served a payment"
