#!/usr/bin/env bash
# The outcore demo on a fresh machine: installs the Python package (release build) into .venv,
# then runs wendelin.core's signal demo on the embedded default store in ./demo-data:
# `gen` writes a float64 signal array in 32 MiB transactions, `read` maps it whole and prints
# its mean and sum with the memory used. Extra arguments go to the demo, e.g. --worksize=4096.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
VENV=.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "maturin>=1.9.4,<2" "numpy>=1.26" transaction zope.interface
export PYO3_PYTHON="$PWD/$VENV/bin/python"
VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/maturin" develop --release --locked -q
rm -rf demo-data
"$VENV/bin/python" -m outcore.demo "$@" gen demo-data
"$VENV/bin/python" -m outcore.demo "$@" read demo-data
