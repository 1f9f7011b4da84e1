"""BigArray.attrs: JSON attributes stored transactionally in the array metadata record."""

import numpy as np
import pytest
import transaction

import outcore


def test_attrs_commit_abort_and_reopen(db):
    root = db.root()
    A = outcore.BigArray((4,), "f8")
    A.attrs["units"] = "m"  # before storing: written with the array
    root["A"] = A
    transaction.commit()
    assert dict(A.attrs) == {"units": "m"}
    A.attrs.update(dims=["x"], scale=0.5)
    assert A.attrs["dims"] == ["x"]
    transaction.abort()
    assert dict(A.attrs) == {"units": "m"}
    A.attrs = {"long_name": "height", "nested": {"a": [1, 2, None, True]}}
    transaction.commit()
    other = db.open()
    assert dict(other.root()["A"].attrs) == {"long_name": "height", "nested": {"a": [1, 2, None, True]}}
    other.close()
    del A.attrs["nested"]
    transaction.commit()
    assert dict(A.attrs) == {"long_name": "height"}
    A.attrs.clear()
    transaction.commit()
    assert len(A.attrs) == 0


def test_attrs_savepoint_rollback(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((4,), "f8")
    transaction.commit()
    A.attrs["a"] = 1
    sp = transaction.savepoint()
    A.attrs["b"] = 2
    sp.rollback()
    assert dict(A.attrs) == {"a": 1}
    transaction.commit()
    assert dict(A.attrs) == {"a": 1}


def test_attrs_survive_resize_and_append(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((4,), "i4")
    A.attrs["units"] = "s"
    A.resize(8)
    A.append(np.arange(3, dtype="i4"))
    transaction.commit()
    assert A.shape == (11,)
    assert dict(A.attrs) == {"units": "s"}


def test_attrs_refuse_what_json_cannot_hold(db):
    root = db.root()
    root["A"] = A = outcore.BigArray((4,), "f8")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        A.attrs["x"] = object()
    with pytest.raises(TypeError, match="JSON-serialisable"):
        A.attrs["x"] = float("nan")
    with pytest.raises(TypeError, match="attribute names are strings"):
        A.attrs = {1: "a"}
    with pytest.raises(TypeError, match="must be a dict"):
        outcore._attrs.encode([1])
    # Newlines inside strings are escaped by JSON: the record stays one line.
    A.attrs["text"] = "two\nlines"
    transaction.commit()
    assert A.attrs["text"] == "two\nlines"


def test_attrs_readonly(tmp_path):
    url = str(tmp_path / "db")
    with outcore.open(url) as db:
        db.root()["A"] = A = outcore.BigArray((4,), "f8")
        A.attrs["units"] = "m"
        transaction.commit()
    transaction.abort()
    with outcore.open(url, readonly=True) as db:
        A = db.root()["A"]
        assert A.attrs["units"] == "m"
        with pytest.raises(outcore.ReadOnlyError):
            A.attrs["units"] = "km"
    transaction.abort()
