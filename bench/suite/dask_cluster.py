"""Workload dask (issue 19): outcore in a ``dask.distributed`` cluster of two worker
processes (one thread each, on 127.0.0.1), against the same data in zarr v3 read and written
by the same cluster in the same run, and against one process reading ``A[:]``.

* reduce: the mean and the sum of squares of a float64 array (8 GiB in ``--full``) —
  ``A.to_dask()`` on the cluster; ``da.from_zarr`` of the same data (zarr v3, uncompressed,
  the same dask chunks) on the cluster; NumPy over the view ``A[:]`` in this process (one
  thread: a reusable square buffer of 64 MiB, no BLAS). Each variant cold (the files' page
  cache dropped before every timed run, after the workers closed the stores they cached, so
  that no pages stay mapped) and warm (the data read once before).
* write: a computed array (4 GiB in ``--full``; ``(i mod 1021) / 2`` from ``da.arange``)
  through ``outcore.dask.store`` + ``transaction.commit()`` into a fresh array, against
  ``x.to_zarr(...)`` (zarr v3, uncompressed) + fsync of every file (a commit is durable too),
  on the same cluster.

Every result is checked against the exact values (integers and halves: float64 sums exact).
"""

import numpy as np

from .common import MiB, Bar, Section, drop_cache, fmt, fsync_tree, gbps, pattern, remove, timed

#: Elements per untimed build and per NumPy slab (64 MiB of float64).
STEP = (64 * MiB) // 8
#: The modulus of the written array: (i mod 1021) / 2.
MOD = 1021


def _build(cfg, n, log):
    """The outcore store and the zarr v3 array of the reduction (untimed): ``pattern`` data."""
    import transaction
    import zarr

    import outcore

    opath, zpath = cfg.fresh_path("dask-outcore"), cfg.fresh_path("dask-zarr") + ".zarr"
    db = outcore.open(opath)
    tm = transaction.TransactionManager()
    root = db.open(transaction_manager=tm).root()
    root["A"] = A = outcore.BigArray((n,), np.float64)
    tm.commit()
    z = zarr.create_array(zpath, shape=(n,), chunks=(STEP // 32,), dtype="float64", compressors=None)
    for lo in range(0, n, STEP):
        hi = min(lo + STEP, n)
        part = pattern(lo, hi)
        A[lo:hi] = part
        z[lo:hi] = part
        tm.commit()
    del A, root
    db.close()
    fsync_tree(zpath)
    log(f"  built outcore and zarr v3 arrays of {n * 8 >> 20} MiB")
    return opath, zpath


def _expected(n):
    """Exact sum and sum of squares of ``pattern(0, n)``."""
    s = ss = 0.0
    for lo in range(0, n, STEP):
        part = pattern(lo, min(lo + STEP, n))
        s += float(part.sum())
        ss += float(np.dot(part, part))
    return s, ss


def _numpy_over_view(path, n):
    """Mean and sum of squares over ``A[:]`` in this process, one thread."""
    import outcore

    db = outcore.open(path, readonly=True)
    a = db.root()["A"][:]
    buf = np.empty(STEP)
    s = ss = 0.0
    for lo in range(0, n, STEP):
        v = a[lo : lo + STEP]
        s += float(v.sum())
        sq = buf[: len(v)]
        np.multiply(v, v, out=sq)
        ss += float(sq.sum())
    del a, v
    db.close()
    return s / n, ss


def _close_cached_stores():
    """Run on every worker: closes the stores and snapshots that outcore's references opened
    in this process (they are opened again by the next task)."""
    from outcore import _ref

    with _ref._lock:
        for conn in _ref._snapshots.values():
            conn.close()
        for db in _ref._stores.values():
            db.close()
        _ref._snapshots.clear()
        _ref._stores.clear()


def _check(what, got, n, s, ss):
    mean, sumsq = (float(x) for x in got)
    if sumsq != ss or not np.isclose(mean, s / n, rtol=1e-13, atol=0):
        raise AssertionError(
            f"{what}: mean {mean!r}, sum of squares {sumsq!r}; expected {s / n!r}, {ss!r}"
        )


def _written_sum(n):
    """Exact sum of (i mod MOD) / 2 for i < n."""
    full, rest = divmod(n, MOD)
    return (full * (MOD - 1) * MOD / 2 + (rest - 1) * rest / 2) / 2


def _slab_sum(get, n):
    """The sum of ``get(slice)`` over ``0..n``, slab by slab."""
    return sum(float(np.asarray(get(slice(lo, min(lo + STEP, n)))).sum()) for lo in range(0, n, STEP))


def dask_cluster(cfg, log):
    """The workload: build, start the cluster, time the reductions and the writes."""
    import dask
    import dask.array as da
    import transaction
    import zarr
    from distributed import Client, LocalCluster

    import outcore
    import outcore.dask

    n = max(cfg.dask_size // 8 // STEP, 1) * STEP
    nw = max(cfg.dask_size // 2 // 8 // STEP, 1) * STEP
    sec = Section("dask", "Dask: a reduction and a computed write on a 2-process cluster")
    sec.notes.append(
        f"A `dask.distributed.LocalCluster` of 2 worker processes, 1 thread each, host "
        f"127.0.0.1. reduce: mean and sum of squares of a {n * 8 >> 20} MiB float64 array — "
        "outcore `A.to_dask()` (default chunks: whole blocks, dask's chunk-size) vs zarr v3 "
        "(uncompressed, chunks of 2 MiB, read with the same dask chunks via `da.from_zarr`) "
        "on the cluster, vs NumPy over `A[:]` in one process, one thread. cold: page cache "
        "dropped (after the workers closed their cached stores) before each run; warm: data "
        f"read before. write: a computed {nw * 8 >> 20} MiB array `(arange mod {MOD}) / 2` "
        "through `outcore.dask.store` + commit (fresh array per run) vs `x.to_zarr` (zarr v3, "
        f"uncompressed) + fsync of every file. Median of {cfg.rounds} runs after an untimed "
        "one; every result checked exactly."
    )
    opath, zpath = _build(cfg, n, log)
    s, ss = _expected(n)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster)
    written = []
    try:
        db = outcore.open(opath, readonly=True)
        x = db.root()["A"].to_dask()
        z = da.from_zarr(zpath, chunks=x.chunks)
        exprs = {
            "outcore `A.to_dask()`, 2 workers": lambda: dask.compute(x.mean(), (x * x).sum()),
            "zarr v3 `da.from_zarr`, 2 workers": lambda: dask.compute(z.mean(), (z * z).sum()),
            "NumPy over `A[:]`, 1 process": lambda: _numpy_over_view(opath, n),
        }
        for what, fn in exprs.items():
            _check(what, fn(), n, s, ss)

        def cold():
            # Workers keep the stores they read open, and pages still mapped survive a drop:
            # close them first. (Not client.restart(): its workers sometimes never came back
            # on the shared 2-core machine.)
            client.run(_close_cached_stores)
            drop_cache([opath, zpath])

        reduce_t = {}
        for cache, setup in (("cold", cold), ("warm", None)):
            for what, fn in exprs.items():
                reduce_t[what, cache] = t = timed(fn, cfg.rounds, setup=setup)
                log(f"  reduce {cache} {what}: {fmt(t.median)} s")
        db.close()

        y = (da.arange(nw, chunks=x.chunks[0][0], dtype=np.float64) % MOD) / 2
        wdb = {}

        def fresh_outcore():
            if "db" in wdb:
                wdb.pop("db").close()
            path = cfg.fresh_path("dask-write")
            written.append(path)
            d = outcore.open(path)
            d.root()["W"] = outcore.BigArray((nw,), np.float64)
            transaction.commit()
            wdb["db"] = d

        def write_outcore():
            outcore.dask.store(y, wdb["db"].root()["W"])
            transaction.commit()

        zw = cfg.path("dask-write.zarr")
        written.append(zw)

        def write_zarr():
            y.to_zarr(zw, mode="w", compressors=None)
            fsync_tree(zw)

        write_t = {
            "outcore `outcore.dask.store` + commit": timed(
                write_outcore, cfg.rounds, setup=fresh_outcore
            ),
            "zarr v3 `x.to_zarr` + fsync": timed(write_zarr, cfg.rounds, setup=lambda: remove(zw)),
        }
        want = _written_sum(nw)
        got = _slab_sum(wdb["db"].root()["W"].__getitem__, nw)
        zgot = _slab_sum(zarr.open_array(zw, mode="r").__getitem__, nw)
        if got != want or zgot != want:
            raise AssertionError(f"write: sums {got!r} (outcore), {zgot!r} (zarr); expected {want!r}")
        wdb["db"].close()
        for what, t in write_t.items():
            log(f"  write {what}: {fmt(t.median)} s")
    finally:
        client.close()
        cluster.close()
        for path in (opath, zpath, *written):
            remove(path)

    zr = "zarr v3 `da.from_zarr`, 2 workers"
    header = ["reduce", "cache", "seconds (median)", "GB/s", "× zarr (speed)"]
    rows, bars = [], []
    for (what, cache), t in reduce_t.items():
        speed = reduce_t[zr, cache].median / t.median
        rows.append([what, cache, fmt(t.median), fmt(gbps(n * 8, t.median)), fmt(speed)])
        bars.append(Bar(f"reduce {cache}: {what.split(' `')[0].split(',')[0]}", gbps(n * 8, t.median)))
    sec.tables.append((header, rows))
    header = ["write", "seconds (median)", "GB/s", "× zarr (speed)"]
    zt = write_t["zarr v3 `x.to_zarr` + fsync"].median
    rows = []
    for what, t in write_t.items():
        rows.append([what, fmt(t.median), fmt(gbps(nw * 8, t.median)), fmt(zt / t.median)])
        bars.append(Bar(f"write: {what.split(' `')[0]}", gbps(nw * 8, t.median)))
    sec.tables.append((header, rows))
    sec.chart_unit = "GB/s"
    sec.chart_higher_is_better = True
    sec.bars = bars
    return sec
