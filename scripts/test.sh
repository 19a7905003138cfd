#!/usr/bin/env bash
# The whole test suite: brings up PostgreSQL and the broker (reusing running
# ones), runs every test of the workspace, and drops the per-test databases.
# Extra arguments go to `cargo test` (e.g. a test name filter).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_tools
ensure_postgres
ensure_broker
drop_test_databases() {
    psql "$PG_ADMIN_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'rc\_test\_%'" |
        while read -r db; do
            psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
        done
}
CLEANUP+=(drop_test_databases)

export DATABASE_URL="$PG_ADMIN_URL"
cargo test --workspace --locked "$@"
