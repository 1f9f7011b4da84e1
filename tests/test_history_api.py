"""Time travel, pack and verify from Python, with tids as people have them."""

import os
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


def test_history_names_arrays_and_limit_semantics(store):
    url, db, first = store
    root = db.root()
    root["B"] = outcore.BigArray((10,), "i4")
    transaction.commit()
    root["B"][0] = 1
    transaction.commit()
    del root["B"]
    transaction.commit()
    entries = db.history(0)
    assert entries == db.history(None) and len(entries) == 5
    assert [e["arrays"] for e in entries] == [
        ["(the root)", "B"],  # removed: named as of just before
        ["B"],  # named as of its own snapshot
        ["(the root)", "B"],
        ["A"],
        ["(the root)", "A"],
    ]
    assert db.history(2) == entries[:2]
    with pytest.raises(ValueError, match="negative"):
        db.history(-1)
    with pytest.raises(TypeError):
        db.history("3")


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_stats(tmp_path, compression):
    transaction.abort()
    url = str(tmp_path / "db")
    with outcore.open(url, compression=compression) as db:
        empty = db.stats()
        assert (empty.arrays, empty.logical_bytes, empty.ratio) == (0, 0, None)
        db.root()["A"] = A = outcore.BigArray((4 << 18,), "f8")  # 4 blocks of 2 MiB
        A[: 1 << 18] = 1.0  # one block written, three holes
        transaction.commit()
        s = db.stats()
        assert (s.arrays, s.logical_bytes, s.blocks, s.holes) == (1, 8 << 20, 1, 3)
        assert s.history_bytes == 0 and s.history_versions == 0
        assert s.leases >= 1, "this process's connection holds a lease"
        if compression is None:
            assert (2 << 20) <= s.stored_bytes < (2 << 20) + 4096
        else:
            assert 0 < s.stored_bytes < 64 << 10, "a block of ones compresses well"
        assert s.ratio == s.stored_bytes / s.logical_bytes
        A[: 1 << 18] = 2.0
        transaction.commit()
        s2 = db.stats()
        assert s2.history_versions == 1, "the block's first version"
        assert 0 < s2.history_bytes < s.stored_bytes
        transaction.abort()
        db.pack(keep=0)
        s3 = db.stats()
        assert (s3.history_versions, s3.history_bytes) == (0, 0), s3
    with pytest.raises(outcore.ClosedError):
        db.stats()
    assert outcore.open("mem:").stats().leases is None


def test_stats_on_every_store(db):
    db.root()["A"] = A = outcore.BigArray((1 << 18,), "f8")  # one 2 MiB block
    A[:10] = 1.0
    transaction.commit()
    s = db.stats()
    assert (s.arrays, s.logical_bytes, s.blocks, s.holes) == (1, 2 << 20, 1, 0)
    # Stored short (format 2): the block up to its last non-zero page, plus the records.
    assert 4096 <= s.stored_bytes < 2 * 4096, s
    assert s.ratio == pytest.approx(s.stored_bytes / (2 << 20))
    assert (s.leases is None) == (not os.path.isdir(db._url)), s
    assert db.history(1)[0]["arrays"] == ["(the root)", "A"]
