"""outcore.dask.store: a dask array computed by worker processes (a dask.distributed
LocalCluster on 127.0.0.1, and the processes scheduler) lands in a BigArray inside one
transaction: invisible until commit, all or nothing, discarded by abort, and in conflict with a
concurrent writer of an overlapping block."""

import os

import numpy as np
import pytest
import transaction

import outcore

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import outcore.dask  # noqa: E402

N = 3 << 18  # 6 MiB of float64: 3 blocks of 2 MiB
CHUNK = 100_000  # not aligned with blocks


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as c, distributed.Client(c) as client:
        yield client


def expected():
    return np.arange(N, dtype=np.float64) * 2.0 + 1.0


def computed():
    return da.arange(N, chunks=CHUNK, dtype=np.float64) * 2.0 + 1.0


def other_view(db):
    """The array as another connection sees it."""
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    return conn, tm


def test_store_on_a_cluster_commits_atomically(db, cluster):
    db.root()["A"] = A = outcore.BigArray((N,), np.float64)
    transaction.commit()
    outcore.dask.store(computed(), A)
    conn, tm = other_view(db)
    assert not conn.root()["A"][:].any(), "nothing is visible before commit"
    transaction.commit()
    tm.abort()  # a boundary: the other connection moves to the new snapshot
    np.testing.assert_array_equal(conn.root()["A"][:], expected())
    conn.close()


def test_a_failed_task_commits_nothing(db, cluster):
    db.root()["A"] = A = outcore.BigArray((N,), np.float64)
    A[:] = 5.0
    transaction.commit()

    def explode(block, block_info=None):
        if block_info[0]["chunk-location"] == (4,):
            raise RuntimeError("task 4 failed")
        return block

    with pytest.raises(RuntimeError, match="task 4 failed"):
        outcore.dask.store(computed().map_blocks(explode, dtype=np.float64), A)
    transaction.abort()
    np.testing.assert_array_equal(A[:], 5.0)


def test_abort_discards_and_a_concurrent_writer_conflicts(db, cluster):
    db.root()["A"] = A = outcore.BigArray((N,), np.float64)
    transaction.commit()
    outcore.dask.store(computed(), A)
    transaction.abort()
    assert not A[:].any()

    outcore.dask.store(computed(), A)
    conn, tm = other_view(db)
    conn.root()["A"][N - 1] = -1.0  # an overlapping block, committed first
    tm.commit()
    with pytest.raises(outcore.ConflictError):
        transaction.commit()
    transaction.abort()
    conn.close()
    assert A[N - 1] == -1.0 and not A[: N - 1].any()


def test_store_with_the_processes_scheduler(local_url):
    db = outcore.open(local_url)
    try:
        db.root()["A"] = A = outcore.BigArray((N, 2), np.float64, order="F")
        x = da.stack([computed(), -computed()], axis=1).rechunk((CHUNK, 1))
        outcore.dask.store(x, A, scheduler="processes", in_flight=3)
        transaction.commit()
        np.testing.assert_array_equal(A[:, 0], expected())
        np.testing.assert_array_equal(A[:, 1], -expected())
    finally:
        transaction.abort()
        db.close()


def test_bad_input_is_refused(local_url):
    db = outcore.open(local_url)
    try:
        db.root()["A"] = A = outcore.BigArray((10,), np.float64)
        with pytest.raises(ValueError, match="shape"):
            outcore.dask.store(da.zeros(11, chunks=5), A)
        with pytest.raises(TypeError, match="complex128"):
            outcore.dask.store(da.zeros(10, chunks=5, dtype=np.complex128), A)
    finally:
        transaction.abort()
        db.close()


def test_workers_stage_blocks_themselves_on_the_embedded_store(local_url, cluster):
    db = outcore.open(local_url)
    try:
        db.root()["A"] = A = outcore.BigArray((N,), np.float64)
        transaction.commit()
        outcore.dask.store(computed(), A)
        segments = os.listdir(os.path.join(local_url, "segments"))
        writers = {int(m.split("-")[0]) for m in os.listdir(os.path.join(local_url, "staging"))}
        assert any(s.startswith("s") for s in segments), segments
        assert writers - {os.getpid()}, "the blocks were staged by worker processes"
        transaction.commit()
        np.testing.assert_array_equal(A[:], expected())
        db.pack(keep=0)
        np.testing.assert_array_equal(A[:], expected())
        assert db.verify()["problems"] == []
    finally:
        transaction.abort()
        db.close()


class _ResultSizes(distributed.SchedulerPlugin):
    """Records the size (as the workers measured it) of every result of a staging task:
    what the client receives from the workers."""

    def __init__(self):
        self.sizes = []

    def transition(self, key, start, finish, *args, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "memory" and str(name).startswith("_stage_chunk") and "nbytes" in kwargs:
            self.sizes.append(kwargs["nbytes"])


@pytest.fixture(params=["pg", "pg+s3", "local+s3"])
def staging_url(request, tmp_path):
    """(index url, blobs url or None) of a fresh store whose bodies are not in local files
    of its own: PostgreSQL, and object storage over either index."""
    if request.param == "pg":
        return request.getfixturevalue("pg_store_url"), None
    blobs = request.getfixturevalue("s3_url")
    if request.param == "pg+s3":
        return request.getfixturevalue("pg_store_url"), blobs
    return str(tmp_path / "db"), blobs


def test_workers_stage_blocks_on_remote_stores_and_commit_atomically(staging_url, cluster):
    url, blobs = staging_url
    db = outcore.open(url, blobs=blobs) if blobs else outcore.open(url)
    sizes = _ResultSizes()
    scheduler = cluster.cluster.scheduler
    scheduler.add_plugin(sizes, name="outcore-result-sizes")
    try:
        db.root()["A"] = A = outcore.BigArray((N,), np.float64)
        transaction.commit()
        empty = db.pack(keep=3600)["bytes_after"]
        outcore.dask.store(computed(), A)
        # The bodies are in the store before the commit (pack keeps those the transaction
        # holds), and what the workers sent back is references, not chunks.
        staged = db.pack(keep=3600)["bytes_after"] - empty
        assert staged >= N * 8, (staged, empty)
        assert sizes.sizes, "the staging tasks ran on the cluster"
        assert sum(sizes.sizes) < N * 8 // 100, sizes.sizes
        conn, tm = other_view(db)
        assert not conn.root()["A"][:].any(), "nothing is visible before commit"
        transaction.commit()
        tm.abort()
        np.testing.assert_array_equal(conn.root()["A"][:], expected())
        conn.close()
        np.testing.assert_array_equal(A[:], expected())
        assert db.pack(keep=3600)["bytes_after"] - empty == staged, "published without a copy"
        assert db.verify()["problems"] == []

        # Abort discards: nothing visible, and on PostgreSQL pack reclaims the bodies at once
        # (the transaction held them; object storage keeps them for the grace period).
        outcore.dask.store(-computed(), A)
        transaction.abort()
        np.testing.assert_array_equal(A[:], expected())
        if blobs is None:
            assert db.pack(keep=3600)["bytes_after"] - empty == staged
    finally:
        scheduler.remove_plugin(name="outcore-result-sizes")
        transaction.abort()
        db.close()


def test_stores_that_cannot_stage_ship_chunks(tmp_path, cluster):
    db = outcore.open(str(tmp_path / "db"), compression="zstd")
    sizes = _ResultSizes()
    scheduler = cluster.cluster.scheduler
    scheduler.add_plugin(sizes, name="outcore-result-sizes")
    try:
        assert not db._native.stages_blocks()
        db.root()["A"] = A = outcore.BigArray((N,), np.float64)
        transaction.commit()
        outcore.dask.store(computed(), A)
        transaction.commit()
        np.testing.assert_array_equal(A[:], expected())
        assert sizes.sizes == [], "no staging tasks: the chunks travelled"
    finally:
        scheduler.remove_plugin(name="outcore-result-sizes")
        transaction.abort()
        db.close()


def test_bad_references_are_refused(db):
    db.root()["A"] = A = outcore.BigArray((N,), np.float64)
    transaction.commit()
    native = A._stored(change=True)
    with pytest.raises(ValueError, match="no reference to a staged block version"):
        native.adopt(0, b"not a reference")
    if db._native.stages_blocks():
        ref = db._native.stage_block(native.file(), 1, b"\x01" * 4096)
        with pytest.raises(ValueError, match="staged for another block"):
            native.adopt(0, ref)
    else:
        assert db._native.stage_block(native.file(), 1, b"\x01" * 4096) is None
    transaction.abort()
