#!/usr/bin/env bash
# Shared by scripts/run.sh and scripts/test.sh: bring up what the service and
# its tests need, reusing anything that already runs, and stop on exit only
# what this script started (so a run leaves the machine as it found it).
#
#   PostgreSQL: $DATABASE_URL if set; else the local cluster on 127.0.0.1:5432
#               (started if installed and stopped; installed with apt when
#               missing and run as root).
#   Broker:     $KAFKA_BOOTSTRAP_SERVERS if set; else tansu on 127.0.0.1:9092
#               (installed with `cargo install` when absent; in-memory storage).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANSU_VERSION=0.6.0
TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
# Where cargo puts the binaries (honours CARGO_TARGET_DIR).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BROKER_PORT=9092

CLEANUP=()
cleanup() {
    local i
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUP[i]}" || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to $2 seconds for port $1; $3 names the service.
wait_port() {
    local port=$1 secs=$2 what=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        port_open "$port" && return 0
        sleep 0.1
    done
    die "$what did not open port $port within ${secs}s"
}

# Ensures PostgreSQL and exports PG_ADMIN_URL (a URL of an existing database
# on the server, for creating others).
ensure_postgres() {
    if [ -n "${DATABASE_URL:-}" ]; then
        log "PostgreSQL: using DATABASE_URL"
        PG_ADMIN_URL="$DATABASE_URL"
        export PG_ADMIN_URL
        return
    fi
    PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
    export PG_ADMIN_URL
    if port_open 5432; then
        log "PostgreSQL: reusing the server on 127.0.0.1:5432"
        return
    fi
    if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run as root to install it, or set DATABASE_URL"
        log "PostgreSQL: installing Debian's postgresql package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version conf rule="host all postgres 127.0.0.1/32 trust"
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    conf="/etc/postgresql/$version/main/pg_hba.conf"
    # Loopback only, as on the development machines: trust the postgres role
    # from 127.0.0.1 so tests and local runs need no password (a stock
    # Debian cluster asks for one over TCP).
    if [ -w "$conf" ] && ! grep -qxF "$rule" "$conf"; then
        log "PostgreSQL: adding '$rule' to $conf"
        sed -i "1i $rule" "$conf"
    fi
    if pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
        # Running but not on 127.0.0.1:5432 yet (just installed): reload the rule.
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    else
        log "PostgreSQL: starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        CLEANUP+=("pg_ctlcluster --skip-systemctl-redirect $version main stop")
    fi
    wait_port 5432 60 PostgreSQL
}

# Creates database $1 on the server of PG_ADMIN_URL unless it exists.
ensure_database() {
    local name=$1
    if ! psql "$PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
        psql "$PG_ADMIN_URL" -qc "CREATE DATABASE \"$name\"" >/dev/null
    fi
}

# Installs tansu when absent (the tests also start brokers of their own).
install_tansu() {
    if ! "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        log "Broker: installing tansu $TANSU_VERSION from crates.io (about 15 min the first time)"
        cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
    fi
}

# Ensures the broker and exports KAFKA_BOOTSTRAP_SERVERS.
ensure_broker() {
    if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
        log "Broker: using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
        return
    fi
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT"
    if port_open "$BROKER_PORT"; then
        log "Broker: reusing the one on 127.0.0.1:$BROKER_PORT"
        return
    fi
    install_tansu
    local logfile
    logfile=$(mktemp -t tansu.XXXXXX.log)
    log "Broker: starting tansu on 127.0.0.1:$BROKER_PORT (log: $logfile)"
    "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --storage-engine "memory://tansu/" >"$logfile" 2>&1 &
    local pid=$!
    CLEANUP+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f $logfile")
    wait_port "$BROKER_PORT" 60 tansu
}

# Debian packages the Rust build needs (a C toolchain, make and perl for
# librdkafka, psql for the scripts); installed when missing and run as root.
ensure_build_tools() {
    local missing=()
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v perl >/dev/null || missing+=(perl)
    command -v psql >/dev/null || missing+=(postgresql-client)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them or run as root"
        log "Installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
