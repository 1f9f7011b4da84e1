"""Workload 4: append one row at a time to a small and a large array. Appending should cost
O(appended data): the time per append on the large array ought to match the small one's."""

import os
import time

import numpy as np
import outcore

from .common import BLOCK_ELEMS, Bar, Check, Section, fmt, pattern, remove
from .systems import Missing, need, outcore_open, slabs, zarr_create


def per_append_us(append, rows):
    """Median µs of ``append(row)`` over ``rows``."""
    us = []
    for row in rows:
        t0 = time.perf_counter()
        append(row)
        us.append((time.perf_counter() - t0) * 1e6)
    return float(np.median(us))


def outcore_append(path, base, rows, commit_each, cache):
    """outcore BigArray.append of one row; with ``commit_each`` every append is a durable
    transaction, otherwise all appends are one transaction committed at the end (untimed)."""
    remove(path)
    db, conn, tm = outcore_open(path, cache)
    conn.root()["A"] = A = outcore.BigArray(base.shape, np.float64)
    tm.commit()
    for lo, hi in slabs(len(base), max(1, (64 << 20) // base[0].nbytes)):
        A[lo:hi] = base[lo:hi]
        tm.commit()

    def append(row):
        A.append(row[None, :])
        if commit_each:
            tm.commit()

    us = per_append_us(append, rows)
    tm.commit()
    got = A[len(base) + len(rows) - 1]
    assert A.shape == (len(base) + len(rows), base.shape[1]) and np.array_equal(got, rows[-1])
    db.close()
    remove(path)
    return us


def h5_append(path, base, rows, flush_each, fsync_each=False):
    """h5py: chunked (about 2 MiB chunks) dataset with an unlimited first axis; ``resize`` by
    one row and write it (and ``flush`` with ``flush_each``; ``flush`` does not fsync, which
    ``fsync_each`` adds: a durable append like outcore's commit)."""
    h5 = need("h5py")
    remove(path)
    with h5.File(path, "w") as f:
        w = base.shape[1]
        ds = f.create_dataset("A", data=base, maxshape=(None, w), chunks=(BLOCK_ELEMS // w, w))

        def append(row):
            n = ds.shape[0]
            ds.resize(n + 1, axis=0)
            ds[n] = row
            if flush_each:
                f.flush()
            if fsync_each:
                os.fsync(f.id.get_vfd_handle())

        us = per_append_us(append, rows)
        assert ds.shape[0] == len(base) + len(rows) and np.array_equal(ds[-1], rows[-1])
    remove(path)
    return us


def zarr_append(path, base, rows):
    """zarr v3 ``Array.append`` of one row (rewrites the metadata document each time)."""
    zarr = need("zarr")
    w = base.shape[1]
    z = zarr_create(zarr, path, base.shape, (BLOCK_ELEMS // w, w))
    for lo, hi in slabs(len(base), max(1, (64 << 20) // base[0].nbytes)):
        z[lo:hi] = base[lo:hi]
    us = per_append_us(lambda row: z.append(row[None, :], axis=0), rows)
    assert z.shape[0] == len(base) + len(rows) and np.array_equal(z[-1], rows[-1])
    remove(path)
    return us


def variants(cfg):
    """(key, label, fn(path, base, rows))."""
    return [
        (
            "outcore",
            "outcore `append` (one transaction, committed after)",
            lambda p, b, r: outcore_append(p, b, r, False, cfg.cache),
        ),
        (
            "outcore-commit",
            "outcore `append` + durable commit each",
            lambda p, b, r: outcore_append(p, b, r, True, cfg.cache),
        ),
        ("h5py", "h5py `resize` + write", lambda p, b, r: h5_append(p + ".h5", b, r, False)),
        (
            "h5py-flush",
            "h5py `resize` + write + `flush`",
            lambda p, b, r: h5_append(p + ".h5", b, r, True),
        ),
        (
            "h5py-fsync",
            "h5py `resize` + write + `flush` + fsync (durable)",
            lambda p, b, r: h5_append(p + ".h5", b, r, True, True),
        ),
        ("zarr", "zarr `append`", zarr_append),
    ]


def append(cfg, log):
    """Workload 4."""
    w = cfg.row_width
    sizes = [cfg.append_small, cfg.append_large]
    bases = [pattern(0, (s // (8 * w)) * w).reshape(-1, w) for s in sizes]
    rows = pattern(10**9, 10**9 + cfg.appends * w).reshape(-1, w)
    names = [
        f"{s / 1e6:.3g} MB" if s < 1e9 else f"{s / 1e9:.3g} GB" for s in (b.nbytes for b in bases)
    ]
    sec = Section(
        "append",
        f"4. Append one row ({w} float64) at a time to a {names[0]} and a {names[1]} array",
    )
    sec.notes.append(
        f"Median µs per append over {cfg.appends} appends to an array holding the given data "
        "(the same rows for every system). O(δ) means the large array's time per append "
        "matches the small one's."
    )
    header = [
        "system",
        f"µs per append ({names[0]})",
        f"µs per append ({names[1]})",
        "large / small",
    ]
    rows_out, bars, checks = [], [], []
    for key, label, fn in variants(cfg):
        try:
            us = [fn(cfg.fresh_path(f"append-{key}"), b, rows) for b in bases]
        except Missing as e:
            rows_out.append([label, f"skipped: {e}", "", ""])
            continue
        x = us[1] / us[0]
        log(f"  {key}: {us[0]:.1f} / {us[1]:.1f} µs")
        rows_out.append([label, fmt(us[0]), fmt(us[1]), fmt(x)])
        bars += [Bar(f"{key} {names[0]}", us[0]), Bar(f"{key} {names[1]}", us[1])]
        if key.startswith("outcore"):
            checks.append(
                Check(
                    f"append: {label}, {names[1]} vs {names[0]}", f"{fmt(x)}×", "≤ 1.2×", x <= 1.2
                )
            )
    sec.tables.append((header, rows_out))
    sec.checks = checks
    sec.bars = bars
    sec.chart_unit = "µs per append"
    sec.chart_higher_is_better = False
    return sec
