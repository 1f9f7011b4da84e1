"""Time travel, pack and verify from Python, with tids as people have them."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import transaction

import outcore


@pytest.fixture
def store(tmp_path):
    transaction.abort()
    url = str(tmp_path / "db")
    db = outcore.open(url)
    db.root()["A"] = A = outcore.BigArray((1 << 18,), "f8")
    A[:] = 1.0
    transaction.commit()
    first = db.history(1)[0]
    A[:] = 2.0
    transaction.commit()
    yield url, db, first
    transaction.abort()
    db.close()


def test_at_accepts_int_hex_and_datetime(store):
    url, db, first = store
    text = f"{first['tid']:016x}"  # as `outcore log` prints it
    for at in (first["tid"], text, "0x" + text, first["time"] + timedelta(microseconds=1)):
        old = outcore.open(url, at=at)
        assert old.root()["A"][0] == 1.0, at
        old.close()
    assert outcore.tid(first["time"].replace(tzinfo=None).astimezone()) <= first["tid"] + 1000
    for bad, exc in (("zz", ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            outcore.tid(bad)


def test_pack_and_verify_from_python(store):
    url, db, first = store
    report = db.verify()
    assert report["problems"] == [] and report["versions_checked"] >= 3
    with pytest.raises(ValueError, match="exactly one"):
        db.pack()
    with pytest.raises(ValueError, match="exactly one"):
        db.pack(keep=0, before=first["tid"])
    transaction.abort()  # the default connection moves on; its old snapshot is not needed
    stats = db.pack(keep=0)
    assert stats["versions_removed"] >= 1, stats
    assert stats["bytes_after"] < stats["bytes_before"], stats
    assert stats["horizon"] > first["tid"]
    with pytest.raises(outcore.SnapshotTooOldError):
        old = outcore.open(url, at=first["tid"])
        old.root()["A"][:].sum()
    assert db.root()["A"][:].sum() == 2.0 * (1 << 18)
    assert db.verify()["problems"] == []
    assert db.pack(before=datetime.now(timezone.utc))["versions_removed"] == 0
