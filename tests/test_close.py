"""Closing: reads do not join transactions, close() leaves the transaction and releases the
snapshot and the store's files at once."""

import json
import os
import pathlib
import subprocess
import warnings

import numpy as np
import pytest
import transaction

import outcore

CLI = pathlib.Path(__file__).resolve().parents[1] / "target" / "release" / "outcore"


@pytest.fixture(autouse=True)
def fresh_transaction():
    transaction.abort()
    yield
    transaction.abort()


def test_close_after_a_read_does_not_break_the_next_commit():
    db = outcore.open("mem:")
    db.root()["A"] = outcore.BigArray((10,), "u1")
    transaction.commit()
    db.root()["A"][0]
    db.close()
    db2 = outcore.open("mem:")
    db2.root()["B"] = outcore.BigArray((4,), "u1")
    transaction.commit()
    assert "B" in db2.root()
    db2.close()


READS = {
    "root lookup": lambda root: root["A"],
    "element": lambda root: root["A"][3],
    "view": lambda root: root["A"][2:5],
    "whole view": lambda root: np.asarray(root["A"]),
    "shape and len": lambda root: (root["A"].shape, len(root["A"])),
    "names": lambda root: (list(root), len(root), "A" in root),
    "load": lambda root: root["A"].load(),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_reads_do_not_join(read):
    db = outcore.open("mem:")
    db.root()["A"] = outcore.BigArray((10,), "u1")
    transaction.commit()
    read(db.root())
    assert db.root()._conn not in transaction.get()._resources
    other = outcore.open("mem:")
    other.root()["B"] = outcore.BigArray((4,), "u1")  # a change joins
    assert other.root()._conn in transaction.get()._resources
    db.close()
    transaction.commit()
    other.close()


def test_close_discards_changes_with_a_warning(tmp_path):
    url = str(tmp_path / "db")
    db = outcore.open(url)
    db.root()["A"] = A = outcore.BigArray((10,), "i8")
    transaction.commit()
    a = A[:]
    A[0] = 5  # joins
    sp = transaction.savepoint()
    with pytest.warns(UserWarning, match=f"{url}.*discarded its uncommitted changes"):
        db.close()
    sp.rollback()  # the closed connection takes part in nothing any more
    transaction.commit()
    assert a[0] == 0, "the view shows the last snapshot again"

    db = outcore.open(url)
    b = db.root()["A"][:]
    transaction.commit()
    b[1] = 7  # a write through a view only: found by the synchronizer, not joined yet
    with pytest.warns(UserWarning, match="discarded"):
        db.close()
    transaction.commit()

    db = outcore.open(url)
    np.testing.assert_array_equal(db.root()["A"][:], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to discard: no warning
        db.close()


def test_close_releases_the_snapshot_for_pack(tmp_path):
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built (cargo build --release -p outcore-cli)")
    url = str(tmp_path / "db")
    n = 1 << 20  # 8 MiB of f8: 4 blocks
    tm = transaction.TransactionManager()
    writer = outcore.open(url)
    wroot = writer.open(transaction_manager=tm).root()
    wroot["A"] = outcore.BigArray((n,), "f8")
    for i in range(5):
        wroot["A"][:] = i + 1
        tm.commit()
        reader = outcore.open(url)  # in this thread's transaction, never committed
        assert reader.root()["A"][:].sum() == (i + 1) * n
        reader.close()
    writer.close()
    out = subprocess.run(
        [str(CLI), "pack", "--json", url, "--keep", "0s"],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(out.stdout)
    assert stats["body_bytes_before"] == 5 * 8 * n
    assert stats["body_bytes_after"] == 8 * n, "only the newest version is live"


def _open_files_under(path):
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


def test_a_closed_database_keeps_no_file_open(tmp_path):
    db = outcore.open(str(tmp_path / "db"))
    db.root()["A"] = A = outcore.BigArray((1 << 20,), "f8")
    A[:] = 2
    transaction.commit()
    view = A[:]
    root = db.root()
    assert _open_files_under(tmp_path)
    db.close()
    assert _open_files_under(tmp_path) == []
    assert view.sum() == 2 * (1 << 20), "views stay readable"
    with pytest.raises(ValueError, match="closed"):
        root["A"]


def test_repr_of_closed_objects():
    db = outcore.open("mem:")
    root = db.root()
    root["A"] = A = outcore.BigArray((3,), "f8")
    transaction.commit()
    conn = root._conn
    db.close()
    for obj in (db, conn, root, A):
        assert "closed" in repr(obj)


def test_snapshot_packed_away_raises_a_retryable_error(tmp_path):
    """Reads at a snapshot older than the pack horizon raise SnapshotTooOldError, a retryable
    ConflictError (it was a ValueError), never other data."""
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built (cargo build --release -p outcore-cli)")
    url = str(tmp_path / "db")
    tm = transaction.TransactionManager()
    db = outcore.open(url)
    root = db.open(transaction_manager=tm).root()
    root["A"] = outcore.BigArray((1 << 18,), "f8")
    root["A"][:] = 1
    tm.commit()
    old = db.history(1)[0]["tid"]
    root["A"][:] = 2
    tm.commit()
    db.close()
    subprocess.run([str(CLI), "pack", url, "--keep", "0s"], capture_output=True, check=True)
    with pytest.raises(outcore.SnapshotTooOldError, match="pack horizon") as info:
        outcore.open(url, at=old).root()
    assert isinstance(info.value, outcore.ConflictError)
    assert isinstance(info.value, transaction.interfaces.TransientError)
