"""Root changes merge by name across concurrent transactions."""

import pytest
import transaction

import outcore


def test_two_connections_create_different_names(db):
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db.open(transaction_manager=tm1), db.open(transaction_manager=tm2)
    c1.root()["a"] = outcore.BigArray((3,), "i4")
    c2.root()["b"] = outcore.BigArray((3,), "i4")
    c2.root()["b"][:] = 7
    tm1.commit()
    tm2.commit()  # a conflict before: the root is one record
    tm1.begin()
    assert sorted(c1.root()) == ["a", "b"] and c1.root()["b"][:].tolist() == [7, 7, 7]
    c1.root()["x"] = outcore.BigArray((1,), "u1")
    c2.root()["x"] = outcore.BigArray((2,), "u1")
    tm1.commit()
    with pytest.raises(outcore.ConflictError):
        tm2.commit()
    tm2.abort()
    assert c2.root()["x"].shape == (1,)
    c1.close()
    c2.close()
