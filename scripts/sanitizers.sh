#!/usr/bin/env bash
# The core's tests under AddressSanitizer and ThreadSanitizer (nightly toolchain, std rebuilt
# with the sanitizer: -Zbuild-std, needs the rust-src component).
#
# Usage: scripts/sanitizers.sh [--quick]
#   default: ASan over the unit tests and the database, memory, fault-path and storage tests;
#            TSan over the fault-path race tests (tests/fault_races.rs) at 3x their iterations
#            and tests/vm_fetch.rs: about 8 min on 2 cores from scratch, 3.5 min once built.
#   --quick: the test command's subset: TSan over tests/fault_races.rs (about 2.6 min on 2
#            cores, most of it building std and the crates with the sanitizer).
# Exits non-zero on any sanitizer report (or test failure). Without a nightly toolchain with
# rust-src it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "sanitizers.sh: no nightly toolchain: sanitizer runs skipped" >&2
  exit 0
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain nightly >/dev/null 2>&1 || {
    echo "sanitizers.sh: the nightly rust-src component is missing and cannot be installed:" \
      "sanitizer runs skipped" >&2
    exit 0
  }
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
TARGET=x86_64-unknown-linux-gnu

# run SANITIZER TEST-ARGS...: cargo test of the core with SANITIZER, in its own target dir.
run() {
  local san=$1
  shift
  local start=$SECONDS
  RUSTFLAGS="-Zsanitizer=$san -Cdebuginfo=1" RUSTDOCFLAGS="-Zsanitizer=$san" \
    CARGO_TARGET_DIR="target/sanitizer-$san" \
    cargo +nightly test -Zbuild-std --target "$TARGET" --release -p outcore "$@"
  echo "sanitizers.sh: $san run of $* took $((SECONDS - start)) s" >&2
}

# LeakSanitizer: the handler thread and its workers are process-wide and never exit, which is
# by design; uninstrumented C (LMDB, zstd) is fine for ASan.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
# Races are reported only between instrumented accesses; halt on the first.
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# Tests that measure resident memory are skipped under ASan (its quarantine and shadow memory
# are resident too).
RSS_TESTS=(--skip clean_blocks_beyond_the_budget --skip discard_restores_and_install)
if [[ $QUICK == 1 ]]; then
  run thread --test fault_races
else
  OUTCORE_RACE_SCALE=3 run thread --test fault_races --test vm_fetch -- "${RSS_TESTS[@]}"
  run address --lib --test fault_races --test vm_fetch --test vm_mapped --test db \
    --test histories --test corruption -- "${RSS_TESTS[@]}"
  run address --test storage_conformance -- mem_store local_store
fi
