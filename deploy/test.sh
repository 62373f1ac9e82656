#!/usr/bin/env bash
# The README's test command. The end-to-end tests drive real consumers (tests/tests/e2e/consumers.rs:
# qemu-img and qemu-io with qemu's LUKS, cryptsetup LUKS2) and fail, never skip, without them;
# so do the monitoring tests (tests/tests/e2e/metrics.rs and prometheus_rules.rs) without
# promtool, which checks every scrape and deploy/prometheus. (Debian's prometheus package is
# the one that ships promtool; on a host with systemd it also starts a Prometheus on :9090.) Install whichever is missing (Debian packages qemu-utils, cryptsetup-bin,
# prometheus for promtool), then run every test.
# Extra arguments go to `cargo test`, e.g. `./deploy/test.sh --test e2e keys::` (the end-to-end
# tests are one binary, a module per subject).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"   # cryptsetup lives in sbin

need=()
{ command -v qemu-img && command -v qemu-io; } >/dev/null || need+=(qemu-utils)
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  echo "== installing ${need[*]} (the consumer and monitoring tests run them for real)"
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
echo "== $(qemu-img --version | head -n 1); $(cryptsetup --version); $(promtool --version 2>&1 | head -n 1)"
# One build of everything: the daemons' binaries with the tests, in one feature resolution,
# so `cargo test` below only runs what is built and the harness starts no build of its own.
cargo build --workspace --bins --tests
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export LOCKBOX_TEST_BIN_DIR="$target/debug"
exec cargo test --workspace "$@"
