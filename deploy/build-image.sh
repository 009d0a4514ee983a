#!/usr/bin/env bash
# Build the clawgate OCI image FROM scratch with buildah (no Docker engine, no base image).
#
#   bash deploy/build-image.sh                 # -> image localhost/clawgate:latest (vfs storage)
#   IMAGE=clawgate:0.1.0 bash deploy/build-image.sh
#   SMOKE=1 bash deploy/build-image.sh         # also run the binary inside the image once
#   OCI_ARCHIVE=clawgate.tar bash deploy/build-image.sh   # also export an oci-archive
#
# Steps: static binary (glibc, +crt-static) -> staging context (rootfs/ + state/) ->
# `buildah --storage-driver vfs bud --isolation chroot` (works unprivileged-ish in VMs where
# overlay and podman's runtime do not). Use the same `--storage-driver vfs` for every later
# buildah command (images, from, run, push) or the image will not be found.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-clawgate:latest}"
TARGET="${TARGET:-x86_64-unknown-linux-gnu}"
STRIP="${STRIP:-1}"
BUILDAH=(buildah --storage-driver vfs)

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v buildah >/dev/null || die "buildah not found (Debian: apt-get install -y buildah)"

cd "$REPO_ROOT"
log "static binary: cargo build --release --target $TARGET (+crt-static)"
# RUSTFLAGS with an explicit --target applies to the target only, not to build scripts or
# proc-macros (which must stay dynamic).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --target "$TARGET" --bin clawgate
BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/$TARGET/release/clawgate"
[ -x "$BIN" ] || die "binary not found: $BIN"
if readelf -l "$BIN" | grep -q 'INTERP'; then
  die "$BIN is dynamically linked (has a program interpreter); a FROM scratch image needs a static binary"
fi

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
R="$CTX/rootfs"
mkdir -p "$R/usr/local/bin" "$R/etc/ssl/certs" "$R/tmp" "$R/var/lib" "$CTX/state"
chmod 1777 "$R/tmp"
chmod 0700 "$CTX/state"
install -m 0755 "$BIN" "$R/usr/local/bin/clawgate"
if [ "$STRIP" = 1 ] && command -v strip >/dev/null; then
  strip --strip-debug "$R/usr/local/bin/clawgate"
fi
cat >"$R/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
clawgate:x:65532:65532:clawgate:/var/lib/clawgate:/sbin/nologin
PASSWD
cat >"$R/etc/group" <<'GROUP'
root:x:0:
clawgate:x:65532:
GROUP
# Static glibc (>= 2.34) has the files and dns NSS back-ends built in.
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"
# CA bundle for outbound TLS (model providers), from the build host.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
else
  log "warning: no /etc/ssl/certs/ca-certificates.crt on this host; image has no CA bundle"
fi

log "buildah bud -> $IMAGE (context $CTX)"
"${BUILDAH[@]}" bud --isolation chroot -f "$REPO_ROOT/deploy/Containerfile" -t "$IMAGE" "$CTX"
"${BUILDAH[@]}" images "$IMAGE"

if [ "${SMOKE:-0}" = 1 ]; then
  log "smoke test: run the binary in the image (buildah run, host network)"
  ctr="$("${BUILDAH[@]}" from "$IMAGE")"
  rc=0
  "${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/clawgate --help || rc=$?
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  [ "$rc" = 0 ] || die "clawgate --help failed in the image (exit $rc)"
fi

if [ -n "${OCI_ARCHIVE:-}" ]; then
  "${BUILDAH[@]}" push "$IMAGE" "oci-archive:$OCI_ARCHIVE:$IMAGE"
  log "wrote $OCI_ARCHIVE (load with: podman load -i $OCI_ARCHIVE)"
fi
log "done: $IMAGE"
