"""Bad input, table-driven: every bad call raises the documented exception with a helpful
message, nothing crashes, and the stored data is unchanged afterwards."""

import os
import re
import socket

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


def _file(directory):
    path = directory / "file.txt"
    path.write_text("not a store")
    return str(path)


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
    ("missing name", lambda s: s[1]["missing"], outcore.NotFoundError, "no array named 'missing'"),
    ("deleting a missing name", lambda s: s[1].__delitem__("missing"), outcore.NotFoundError, "no array named 'missing'"),
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
    ("directory that is not a store", lambda s: outcore.open(str(s[5])), outcore.StoreFormatError, "holds no outcore store"),
    ("a regular file as store", lambda s: outcore.open(_file(s[5])), outcore.StoreFormatError, "is a file, not an outcore store"),
    ("a regular file as store, read-only", lambda s: outcore.open(_file(s[5]), readonly=True), outcore.StoreFormatError, "is a file, not an outcore store"),
    ("read-only open of a missing store", lambda s: outcore.open(str(s[5] / "none"), readonly=True), outcore.StoreNotFoundError, "no outcore store at"),
    ("other compression for an existing store", lambda s: outcore.open(str(s[5] / "db"), compression="zstd"), ValueError, "is not compressed; compression='zstd' applies only when a store is created"),
    ("historical tid in the future is fine, packed tid is not: bad tid type", lambda s: outcore.open(str(s[5] / "db"), at="x"), ValueError, ""),
    (
        "pickling an unstored array",
        lambda s: __import__("pickle").dumps(outcore.BigArray(3)),
        TypeError,
        "pickle",
    ),
    ("negative history limit", lambda s: s[0].history(-1), ValueError, "limit must not be negative"),
    ("history limit of the wrong type", lambda s: s[0].history("5"), TypeError, "limit must be an int or None"),
    ("options after the url are keyword-only", lambda s: outcore.open("mem:", 1 << 20), TypeError, "positional"),
    ("element index past the end", lambda s: s[2][20, 0], IndexError, "out of bounds for axis 0 with size 20"),
    ("element index past the end of a minor axis", lambda s: s[2][0, 4], IndexError, "out of bounds for axis 1 with size 4"),
]


#: The names of the Rust core's error variants, which must not prefix Python messages.
RUST_PREFIX = re.compile(
    r"^'?(not found|invalid shape|index out of bounds|invalid argument|read-only|closed"
    r"|out of address space|conflicting writes through views): "
)


@pytest.mark.parametrize("name,call,exc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_call(setup, name, call, exc, words):
    db, root, A, F, tid, tmp = setup
    with pytest.raises(exc) as info:
        call(setup)
    assert words.lower() in str(info.value).lower(), str(info.value)
    assert not RUST_PREFIX.match(str(info.value)), str(info.value)
    transaction.abort()
    # Nothing changed.
    assert sorted(root) == ["A", "F"]
    np.testing.assert_array_equal(A[...], np.arange(80).reshape(SHAPE))
    assert A.shape == SHAPE and F.shape == (3, 5)


def test_enough_cases():
    assert len(BAD) >= 50


def test_store_errors_are_builtin_errors_too(tmp_path):
    """Code that catches the builtin classes keeps working."""
    with pytest.raises(FileNotFoundError):
        outcore.open(str(tmp_path / "none"), readonly=True)
    with pytest.raises(OSError):
        outcore.open(_file(tmp_path))
    assert not (tmp_path / "none").exists(), "a read-only open creates nothing"


def test_same_compression_is_fine(tmp_path):
    url = str(tmp_path / "z")
    outcore.open(url, compression="lz4").close()
    outcore.open(url, compression="lz4").close()
    outcore.open(url).close()
    with pytest.raises(ValueError, match="is compressed with lz4; compression='none'"):
        outcore.open(url, compression="none")


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


PG_BAD = [
    # (what, how to spoil the test server's url, class, words of the server's or client's text)
    ("wrong database", lambda u: re.sub(r"/[^/?]*$", "/no_such_db", u), outcore.StorageError, 'database "no_such_db" does not exist'),
    ("wrong role", lambda u: re.sub(r"://[^@]*@", "://no_such_role@", u), outcore.StorageError, 'role "no_such_role" does not exist'),
    ("wrong port", lambda u: re.sub(r":\d+/", f":{_closed_port()}/", u), outcore.StorageError, "connection refused"),
    ("unknown parameter", lambda u: u + ("&" if "?" in u else "?") + "bogus=1", ValueError, "unknown option `bogus`"),
]


@pytest.mark.parametrize("name,spoil,exc,words", PG_BAD, ids=[b[0] for b in PG_BAD])
def test_postgres_errors_say_why(name, spoil, exc, words):
    base = os.environ.get("OUTCORE_TEST_PG")
    if not base:
        pytest.skip("OUTCORE_TEST_PG is not set (scripts/test.sh starts a server)")
    with pytest.raises(exc) as info:
        outcore.open(spoil(base))
    assert words.lower() in str(info.value).lower(), str(info.value)


def test_conflicts_name_the_array_its_elements_and_the_winner(tmp_path):
    db = outcore.open(str(tmp_path / "db"))
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db.open(tm1), db.open(tm2)
    c1.root()["A"] = outcore.BigArray((2048,), "f8", blksize=4096)
    c1.root()["M"] = outcore.BigArray((1000, 3), "i4", blksize=4096)
    tm1.commit()

    def conflict(first, second):
        """``first`` commits after ``second``'s snapshot; returns the loser's message."""
        tm2.begin()
        t = tm1.begin()
        first(c1.root())
        t.user, t.description = "alice", "fill A"
        tm1.commit()
        second(c2.root())
        with pytest.raises(outcore.ConflictError) as info:
            tm2.commit()
        tm2.abort()
        return str(info.value), db.history(1)[0]["tid"]

    msg, winner = conflict(lambda r: r["A"].__setitem__(600, 1), lambda r: r["A"].__setitem__(700, 2))
    assert "array 'A' (elements 512..1024)" in msg, msg
    assert f"{winner:016x}" in msg and "alice" in msg and "fill A" in msg, msg
    assert "file" not in msg, msg
    # 4096-byte blocks of 12-byte rows: block 1 holds rows 341..683 (two of them in part).
    msg, _ = conflict(lambda r: r["M"].__setitem__(400, 1), lambda r: r["M"].__setitem__(500, 2))
    assert "array 'M' (indices 341..683 of axis 0)" in msg, msg
    msg, _ = conflict(lambda r: r["A"].resize((4096,)), lambda r: r["A"].resize((5000,)))
    assert "array 'A' (its shape" in msg, msg
    # Different names merge; the same name created by both conflicts on the root.
    msg, _ = conflict(
        lambda r: r.__setitem__("B", outcore.BigArray((1,), "f8")),
        lambda r: r.__setitem__("B", outcore.BigArray((2,), "f8")),
    )
    assert "the root" in msg and "metadata record" not in msg, msg
    db.close()


def test_exception_hierarchy():
    """Every outcore error is an ``outcore.Error`` and the builtin users catch; the README
    documents each in its table."""
    import transaction.interfaces

    expected = {
        "Error": Exception,
        "ConflictError": transaction.interfaces.TransientError,
        "NotFoundError": KeyError,
        "ReadOnlyError": ValueError,
        "ClosedError": ValueError,
        "SnapshotTooOldError": transaction.interfaces.TransientError,
        "DivergentWritesError": ValueError,
        "AddressSpaceError": MemoryError,
        "StorageError": OSError,
        "StoreNotFoundError": FileNotFoundError,
        "StoreFormatError": OSError,
        "CorruptionError": OSError,
        "CommitOutcomeUnknownError": OSError,
    }
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for name, builtin in expected.items():
        cls = getattr(outcore, name)
        assert name in outcore.__all__
        assert issubclass(cls, outcore.Error) and issubclass(cls, builtin), name
        assert f"| `outcore.{name}` |" in readme, f"{name} is not in the README's table"
    assert issubclass(outcore.StoreNotFoundError, outcore.StorageError)
    assert issubclass(outcore.CorruptionError, outcore.StorageError)
    assert str(outcore.NotFoundError("no array named 'x'")) == "no array named 'x'"


def test_read_only_and_historical_writes_refused(setup):
    db, root, A, F, tid, tmp = setup
    ro = outcore.open(str(tmp / "db"), readonly=True)
    R = ro.open(transaction.TransactionManager()).root()["A"]
    for bad in (lambda: R.__setitem__(0, 1), lambda: R.append(np.ones((1, 4), "i8")), lambda: R.resize((3, 4))):
        with pytest.raises(outcore.ReadOnlyError, match="^(?!read-only: ).*read-only"):
            bad()
    old = outcore.open(str(tmp / "db"), at=tid)
    H = old.open(transaction.TransactionManager()).root()["A"]
    with pytest.raises(outcore.ReadOnlyError):
        H[0] = 5
    ro.close()
    old.close()
    np.testing.assert_array_equal(A[...], np.arange(80).reshape(SHAPE))


def test_closed_database(setup):
    db, root, A, F, tid, tmp = setup
    view = A[...]
    db.close()
    for bad in (lambda: A[0], lambda: root["A"], lambda: list(root), lambda: db.root(), lambda: db.history(),
                lambda: db.stats(), lambda: A[0, 0]):
        with pytest.raises(outcore.ClosedError, match="^(?!closed: ).*closed"):
            bad()
    assert view[1, 1] == 5, "views stay readable"
