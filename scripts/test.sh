#!/usr/bin/env bash
# The project's test command (README): build, unit + integration + e2e tests, Autobahn.
#
#   bash scripts/test.sh
#
# e2e tests find the gateway through env!("CARGO_BIN_EXE_clawgate") (target/release/clawgate
# under --release) and the real openclaw CLI at .peers/bin/openclaw, which
# scripts/setup-test-peers.sh installs (idempotent: ~1 s when already installed).
# SKIP_AUTOBAHN=1 skips the conformance run; SKIP_PEERS_SETUP=1 skips the peer check.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

step() { printf '\n=== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [ "${SKIP_PEERS_SETUP:-0}" != 1 ]; then
  step "test peers (scripts/setup-test-peers.sh)"
  bash scripts/setup-test-peers.sh
fi

step "cargo build --release --bins"
cargo build --release --bins

step "cargo test --release"
CI="${CI:-}" cargo test --release

if [ "${SKIP_AUTOBAHN:-0}" != 1 ]; then
  step "Autobahn|Testsuite against gateway run --ws-echo"
  CLAWGATE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/clawgate" bash scripts/autobahn.sh
fi

step "all tests passed"
