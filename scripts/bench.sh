#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): brings up PostgreSQL and the broker
# (reusing running ones), builds the release binaries and runs
# realchat-bench, which starts the server and the relay itself. Arguments go
# to realchat-bench (`--help` lists them). With --smoke the debug build is
# used: a smoke run only checks that the harness works.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_tools
ensure_postgres
ensure_broker
profile=release
for arg in "$@"; do
    [ "$arg" = --smoke ] && profile=debug
done
if [ "$profile" = release ]; then
    cargo build --release --locked -p realchat-auth -p realchat-relay -p realchat-bench --bins
else
    cargo build --locked -p realchat-auth -p realchat-relay -p realchat-bench --bins
fi
BENCH_ADMIN_DATABASE_URL="$PG_ADMIN_URL" "target/$profile/realchat-bench" --bin-dir "target/$profile" "$@"
