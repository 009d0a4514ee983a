#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient (WebSocket conformance) and summarise the result.
#
# Usage:
#   scripts/autobahn.sh                 build clawgate, start `gateway run --port P --ws-echo`
#                                       on a free port, test ws://127.0.0.1:P/__echo, stop it
#   scripts/autobahn.sh PORT            test an already running gateway: ws://127.0.0.1:PORT/__echo
#   scripts/autobahn.sh ws://HOST:P/PATH  test any echo endpoint (used to check this script)
#   scripts/autobahn.sh --parse [DIR]   only summarise an existing report (DIR/index.json)
#
# Env:
#   AUTOBAHN_CASES        JSON list of cases   (default ["*"])
#   AUTOBAHN_EXCLUDE      JSON list excluded   (default ["12.*","13.*"]: permessage-deflate,
#                                               which the gateway does not negotiate)
#   AUTOBAHN_OUTDIR       report folder        (default <repo>/autobahn-reports, git-ignored)
#   AUTOBAHN_AGENT        agent name in report (default clawgate)
#   AUTOBAHN_STRICT=1     also fail on NON-STRICT / INFORMATIONAL-close issues (target: all OK)
#   AUTOBAHN_FAIL_BY_DROP failByDrop option    (default false, Autobahn's "spec conformance")
#   CLAWGATE_BIN          gateway binary to start in no-arg mode (default: cargo build --release)
#   READY_TIMEOUT         seconds to wait for /readyz (default 60)
#
# Exit status: 0 when no case FAILED (and no NO_CLOSE), 1 otherwise, 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${AUTOBAHN_OUTDIR:-$REPO_ROOT/autobahn-reports}"
CASES="${AUTOBAHN_CASES:-[\"*\"]}"
EXCLUDE="${AUTOBAHN_EXCLUDE:-[\"12.*\", \"13.*\"]}"
AGENT="${AUTOBAHN_AGENT:-clawgate}"
STRICT="${AUTOBAHN_STRICT:-0}"
FAIL_BY_DROP="${AUTOBAHN_FAIL_BY_DROP:-false}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
WSTEST="$REPO_ROOT/.peers/bin/wstest"

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

command -v python3 >/dev/null || die "python3 is needed to write the spec and parse the report"

# ---------------------------------------------------------------- report parser
summarise() { # DIR
  python3 - "$1" "$STRICT" <<'PY'
import json, os, sys

outdir, strict = sys.argv[1], sys.argv[2] == "1"
path = os.path.join(outdir, "index.json")
try:
    with open(path) as f:
        index = json.load(f)
except (OSError, ValueError) as e:
    print(f"[autobahn] ERROR: cannot read report {path}: {e}", file=sys.stderr)
    sys.exit(2)

def case_key(cid):
    return tuple(int(p) if p.isdigit() else p for p in cid.split("."))

order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "NO_CLOSE", "FAILED"]
ok_like = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
bad = 0
if not index:
    print("[autobahn] ERROR: report lists no agents", file=sys.stderr)
    sys.exit(2)
for agent, cases in sorted(index.items()):
    counts = {k: 0 for k in order}
    non_ok, close_issues = [], []
    for cid in sorted(cases, key=case_key):
        c = cases[cid]
        beh = c.get("behavior", "?")
        counts[beh] = counts.get(beh, 0) + 1
        if beh != "OK":
            non_ok.append((cid, beh, c))
        bc = c.get("behaviorClose", "")
        if beh == "OK" and bc not in ("OK", "INFORMATIONAL", ""):
            close_issues.append((cid, bc, c))
    total = sum(counts.values())
    print(f"agent {agent}: {total} cases")
    print("  " + "  ".join(f"{k}={counts[k]}" for k in order)
          + "".join(f"  {k}={v}" for k, v in counts.items() if k not in order))
    for cid, beh, c in non_ok:
        print(f"  {cid:<10} {beh:<14} close={c.get('behaviorClose','?')} "
              f"code={c.get('remoteCloseCode')} report={c.get('reportfile','')}")
    for cid, bc, c in close_issues:
        print(f"  {cid:<10} {'OK':<14} close={bc} code={c.get('remoteCloseCode')} (closing handshake)")
    failed = sum(v for k, v in counts.items() if k not in ok_like)
    if strict:
        failed += counts["NON-STRICT"] + len(close_issues)
    if total == 0:
        print(f"[autobahn] ERROR: agent {agent} ran no cases", file=sys.stderr)
        failed += 1
    bad += failed
print("RESULT: " + ("FAIL" if bad else "PASS") + (" (strict)" if strict else ""))
sys.exit(1 if bad else 0)
PY
}

# ---------------------------------------------------------------- run the suite
run_suite() { # URL
  local url="$1"
  [ -x "$WSTEST" ] || bash "$REPO_ROOT/scripts/setup-test-peers.sh" >/dev/null ||
    die "wstest missing and scripts/setup-test-peers.sh failed"
  mkdir -p "$OUTDIR"
  # Drop the previous run's files so the summary never mixes runs.
  find "$OUTDIR" -maxdepth 1 -type f \( -name '*.json' -o -name '*.html' \) -delete
  local spec="$OUTDIR/fuzzingclient.spec.json"
  python3 - "$spec" "$OUTDIR" "$AGENT" "$url" "$CASES" "$EXCLUDE" "$FAIL_BY_DROP" <<'PY'
import json, sys
spec, outdir, agent, url, cases, exclude, fbd = sys.argv[1:8]
json.dump({
    "options": {"failByDrop": fbd.lower() in ("1", "true", "yes")},
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": json.loads(cases),
    "exclude-cases": json.loads(exclude),
    "exclude-agent-cases": {},
}, open(spec, "w"), indent=2)
PY
  log "fuzzingclient -> $url cases=$CASES exclude=$EXCLUDE (log: $OUTDIR/wstest.log)"
  local t0=$SECONDS
  # wstest writes its reports relative to nothing (absolute outdir), so cwd does not matter.
  if ! "$WSTEST" -m fuzzingclient -s "$spec" >"$OUTDIR/wstest.log" 2>&1; then
    tail -n 30 "$OUTDIR/wstest.log" >&2
    die "wstest exited non-zero"
  fi
  log "suite finished in $((SECONDS - t0)) s; reports: $OUTDIR/index.html"
  summarise "$OUTDIR"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------- no-arg mode: own gateway
run_own_gateway() {
  command -v curl >/dev/null || die "curl is needed to wait for /readyz"
  local bin="${CLAWGATE_BIN:-}"
  if [ -z "$bin" ]; then
    log "building clawgate (cargo build --release --bin clawgate)"
    (cd "$REPO_ROOT" && cargo build --release --bin clawgate >&2)
    bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/clawgate"
  fi
  [ -x "$bin" ] || die "gateway binary not found: $bin"

  local port state gw_log gw_pid=""
  port="$(free_port)"
  state="$(mktemp -d)"
  mkdir -p "$OUTDIR"
  gw_log="$OUTDIR/gateway.log"
  # Run the binary directly (not through `cargo run`) so the pid we kill is the gateway.
  # Fresh HOME + state dir: the gateway never touches the user's ~/.openclaw.
  HOME="$state" OPENCLAW_STATE_DIR="$state/state" \
    "$bin" gateway run --port "$port" --ws-echo >"$gw_log" 2>&1 &
  gw_pid=$!
  # shellcheck disable=SC2064
  trap "kill $gw_pid 2>/dev/null || true; wait $gw_pid 2>/dev/null || true; rm -rf '$state'" EXIT

  log "gateway pid $gw_pid on port $port, waiting for /readyz (<= ${READY_TIMEOUT}s)"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz"; do
    if ! kill -0 "$gw_pid" 2>/dev/null; then
      tail -n 40 "$gw_log" >&2
      die "gateway exited before becoming ready"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$gw_log" >&2
      die "gateway not ready after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "gateway ready"
  local rc=0
  run_suite "ws://127.0.0.1:$port/__echo" || rc=$?
  if ! kill -0 "$gw_pid" 2>/dev/null; then
    log "gateway died during the suite (see $gw_log)"
    tail -n 40 "$gw_log" >&2
    rc=1
  fi
  return "$rc"
}

case "${1:-}" in
  "") run_own_gateway ;;
  --parse) summarise "${2:-$OUTDIR}" ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
  ws://* | wss://*) run_suite "$1" ;;
  *[!0-9]*) die "argument must be a port number, a ws:// URL, or --parse (got '$1')" ;;
  *) run_suite "ws://127.0.0.1:$1/__echo" ;;
esac
