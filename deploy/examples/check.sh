#!/usr/bin/env bash
# Checks that every example config under deploy/examples is accepted by the real parsers.
#
# Neither binary has a "check the config" flag: both parse the config first and exit 78
# (EX_CONFIG) when it is wrong. So, for each example, with every path rewritten into a
# temporary directory:
#   controllers  `lockbox-controller --config F show` must not exit 78 (it fails later on
#                the missing signing key); then `init` makes a real signing key, whose
#                public key replaces the placeholders in the lockboxd examples of that set.
#   lockboxd     `lockboxd --config F` must not exit 78 (it fails later because the data
#                dir is not initialized, exit 1).
# A negative control (an unknown field) must exit 78, so the check can fail.
#
# Usage: deploy/examples/check.sh            (builds lockboxd and lockbox-controller, dev)
#        LOCKBOX_BIN=DIR deploy/examples/check.sh   (use the binaries in DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -n "${LOCKBOX_BIN:-}" ]; then
  bin="$LOCKBOX_BIN"
else
  cargo build -q -p lockboxd -p lockbox-controller
  bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
fi

work=$(mktemp -d /tmp/lbcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# Every absolute path of the examples, moved under $1 (/var/lib/lockbox-controller becomes
# $1/var-controller, /var/lib/lockbox becomes $1/var).
rewrite() {
  sed -e "s#/etc/lockbox#$1/etc#g" -e "s#/var/lib/lockbox#$1/var#g" -e "s#/run/lockbox#$1/run#g" "$2"
}

# run DIR NAME CMD...: runs CMD with stdout/stderr in DIR/NAME.{out,err}; prints the exit code.
run() {
  local dir=$1 name=$2
  shift 2
  local rc=0
  timeout 30 "$@" >"$dir/$name.out" 2>"$dir/$name.err" </dev/null || rc=$?
  echo "$rc"
}

first_line() { head -n 1 "$1" | cut -c1-150; }
last_line() { tail -n 1 "$1" | cut -c1-150; }

for set in deploy/examples/*/; do
  set=${set%/}
  name_of_set=$(basename "$set")
  keys="$work/$name_of_set.keys"
  : >"$keys"

  for f in "$set"/controller.toml "$set"/ctl-*.toml; do
    [ -e "$f" ] || continue
    d="$work/$name_of_set/$(basename "$f" .toml)"
    mkdir -p "$d"
    rewrite "$d" "$f" >"$d/config.toml"
    rc=$(run "$d" show "$bin/lockbox-controller" --config "$d/config.toml" show)
    if [ "$rc" = 78 ]; then
      fail "$f: bad config: $(first_line "$d/show.err")"
      continue
    fi
    if ! grep -q "signing key" "$d/show.err"; then
      fail "$f: show exited $rc, expected a missing signing key: $(first_line "$d/show.err")"
      continue
    fi
    rc=$(run "$d" init "$bin/lockbox-controller" --config "$d/config.toml" init)
    if [ "$rc" != 0 ]; then
      fail "$f: init exited $rc: $(first_line "$d/init.err")"
      continue
    fi
    kid=$(sed -n 's/^key_id = "\(.*\)"$/\1/p' "$d/init.out")
    pub=$(sed -n 's/^public_key = "\(.*\)"$/\1/p' "$d/init.out")
    echo "$kid $pub" >>"$keys"
    rc=$(run "$d" show2 "$bin/lockbox-controller" --config "$d/config.toml" show)
    if [ "$rc" != 0 ]; then
      fail "$f: show after init exited $rc: $(first_line "$d/show2.err")"
      continue
    fi
    echo "ok   $f (controller $kid; show without a key: $(first_line "$d/show.err"))"
  done

  for f in "$set"/host-*.toml; do
    [ -e "$f" ] || continue
    d="$work/$name_of_set/$(basename "$f" .toml)"
    mkdir -p "$d"
    # The placeholder public key of each [[controllers]] block becomes the real key that
    # `init` made for the controller with that key_id.
    rewrite "$d" "$f" | awk -v keys="$keys" '
      BEGIN { while ((getline line < keys) > 0) { split(line, a, " "); pub[a[1]] = a[2] } }
      /^key_id = "/ { kid = $3; gsub(/"/, "", kid) }
      /^public_key = "ed25519:REPLACE/ {
        if (kid in pub) { print "public_key = \"" pub[kid] "\""; next }
      }
      { print }' >"$d/config.toml"
    if grep -q REPLACE "$d/config.toml"; then
      fail "$f: a placeholder names a controller key_id that no example controller has"
      continue
    fi
    rc=$(run "$d" start "$bin/lockboxd" --config "$d/config.toml")
    if [ "$rc" = 78 ]; then
      fail "$f: bad config: $(first_line "$d/start.err")"
      continue
    fi
    echo "ok   $f (lockboxd exit $rc: $(last_line "$d/start.err"))"
  done
done

# Negative control: the same check must catch a bad config.
d="$work/negative"
mkdir -p "$d"
printf 'version = 1\nnode_id = "host-a"\nno_such_field = 1\n' >"$d/config.toml"
rc=$(run "$d" start "$bin/lockboxd" --config "$d/config.toml")
if [ "$rc" = 78 ]; then
  echo "ok   negative control: an unknown field exits 78 ($(first_line "$d/start.err"))"
else
  fail "negative control: an unknown field exited $rc, not 78"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures example(s) failed"
  exit 1
fi
echo "all examples parse"
