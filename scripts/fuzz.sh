#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of every decoder of stored bytes: array
# metadata, index records (with inline payloads), payload decompression, commit-log entries,
# the root record, and the CLI's .npy header import. Targets are in fuzz/fuzz_targets, seeds
# (valid encodings) in fuzz/seeds; new corpus entries go to fuzz/corpus (not checked in),
# crashes to fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [--seconds N] [--asan] [target...]
#   default: 15 s per target (the test command's smoke run), no sanitizer (fast build; the
#   decoders are safe Rust); long run: scripts/fuzz.sh --seconds 600 --asan
# Exits non-zero if any target finds a crash. Needs a nightly toolchain; without one it says
# so and exits 0 (the stable decoder smoke test, src/fuzz_smoke.rs, still runs in cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=15
SANITIZER=none
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER="$2"; shift 2 ;;
    --asan) SANITIZER=address; shift ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(meta record log payload root npy)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly): coverage-guided" \
    "fuzzing skipped; the stable decoder smoke test still runs in cargo test" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

cd fuzz
cargo +nightly fuzz build -O --sanitizer "$SANITIZER"
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if cargo +nightly fuzz run -O --sanitizer "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_PER" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz $t: ok, $execs runs in ${SECONDS_PER}s, $cov, corpus $(ls "corpus/$t" | wc -l)"
  else
    echo "fuzz $t: FAILED (crash input in fuzz/artifacts/$t/)" >&2
    tail -40 "$log" >&2
    status=1
  fi
  rm -f "$log"
done
exit $status
