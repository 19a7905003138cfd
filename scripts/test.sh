#!/usr/bin/env bash
# The whole test suite: brings up PostgreSQL and the broker (reusing running
# ones), runs every test of the workspace, and drops the per-test databases.
# Extra arguments go to `cargo test` (e.g. a test name filter).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_tools
ensure_postgres
ensure_broker
install_tansu
# Each test creates its own database; this run's share a prefix, so cleanup
# drops only them, never another run's.
export RC_TEST_DB_PREFIX="rc_test_$(date +%s)_$$_"
drop_test_databases() {
    psql "$PG_ADMIN_URL" -Atqc "SELECT datname FROM pg_database WHERE starts_with(datname, '$RC_TEST_DB_PREFIX')" |
        while read -r db; do
            psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
        done
}
CLEANUP+=(drop_test_databases)

export DATABASE_URL="$PG_ADMIN_URL"
out=$(mktemp -t realchat-test.XXXXXX)
CLEANUP+=("rm -f $out")
status=0
export TANSU_BIN="$TANSU"
# The relay's fault tests run the real relay binary, next to the test binary.
{ cargo build --workspace --locked --bins && cargo test --workspace --locked "$@"; } 2>&1 | tee "$out" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
