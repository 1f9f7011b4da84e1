#!/usr/bin/env bash
# Sets up the side-by-side benchmark (bench/run.py) on a fresh machine: a Python 3.12 venv in
# bench/.venv (zarr 3 needs Python >= 3.12), the peers from PyPI (numpy, h5py, zarr,
# tensorstore, matplotlib, psycopg, dask.distributed; obstore for the object-storage
# workload) and outcore itself, built in release mode into that venv.
# Usage: bash bench/setup.sh            (PYTHON=/path/to/python3.12 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
VENV=bench/.venv
if [ -z "${PYTHON:-}" ]; then
  for p in "$HOME/.pyenv/versions/3.12.1/bin/python" python3.13 python3.12; do
    if command -v "$p" >/dev/null 2>&1; then PYTHON=$p; break; fi
  done
fi
if [ -z "${PYTHON:-}" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "bench/setup.sh: needs Python >= 3.12 (zarr 3); set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "maturin>=1.9.4,<2" "numpy>=1.26" transaction zope.interface \
  "zarr>=3" h5py tensorstore matplotlib "psycopg[binary]>=3" "dask[distributed]" obstore
export PYO3_PYTHON="$PWD/$VENV/bin/python"
VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/maturin" develop --release --locked -q
"$VENV/bin/python" -c 'import outcore, zarr, h5py, tensorstore, matplotlib, psycopg, obstore
from importlib.metadata import version as v
print("bench/.venv ready:", ", ".join(f"{m} {v(m)}" for m in ("zarr", "h5py", "tensorstore")))'
