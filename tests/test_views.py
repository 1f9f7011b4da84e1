"""Views, indexing and dtypes: BigArray behaves exactly like numpy.ndarray."""

import itertools
import os
import pickle

import numpy as np
import pytest
import transaction

import outcore


def make(db, shape, dtype="f8", order="C", blksize=4096, name="A"):
    root = db.root()
    root[name] = A = outcore.BigArray(shape, dtype, order=order, blksize=blksize)
    ref = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape, order=order)
    A[...] = ref
    return A, ref


def test_views_are_plain_ndarrays_and_alias(db):
    A, ref = make(db, (1000,))
    a = A[:]
    b = A[10:100]
    assert type(a) is np.ndarray and type(b) is np.ndarray
    a[50] = -1
    assert b[40] == -1
    assert np.shares_memory(np.asarray(A), a)
    assert not np.shares_memory(np.array(A), a)
    a[2] = 1
    a[10:20] = np.arange(10)
    assert np.mean(a) == pytest.approx(np.mean(A[:]))
    transaction.commit()
    assert A[2] == 1 and A[50] == -1


def test_single_element_assignment_and_scalars(db):
    A, _ = make(db, (7,), "i4")
    A[3] = 7
    assert A[3] == 7 and A[-4] == 7
    assert isinstance(A[3], np.int32)


INDEXES_2D = [
    (),
    Ellipsis,
    (Ellipsis, None),
    (None, Ellipsis),
    0,
    -1,
    (3, 4),
    (-2, slice(None)),
    slice(None, None, -3),
    slice(8, 2, -2),
    slice(-3, None),
    slice(5, 5),
    slice(9, 1),
    (slice(None), 2),
    (slice(1, 7, 2), slice(None, None, -1)),
    (None, slice(2, 4), None, slice(1, 3)),
    (Ellipsis, 3),
    (2, Ellipsis),
    (slice(100, 200),),
    ([1, 3, 5],),
    (slice(None), [0, 2]),
    (np.array([True, False] * 5),),
    (np.int64(3), np.int32(2)),
]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("index", INDEXES_2D, ids=repr)
def test_indexing_matches_numpy(db, order, index):
    A, ref = make(db, (10, 6), "f8", order=order)
    got = A[index]
    want = ref[index]
    np.testing.assert_array_equal(got, want)
    assert np.shape(got) == np.shape(want)
    # Assignment through the same index broadcasts the same way.
    A[index] = -5
    ref[index] = -5
    np.testing.assert_array_equal(A[...], ref)


@pytest.mark.parametrize(
    "index", [10, -11, (0, 6), (0, 0, 0), (Ellipsis, Ellipsis), slice(None, None, 0)], ids=repr
)
def test_bad_indexes_raise_like_numpy(db, index):
    A, ref = make(db, (10, 6))
    with pytest.raises((IndexError, ValueError)) as ours:
        A[index]
    with pytest.raises(type(ours.value)):
        ref[index]


def test_fortran_order_layout(db):
    A, ref = make(db, (4, 5), "f4", order="F")
    v = A[:]
    assert v.flags.f_contiguous and v.strides == (4, 16)
    assert A.strides == (4, 16)
    assert np.asfortranarray(v) is v


DTYPES = [
    "bool", "i1", "u2", "<i4", ">i8", "f2", "f4", "f8", "c16", "M8[ns]", "m8[s]", "S7", "U3",
    np.dtype([("x", "<i4"), ("y", ">f8")]),
    np.dtype([("t", "<i8"), ("pos", "<f8", (3,))]),
    np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"]}, align=True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_roundtrip(db, dtype, tmp_path):
    root = db.root()
    root["D"] = D = outcore.BigArray((5000,), dtype, blksize=4096)
    dt = np.dtype(dtype)
    data = np.frombuffer(os.urandom(5000 * dt.itemsize), dtype=np.uint8).view(dt)
    D[:] = data
    transaction.commit()
    other = db.open(transaction.TransactionManager())
    E = other.root()["D"]
    assert E.dtype == dt
    # Compare bytes (random bytes make NaNs); structured assignment skips padding.
    for name in dt.names or [None]:
        got, want = (E[:], data) if name is None else (E[:][name], data[name])
        assert got.tobytes() == want.tobytes()
    other.close()


def test_object_dtypes_refused(db):
    with pytest.raises(TypeError, match="objects"):
        outcore.BigArray((3,), object)
    with pytest.raises(TypeError):
        outcore.BigArray((3,), [("a", "i4"), ("o", "O")])


def test_bad_construction_arguments():
    with pytest.raises(ValueError):
        outcore.BigArray((-1,), "f8")
    with pytest.raises(TypeError):
        outcore.BigArray(("x",), "f8")
    with pytest.raises(ValueError):
        outcore.BigArray((3,), "f8", order="K")
    with pytest.raises(ValueError):
        outcore.BigArray((3,), "f8", blksize=1000)


def test_unstored_array_raises_clearly():
    A = outcore.BigArray((3,), "f8")
    assert A.shape == (3,) and len(A) == 3
    with pytest.raises(ValueError, match="not stored"):
        A[0]
    with pytest.raises(ValueError, match="not stored"):
        A.append([1.0])


def test_attributes_and_repr(db):
    A, _ = make(db, (6, 4), "i2")
    assert (A.shape, A.ndim, A.size, A.itemsize, A.nbytes) == ((6, 4), 2, 24, 2, 48)
    assert A.strides == (8, 2) and A.order == "C" and A.blksize == 4096
    assert len(A) == 6
    assert "BigArray" in repr(A) and "(6, 4)" in repr(A)
    assert outcore.ZBigArray is outcore.BigArray
    Z = outcore.ZBigArray((4, 5), np.int32, order="F")
    db.root()["Z"] = Z
    assert len(Z) == 5


def test_array_protocol_numpy2_semantics(db):
    A, ref = make(db, (100,), "f8")
    v = np.asarray(A)
    assert np.shares_memory(v, A[:])
    c = A.__array__(copy=True)
    assert not np.shares_memory(c, A[:])
    np.testing.assert_array_equal(A.__array__(dtype="f4"), ref.astype("f4"))
    with pytest.raises(ValueError):
        A.__array__(dtype="f4", copy=False)
    assert np.sin(A).shape == (100,)


def test_views_survive_del_commit_abort_and_close(db):
    A, ref = make(db, (3000,), "f8")
    transaction.commit()
    v = A[100:200]
    del A
    v[0] = 42.0
    transaction.abort()
    assert v[0] == ref[100], "after abort the view shows committed data"
    db.root()["A"][100] = 7.0
    transaction.commit()
    assert v[0] == 7.0
    db.close()
    assert v[0] == 7.0, "views outlive the database"
    with pytest.raises(ValueError):
        db.root()


def test_kernel_io_on_untouched_view(db, tmp_path):
    A, ref = make(db, (4096,), "u1")
    transaction.commit()
    other = outcore.open(db._url) if db._url != "mem:" else db
    B = other.open(transaction.TransactionManager()).root()["A"]
    view = B[:]
    with open(tmp_path / "out", "wb") as f:
        assert os.write(f.fileno(), view) == 4096
    assert (tmp_path / "out").read_bytes() == ref.tobytes()


def test_pickling(db):
    A, ref = make(db, (10,))
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(A)
    back = pickle.loads(pickle.dumps(A[2:5]))
    np.testing.assert_array_equal(back, ref[2:5])
    base = A[:]
    while isinstance(base, np.ndarray):
        base = base.base
    with pytest.raises(TypeError):
        pickle.dumps(base)


def test_zero_size_and_scalar_shapes(db):
    root = db.root()
    root["E"] = E = outcore.BigArray((0, 5), "f8")
    assert E[:].shape == (0, 5) and len(E) == 0
    E.append(np.ones((2, 5)))
    assert E[:].sum() == 10
    root["S"] = S = outcore.BigArray((), "i8")
    S[()] = 5
    assert S[()] == 5
    with pytest.raises(TypeError):
        len(S)
    transaction.commit()


def test_load_and_prefetch(db):
    A, ref = make(db, (100_000,), "f8", blksize=1 << 16)
    transaction.commit()
    A.prefetch()
    A.load(slice(10, 20_000))
    np.testing.assert_array_equal(A[10:20_000], ref[10:20_000])


def test_growth_past_the_reservation_keeps_old_views():
    d = outcore.open("mem:", reserve_bytes=4 << 20)
    root = d.root()
    root["A"] = A = outcore.BigArray((1 << 20,), "u1")
    old = A[:]
    old[0] = 1
    transaction.commit()
    A.append(np.full(10 << 20, 2, "u1"))
    new = A[:]
    assert new.shape == (11 << 20,) and new[0] == 1 and new[-1] == 2
    new[5] = 5
    transaction.commit()
    assert old[5] == 5 and old.shape == (1 << 20,)
    transaction.abort()
    d.close()
