"""Bad input, table-driven: every bad call raises the documented exception with a helpful
message, nothing crashes, and the stored data is unchanged afterwards."""

import numpy as np
import pytest
import transaction

import outcore

SHAPE = (20, 4)


@pytest.fixture
def setup(tmp_path):
    transaction.abort()
    db = outcore.open(str(tmp_path / "db"))
    root = db.root()
    root["A"] = A = outcore.BigArray(SHAPE, "i8")
    A[...] = np.arange(80).reshape(SHAPE)
    root["F"] = F = outcore.BigArray((3, 5), "f4", order="F")
    transaction.commit()
    tid = db.history()[0]["tid"]
    yield db, root, A, F, tid, tmp_path
    transaction.abort()
    db.close()


def _store_name(root, value):
    root[value] = outcore.BigArray((1,), "f8")


BAD = [
    # construction
    ("object dtype", lambda s: outcore.BigArray((3,), object), TypeError, "objects"),
    ("struct with object", lambda s: outcore.BigArray((3,), [("a", "O")]), TypeError, "objects"),
    ("sub-array dtype", lambda s: outcore.BigArray((3,), ("f8", (2,))), TypeError, "sub-array"),
    ("negative dim", lambda s: outcore.BigArray((-1, 3), "f8"), ValueError, "negative"),
    ("float dim", lambda s: outcore.BigArray((2.5,), "f8"), TypeError, "integers"),
    ("string shape", lambda s: outcore.BigArray("abc", "f8"), TypeError, "integers"),
    ("bad order", lambda s: outcore.BigArray((3,), "f8", order="X"), ValueError, "order"),
    ("blksize not page multiple", lambda s: outcore.BigArray((3,), "f8", blksize=5000), ValueError, "multiple"),
    ("zero blksize", lambda s: outcore.BigArray((3,), "f8", blksize=0), ValueError, "multiple"),
    ("unknown dtype", lambda s: outcore.BigArray((3,), "nope"), TypeError, ""),
    ("overflowing shape", lambda s: s[1].__setitem__("X", outcore.BigArray((2**62, 2**10), "f8")), ValueError, "too large"),
    # root
    ("non-string name", lambda s: s[1].__setitem__(3, outcore.BigArray((1,), "f8")), TypeError, "strings"),
    ("empty name", lambda s: _store_name(s[1], ""), ValueError, "name"),
    ("name with tab", lambda s: _store_name(s[1], "a\tb"), ValueError, "name"),
    ("storing a numpy array", lambda s: s[1].__setitem__("n", np.zeros(3)), TypeError, "BigArray"),
    ("missing name", lambda s: s[1]["missing"], KeyError, "missing"),
    ("deleting a missing name", lambda s: s[1].__delitem__("missing"), KeyError, "missing"),
    # indexing
    ("index past the end", lambda s: s[2][20], IndexError, "out of bounds"),
    ("negative index past the start", lambda s: s[2][-21], IndexError, "out of bounds"),
    ("second axis out of range", lambda s: s[2][0, 4], IndexError, "out of bounds"),
    ("too many indices", lambda s: s[2][0, 0, 0], IndexError, "too many"),
    ("two ellipses", lambda s: s[2][..., ...], IndexError, "ellipsis"),
    ("zero step", lambda s: s[2][::0], ValueError, "step"),
    ("float index", lambda s: s[2][1.5], IndexError, ""),
    ("string index", lambda s: s[2]["a"], IndexError, ""),
    ("bool mask of wrong length", lambda s: s[2][np.ones(3, bool)], IndexError, ""),
    ("fancy index out of range", lambda s: s[2][[0, 99]], IndexError, "out of bounds"),
    ("assigning a wrong shape", lambda s: s[2].__setitem__(slice(0, 2), np.ones((3, 4))), ValueError, "broadcast"),
    ("assigning strings to ints", lambda s: s[2].__setitem__(0, "x"), ValueError, ""),
    ("len of nothing stored", lambda s: outcore.BigArray((), "f8").__len__(), TypeError, "unsized"),
    # append / resize
    ("append wrong ndim", lambda s: s[2].append(np.ones(4)), ValueError, "dimensions"),
    ("append wrong width", lambda s: s[2].append(np.ones((2, 5))), ValueError, "must match"),
    ("append F wrong height", lambda s: s[3].append(np.ones((4, 2), "f4")), ValueError, "must match"),
    ("append unconvertible", lambda s: s[2].append([["a", "b", "c", "d"]]), ValueError, ""),
    ("resize a minor axis", lambda s: s[2].resize((20, 5)), ValueError, "major axis"),
    ("resize F major wrong axis", lambda s: s[3].resize((4, 5)), ValueError, "major axis"),
    ("resize ndim change", lambda s: s[2].resize((80,)), ValueError, "resize"),
    ("resize negative", lambda s: s[2].resize((-1, 4)), ValueError, "negative"),
    ("resize overflow", lambda s: s[2].resize((2**62, 4)), ValueError, "too large"),
    # databases
    ("http url", lambda s: outcore.open("http://example.com/db"), ValueError, "cannot open"),
    ("empty url", lambda s: outcore.open(""), ValueError, ""),
    ("url of wrong type", lambda s: outcore.open(3.5), TypeError, "string"),
    ("unknown compression", lambda s: outcore.open(str(s[5] / "z"), compression="gzip"), ValueError, "compression"),
    ("negative cache", lambda s: outcore.open("mem:", cache_bytes=-1), ValueError, "cache_bytes"),
    ("directory that is not a store", lambda s: outcore.open(str(s[5])), OSError, "holds no outcore store"),
    ("historical tid in the future is fine, packed tid is not: bad tid type", lambda s: outcore.open(str(s[5] / "db"), at="x"), ValueError, ""),
    ("pickling an array", lambda s: __import__("pickle").dumps(s[2]), TypeError, "pickle"),
]


@pytest.mark.parametrize("name,call,exc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_call(setup, name, call, exc, words):
    db, root, A, F, tid, tmp = setup
    with pytest.raises(exc) as info:
        call(setup)
    assert words.lower() in str(info.value).lower(), str(info.value)
    transaction.abort()
    # Nothing changed.
    assert sorted(root) == ["A", "F"]
    np.testing.assert_array_equal(A[...], np.arange(80).reshape(SHAPE))
    assert A.shape == SHAPE and F.shape == (3, 5)


def test_enough_cases():
    assert len(BAD) >= 40


def test_read_only_and_historical_writes_refused(setup):
    db, root, A, F, tid, tmp = setup
    ro = outcore.open(str(tmp / "db"), readonly=True)
    R = ro.open(transaction.TransactionManager()).root()["A"]
    for bad in (lambda: R.__setitem__(0, 1), lambda: R.append(np.ones((1, 4), "i8")), lambda: R.resize((3, 4))):
        with pytest.raises(ValueError, match="read-only"):
            bad()
    old = outcore.open(str(tmp / "db"), at=tid)
    H = old.open(transaction.TransactionManager()).root()["A"]
    with pytest.raises(ValueError):
        H[0] = 5
    ro.close()
    old.close()
    np.testing.assert_array_equal(A[...], np.arange(80).reshape(SHAPE))


def test_closed_database(setup):
    db, root, A, F, tid, tmp = setup
    view = A[...]
    db.close()
    for bad in (lambda: A[0], lambda: root["A"], lambda: list(root), lambda: db.root(), lambda: db.history()):
        with pytest.raises(ValueError, match="closed"):
            bad()
    assert view[1, 1] == 5, "views stay readable"
