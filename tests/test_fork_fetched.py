"""Forked children (multiprocessing's "fork" start method) read fault-filled memory: views of
compressed and PostgreSQL arrays show the parent's snapshot, loaded blocks and not yet loaded
blocks alike."""

import multiprocessing
import os
import uuid

import numpy as np
import pytest
import transaction

import outcore

N = 2 << 20  # 16 blocks of 1 MiB

# The view the pool's workers read: set before the pool forks them.
VIEW = None


def _sum(bounds):
    lo, hi = bounds
    return int(VIEW[lo:hi].sum())


def _serves_forks():
    """Forked children inherit fetched memory unless OUTCORE_NO_UFFD_FORK turns it off."""
    return "OUTCORE_NO_UFFD_FORK" not in os.environ


def _url(kind, tmp_path):
    if kind == "lz4":
        return str(tmp_path / "z"), {"compression": "lz4"}
    base = os.environ.get("OUTCORE_TEST_PG")
    if not base:
        pytest.skip("OUTCORE_TEST_PG is not set (scripts/test.sh starts a server)")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}outcore_schema=py_{uuid.uuid4().hex[:12]}", {}


@pytest.mark.parametrize("kind", ["lz4", "pg"])
def test_a_fork_pool_reads_views_of_fetched_arrays(tmp_path, kind):
    global VIEW
    if not _serves_forks():
        pytest.skip("OUTCORE_NO_UFFD_FORK: fetched memory is not inherited")
    url, options = _url(kind, tmp_path)
    db = outcore.open(url, **options)
    db.root()["A"] = A = outcore.BigArray((N,), "i8", blksize=1 << 20)
    A[:] = np.arange(N) % 1000
    transaction.commit()
    db.close()

    db = outcore.open(url)
    tm = transaction.TransactionManager()
    A = db.open(tm).root()["A"]
    view = A[:]
    expected = np.arange(N) % 1000
    # The first quarter is loaded before the fork (the rest is not), and one element is
    # written without a commit: children see the parent's memory as it is at the fork.
    assert int(view[: N // 4].sum()) == int(expected[: N // 4].sum())
    A[7] = 10**6
    expected[7] = 10**6
    VIEW = view
    step = N // 16
    chunks = [(lo, lo + step) for lo in range(0, N, step)]
    try:
        with multiprocessing.get_context("fork").Pool(3) as pool:
            # A bound against a hang (a dead worker leaves map waiting forever).
            sums = pool.map_async(_sum, chunks).get(timeout=300)
    finally:
        VIEW = None
    assert sums == [int(expected[lo:hi].sum()) for lo, hi in chunks]
    assert int(view.sum()) == int(expected.sum())
    tm.abort()
    db.close()


# Run in a fresh interpreter: it loads block 0 of the array, forks, and exits at once, before
# its child reads anything; the child waits until it is an orphan and then reads.
_ORPHAN = r"""
import os, sys
import outcore
db = outcore.open(sys.argv[1])
view = db.root()["A"][:]
blk = int(sys.argv[2])
print("parent", int(view[:blk].sum()), flush=True)
me = os.getpid()
if os.fork():
    os._exit(0)  # the parent is gone before its child touches anything
while os.getppid() == me:
    pass
print("child loaded", int(view[:blk].sum()), flush=True)
print("child unloaded", int(view[5 * blk : 6 * blk].sum()), flush=True)
"""


@pytest.mark.parametrize("kind", ["lz4", "pg"])
def test_a_child_outliving_its_parent_never_reads_zeros(tmp_path, kind):
    """The parent serves its forked children's fetched memory; once it has exited, a block
    the child had not read fails loudly (SIGBUS after a message naming it), never reads as
    zeros, and what the child had already is still right."""
    import subprocess
    import sys

    if not _serves_forks():
        pytest.skip("OUTCORE_NO_UFFD_FORK: fetched memory is not inherited")
    url, options = _url(kind, tmp_path)
    db = outcore.open(url, **options)
    db.root()["A"] = A = outcore.BigArray((N,), "i8", blksize=1 << 20)
    A[:] = np.arange(N) % 1000 + 1
    transaction.commit()
    db.close()
    blk = (1 << 20) // 8
    expected = np.arange(N) % 1000 + 1
    # The grandchild keeps stdout and stderr open: run() returns once both have exited.
    out = subprocess.run(
        [sys.executable, "-c", _ORPHAN, url, str(blk)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stdout.splitlines()
    assert f"parent {int(expected[:blk].sum())}" in lines, out
    assert f"child loaded {int(expected[:blk].sum())}" in lines, out
    assert not any(line.startswith("child unloaded") for line in lines), out
    assert "has exited" in out.stderr and "block 5" in out.stderr, out.stderr


def test_children_read_without_cap_sys_ptrace():
    """Containers usually lack CAP_SYS_PTRACE (Docker drops it), which userfaultfd fork
    events need: inheriting fetched memory must not depend on it. Runs the pool tests again
    in a process without the capability."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv(1) to drop CAP_SYS_PTRACE")
    if not _serves_forks():
        pytest.skip("OUTCORE_NO_UFFD_FORK: fetched memory is not inherited")
    drop = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]
    out = subprocess.run(
        drop + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                "-k", "fork_pool or outliving"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout.split("\n")[-2], out.stdout


def test_forks_racing_new_versions_see_whole_blocks(tmp_path):
    """Another thread keeps moving the parent's view to new versions (each block rewritten
    and registered anew) while the parent forks: every child sees each block whole — one
    version, never zeros, never a mix (a fork waits for a mapping change in flight)."""
    import threading

    if not _serves_forks():
        pytest.skip("OUTCORE_NO_UFFD_FORK: fetched memory is not inherited")
    url = str(tmp_path / "z")
    nblocks, per = 8, (1 << 20) // 8
    db = outcore.open(url, compression="lz4")
    writer_tm = transaction.TransactionManager()
    W = db.open(writer_tm).root()
    W["A"] = outcore.BigArray((nblocks * per,), "i8", blksize=1 << 20)
    W["A"][:] = 1
    writer_tm.commit()
    tm = transaction.TransactionManager()
    view = db.open(tm).root()["A"][:]
    stop = threading.Event()

    def rewrite():
        k = 2
        while not stop.is_set():
            W["A"][:] = k
            writer_tm.commit()
            tm.abort()  # the reader's view moves to version k
            k += 1

    t = threading.Thread(target=rewrite)
    t.start()
    try:
        for _ in range(40):
            pid = os.fork()
            if pid == 0:
                blocks = view.reshape(nblocks, per)
                ok = all(b.min() == b.max() > 0 for b in blocks)
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop.set()
        t.join()
    db.close()
