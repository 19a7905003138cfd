#!/usr/bin/env bash
# Runs the whole service in the foreground: PostgreSQL, the broker, the auth
# server and the relay. Ctrl-C stops everything this script started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_tools
ensure_postgres
ensure_broker
if [ -z "${DATABASE_URL:-}" ]; then
    ensure_database realchat_auth
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/realchat_auth"
fi

cargo build --workspace --locked --bins
export AUTH_GRPC_ADDR="${AUTH_GRPC_ADDR:-127.0.0.1:50051}"
"$TARGET_DIR/debug/realchat-auth" &
auth=$!
CLEANUP+=("kill $auth 2>/dev/null; wait $auth 2>/dev/null")
wait_port "${AUTH_GRPC_ADDR##*:}" 120 realchat-auth
"$TARGET_DIR/debug/realchat-relay" &
relay=$!
CLEANUP+=("kill $relay 2>/dev/null; wait $relay 2>/dev/null")
log "Auth server on $AUTH_GRPC_ADDR, relay publishing to $KAFKA_BOOTSTRAP_SERVERS; Ctrl-C stops all"
# Stay up while either runs: stopping the relay alone (to watch rows wait in
# the outbox, say) leaves the server serving. Say when one exits.
declare -A name=([$auth]=realchat-auth [$relay]=realchat-relay)
running=("$auth" "$relay")
while [ ${#running[@]} -gt 0 ]; do
    wait -n "${running[@]}" || true
    alive=()
    for pid in "${running[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            alive+=("$pid")
        else
            log "${name[$pid]} exited"
        fi
    done
    running=("${alive[@]}")
done
