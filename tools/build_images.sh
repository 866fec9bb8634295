#!/usr/bin/env bash
# Builds bruto's images on a machine that cannot pull from Docker Hub.
#
#   tools/build_images.sh [--cluster] [--rebuild-bases] [--no-compose-build]
#
# 1. The base image the Dockerfile names, made locally from Debian bookworm
#    with debootstrap + `docker import`, under the public name (skipped when
#    the tag already exists, unless --rebuild-bases):
#      python:3.11-slim  bookworm minbase + python3 (3.11), pip, venv,
#                        ca-certificates; `python` and `pip` on PATH and pip
#                        allowed to install as root, as in the official image
#    Where Docker Hub is reachable, the official image of that name works the
#    same and this step is not needed.
# 2. `docker compose build` of both compose files (the bruto image for
#    docker-compose.yml, the bruto-emulator image for
#    docker-compose.processors.yml), with this host's settings for reaching the
#    Python package index handed to the build as BuildKit secrets, so that none
#    of them ends up in a layer, in the image history or in the repository:
#      pip_ca    the extra CA certificates of this host
#                (/usr/local/share/ca-certificates/*.crt, or $BRUTO_CA_DIR):
#                needed where a TLS-intercepting proxy sits between the build
#                and the index; the build appends them to the image's bundle
#      pip_conf  a pip.conf with this host's index settings (index-url,
#                extra-index-url, trusted-host, timeout) taken from
#                `pip config list` and the PIP_* environment; file:// indexes
#                and find-links are left out (they name host directories the
#                build cannot see)
#    Both default to empty files: on a machine that reaches the index
#    directly, the build uses pip's defaults.
#
# Also, for the compose file's `metrics` profile (Prometheus beside bruto):
#      prom/prometheus:v2.42.0
#                        bookworm minbase + prometheus 2.42 (Debian's package),
#                        laid out as the official image: entrypoint
#                        /bin/prometheus, config /etc/prometheus/prometheus.yml,
#                        data in /prometheus, user nobody, port 9090
#
# With --cluster, also docker-compose.cluster.yml's images (a two-host
# cluster on PostgreSQL, not the challenge's deliverable): the bruto-cluster
# image (the Dockerfile's `cluster` stage, through that file's build, with the
# same secrets), and these two when their tags are missing:
#      postgres:15       bookworm minbase + postgresql-15 (Debian's package),
#                        the official image's interface as far as the cluster
#                        file uses it (tools/postgres-entrypoint.sh:
#                        POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA
#                        /var/lib/postgresql/data), user postgres, port 5432
#      nginx:1.22        bookworm minbase + nginx 1.22 (Debian's package),
#                        `nginx -g 'daemon off;'`, configuration in
#                        /etc/nginx/nginx.conf, port 80, as the official image
#
# Needs: root, a running Docker engine with BuildKit (20.10 or newer), the
# compose v2 plugin (`docker compose`), debootstrap.
# Environment: BRUTO_DEBIAN_MIRROR (default: the first Debian URI of this
# host's apt sources, else http://deb.debian.org/debian), BRUTO_CA_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."

REBUILD_BASES=0
COMPOSE_BUILD=1
CLUSTER=0
for arg in "$@"; do
    case "$arg" in
        --cluster) CLUSTER=1 ;;
        --rebuild-bases) REBUILD_BASES=1 ;;
        --no-compose-build) COMPOSE_BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

PYTHON_TAG=python:3.11-slim
SUITE=bookworm

log() { printf '[build_images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and docker import need it)"
command -v docker >/dev/null || die "no docker client"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
docker compose version >/dev/null 2>&1 || die "no compose v2 plugin (docker compose)"

WORK=$(mktemp -d /tmp/bruto-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

debian_mirror() {
    if [ -n "${BRUTO_DEBIAN_MIRROR:-}" ]; then
        echo "$BRUTO_DEBIAN_MIRROR"; return
    fi
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
              /etc/apt/sources.list 2>/dev/null \
          | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap a minbase bookworm with extra packages into $1, then run $2 in it.
bootstrap() {
    local root=$1 include=$2 mirror
    mirror=$(debian_mirror)
    command -v debootstrap >/dev/null || die "no debootstrap (apt-get install -y debootstrap)"
    log "debootstrap $SUITE ($include) from $mirror"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$root" "$mirror" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
}

# What every image gets before import: a sources list, no caches.
finish_root() {
    local root=$1 mirror
    mirror=$(debian_mirror)
    cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
EOF
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
}

import_root() {
    local root=$1 tag=$2; shift 2
    local changes=()
    for change in "$@"; do changes+=(--change "$change"); done
    log "docker import -> $tag"
    tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
}

# The Prometheus stand-in (see the header), made here when its tag is missing.
PROMETHEUS_TAG=prom/prometheus:v2.42.0
build_prometheus_base() {
    local root="$WORK/prometheus" version
    bootstrap "$root" prometheus
    version=$(chroot "$root" prometheus --version 2>&1 | head -n1)
    case "$version" in
        *"version 2.42."*) ;;
        *) die "Debian's prometheus is '$version', not the 2.42 that $PROMETHEUS_TAG names" ;;
    esac
    # As the official image: data in /prometheus, owned by the user it runs as.
    chroot "$root" install -d -o nobody -g nogroup /prometheus
    finish_root "$root"
    import_root "$root" "$PROMETHEUS_TAG" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'USER nobody' \
        'WORKDIR /prometheus' \
        'EXPOSE 9090' \
        'ENTRYPOINT ["/bin/prometheus"]' \
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}
if [ "$REBUILD_BASES" = 0 ] && have_image "$PROMETHEUS_TAG"; then
    log "$PROMETHEUS_TAG exists (--rebuild-bases to make it again)"
else
    build_prometheus_base
fi
docker run --rm "$PROMETHEUS_TAG" --version 2>&1 | head -n1 >&2

build_python_base() {
    local root="$WORK/python"
    bootstrap "$root" python3,python3-venv,python3-pip,ca-certificates
    chroot "$root" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
    # The official image: `python`/`pip` on PATH, and root installs into
    # /usr/local without Debian's PEP 668 marker getting in the way.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
    finish_root "$root"
    import_root "$root" "$PYTHON_TAG" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        'CMD ["python3"]'
}

if [ "$REBUILD_BASES" = 0 ] && have_image "$PYTHON_TAG"; then
    log "$PYTHON_TAG exists (--rebuild-bases to make it again)"
else
    build_python_base
fi
docker run --rm "$PYTHON_TAG" sh -c 'python --version && pip --version' >&2

# The cluster's two stand-ins (see the header), made when their tags are missing.
POSTGRES_TAG=postgres:15
NGINX_TAG=nginx:1.22
build_postgres_base() {
    local root="$WORK/postgres" version
    bootstrap "$root" postgresql-15
    version=$(chroot "$root" /usr/lib/postgresql/15/bin/postgres --version)
    case "$version" in
        *"PostgreSQL) 15."*) ;;
        *) die "Debian's postgresql-15 is '$version', not the 15 that $POSTGRES_TAG names" ;;
    esac
    # The package made a `main` cluster of its own (/etc/postgresql/15/main):
    # the entrypoint makes one in PGDATA instead.
    rm -rf "$root"/etc/postgresql/15/main "$root"/var/lib/postgresql/15
    install -m 0755 tools/postgres-entrypoint.sh "$root/usr/local/bin/docker-entrypoint.sh"
    chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
    # Where the server puts its unix socket (Debian's default directory).
    chroot "$root" install -d -o postgres -g postgres -m 2775 /run/postgresql
    finish_root "$root"
    import_root "$root" "$POSTGRES_TAG" \
        'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        'ENV PGDATA=/var/lib/postgresql/data' \
        'USER postgres' \
        'VOLUME /var/lib/postgresql/data' \
        'EXPOSE 5432' \
        'ENTRYPOINT ["docker-entrypoint.sh"]' \
        'CMD ["postgres"]'
}
build_nginx_base() {
    local root="$WORK/nginx" version
    bootstrap "$root" nginx
    version=$(chroot "$root" nginx -v 2>&1)
    case "$version" in
        *"nginx/1.22."*) ;;
        *) die "Debian's nginx is '$version', not the 1.22 that $NGINX_TAG names" ;;
    esac
    finish_root "$root"
    import_root "$root" "$NGINX_TAG" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'EXPOSE 80' \
        'CMD ["nginx", "-g", "daemon off;"]'
}
if [ "$CLUSTER" = 1 ]; then
    if [ "$REBUILD_BASES" = 0 ] && have_image "$POSTGRES_TAG"; then
        log "$POSTGRES_TAG exists (--rebuild-bases to make it again)"
    else
        build_postgres_base
    fi
    docker run --rm --entrypoint postgres "$POSTGRES_TAG" --version >&2
    if [ "$REBUILD_BASES" = 0 ] && have_image "$NGINX_TAG"; then
        log "$NGINX_TAG exists (--rebuild-bases to make it again)"
    else
        build_nginx_base
    fi
    docker run --rm "$NGINX_TAG" nginx -v
fi

[ "$COMPOSE_BUILD" = 1 ] || exit 0

# ---- pip's settings for the build, as secret files (see the header) --------
CA_DIR=${BRUTO_CA_DIR:-/usr/local/share/ca-certificates}
: > "$WORK/pip_ca"
if compgen -G "$CA_DIR/*.crt" >/dev/null; then
    cat "$CA_DIR"/*.crt > "$WORK/pip_ca"
    log "pip_ca: $(grep -c 'BEGIN CERTIFICATE' "$WORK/pip_ca") certificate(s) from $CA_DIR"
fi

python3 - "$WORK/pip_conf" <<'EOF'
"""Writes the host's network settings for pip as a pip.conf; prints what it kept."""
import os
import subprocess
import sys

keys = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"}
found = {}
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, check=False).stdout
except OSError:
    out = ""
for line in out.splitlines():
    name, _, value = line.partition("=")
    key = name.rpartition(".")[2]
    if key in keys:
        found[key] = value.strip().strip("'\"")
for env, key in [("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                 ("PIP_TRUSTED_HOST", "trusted-host"), ("PIP_DEFAULT_TIMEOUT", "timeout"),
                 ("PIP_TIMEOUT", "timeout"), ("PIP_RETRIES", "retries")]:
    if os.environ.get(env):
        found[key] = os.environ[env]
if "default-timeout" in found:
    found.setdefault("timeout", found.pop("default-timeout"))
for key in ("index-url", "extra-index-url"):
    if key in found:
        # Local indexes (file://) name directories of this host, not of the build.
        urls = [u for u in found[key].split() if not u.startswith("file:")]
        if urls:
            found[key] = " ".join(urls)
        else:
            del found[key]
with open(sys.argv[1], "w") as f:
    if found:
        f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(found.items())))
print("pip_conf: " + (", ".join(sorted(found)) or "pip defaults"), file=sys.stderr)
EOF

export BRUTO_PIP_CA="$WORK/pip_ca" BRUTO_PIP_CONF="$WORK/pip_conf"
log "docker compose build"
docker compose -f docker-compose.yml build
docker compose -f docker-compose.processors.yml build
if [ "$CLUSTER" = 1 ]; then
    docker compose -f docker-compose.cluster.yml build
fi
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E "^(bruto|bruto-emulator|bruto-cluster|python|postgres|nginx):" >&2
