#!/usr/bin/env bash
# Runs the load-generator scenarios against a fresh release gateway and prints one JSON line
# per scenario (the figures in BENCHMARKS.md). Usage:
#
#   bash bench/scripts/loadtest-suite.sh [colocated|pinned|floor|all]   (default: all)
#
# colocated: gateway with 2 workers and the generator share both cores (the machine's real
#            limit: gateway + generator CPU-seconds ≈ 2 × wall time in throughput rows).
# pinned:    gateway with 1 worker pinned to CPU 0, generator pinned to CPU 1: the gateway's
#            per-core capacity, read from `gateway_cpu_s` per operation.
# floor:     the same socket traffic with no gateway (`clawgate-floor`: raw monoio server on
#            CPU 0, raw client on CPU 1) — the baseline the pinned rows are read against.
# Each line is prefixed with the topology and the scenario's arguments.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin clawgate --bin clawgate-load --bin clawgate-floor >&2
WHICH=${1:-all}
PORT=${PORT:-18960}

start_gateway() { # $1 = workers, $2 = taskset CPU list
  STATE=$(mktemp -d)
  OPENCLAW_STATE_DIR=$STATE taskset -c "$2" target/release/clawgate gateway run \
    --port "$PORT" --token T --workers "$1" >/dev/null 2>&1 &
  GW=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
}
stop_gateway() { kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; rm -rf "$STATE"; }
trap 'stop_gateway' EXIT

run() { # $1 = topology, $2 = generator CPU list, rest = clawgate-load arguments
  local topo=$1 cpus=$2; shift 2
  echo "# $topo: $*" >&2
  local out
  out=$(taskset -c "$cpus" target/release/clawgate-load --url "ws://127.0.0.1:$PORT" --token T \
    --gateway-pid "$GW" "$@" 2>/dev/null || true)
  echo "{\"topology\":\"$topo\",\"args\":\"$*\",\"result\":${out:-null}}"
}

if [ "$WHICH" = all ] || [ "$WHICH" = colocated ]; then
  start_gateway 2 0,1
  C() { run colocated 0,1 "$@"; }
  C --procs 2 hold-idle --conns 10000 --hold-secs 3
  C --procs 2 hold-idle --conns 19000 --hold-secs 3
  C --procs 2 connect-storm --mode token --total 20000 --concurrency 64
  C --procs 2 connect-storm --mode device --reuse-identity --total 20000 --concurrency 64
  C --procs 2 rpc --conns 256 --duration-secs 10 --pipeline 4
  C --procs 2 rpc --conns 256 --duration-secs 10 --rate 150000
  C --procs 2 rpc --conns 256 --duration-secs 10 --rate 150000 --batch 4
  C --procs 2 rpc --conns 256 --duration-secs 10 --rate 100000
  C --procs 2 rpc --conns 256 --duration-secs 10 --pipeline 4 --method health,status,system-presence,models.list,agents.list
  C --procs 4 fanout --subscribers 10000 --events 100 --rate 20
  C --procs 4 fanout --subscribers 10000 --events 1000 --rate 10 --burst 10
  C --procs 4 fanout --subscribers 10000 --events 300 --rate 3 --burst 10
  C --procs 2 chat --watchers 1000 --runs 40 --rate 10 --sessions 8
  C --procs 4 slow --subscribers 2000 --slow-fraction 0.1 --events 2000 --rate 50 --baseline --slow-rcvbuf 4096
  # Last: it leaves 20 000 paired devices in the registry (every connect a new pairing).
  C --procs 2 connect-storm --mode device --total 20000 --concurrency 64
  stop_gateway
fi

if [ "$WHICH" = all ] || [ "$WHICH" = pinned ]; then
  start_gateway 1 0
  P() { run pinned 1 "$@"; }
  P --procs 2 connect-storm --mode token --total 20000 --concurrency 64
  P --procs 2 connect-storm --mode device --reuse-identity --total 20000 --concurrency 64
  P --procs 2 rpc --conns 256 --duration-secs 10 --pipeline 4
  P --procs 2 rpc --conns 256 --duration-secs 10 --rate 75000 --batch 4
  P --procs 4 fanout --subscribers 10000 --events 100 --rate 20
  P --procs 4 fanout --subscribers 10000 --events 1000 --rate 10 --burst 10
  stop_gateway
fi

if [ "$WHICH" = all ] || [ "$WHICH" = floor ]; then
  F() {
    echo "# floor: $*" >&2
    local out
    out=$(target/release/clawgate-floor --server-cpu 0 --client-cpu 1 "$@" 2>/dev/null || true)
    echo "{\"topology\":\"floor\",\"args\":\"$*\",\"result\":${out:-null}}"
  }
  F handshake --total 20000 --concurrency 64
  F fanout --conns 10000 --events 100 --rate 20
  F fanout --conns 10000 --events 1000 --rate 10 --burst 10
fi
