"""A store written by format 1 (the fixture in tests/fixtures/v1-store, made by
tests/fixtures/make_v1_store.py with the last format-1 build) opens with this build, reads back
byte for byte at every snapshot of its history, accepts commits (which then store page deltas
and upgrade it to format 2), and verifies clean."""

import shutil
import struct
from pathlib import Path

import numpy as np
import outcore
import transaction

FIXTURE = Path(__file__).parent / "fixtures" / "v1-store"


def expected_ramp(final=True):
    ramp = np.arange(5000, dtype=np.float64)
    if final:
        ramp[2100] = -1.0
    return ramp


def expected_grid():
    g = np.zeros((64, 120), np.int32, order="F")
    g[:, :20] = 7
    g[:, 80:100] = -3
    g[:, 110] = 5
    return g


def stored_format(path):
    """The `format` counter of the store's index, read from the LMDB file without LMDB: the
    value follows the key `format` in the meta database's page."""
    data = (path / "index" / "data.mdb").read_bytes()
    at = data.rfind(b"format")
    assert at >= 0
    return struct.unpack_from("<Q", data, at + len(b"format"))[0]


def copy_fixture(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    (store / "leases").mkdir(exist_ok=True)
    return store


def test_a_format_1_store_reads_back_at_every_snapshot(tmp_path):
    store = copy_fixture(tmp_path)
    db = outcore.open(str(store))
    try:
        conn = db.open()
        root = conn.root()
        assert sorted(root.keys()) == ["grid", "ramp"]
        assert np.array_equal(root["ramp"][:], expected_ramp())
        assert np.array_equal(root["grid"][:], expected_grid())
        assert root["grid"][:].flags.f_contiguous
        history = db.history(limit=10)
        assert len(history) == 4
        first = history[-1]["tid"]
        old = outcore.open(str(store), at=first)
        try:
            old_root = old.open().root()
            assert np.array_equal(old_root["ramp"][:], expected_ramp(final=False))
            assert "grid" not in old_root
        finally:
            old.close()
        assert db.verify()["problems"] == []
        transaction.abort()
    finally:
        db.close()
    assert stored_format(store) == 1, "reading alone leaves the format as it was"


def test_a_format_1_store_accepts_commits_and_is_upgraded(tmp_path):
    store = copy_fixture(tmp_path)
    db = outcore.open(str(store))
    conn = db.open()
    ramp = conn.root()["ramp"]
    ramp[10] = 42.0  # one page of a whole format-1 block: stored as a delta
    transaction.commit()
    ramp.append(np.array([1.5, 2.5]))
    transaction.commit()
    db.close()
    assert stored_format(store) == 2, "the first delta upgrades the store"

    db = outcore.open(str(store))
    try:
        r = db.open().root()
        expected = np.concatenate([expected_ramp(), [1.5, 2.5]])
        expected[10] = 42.0
        assert np.array_equal(r["ramp"][:], expected)
        assert np.array_equal(r["grid"][:], expected_grid())
        assert db.verify()["problems"] == []
        db.pack(keep=0)
        assert np.array_equal(r["ramp"][:], expected)
        assert db.verify()["problems"] == []
        transaction.abort()
    finally:
        db.close()


def test_a_format_1_store_opens_read_only(tmp_path):
    store = copy_fixture(tmp_path)
    db = outcore.open(str(store), readonly=True)
    try:
        assert np.array_equal(db.open().root()["ramp"][:], expected_ramp())
    finally:
        db.close()
    assert stored_format(store) == 1
