#!/usr/bin/env bash
# Starts one local lockboxd (keyfile unseal) in a temporary directory and shows it doing its
# job: create a volume key, read it back, snapshot it, clone it both ways, audit it.
# The daemon stays up for you to try lockboxctl against it; Ctrl-C stops it and cleans up.
# LOCKBOX_QUICKSTART_EXIT=1 stops right after the walkthrough, and LOCKBOX_PROFILE=dev reuses
# the test build instead of a release one (CI uses both).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${LOCKBOX_PROFILE:-release}"
echo "== building lockboxd and lockboxctl ($profile; the first build takes a few minutes)"
cargo build --profile "$profile" -q -p lockboxd -p lockboxctl
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$profile" = dev ]; then bin="$target/debug"; else bin="$target/$profile"; fi

work=$(mktemp -d /tmp/lockbox-quickstart.XXXXXX)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$work/lockboxd.toml" <<TOML
version = 1
node_id = "host-a"
data_dir = "$work/data"
socket = "$work/lockbox.sock"
[unseal]
method = "keyfile"
keyfile = "$work/unseal.key"
[keys]
clone_policy = "same-key"
shred_rotation = "immediate"
TOML

echo "== lockboxd init: root secret, KEK and node identity keys, all sealed, in $work/data"
"$bin/lockboxd" init --config "$work/lockboxd.toml"

"$bin/lockboxd" --config "$work/lockboxd.toml" 2> "$work/lockboxd.log" &
daemon_pid=$!
export LOCKBOX_SOCKET="$work/lockbox.sock"
for _ in $(seq 1 100); do
  "$bin/lockboxctl" status >/dev/null 2>&1 && break
  sleep 0.1
done
ctl() { echo "\$ lockboxctl $*" >&2; "$bin/lockboxctl" "$@"; }

echo; echo "== the lockbox is up (auto-unsealed from its key file)"
ctl status
echo; echo "== a volume key for pool/vol1 (32 bytes: a ZFS raw wrapping key)"
key=$(ctl key create --label volume=vol1 --label pool=tank)
echo "$key"
echo; echo "== the plaintext leaves only over the local Unix socket"
ctl key get "$key"
echo; echo "== a snapshot: a new key id on the same material, O(1)"
snap=$(ctl key snapshot "$key")
echo "$snap"
ctl key get "$snap"
echo; echo "== a same-key clone (instant) and a new-key clone (the consumer must re-encrypt)"
same=$(ctl key clone "$key" --mode same-key)
new=$(ctl key clone "$key" --mode new-key)
ctl key describe "$key"
echo; echo "== every change is in the hash-chained, signed audit log"
ctl audit tail -n 6
ctl audit verify

if [ "${LOCKBOX_QUICKSTART_EXIT:-0}" = 1 ]; then
  echo; echo "quickstart done"
  exit 0
fi
cat <<MSG

The lockbox stays up. In another shell, try:
  export LOCKBOX_SOCKET=$work/lockbox.sock
  $bin/lockboxctl key list
  $bin/lockboxctl key get $new --format base64
  $bin/lockboxctl key destroy $same
  $bin/lockboxctl kek rotate
Press Ctrl-C to stop it (the work dir $work is removed).
MSG
wait "$daemon_pid"
