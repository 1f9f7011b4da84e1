"""BigArray takes part in NumPy's protocols like numpy.memmap."""

import numpy as np
import pytest
import transaction

import outcore
from outcore import _array


@pytest.fixture
def arrays(db):
    root = db.root()
    rng = np.random.default_rng(20)
    a = rng.standard_normal((300, 7))
    b = rng.integers(-50, 50, (300, 7)).astype("i4")
    root["A"] = A = outcore.BigArray(a.shape, a.dtype, blksize=4096)
    root["B"] = B = outcore.BigArray(b.shape, b.dtype, order="F", blksize=4096)
    A[...] = a
    B[...] = b
    transaction.commit()
    return A, B, a, b


def test_operators_and_ufuncs_act_elementwise(arrays):
    A, B, a, b = arrays
    np.testing.assert_array_equal(A + 1, a + 1)
    np.testing.assert_array_equal(1 - A, 1 - a)
    np.testing.assert_array_equal(A * B, a * b)
    np.testing.assert_array_equal(A == A, np.ones(a.shape, bool))
    np.testing.assert_array_equal(B > 0, b > 0)
    np.testing.assert_array_equal(np.sqrt(abs(A)), np.sqrt(abs(a)))
    np.testing.assert_array_equal(-B, -b)
    assert isinstance(A + 1, np.ndarray)
    np.multiply(A, 2, out=A)  # out= writes into the array
    np.testing.assert_array_equal(A[...], 2 * a)


def test_transpose_copy_astype(arrays):
    A, B, a, b = arrays
    np.testing.assert_array_equal(A.T, a.T)
    c = A.copy()
    c[0, 0] = 99
    assert A[0, 0] == a[0, 0]
    np.testing.assert_array_equal(B.astype("f4"), b.astype("f4"))


def test_streaming_reductions_match_numpy(arrays, monkeypatch):
    A, B, a, b = arrays
    monkeypatch.setattr(_array, "REDUCE_CHUNK_BYTES", 1000)  # many chunks
    assert np.isclose(A.sum(), a.sum()) and np.isclose(A.mean(), a.mean())
    assert A.min() == a.min() and A.max() == a.max()
    assert B.sum() == b.sum() and B.sum().dtype == b.sum().dtype
    np.testing.assert_allclose(A.sum(axis=0), a.sum(axis=0))
    np.testing.assert_array_equal(B.max(axis=1), b.max(axis=1))  # B's major axis (F order)
    np.testing.assert_array_equal(B.min(axis=0), b.min(axis=0))
    np.testing.assert_allclose(B.mean(axis=-1), b.mean(axis=-1))
