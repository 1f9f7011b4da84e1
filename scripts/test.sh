#!/usr/bin/env bash
# Runs every test of outcore on a fresh machine: installs what is missing, then runs the Rust
# tests (unit, integration, conformance, multi-process and crash tests) and the lints.
# Usage: scripts/test.sh [--long]   (--long adds the long crash/soak rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
if [[ "${1:-}" == "--long" ]]; then
  export OUTCORE_LONG_TESTS=1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --release
# The dirty-page scan's fallback for kernels without PAGEMAP_SCAN (< 6.7), forced.
OUTCORE_NO_PAGEMAP_SCAN=1 cargo test --locked --release -p outcore --test vm_mapped
