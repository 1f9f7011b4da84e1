"""Read-ahead on the mapped path (issue 17): rows read through small views, prefetches that
return at once, and prefetches around aborts, commits and forks read the right bytes."""

import os

import numpy as np
import transaction

import outcore


def rows(lo, hi, cols):
    return np.arange(lo * cols, hi * cols, dtype=np.float32).reshape(hi - lo, cols)


def stored(url, n=4096, cols=1024):
    """A committed (n, cols) float32 array on an embedded store (4 KiB rows, 16 MiB)."""
    d = outcore.open(url)
    d.root()["A"] = A = outcore.BigArray((n, cols), np.float32)
    A[:] = rows(0, n, cols)
    transaction.commit()
    return d, A


def test_rows_read_through_small_views_are_the_stored_rows(local_url):
    d, A = stored(local_url)
    d.close()
    d = outcore.open(local_url, readonly=True)
    A = d.root()["A"]
    for i in [4095, 0, 1777, 1, 2048]:
        np.testing.assert_array_equal(A[i], rows(i, i + 1, 1024)[0])
    np.testing.assert_array_equal(A[100:160], rows(100, 160, 1024))
    d.close()


def test_prefetch_then_abort_or_commit(local_url):
    d, A = stored(local_url)
    A.prefetch()
    A[10:20] = -1
    A.prefetch(slice(0, 64))
    transaction.abort()
    np.testing.assert_array_equal(A[15], rows(15, 16, 1024)[0])
    A[30] = 7
    A.prefetch()
    transaction.commit()
    d.close()
    d = outcore.open(local_url, readonly=True)
    A = d.root()["A"]
    assert (A[30] == 7).all()
    np.testing.assert_array_equal(A[31], rows(31, 32, 1024)[0])
    d.close()


def test_prefetch_in_a_forked_child(local_url):
    """A prefetch in a forked child (the read-ahead thread is the parent's) neither hangs
    nor reads wrong bytes."""
    d, A = stored(local_url)
    A.prefetch()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            A.prefetch(slice(1000, 2000))
            ok = np.array_equal(A[1000:2000], rows(1000, 2000, 1024))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    d.close()
