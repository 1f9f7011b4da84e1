#!/usr/bin/env bash
# Runs the outcore demo on the embedded default store in ./demo-data.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
rm -rf demo-data
cargo run --release --locked -p outcore --example storage_smoke -- demo-data
