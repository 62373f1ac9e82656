#!/usr/bin/env bash
# lockbox in one command: a development CA, one controller and three lockboxd (host-a, host-b,
# host-c) on loopback, then the mission end to end: a volume key on host-a, a snapshot and a
# same-key clone, a MOVE of a volume's key to host-b under a controller-signed grant, a
# REPLICATE to host-c, a refused replay, `audit verify` on every node, and each daemon's
# Prometheus metrics.
#
#   ./deploy/local-cluster.sh          # build, start, walk through, keep the cluster up (Ctrl-C stops it)
#   ./deploy/local-cluster.sh --down   # stop a cluster left running (e.g. after --detach)
#   ./deploy/local-cluster.sh --exit   # walk through, then stop everything (CI)
#   ./deploy/local-cluster.sh --detach # walk through, leave the cluster running, return
#
# Environment: LOCKBOX_DEMO_DIR (default /tmp/lockbox-demo), LOCKBOX_DEMO_PORT (default 17400:
# the controller on it, peer APIs on the next three, metrics on +10..+13), LOCKBOX_PROFILE (cargo profile, default release).
set -euo pipefail
cd "$(dirname "$0")/.."

work="${LOCKBOX_DEMO_DIR:-/tmp/lockbox-demo}"
port="${LOCKBOX_DEMO_PORT:-17400}"
profile="${LOCKBOX_PROFILE:-release}"
mode="${1:-wait}"

stop_all() {
  [ -f "$work/pids" ] || return 0
  while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done < "$work/pids"
  for _ in $(seq 1 50); do
    alive=0
    while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$work/pids"
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$work/pids"
  rm -f "$work/pids"
}

case "$mode" in
  --down) stop_all; echo "lockbox demo stopped"; exit 0 ;;
  wait|--exit|--detach) ;;
  *) echo "usage: $0 [--down|--exit|--detach]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ -t 1 ] || say() { printf '\n== %s\n' "$*"; }

# lockboxd links libtss2 (the tpm2 unseal method): building it needs Debian's libtss2-dev and
# pkg-config.
if ! { command -v pkg-config && pkg-config --exists tss2-esys; } >/dev/null 2>&1; then
  say "installing libtss2-dev pkg-config (lockboxd links the TPM library)"
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y libtss2-dev pkg-config
fi

say "building lockboxd, lockbox-controller and lockboxctl ($profile; the first build takes a few minutes)"
if [ "$profile" = dev ]; then
  # deploy/test.sh's build (one feature resolution with the tests): after the tests, as in CI,
  # nothing is compiled again.
  cargo build -q --workspace --bins --tests
else
  cargo build --profile "$profile" -q -p lockboxd -p lockbox-controller -p lockboxctl
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$profile" = dev ]; then bin="$target/debug"; else bin="$target/$profile"; fi

# Running it twice works: stop what a previous run left, start from a clean directory.
stop_all
rm -rf "$work"
mkdir -p "$work"
chmod 700 "$work"
: > "$work/pids"

if [ "$mode" = wait ] || [ "$mode" = --exit ]; then
  trap 'stop_all' EXIT
  trap 'echo; echo "stopping the lockbox demo"; exit 130' INT TERM
fi

ctl() { echo "\$ lockboxctl $*" | sed "s|$work|\$DEMO|g" >&2; "$bin/lockboxctl" "$@"; }
pki="$work/pki"

say "a development CA for trust domain example.org, and a certificate per identity"
ctl pki init --trust-domain example.org --dir "$pki"
ctl pki issue --dir "$pki" --role controller --name ctl-1 --ip 127.0.0.1 >/dev/null
for h in host-a host-b host-c; do
  ctl pki issue --dir "$pki" --role lockbox --name "$h" --ip 127.0.0.1 >/dev/null
done
ctl pki issue --dir "$pki" --role orchestrator --name cinder >/dev/null
echo "issued: ctl-1 (controller), host-a host-b host-c (lockbox), cinder (orchestrator)"

say "the controller: signs grants and attestations, holds no volume keys"
cat > "$work/controller.toml" <<TOML
version = 1
key_id = "ctl-1"
listen = "127.0.0.1:$port"
trust_domain = "example.org"
signing_key = "$work/controller/signing.key"
attestation_ttl = "1h"
data_dir = "$work/controller/data"
[tls]
cert = "$pki/ctl-1.crt"
key = "$pki/ctl-1.key"
ca = "$pki/ca.crt"
[[policy]]
caller = "spiffe://example.org/orchestrator/cinder"
ops = ["copy", "move", "replicate"]
from = ["host-*"]
to = ["host-*"]
max_ttl = "15m"
max_keys = 100000
[metrics]
listen = "127.0.0.1:$((port + 10))"
TOML
"$bin/lockbox-controller" --config "$work/controller.toml" init > "$work/controllers.block" 2>/dev/null
"$bin/lockbox-controller" --config "$work/controller.toml" 2> "$work/controller.log" &
echo $! >> "$work/pids"
cat "$work/controllers.block"

say "three lockboxes, each with its own sealed keys, attested by the controller"
i=1
for h in host-a host-b host-c; do
  mkdir -p "$work/$h"
  cat > "$work/$h/lockboxd.toml" <<TOML
version = 1
node_id = "$h"
data_dir = "$work/$h/data"
socket = "$work/$h/lockbox.sock"
peer_listen = "127.0.0.1:$((port + i))"
grant_threshold = 1
[unseal]
method = "keyfile"
keyfile = "$work/$h/unseal.key"
[keys]
clone_policy = "same-key"
[tls]
cert = "$pki/$h.crt"
key = "$pki/$h.key"
ca = "$pki/ca.crt"
$(cat "$work/controllers.block")
[peers]
host-a = "127.0.0.1:$((port + 1))"
host-b = "127.0.0.1:$((port + 2))"
host-c = "127.0.0.1:$((port + 3))"
[metrics]
listen = "127.0.0.1:$((port + 10 + i))"
TOML
  "$bin/lockboxd" init --config "$work/$h/lockboxd.toml" >/dev/null
  "$bin/lockboxd" --config "$work/$h/lockboxd.toml" 2> "$work/$h/lockboxd.log" &
  echo $! >> "$work/pids"
  i=$((i + 1))
done
for h in host-a host-b host-c; do
  for _ in $(seq 1 200); do
    state=$("$bin/lockboxctl" --socket "$work/$h/lockbox.sock" --json status 2>/dev/null \
      | sed -n 's/.*"attestation_state":"\([a-z]*\)".*/\1/p') || true
    [ "$state" = valid ] && break
    sleep 0.1
  done
  [ "$state" = valid ] || { echo "$h did not get attested; see $work/$h/lockboxd.log" >&2; exit 1; }
  echo "$h: up, unsealed, attested"
done
A="--socket $work/host-a/lockbox.sock"
B="--socket $work/host-b/lockbox.sock"
C="--socket $work/host-c/lockbox.sock"
CTL="--controller https://127.0.0.1:$port --cert $pki/cinder.crt --tls-key $pki/cinder.key --ca $pki/ca.crt"

say "host-a creates the key of volume vol-1 (32 random bytes, sealed, durable before the reply)"
vol=$(ctl $A key create --label volume=vol-1 --label tenant=acme)
echo "key id: $vol"
ctl $A key get "$vol" > "$work/vol-1.hex"
echo "(the key itself is released only over host-a's local Unix socket)"

say "a snapshot and a same-key clone: new key ids, same material, instant"
snap=$(ctl $A key snapshot "$vol")
clone=$(ctl $A key clone "$vol" --mode same-key)
echo "snapshot: $snap"
echo "clone:    $clone"
ctl $A key describe "$vol" | sed -n '1,2p;/shares/p'

say "the orchestrator asks the controller for a grant: MOVE vol-1's key from host-a to host-b"
ctl grant issue --key "$vol" --from host-a --to host-b --op move --ttl 10m \
  --reason "migrate vol-1" -o "$work/move.grant" $CTL
ctl grant inspect "$work/move.grant" | sed -n '1,5p'

say "host-a runs the grant: the key travels sealed to host-b's attested HPKE key, over mTLS"
ctl $A transfer "$work/move.grant"
if [ "$(ctl $B key get "$vol")" = "$(cat "$work/vol-1.hex")" ]; then
  echo "host-b now holds vol-1's key: same bytes as host-a had"
else
  echo "MISMATCH: host-b's copy differs" >&2; exit 1
fi
echo "host-a keeps a tombstone:"
ctl $A key describe "$vol" | sed -n '1,2p;/moved to/p'

say "a replay changes nothing: the same grant returns the same receipt, and another lockbox cannot use it"
# `sed -n 1p`, not `head -1`: sed reads all of it, so lockboxctl never writes to a closed pipe.
ctl $A transfer "$work/move.grant" | sed -n 1p
echo "\$ lockboxctl --socket \$DEMO/host-c/lockbox.sock transfer \$DEMO/move.grant" >&2
if "$bin/lockboxctl" $C transfer "$work/move.grant" 2> "$work/replay.err"; then
  echo "UNEXPECTED: host-c could use host-a's grant" >&2; exit 1
fi
echo "refused: $(cat "$work/replay.err")"

say "REPLICATE the snapshot's key to host-c: a standing backup it will not release until promoted"
ctl grant issue --key "$snap" --from host-a --to host-c --op replicate --ttl 10m \
  --reason "standby copy" -o "$work/replicate.grant" $CTL
ctl $A transfer "$work/replicate.grant" | sed -n 1p
ctl $C key describe "$snap" | sed -n '1,2p'
echo "\$ lockboxctl --socket \$DEMO/host-c/lockbox.sock key get $snap" >&2
if "$bin/lockboxctl" $C key get "$snap" > /dev/null 2> "$work/replica.err"; then
  echo "UNEXPECTED: host-c released a replica" >&2; exit 1
fi
echo "refused: $(cat "$work/replica.err")"

say "every node's audit log: hash-chained, checkpoint-signed, verified"
for s in "$A" "$B" "$C"; do ctl $s audit verify; done

say "monitoring: each daemon serves Prometheus metrics on loopback (no key id, label or secret in them)"
# GET /metrics with bash alone (no curl on a fresh machine).
scrape() {
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}
for i in 1 2; do
  h=host-a; [ $i = 2 ] && h=host-b
  echo "\$ curl -s 127.0.0.1:$((port + 10 + i))/metrics   # $h"
  # The series that are not 0 (every fixed series exists from the start), and sealed.
  scrape $((port + 10 + i)) | grep -E '^lockbox_(sealed|keys|transfers_total|transferred_keys_total|grants_refused_total)' \
    | awk '$1 == "lockbox_sealed" || $2 != 0' | sort || { echo "no metrics from $h" >&2; exit 1; }
done
echo "\$ curl -s 127.0.0.1:$((port + 10))/metrics   # the controller"
scrape $((port + 10)) | grep -E '^lockbox_controller_(grants|attestations)_total' \
  | awk '$2 != 0' | sort || { echo "no metrics from the controller" >&2; exit 1; }

cat <<MSG

The cluster is up (work dir $work). Try, in another shell:
  export DEMO=$work
  $bin/lockboxctl --socket \$DEMO/host-b/lockbox.sock key list
  $bin/lockboxctl --socket \$DEMO/host-a/lockbox.sock key create --label volume=vol-2
  $bin/lockboxctl --socket \$DEMO/host-c/lockbox.sock key promote $snap
  $bin/lockboxctl --socket \$DEMO/host-a/lockbox.sock audit tail -n 10
  $bin/lockboxctl grant issue --key KEY --from host-a --to host-c --op copy $CTL
  curl -s 127.0.0.1:$((port + 11))/metrics | promtool check metrics   # host-a's metrics
MSG

case "$mode" in
  --exit) echo; echo "demo done; stopping"; exit 0 ;;
  --detach) trap - EXIT; echo; echo "left running; stop it with: $0 --down"; exit 0 ;;
  *) echo "Press Ctrl-C (or run '$0 --down' elsewhere) to stop every process it started."
     while :; do sleep 3600 & wait $!; done ;;
esac
