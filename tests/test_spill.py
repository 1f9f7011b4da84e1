"""Spilling: a transaction's writes beyond ``dirty_bytes`` move out of RAM into the
embedded store's staged space (the spill thread), and stay exactly what the program wrote.

Each test runs in a child process: the dirty budget is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import outcore

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import transaction
    import outcore

    path, mode = sys.argv[1], sys.argv[2]
    MiB = 1 << 20

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    db = outcore.open(path, dirty_bytes=16 * MiB)
    root = db.root()
    n = 128 * MiB // 8
    root["a"] = A = outcore.BigArray(shape=(n,), dtype="f8")
    A[:] = 1.0
    transaction.commit()
    base = anon_kb()
    a = A[:]
    a[:] = 2.0
    # The spill thread brings the writes under the budget (poll, no timing assumption).
    deadline = time.monotonic() + 60
    while anon_kb() - base > 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert anon_kb() - base <= 64 * 1024, f"writes stayed in RAM: {anon_kb() - base} kB"
    # numpy keeps writing the spilled blocks (without the GIL) while more are spilled.
    for _ in range(5):
        np.add(a, 1.0, out=a)
    if mode == "commit":
        transaction.commit()
        want = 7.0
    else:
        transaction.abort()
        want = 1.0
    db.close()
    db = outcore.open(path)
    b = db.root()["a"][:]
    assert (b == want).all(), np.unique(b)
    print("ok", want)
    """
)


@pytest.mark.parametrize("mode", ["commit", "abort"])
def test_rewrite_beyond_the_dirty_budget(tmp_path, mode):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "db"), mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok"), out.stdout


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_dirty_bytes_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="dirty_bytes"):
        outcore.open(tmp_path / "db", dirty_bytes=bad)
