#!/usr/bin/env bash
# Clone cost on a qemu LUKS qcow2 image (issue 5): what each clone option costs end to end,
# lockbox call plus consumer work, on the same filled image.
#
#   same-key : lockboxctl key clone --mode same-key (O(1): a new key id, same material)
#              + qemu-img create of an encrypted qcow2 overlay on the image (docs/luks.md)
#   new-key  : lockboxctl key clone --mode new-key (new material)
#              + qemu-img convert: every block decrypted under the old key and re-encrypted
#                into a new image under a new LUKS master key and the new passphrase
#   rewrap   : (for reference) lockboxctl key clone --mode new-key + cp of the image + two
#              qemu-img amend (add a keyslot for the new key, drop the old one): a new key,
#              the same master key, no re-encryption (docs/luks.md "rewrap (fast)")
#
# Each path is timed REPS times (wall clock, from before the lockboxctl call to after the
# last qemu-img), and the median is printed, with the ratio new-key / same-key. The keys are
# passed to qemu exactly as docs/luks.md does: `file=<(lockboxctl key get … | tr -d '\n')`.
#
#   ./deploy/bench/clone-cost.sh                 # 1 GiB image, 5 repetitions, iter-time 10 ms
#   SIZE_MIB=1024 REPS=5 ITER_TIME=default ./deploy/bench/clone-cost.sh   # qemu's default PBKDF time
#
# Environment: SIZE_MIB (image size, default 1024), REPS (default 5), ITER_TIME (LUKS
# encrypt.iter-time in ms for every image made, or "default" to leave qemu's 2000 ms),
# BENCH_DIR (under which a new work directory for the images is made and removed at the end;
# default /var/tmp, on disk), LOCKBOX_BIN (directory holding release lockboxd and lockboxctl;
# default: build them with `cargo build --release -p lockboxd -p lockboxctl`, use
# target/release),
# IDLE_WAIT (seconds to wait for a quiet machine before each timed run, default 60).
#
# Needs qemu-img and qemu-io (Debian: qemu-utils) and about 3 x SIZE_MIB of free disk.
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mib="${SIZE_MIB:-1024}"
reps="${REPS:-5}"
iter_time="${ITER_TIME:-10}"
idle_wait="${IDLE_WAIT:-60}"

for t in qemu-img qemu-io; do
  command -v "$t" >/dev/null || {
    echo "$t is missing: apt-get update && apt-get install -y qemu-utils" >&2
    exit 1
  }
done

if [ -n "${LOCKBOX_BIN:-}" ]; then
  bin="$LOCKBOX_BIN"
else
  cargo build --release -q -p lockboxd -p lockboxctl
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi
# Copy the binaries: a concurrent build must not replace them mid-run.
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lockbox-clone-cost.XXXXXX")
chmod 700 "$work"
cp "$bin/lockboxd" "$bin/lockboxctl" "$work/"

daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ]; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# One lockboxd, auto-unsealed from a key file, on a Unix socket in the work directory.
cat > "$work/lockboxd.toml" <<TOML
version = 1
node_id = "bench-host"
data_dir = "$work/data"
socket = "$work/lockbox.sock"
[unseal]
method = "keyfile"
keyfile = "$work/unseal.key"
[keys]
clone_policy = "same-key"
TOML
"$work/lockboxd" init --config "$work/lockboxd.toml" >/dev/null
"$work/lockboxd" --config "$work/lockboxd.toml" 2> "$work/lockboxd.log" &
daemon_pid=$!
export LOCKBOX_SOCKET="$work/lockbox.sock"
lockboxctl() { "$work/lockboxctl" "$@"; }
for _ in $(seq 1 200); do
  lockboxctl status >/dev/null 2>&1 && break
  sleep 0.1
done
lockboxctl status >/dev/null || { echo "lockboxd did not start; see $work/lockboxd.log" >&2; exit 1; }

luks_opts() { # $1 = secret id
  if [ "$iter_time" = default ]; then
    echo "encrypt.format=luks,encrypt.key-secret=$1"
  else
    echo "encrypt.format=luks,encrypt.key-secret=$1,encrypt.iter-time=$iter_time"
  fi
}
hexkey() { lockboxctl key get "$1" --format hex | tr -d '\n'; }

# Machine-wide busy CPU (jiffies) from /proc/stat, to report what other processes used.
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# Wait (up to IDLE_WAIT s) until the machine has been >= 90 % idle for 2 s.
wait_quiet() {
  local deadline=$((SECONDS + idle_wait)) a b
  while [ "$SECONDS" -lt "$deadline" ]; do
    a=$(busy_jiffies); sleep 2; b=$(busy_jiffies)
    # 2 cores x 2 s x CLK_TCK jiffies; busy <= 10 % of that
    [ $((b - a)) -le $(($(nproc) * 2 * $(getconf CLK_TCK) / 10)) ] && return 0
  done
  echo "  (machine not quiet after ${idle_wait}s; measuring anyway)" >&2
}

echo "== lockboxd from $bin, qemu: $(qemu-img --version | head -n 1)"
echo "== machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM; images in $work ($(df -P "$work" | awk 'NR == 2 {print $1}'))"
echo "== image: ${size_mib} MiB qcow2 + LUKS, encrypt.iter-time=${iter_time}, filled with qemu-io 'write -P 0x5a 0 ${size_mib}M'"

KEY=$(lockboxctl key create --label volume=bench)
base="$work/base.qcow2"
qemu-img create -q -f qcow2 --object secret,id=sec0,file=<(hexkey "$KEY") -o "$(luks_opts sec0)" "$base" "${size_mib}M"
t0=$(date +%s%N)
qemu-io --object secret,id=sec0,file=<(hexkey "$KEY") --image-opts "driver=qcow2,file.filename=$base,encrypt.key-secret=sec0" -c "write -P 0x5a 0 ${size_mib}M" >/dev/null
t1=$(date +%s%N)
sync
echo "   fill: $(( (t1 - t0) / 1000000 )) ms; image file $(du -m "$base" | cut -f1) MiB on disk"

# Runs "$@" timed; sets wall_ms and others (CPU cores other processes used meanwhile).
timed() {
  wait_quiet
  local b0 b1 t0 t1 d0 d1 ticks
  ticks=$(getconf CLK_TCK)
  d0=$(awk '{print $14 + $15}' "/proc/$daemon_pid/stat")
  b0=$(busy_jiffies)
  t0=$(date +%s%N)
  local c0; c0=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)
  "$@"
  t1=$(date +%s%N)
  local c1; c1=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)
  b1=$(busy_jiffies)
  d1=$(awk '{print $14 + $15}' "/proc/$daemon_pid/stat")
  wall_ms=$(( (t1 - t0) / 1000000 ))
  # others = machine busy - this shell and its children - lockboxd, in cores over the run
  others=$(awk -v b=$((b1 - b0)) -v own=$((c1 - c0 + d1 - d0)) -v w="$wall_ms" -v hz="$ticks" \
    'BEGIN { o = (b - own) / hz / (w / 1000); if (o < 0) o = 0; printf "%.2f", o }')
}

# The lockbox part of a path: the `lockboxctl key clone` call alone (sets lb_us).
lb_clone() { # $1 = mode, $2 = label
  local t0 t1
  t0=$(date +%s%N)
  id=$(lockboxctl key clone "$KEY" --mode "$1" --label "volume=$2")
  t1=$(date +%s%N)
  lb_us=$(( (t1 - t0) / 1000 ))
}

same_key() {
  local id
  lb_clone same-key bench-sk
  qemu-img create -q -f qcow2 -b "$base" -F qcow2 --object secret,id=sec0,file=<(hexkey "$id") -o "$(luks_opts sec0)" "$work/sk.qcow2"
  echo "$id" > "$work/last-id"
}
new_key() {
  local id
  lb_clone new-key bench-nk
  qemu-img convert --object secret,id=old,file=<(hexkey "$KEY") --object secret,id=new,file=<(hexkey "$id") --image-opts "driver=qcow2,file.filename=$base,encrypt.key-secret=old" -O qcow2 -o "$(luks_opts new)" "$work/nk.qcow2"
  echo "$id" > "$work/last-id"
}
rewrap() {
  local id opts
  lb_clone new-key bench-rw
  cp --reflink=auto --sparse=always "$base" "$work/rw.qcow2"
  if [ "$iter_time" = default ]; then opts=""; else opts=",encrypt.iter-time=$iter_time"; fi
  qemu-img amend --object secret,id=old,file=<(hexkey "$KEY") --object secret,id=new,file=<(hexkey "$id") --image-opts "driver=qcow2,file.filename=$work/rw.qcow2,encrypt.key-secret=old" -o "encrypt.state=active,encrypt.new-secret=new$opts"
  qemu-img amend --object secret,id=old,file=<(hexkey "$KEY") --object secret,id=new,file=<(hexkey "$id") --image-opts "driver=qcow2,file.filename=$work/rw.qcow2,encrypt.key-secret=new" -o "encrypt.state=inactive,encrypt.old-secret=old"
  echo "$id" > "$work/last-id"
}

# After each timed run (untimed): check the clone reads the pattern back with its key (first
# and last MiB; through the overlay for same-key), and that the old key does not open a
# new-key image; then remove it.
verify_and_clean() {
  local id last=$((size_mib - 1)) img opts
  id=$(cat "$work/last-id")
  case "$path" in
    same-key) img="$work/sk.qcow2"; opts="driver=qcow2,file.filename=$img,encrypt.key-secret=s,backing.encrypt.key-secret=s" ;;
    new-key) img="$work/nk.qcow2"; opts="driver=qcow2,file.filename=$img,encrypt.key-secret=s" ;;
    rewrap) img="$work/rw.qcow2"; opts="driver=qcow2,file.filename=$img,encrypt.key-secret=s" ;;
  esac
  if [ "$path" = same-key ]; then
    qemu-io --object secret,id=s,file=<(hexkey "$id") --image-opts "$opts" -c 'read -P 0x5a 0 1M' -c "read -P 0x5a ${last}M 1M" >/dev/null
  else
    # the clone key opens the clone…
    qemu-io --object secret,id=s,file=<(hexkey "$id") --image-opts "$opts" -c 'read -P 0x5a 0 1M' -c "read -P 0x5a ${last}M 1M" >/dev/null
    # …and the origin's key does not.
    if qemu-io --object secret,id=s,file=<(hexkey "$KEY") --image-opts "$opts" -c 'read 0 1M' >/dev/null 2>&1; then
      echo "the origin's key opened the $path clone" >&2; exit 1
    fi
  fi
  rm -f "$img"
  lockboxctl key destroy "$id" >/dev/null
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A fn=([same-key]=same_key [new-key]=new_key [rewrap]=rewrap)
declare -A med others_max lb_med
echo "== ${reps} repetitions per path (median of wall-clock times); a run during which other"
echo "   processes used > 0.3 core is discarded and repeated (at most 3 times per repetition)"
for path in same-key new-key rewrap; do
  result="$work/$path.times"
  : > "$result"
  for rep in $(seq 1 "$reps"); do
    for try in 1 2 3 4; do
      timed "${fn[$path]}"
      verify_and_clean
      printf '   %-8s rep %d: %6d ms, of which lockboxctl key clone %5d us  (others %s cores)' \
        "$path" "$rep" "$wall_ms" "$lb_us" "$others"
      if awk -v o="$others" 'BEGIN { exit !(o > 0.3) }' && [ "$try" -lt 4 ]; then
        echo "  discarded"
        continue
      fi
      echo
      echo "$wall_ms $others $lb_us" >> "$result"
      break
    done
  done
  med[$path]=$(cut -d' ' -f1 "$result" | median)
  others_max[$path]=$(cut -d' ' -f2 "$result" | sort -n | tail -n 1)
  lb_med[$path]=$(cut -d' ' -f3 "$result" | median)
done

echo
echo "== result: ${size_mib} MiB qcow2 LUKS image, encrypt.iter-time=${iter_time}, ${reps} reps"
for path in same-key new-key rewrap; do
  printf '   %-8s median %8s ms (lockboxctl key clone: median %s us)   all: %s ms; others <= %s cores\n' \
    "$path" "${med[$path]}" "${lb_med[$path]}" \
    "$(cut -d' ' -f1 "$work/$path.times" | tr '\n' ' ' | sed 's/ $//')" "${others_max[$path]}"
done
awk -v n="${med[new-key]}" -v s="${med[same-key]}" -v r="${med[rewrap]}" \
  'BEGIN { printf "   ratio new-key / same-key = %.1f x;  rewrap / same-key = %.1f x\n", n / s, r / s }'
