"""A.to_dask(): lazy dask arrays read through picklable references."""

import numpy as np
import pytest
import transaction

import outcore

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")


def _store(url, shape=(1000, 7), order="C", blksize=4096):
    transaction.abort()
    db = outcore.open(url)
    db.root()["A"] = A = outcore.BigArray(shape, "f8", order=order, blksize=blksize)
    A[...] = np.random.default_rng(1).standard_normal(shape)
    transaction.commit()
    return db, A


def test_mean_on_a_local_cluster(shared_url):
    db, A = _store(shared_url)
    try:
        x = A.to_dask(chunks=(64, 7))
        with distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster, distributed.Client(cluster) as client:
            got = client.compute(x.mean()).result()
            cols = client.compute(x.sum(axis=0)).result()
        expected = A[...]
        assert got == pytest.approx(expected.mean(), rel=1e-12)
        np.testing.assert_allclose(cols, expected.sum(axis=0), rtol=1e-12)
    finally:
        db.close()


@pytest.mark.parametrize("scheduler", ["threads", "processes", "sync"])
def test_schedulers(tmp_path, scheduler):
    db, A = _store(str(tmp_path / "db"), order="F")
    try:
        x = A.to_dask(chunks=(1000, 3))
        np.testing.assert_array_equal(x.compute(scheduler=scheduler), A[...])
    finally:
        db.close()


def test_default_chunks_follow_blocks(tmp_path):
    db, A = _store(str(tmp_path / "db"), shape=(1000, 8), blksize=4096)
    try:
        with __import__("dask").config.set({"array.chunk-size": "16KiB"}):
            x = A.to_dask()
        # 64-byte rows, 4 KiB blocks, 16 KiB chunks: 4 blocks = 256 rows, whole other axis.
        assert x.chunks == ((256, 256, 256, 232), (8,))
        F = outcore.BigArray((8, 1000), "f8", order="F", blksize=4096)
        db.root()["F"] = F
        transaction.commit()
        with __import__("dask").config.set({"array.chunk-size": "16KiB"}):
            assert F.to_dask().chunks == ((8,), (256, 256, 256, 232))
    finally:
        db.close()


def test_names_are_deterministic(tmp_path):
    db, A = _store(str(tmp_path / "db"))
    try:
        x, y = A.to_dask(), A.to_dask()
        assert x.name == y.name and x.name.startswith("outcore-")
        assert A.to_dask(chunks=(10, 7)).name != x.name
        A[0, 0] = 5.0
        transaction.commit()  # a new snapshot: new keys
        z = A.to_dask()
        assert z.name != x.name
        assert x[0, 0].compute() != 5.0 and z[0, 0].compute() == 5.0
    finally:
        db.close()


def test_uncommitted_changes_are_not_seen(tmp_path):
    db, A = _store(str(tmp_path / "db"))
    try:
        before = A[0, 0]
        A[0, 0] = 123.0
        assert A.to_dask()[0, 0].compute() == before
    finally:
        transaction.abort()
        db.close()


def test_mem_store_works_with_threads_only():
    transaction.abort()
    db = outcore.open("mem:")
    db.root()["A"] = A = outcore.BigArray((100,), "i4", blksize=4096)
    A[:] = np.arange(100)
    transaction.commit()
    x = A.to_dask(chunks=30)
    assert int(x.sum().compute(scheduler="threads")) == 4950
    with pytest.raises(TypeError, match="a mem: store lives in one process"):
        x.sum().compute(scheduler="processes")
    db.close()


def test_zero_d_and_empty(tmp_path):
    transaction.abort()
    db = outcore.open(str(tmp_path / "db"))
    db.root()["s"] = s = outcore.BigArray((), "f8")
    db.root()["e"] = e = outcore.BigArray((0, 3), "f8")
    s[()] = 2.5
    transaction.commit()
    assert s.to_dask().compute() == 2.5
    assert e.to_dask().compute().shape == (0, 3)
    db.close()
