"""Fault-filled memory from Python: compressed stores fetch blocks on first touch."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import transaction

import outcore


def make(path, n=4 << 20):
    db = outcore.open(str(path), compression="zstd")
    db.root()["A"] = A = outcore.BigArray((n,), "i8", blksize=1 << 20)
    A[:] = np.arange(n) % 1000
    transaction.commit()
    db.close()


def test_a_thread_faulting_with_the_gil_does_not_block_others(tmp_path):
    make(tmp_path / "z")
    db = outcore.open(str(tmp_path / "z"))
    A = db.open(transaction.TransactionManager()).root()["A"]
    ticks = 0
    stop = False

    def ticker():
        nonlocal ticks
        while not stop:
            ticks += 1

    t = threading.Thread(target=ticker)
    t.start()
    data = A[:].tobytes()  # holds the GIL while every block is fetched on touch
    stop = True
    t.join()
    assert np.frombuffer(data, "i8")[12345] == 12345 % 1000
    assert ticks > 0
    db.close()


BROKEN = r"""
import sys, transaction, outcore
db = outcore.open(sys.argv[1])
A = db.open(transaction.TransactionManager()).root()["A"]
try:
    A.load(slice(0, 10))
except OSError as e:
    print("load raised:", e, flush=True)
A[5]  # touching the damaged block: no Python exception can be raised here
print("not reached", flush=True)
"""


def test_store_errors_surface(tmp_path):
    make(tmp_path / "z")
    # Damage every segment file: the first block's compressed bytes fail their checksum.
    seg_dir = tmp_path / "z" / "segments"
    for seg in seg_dir.iterdir():
        data = bytearray(seg.read_bytes())
        for i in range(100, len(data), 4096):
            data[i] ^= 0xFF
        seg.write_bytes(bytes(data))
    env = dict(os.environ, OUTCORE_CACHE_BYTES=str(64 << 20))
    r = subprocess.run(
        [sys.executable, "-c", BROKEN, str(tmp_path / "z")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "load raised:" in r.stdout, r.stdout + r.stderr
    assert "corrupt" in r.stdout.lower()
    assert "not reached" not in r.stdout
    assert r.returncode != 0
    # The fatal message names the block that could not be loaded.
    assert "cannot load block 0 of file" in r.stderr, r.stderr
