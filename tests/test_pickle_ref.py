"""Pickling a BigArray gives a reference to it at the connection's snapshot."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import transaction

import outcore

@pytest.fixture
def url(shared_url):
    return shared_url


def _store(url):
    transaction.abort()
    db = outcore.open(url)
    db.root()["A"] = A = outcore.BigArray((100, 3), "i8", blksize=4096)
    A[:] = np.arange(300).reshape(100, 3)
    A.attrs["units"] = "m"
    transaction.commit()
    return db, A


def test_pickle_is_a_small_snapshot_reference(url):
    db, A = _store(url)
    try:
        data = pickle.dumps(A)
        assert len(data) < 1000  # a reference, not the data
        A[0, 0] = -1  # uncommitted: not part of the snapshot
        B = pickle.loads(data)
        assert B is not A
        assert B.shape == (100, 3) and B.dtype == np.dtype("i8")
        assert B[0, 0] == 0
        np.testing.assert_array_equal(B[1:], A[1:])
        assert dict(B.attrs) == {"units": "m"}
        with pytest.raises(outcore.ReadOnlyError):
            B[0, 0] = 5
        transaction.commit()
        # The old reference still shows its snapshot; a new one the new commit.
        assert pickle.loads(data)[0, 0] == 0
        assert pickle.loads(pickle.dumps(A))[0, 0] == -1
    finally:
        transaction.abort()
        db.close()


def test_unpickle_in_another_process(url, tmp_path):
    db, A = _store(url)
    try:
        path = tmp_path / "ref.pickle"
        path.write_bytes(pickle.dumps(A))
        code = (
            "import pickle, sys; B = pickle.load(open(sys.argv[1], 'rb')); "
            "print(int(B[...].sum()), B.attrs['units'], B.shape)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True, text=True, check=True, cwd=tmp_path.parent,
        )
        assert out.stdout.split() == [str(sum(range(300))), "m", "(100,", "3)"]
    finally:
        db.close()


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db, A = _store("rel-db")
    try:
        data = pickle.dumps(A)
        monkeypatch.chdir("/")
        assert pickle.loads(data)[2, 1] == 7
    finally:
        db.close()


def test_mem_store_refuses(tmp_path):
    transaction.abort()
    db = outcore.open("mem:")
    db.root()["A"] = A = outcore.BigArray((4,), "f8")
    transaction.commit()
    with pytest.raises(TypeError, match="a mem: store lives in one process"):
        pickle.dumps(A)
    db.close()


def test_uncommitted_and_unstored_arrays_refuse(tmp_path):
    with pytest.raises(TypeError, match="not stored"):
        pickle.dumps(outcore.BigArray((4,), "f8"))
    transaction.abort()
    db = outcore.open(str(tmp_path / "db"))
    db.root()["A"] = A = outcore.BigArray((4,), "f8")
    with pytest.raises(TypeError, match="not committed"):
        pickle.dumps(A)
    transaction.abort()
    db.close()


def test_views_pickle_their_data(tmp_path):
    db, A = _store(str(tmp_path / "db"))
    view = A[...]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(view)), view)  # a copy
    db.close()
