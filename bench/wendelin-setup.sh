#!/usr/bin/env bash
# Sets up wendelin.core (the prior art) for the demo-wendelin workload of bench/run.py: a
# Python 3.7 venv in bench/.venv-wendelin (git-ignored) with wendelin.core 0.13 (its only PyPI
# release, an sdist) and the last versions of its dependencies that support Python 3.7, plus
# bench/.venv-wendelin/demo_zbigarray.py, its demo made runnable on Python 3.
# Usage: bash bench/wendelin-setup.sh       (PYTHON=/path/to/python3.7 to pick the interpreter)
#
# Why Python 3.7: 0.13 compiles its C extension against CPython internals and does not build on
# 3.11 or later; 3.7 is the newest Python its release supports. Why old build tools: the sdist
# has a setup.py only, built here with the setuptools that Python 3.7's venv ships (< 58) and
# without build isolation, so pip does not fetch a newer setuptools for the build.
# Idempotent: an existing venv is reused and the pinned versions are (re)checked.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-wendelin
found_by=PYTHON
if [ -z "${PYTHON:-}" ]; then
  found_by="a search of ~/.pyenv/versions/3.7.* and python3.7"
  for p in "$HOME"/.pyenv/versions/3.7.*/bin/python python3.7; do
    if command -v "$p" >/dev/null 2>&1; then PYTHON=$p; break; fi
  done
fi
if [ -z "${PYTHON:-}" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 7))' 2>/dev/null; then
  echo "bench/wendelin-setup.sh: wendelin.core 0.13 needs Python 3.7 (it does not build on 3.11+)," \
    "and $found_by gave none (${PYTHON:-nothing found})." \
    "Install one (e.g. \`pyenv install 3.7.16\`) or set PYTHON=/path/to/python3.7." >&2
  exit 1
fi
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  echo "bench/wendelin-setup.sh: wendelin.core 0.13 builds a C extension: install a C compiler (gcc)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "setuptools<58" wheel
# The newest releases for Python 3.7 of what 0.13 pulls in (ZODB3 3.11 is a meta package that
# brings ZODB, ZEO, BTrees and persistent); pinned so that every machine measures the same code.
"$VENV/bin/python" -m pip install -q --no-build-isolation \
  wendelin.core==0.13 numpy==1.21.6 ZODB3==3.11.0 ZODB==6.0.1 ZEO==6.0.0 BTrees==5.2 \
  persistent==5.2 transaction==4.0 zodbpickle==3.3 zope.interface==6.4.post2 psutil==7.2.2
# 0.13's demo still uses Python 2's xrange (fixed upstream in 2022, after the release): the
# copy the benchmark runs has that one word changed, nothing else.
DEMO=$("$VENV/bin/python" -c 'import wendelin.demo.demo_zbigarray as d; print(d.__file__)')
sed 's/\bxrange(/range(/' "$DEMO" > "$VENV/demo_zbigarray.py"
if grep -q 'xrange' "$VENV/demo_zbigarray.py"; then
  echo "bench/wendelin-setup.sh: could not patch xrange in $DEMO" >&2
  exit 1
fi
"$VENV/bin/python" -c 'import wendelin.bigarray.array_zodb, wendelin.lib.zodb, pkg_resources, sys
v = lambda d: pkg_resources.get_distribution(d).version
print("bench/.venv-wendelin ready: Python %s, wendelin.core %s, numpy %s, ZODB %s"
      % (sys.version.split()[0], v("wendelin.core"), v("numpy"), v("ZODB")))'
