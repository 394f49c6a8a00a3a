#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the `ctrbench tune` storage tests.
#
# Installs PostgreSQL from the Debian packages when it is missing (apt-get), creates a cluster
# in $CTRBENCH_PG_DIR (default /tmp/ctrbench-pg), starts it listening on 127.0.0.1 only
# ($CTRBENCH_PG_PORT, default 55432), creates the role and database `ctrbench` (password
# `ctrbench`), and prints the line
#
#     export CTRBENCH_TEST_POSTGRES_URL=postgresql://ctrbench:ctrbench@127.0.0.1:55432/ctrbench
#
# on stdout (everything else goes to stderr). Idempotent: a second call reuses the cluster and
# the running server. Usage:
#
#     eval "$(.ci/postgres.sh)"          # sets CTRBENCH_TEST_POSTGRES_URL in this shell
#     .ci/postgres.sh stop               # stops the server (the cluster directory is kept)
#
# Runs as root (the server itself then runs as the `postgres` system user) or as a normal user
# (needs sudo for the apt-get step only when PostgreSQL is not installed yet).
set -euo pipefail

PG_DIR="${CTRBENCH_PG_DIR:-/tmp/ctrbench-pg}"
PG_PORT="${CTRBENCH_PG_PORT:-55432}"
DB_NAME="ctrbench"
DB_USER="ctrbench"
DB_PASS="ctrbench"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    fi
}

BINDIR="$(find_bindir)"
if [[ -z "$BINDIR" ]]; then
    log "PostgreSQL not found: installing it with apt-get"
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
    BINDIR="$(find_bindir)"
    if [[ -z "$BINDIR" ]]; then
        log "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/pg_ctl was found"
        exit 1
    fi
fi

# The server refuses to run as root: run it as the `postgres` system user in that case.
as_owner() {
    if [[ "$(id -u)" == "0" ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ "${1:-}" == "stop" ]]; then
    if [[ -f "$PG_DIR/data/postmaster.pid" ]]; then
        as_owner "$BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >&2
    else
        log "no server running in $PG_DIR"
    fi
    exit 0
fi

mkdir -p "$PG_DIR"
if [[ "$(id -u)" == "0" ]]; then
    if ! id postgres >/dev/null 2>&1; then
        log "the postgres system user is missing (the Debian package creates it)"
        exit 1
    fi
    chown postgres:postgres "$PG_DIR"
fi
chmod 700 "$PG_DIR"

if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
    log "creating a cluster in $PG_DIR/data"
    rm -rf "$PG_DIR/data"
    # local socket: trust (for this script's own set-up); TCP: password (scram-sha-256)
    as_owner "$BINDIR/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 >&2
fi

if as_owner "$BINDIR/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "server already running in $PG_DIR/data"
else
    log "starting the server on 127.0.0.1:$PG_PORT"
    as_owner "$BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=200" \
        start >&2
fi

psql_admin() {
    as_owner "$BINDIR/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -qtA "$@"
}

if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]]; then
    psql_admin -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASS'" >&2
fi
if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >&2
fi

URL="postgresql://$DB_USER:$DB_PASS@127.0.0.1:$PG_PORT/$DB_NAME"
log "ready: $URL"
echo "export CTRBENCH_TEST_POSTGRES_URL=$URL"
