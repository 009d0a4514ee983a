#!/usr/bin/env bash
# Runs the load-generator scenarios against a fresh release gateway and prints one JSON line
# per scenario (the figures in BENCHMARKS.md). Usage: bash bench/scripts/loadtest-suite.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin clawgate --bin clawgate-load >&2
PORT=${PORT:-18960}
STATE=$(mktemp -d)
OPENCLAW_STATE_DIR=$STATE target/release/clawgate gateway run --port "$PORT" --token T --workers 2 >/dev/null 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null; rm -rf "$STATE"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
L="target/release/clawgate-load --url ws://127.0.0.1:$PORT --token T --gateway-pid $GW"
run() { echo "# $*" >&2; $L "$@" 2>/dev/null; }
run --procs 2 hold-idle --conns 10000 --hold-secs 3
run --procs 2 hold-idle --conns 19000 --hold-secs 3
run --procs 2 connect-storm --mode token --total 20000 --concurrency 64
run --procs 2 connect-storm --mode device --reuse-identity --total 20000 --concurrency 64
run --procs 1 rpc --conns 256 --duration-secs 10
run --procs 2 rpc --conns 256 --duration-secs 10 --pipeline 4
run --procs 4 fanout --subscribers 10000 --events 100 --rate 20
run --procs 4 slow --subscribers 2000 --slow-fraction 0.1 --events 2000 --rate 50 --baseline --slow-rcvbuf 4096
