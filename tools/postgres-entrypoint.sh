#!/bin/sh
# The entrypoint of the postgres:15 image tools/build_images.sh makes from
# Debian's postgresql-15 where Docker Hub is out of reach: the part of the
# official image's interface docker-compose.cluster.yml uses, so that file
# runs on either image.
#
#   POSTGRES_PASSWORD  the password of POSTGRES_USER (required on the first start)
#   POSTGRES_USER      the superuser (default postgres)
#   POSTGRES_DB        the database made on the first start (default: POSTGRES_USER)
#   PGDATA             the data directory (default /var/lib/postgresql/data)
#
# The first start (no PG_VERSION in PGDATA): initdb with that superuser and
# password, password authentication (scram-sha-256) for every TCP client, the
# server listening on every address, then the database. Every start: the
# server in the foreground as this process (the image runs as `postgres`).
# Arguments are the server's command line; options alone are given to
# `postgres` (`-c fsync=on`), as the official image does.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
case "${1:-postgres}" in
    -*) set -- postgres "$@" ;;
esac
[ $# -gt 0 ] || set -- postgres

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "postgres-entrypoint: POSTGRES_PASSWORD is not set" >&2; exit 1; }
    user=${POSTGRES_USER:-postgres}
    database=${POSTGRES_DB:-$user}
    # The password reaches initdb through a file only this user can read, never its command line.
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256 \
           --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    # initdb's pg_hba.conf admits TCP from this machine only; the compose network is the boundary here.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$database" != postgres ]; then
        # Single-user mode: no server, no socket to wait for; the session is initdb's superuser.
        printf 'CREATE DATABASE "%s"\n' "$database" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "postgres-entrypoint: made $PGDATA (superuser $user, database $database)" >&2
fi

exec "$@"
