"""Transactions: commit, abort, savepoints, two connections, conflicts, retries."""

import threading

import numpy as np
import pytest
import transaction

import outcore


def test_readme_flow(db):
    root = db.root()
    root["A"] = A = outcore.BigArray(shape=(10**6,), dtype="f8")
    a = A[:]
    a[2] = 1
    a[10:20] = np.arange(10)
    A[5] = 7
    A.append(np.ones(1000))
    A.resize((2 * 10**6,))
    transaction.commit()
    with db.transaction() as r:
        r["A"][0] = 1
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    B = conn.root()["A"]
    assert B.shape == (2 * 10**6,)
    assert B[0] == 1 and B[2] == 1 and B[5] == 7 and B[15] == 5
    assert B[10**6 : 10**6 + 1000].sum() == 1000
    tm.commit()
    conn.close()
    hist = db.history()
    assert len(hist) >= 2 and hist[0]["tid"] > hist[1]["tid"]


def test_abort_reverts_data_shape_and_names(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((100,), "i8")
    A[:] = 1
    transaction.commit()
    view = A[:]
    A[3] = 9
    A.append(np.zeros(50, "i8"))
    root["B"] = outcore.BigArray((5,), "f4")
    del root["A"]
    transaction.abort()
    assert list(root) == ["A"]
    assert A.shape == (100,) and view[3] == 1


def test_with_block_aborts_on_error(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((10,), "f8")
    transaction.commit()
    with pytest.raises(RuntimeError):
        with db.transaction() as r:
            r["A"][0] = 5
            raise RuntimeError("boom")
    assert A[0] == 0


def test_savepoints(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((100_000,), "u4", blksize=1 << 16)
    A[:] = 1
    transaction.commit()
    A[0] = 10
    sp = transaction.savepoint()
    A[0] = 20
    A[90_000] = 30
    A.resize((10,))
    root["B"] = outcore.BigArray((3,), "f8")
    sp.rollback()
    assert A.shape == (100_000,)
    assert (A[0], A[90_000], A[1]) == (10, 1, 1)
    assert "B" not in root
    transaction.commit()
    assert A[0] == 10


def test_writes_through_views_of_an_earlier_transaction_commit(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((10,), "f8")
    a = A[:]
    transaction.commit()
    a[0] = 42  # no Python-level call to outcore: the synchronizer must join
    transaction.commit()
    other = db.open(transaction.TransactionManager())
    assert other.root()["A"][0] == 42


def test_two_connections_invalidation_and_conflict(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((1000,), "f8")
    transaction.commit()
    tm2 = transaction.TransactionManager()
    c2 = db.open(transaction_manager=tm2)
    B = c2.root()["A"]
    b = B[:]
    A[1] = 1.0
    assert b[1] == 0, "uncommitted changes are invisible"
    transaction.commit()
    assert b[1] == 0, "committed changes wait for the other's next transaction"
    tm2.begin()
    assert b[1] == 1.0
    # Both write the same block: the second committer gets a retryable ConflictError.
    A[2] = 2.0
    B[3] = 3.0
    tm2.commit()
    with pytest.raises(outcore.ConflictError) as err:
        transaction.commit()
    assert isinstance(err.value, transaction.interfaces.TransientError)
    with pytest.raises(transaction.interfaces.TransactionFailedError):
        transaction.commit()
    transaction.abort()
    assert A[3] == 3.0 and A[2] == 0.0
    c2.close()


def test_attempts_retry_conflicts(db):
    root = db.root()
    root["A"] = outcore.BigArray((10,), "i8")
    transaction.commit()
    tm2 = transaction.TransactionManager()
    c2 = db.open(transaction_manager=tm2)
    runs = 0
    for attempt in transaction.manager.attempts():
        with attempt:
            runs += 1
            db.root()["A"][0] += 1
            if runs == 1:  # someone else commits in between
                c2.root()["A"][0] = 100
                tm2.commit()
    assert runs == 2
    assert db.root()["A"][0] == 101
    c2.close()


def test_thread_local_managers(db):
    root = db.root()
    root["A"] = outcore.BigArray((10,), "f8")
    transaction.commit()
    errors = []

    def worker():
        try:
            conn = db.open()
            conn.root()["A"][5] = 5.0
            transaction.commit()  # this thread's manager
            conn.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors
    transaction.begin()
    assert db.root()["A"][5] == 5.0


def test_append_and_resize_rules(db):
    root = db.root()
    root["C"] = C = outcore.BigArray((2, 3), "i4")
    C.append(np.arange(6).reshape(2, 3))
    assert C.shape == (4, 3)
    with pytest.raises(ValueError):
        C.append(np.zeros((2, 4)))
    with pytest.raises(ValueError):
        C.append(np.zeros(3))
    assert C.shape == (4, 3)
    with pytest.raises(ValueError, match="major axis"):
        C.resize((4, 4))
    with pytest.raises(ValueError):
        C.resize((4,))
    root["F"] = F = outcore.BigArray((3, 2), "f8", order="F")
    F.append(np.ones((3, 4)))
    assert F.shape == (3, 6) and F[:, 2:].sum() == 12
    with pytest.raises(ValueError):
        F.resize((4, 6))
    C.resize((1, 3))
    C.resize((4, 3))
    np.testing.assert_array_equal(C[1:], 0)
    transaction.commit()


def test_readonly_and_historical(local_url):
    d = outcore.open(local_url)
    d.root()["A"] = A = outcore.BigArray((10,), "f8")
    A[:] = 1
    transaction.commit()
    t1 = d.history()[0]["tid"]
    A[:] = 2
    transaction.commit()
    d.close()
    ro = outcore.open(local_url, readonly=True)
    R = ro.open(transaction.TransactionManager()).root()["A"]
    assert R[0] == 2
    v = R[:]
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v.flags.writeable = True
    with pytest.raises(ValueError):
        R[0] = 5
    old = outcore.open(local_url, at=t1)
    assert old.open(transaction.TransactionManager()).root()["A"][0] == 1
    ro.close()
    old.close()


def test_compressed_store(tmp_path):
    d = outcore.open(str(tmp_path / "z"), compression="zstd")
    d.root()["A"] = A = outcore.BigArray((1 << 20,), "f8")
    A[:] = 3.0
    transaction.commit()
    d.close()
    d = outcore.open(str(tmp_path / "z"))
    assert d.root()["A"][:].sum() == 3.0 * (1 << 20)
    d.close()
    with pytest.raises(ValueError):
        outcore.open(str(tmp_path / "y"), compression="gzip")


def test_bad_urls_and_names(tmp_path):
    with pytest.raises(ValueError):
        outcore.open("http://example.com/x")
    with pytest.raises(TypeError):
        outcore.open(42)
    d = outcore.open("mem:")
    root = d.root()
    with pytest.raises(TypeError):
        root[1] = outcore.BigArray((1,), "f8")
    with pytest.raises(TypeError):
        root["x"] = np.zeros(3)
    with pytest.raises(KeyError):
        root["missing"]
    with pytest.raises(KeyError):
        del root["missing"]
    with pytest.raises(ValueError):
        root["bad\tname"] = outcore.BigArray((1,), "f8")
    transaction.abort()
    d.close()


def test_savepoint_taken_before_outcore_joined(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((10,), "i8")
    transaction.commit()
    sp = transaction.savepoint()  # outcore has not joined this transaction yet
    tm2 = transaction.TransactionManager()
    c2 = db.open(transaction_manager=tm2)
    c2.root()["A"][1] = 9
    tm2.commit()
    A[0] = 5
    sp.rollback()
    assert A[0] == 0, "the change after the savepoint is gone"
    assert A[1] == 0, "still the same snapshot inside the transaction"
    transaction.abort()
    assert A[1] == 9, "the next transaction sees the other commit"
    c2.close()


def test_views_keep_their_connection_alive(tmp_path):
    import gc

    url = str(tmp_path / "db")
    d = outcore.open(url)
    d.root()["A"] = outcore.BigArray((10,), "i8")
    transaction.commit()
    d.close()
    view = outcore.open(url).root()["A"][:]  # only the view survives
    transaction.commit()  # the transaction no longer holds the connection either
    gc.collect()
    view[3] = 33
    transaction.commit()
    check = outcore.open(url)
    assert check.root()["A"][3] == 33
    check.close()
