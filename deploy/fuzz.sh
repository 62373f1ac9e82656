#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, one per decoder of outside bytes; the functions live in
# crates/lockbox-fuzz) under libFuzzer with AddressSanitizer for SECONDS each (default 10),
# starting from seeds the real code makes, and prints each target's executions.
#
#   deploy/fuzz.sh [SECONDS] [TARGET...]    each target (default: all) for SECONDS
#   deploy/fuzz.sh --runs N [TARGET...]     each target until it has run N inputs
#
# The corpus (fuzz/corpus/TARGET) is kept between runs and grows with what each run finds.
# Needs the nightly toolchain (installed if missing) and cargo-fuzz (installed if missing).
# Crashes land in fuzz/artifacts/TARGET/; reproduce with
#   cargo +nightly fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-…
# Every `cargo test` also runs each target over its seeds and mutations for a moment
# (crates/lockbox-fuzz/tests/smoke.rs): that is the CI smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=(-max_total_time="${1:-10}"); what="in ${1:-10} s"
if [ "${1:-}" = --runs ]; then
  limit=(-runs="$2"); what="(--runs $2)"; shift 2
elif [ $# -gt 0 ]; then
  shift
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus=fuzz/corpus
cargo run -q -p lockbox-fuzz --bin lockbox-fuzz-seeds -- "$corpus"
cargo +nightly fuzz build --fuzz-dir fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
for t in "${targets[@]}"; do
  start=$(date +%s)
  log=$(mktemp)
  if cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus/$t" -- \
      "${limit[@]}" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "$t: ${runs:-?} executions $what, $(( $(date +%s) - start )) s, no crash"
  else
    echo "$t: FAILED (see fuzz/artifacts/$t/)"; tail -n 40 "$log"; rm -f "$log"; exit 1
  fi
  rm -f "$log"
done
