#!/usr/bin/env bash
# The dependency audit (cargo-deny, deny.toml): licences, bans and sources
# always; advisories (RustSec) when the advisory database can be fetched.
# cargo-deny is installed from crates.io when missing (a few minutes, once).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CARGO_DENY_VERSION=0.20.2
DENY="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deny"
if ! "$DENY" --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
    log "Installing cargo-deny $CARGO_DENY_VERSION from crates.io (a few minutes the first time)"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
"$DENY" deny --workspace check bans licenses sources
# The RustSec database is a git repository: a machine that reaches only the
# package registries cannot fetch it. There the advisories are not checked,
# and the run says so; anywhere else they are, and a hit fails the audit.
if "$DENY" deny fetch db >/dev/null 2>&1; then
    "$DENY" deny --workspace check advisories
else
    log "WARNING: the RustSec advisory database cannot be fetched here; advisories NOT checked"
fi
