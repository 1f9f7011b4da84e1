#!/usr/bin/env bash
# Runs the outcore demo on the embedded default store in ./demo-data: generate a 512 MiB
# signal array in 32 MiB transactions, then read it back through one view.
# Extra arguments go to the demo (e.g. --worksize=4096).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --release --locked -p outcore --example demo
rm -rf demo-data
target/release/examples/demo "$@" gen demo-data
target/release/examples/demo "$@" read demo-data
