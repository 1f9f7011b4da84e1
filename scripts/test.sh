#!/usr/bin/env bash
# Runs every test of outcore on a fresh machine: installs what is missing (a Python venv with
# maturin, numpy, pytest, transaction, mypy), then the lints and mypy, the Rust tests (unit,
# integration, conformance, multi-process, crash, memory-cgroup) and the Python tests.
# Usage: scripts/test.sh [--long]   (--long: 500 crash rounds, a 16 GiB array in 1 GiB of RAM,
#   8 x 250 transaction histories, 120 s of fuzzing per decoder, full ASan and TSan runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
if [[ "${1:-}" == "--long" ]]; then
  export OUTCORE_LONG_TESTS=1
fi
VENV=.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "maturin>=1.9.4,<2" "numpy>=1.26" pytest transaction zope.interface mypy "dask[distributed]" xarray "zarr>=3" h5py
export PYO3_PYTHON="$PWD/$VENV/bin/python"

# A private PostgreSQL cluster on loopback for the PostgreSQL store's tests, and a private
# S3 server (SeaweedFS) on loopback for the object-storage tests.
eval "$(scripts/pg-test-server.sh start)"
trap 'scripts/pg-test-server.sh stop "$OUTCORE_TEST_PG_DIR"' EXIT
eval "$(scripts/s3-test-server.sh start)"
trap 'scripts/pg-test-server.sh stop "$OUTCORE_TEST_PG_DIR"; scripts/s3-test-server.sh stop "$OUTCORE_TEST_S3_DIR"' EXIT
# With servers promised, PostgreSQL and S3 tests that find none fail instead of skipping.
export OUTCORE_REQUIRE_PG=1 OUTCORE_REQUIRE_S3=1
# Default disk caches of object-storage stores (under $XDG_CACHE_HOME/outcore) go to the S3
# server's directory, removed with it, not to the user's cache directory.
export XDG_CACHE_HOME="$OUTCORE_TEST_S3_DIR/xdg-cache"

rustup component add clippy rustfmt >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The core without its PostgreSQL store and object storage (cargo features "postgres" and
# "s3", on by default).
cargo clippy -p outcore --lib --no-default-features --locked -- -D warnings
# The API documentation builds without warnings (every public item documented, links valid).
RUSTDOCFLAGS="-D warnings" cargo doc -p outcore --no-deps --locked
"$VENV/bin/python" -m mypy python/outcore   # the typed Python API (config: pyproject.toml)
cargo test --workspace --locked --release
# The dirty-page scan's fallback for kernels without PAGEMAP_SCAN (< 6.7), forced.
OUTCORE_NO_PAGEMAP_SCAN=1 cargo test --locked --release -p outcore --test vm_mapped

# Memory errors: the storage, memory and database tests again under valgrind memcheck (with
# address-space requests small enough for valgrind).
if command -v valgrind >/dev/null; then
  (
    export OUTCORE_RESERVE_BYTES=$((512 << 20)) OUTCORE_LMDB_MAP_BYTES=$((1 << 30))
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind --quiet --error-exitcode=9"
    cargo test --locked --release -p outcore --test db --test vm_mapped
    cargo test --locked --release -p outcore --test storage_conformance -- mem_store local_store
  )
else
  echo "valgrind not installed: memcheck runs skipped" >&2
fi

# Coverage-guided fuzzing of the decoders of stored bytes (nightly; skipped with a message
# without one): 10 s per target, 120 s with AddressSanitizer under --long.
if [[ -n "${OUTCORE_LONG_TESTS:-}" ]]; then
  scripts/fuzz.sh --seconds 120 --asan
else
  scripts/fuzz.sh --seconds 10
fi
# Sanitizers (nightly): ThreadSanitizer over the fault-path race tests; under --long also
# AddressSanitizer over the unit, database, memory, fault-path, history and storage tests.
if [[ -n "${OUTCORE_LONG_TESTS:-}" ]]; then
  scripts/sanitizers.sh
else
  scripts/sanitizers.sh --quick
fi

VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/maturin" develop --release --locked -q
"$VENV/bin/python" -m pytest -q
