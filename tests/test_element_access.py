"""Element access (`A[i]`, `A[i, j]`) through the cached chunk view: always the current value.

The chunk view behind element access lives across calls; each test moves what it shows (the
snapshot, the shape, the transaction's changes, the connection's state) and checks that
`A[i]` follows.
"""

import numpy as np
import pytest
import transaction

import outcore


def stored(db, shape=(100,), dtype="f8", order="C", name="A"):
    root = db.root()
    root[name] = A = outcore.BigArray(shape, dtype, order=order, blksize=4096)
    A[...] = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape, order=order)
    transaction.commit()
    return A


def test_elements_match_numpy(db):
    A = stored(db, (6, 7), "i4")
    F = stored(db, (6, 7), "i4", order="F", name="F")
    ref = np.arange(42, dtype="i4").reshape(6, 7)
    fref = np.arange(42, dtype="i4").reshape((6, 7), order="F")
    for i in range(-6, 6):
        for j in range(-7, 7):
            assert A[i, j] == ref[i, j]
            assert A[np.int64(i), j] == ref[i, j]
            assert F[i, j] == fref[i, j]
    assert type(A[1, 2]) is np.int32
    B = stored(db, (5000,), "f8", name="B")  # several chunks of 4 blocks
    assert [B[i] for i in (0, 2047, 2048, 4999, -1, -5000)] == [0, 2047, 2048, 4999, 4999, 0]
    with pytest.raises(IndexError):
        B[5000]
    with pytest.raises(IndexError):
        A[6, 0]
    with pytest.raises(IndexError):
        A[0, 7]


def test_commit_and_abort(db):
    A = stored(db)
    assert A[5] == 5
    A[5] = 50
    assert A[5] == 50
    transaction.abort()
    assert A[5] == 5, "abort drops the change"
    A[5] = 51
    transaction.commit()
    assert A[5] == 51
    A[5] = 52
    sp = transaction.savepoint()
    A[5] = 53
    assert A[5] == 53
    sp.rollback()
    assert A[5] == 52, "rolling back a savepoint restores the element"
    transaction.commit()
    assert A[5] == 52


def test_another_connections_commit_shows_at_a_boundary(db):
    A = stored(db)
    assert A[7] == 7
    tm = transaction.TransactionManager()
    other = db.open(tm)
    other.root()["A"][7] = 70
    tm.commit()
    assert A[7] == 7, "this connection's snapshot has not moved yet"
    transaction.begin()
    assert A[7] == 70
    other.root()["A"][7] = 71
    tm.commit()
    transaction.abort()
    assert A[7] == 71
    other.root()["A"].resize((200,))
    other.root()["A"][150] = 150
    tm.commit()
    with pytest.raises(IndexError):
        A[150]
    transaction.begin()
    assert A[150] == 150 and A[-1] == 0 and len(A) == 200
    other.close()


def test_resize_and_append(db):
    A = stored(db)
    assert A[-1] == 99
    A.append([100.0, 101.0])
    assert A[-1] == 101 and A[100] == 100
    A.resize((50,))
    assert A[-1] == 49
    with pytest.raises(IndexError):
        A[60]
    A.resize((70,))
    assert A[60] == 0, "growing again shows zeros, not the dropped elements"
    transaction.commit()
    assert A[-1] == 0 and A[49] == 49


def test_close(db):
    A = stored(db)
    conn_array = db.open().root()["A"]
    assert conn_array[3] == 3 and A[3] == 3
    conn_array._conn.close()
    with pytest.raises(outcore.ClosedError):
        conn_array[3]
    db.close()
    with pytest.raises(outcore.ClosedError):
        A[3]
    with pytest.raises(outcore.ClosedError):
        A[3] = 1


def test_readonly_elements(tmp_path):
    url = str(tmp_path / "db")
    with outcore.open(url) as db:
        stored(db)
    with outcore.open(url, readonly=True) as db:
        A = db.root()["A"]
        assert A[4] == 4
        with pytest.raises(outcore.ReadOnlyError):
            A[4] = 1
        assert A[4] == 4

