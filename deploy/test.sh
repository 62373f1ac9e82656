#!/usr/bin/env bash
# The README's test command. The end-to-end tests drive real consumers (tests/tests/e2e/consumers.rs:
# qemu-img and qemu-io with qemu's LUKS, cryptsetup LUKS2) and fail, never skip, without them;
# so do the monitoring tests (tests/tests/e2e/metrics.rs and prometheus_rules.rs) without
# promtool, which checks every scrape and deploy/prometheus. (Debian's prometheus package is
# the one that ships promtool; on a host with systemd it also starts a Prometheus on :9090.) Install whichever is missing (Debian packages qemu-utils, cryptsetup-bin,
# prometheus for promtool), then run every test.
# The build itself needs libtss2 (lockbox-tpm links libtss2-esys through pkg-config: Debian's
# libtss2-dev and pkg-config), and the TPM tests run a real swtpm (Debian's swtpm, swtpm-tools)
# and fail, never skip, without it; those are installed the same way.
# Extra arguments go to `cargo test`, e.g. `./deploy/test.sh --test e2e keys::` (the end-to-end
# tests are one binary, a module per subject). `./deploy/test.sh --deps-only` installs what is
# missing and exits (CI runs it before clippy, which already needs libtss2).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"   # cryptsetup lives in sbin
deps_only=false
if [ "${1:-}" = --deps-only ]; then deps_only=true; shift; fi

need=()
{ command -v qemu-img && command -v qemu-io; } >/dev/null || need+=(qemu-utils)
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v promtool >/dev/null || need+=(prometheus)
command -v swtpm >/dev/null || need+=(swtpm swtpm-tools)
command -v pkg-config >/dev/null || need+=(pkg-config)
{ command -v pkg-config && pkg-config --exists tss2-esys; } >/dev/null 2>&1 || need+=(libtss2-dev)
if ((${#need[@]})); then
  echo "== installing ${need[*]} (the build links libtss2; the consumer, monitoring and TPM tests run the rest for real)"
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
echo "== $(qemu-img --version | head -n 1); $(cryptsetup --version); $(promtool --version 2>&1 | head -n 1); $(swtpm --version); libtss2 $(pkg-config --modversion tss2-esys)"
if $deps_only; then exit 0; fi
# One build of everything: the daemons' binaries with the tests, in one feature resolution,
# so `cargo test` below only runs what is built and the harness starts no build of its own.
cargo build --workspace --bins --tests
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export LOCKBOX_TEST_BIN_DIR="$target/debug"
exec cargo test --workspace "$@"
