#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): brings up PostgreSQL and the broker
# (reusing running ones), builds the release binaries and runs
# realchat-bench, which starts the server and the relay itself. Arguments go
# to realchat-bench (`--help` lists them). With --smoke the debug build is
# used: a smoke run only checks that the harness works.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

profile=release
json=()
for arg in "$@"; do
    case "$arg" in
        --smoke) profile=debug ;;
        # Help needs neither a database nor a broker.
        -h | --help) exec cargo run -q --locked -p realchat-bench -- --help ;;
    esac
done
# The report goes under the target directory; a smoke run's figures mean
# nothing, so they are kept apart from a real run's.
if [[ " $* " != *" --json"* ]]; then
    if [ "$profile" = debug ]; then
        json=(--json "$TARGET_DIR/bench/smoke.json")
    else
        json=(--json "$TARGET_DIR/bench/results.json")
    fi
fi
ensure_build_tools
ensure_postgres
ensure_broker
if [ "$profile" = release ]; then
    cargo build --release --locked -p realchat-auth -p realchat-relay -p realchat-bench --bins
else
    cargo build --locked -p realchat-auth -p realchat-relay -p realchat-bench --bins
fi
BENCH_ADMIN_DATABASE_URL="$PG_ADMIN_URL" "$TARGET_DIR/$profile/realchat-bench" \
    --bin-dir "$TARGET_DIR/$profile" "${json[@]}" "$@"
