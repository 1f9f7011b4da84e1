"""Workload 3: write the whole array from RAM and make it durable, for every system. Each
round writes a fresh store (removed afterwards, untimed); the time runs from creating the
store to the durable end (commit, fdatasync or fsync)."""

import os
import time

import numpy as np
import outcore

from .common import (
    BLOCK_ELEMS,
    Bar,
    Check,
    GiB,
    MiB,
    Section,
    fmt,
    fsync_tree,
    gbps,
    ratio,
    remove,
    timed,
)
from .systems import Missing, need, outcore_open, slabs, zarr_create


def raw_write(path, data, chunk=64 * MiB):
    """The baseline: ``write`` of the bytes in 64 MiB pieces to a new file, ``fdatasync``."""
    mv = memoryview(data).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for lo in range(0, len(mv), chunk):
            os.write(fd, mv[lo : lo + chunk])
        os.fdatasync(fd)
    finally:
        os.close(fd)


def memmap_write(path, data):
    """numpy.memmap (mode w+) filled with one copy, then ``flush`` (msync)."""
    m = np.memmap(path, dtype=np.float64, mode="w+", shape=data.shape)
    m[:] = data
    m.flush()
    m._mmap.close()


def h5_write(chunked):
    def write(path, data):
        """h5py dataset written in 16 MiB slabs, file closed, then fsync."""
        h5 = need("h5py")
        with h5.File(path, "w") as f:
            ds = f.create_dataset(
                "A", shape=data.shape, dtype=np.float64, chunks=(BLOCK_ELEMS,) if chunked else None
            )
            for lo, hi in slabs(len(data), 8 * BLOCK_ELEMS):
                ds[lo:hi] = data[lo:hi]
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    return write


def zarr_write(path, data):
    """zarr v3 (2 MiB chunks, uncompressed) written in 64 MiB slabs, then every chunk file and
    directory fsynced (zarr has no commit of its own)."""
    zarr = need("zarr")
    z = zarr_create(zarr, path, data.shape, (BLOCK_ELEMS,))
    for lo, hi in slabs(len(data), 32 * BLOCK_ELEMS):
        z[lo:hi] = data[lo:hi]
    fsync_tree(path)


def outcore_write(compression, cache):
    def write(path, data):
        """outcore: create the array, one copy into its view, one durable commit. Appends
        (copy s, commit s) to ``write.phases``."""
        db, conn, tm = outcore_open(path, cache, compression)
        conn.root()["A"] = A = outcore.BigArray(data.shape, np.float64)
        t0 = time.perf_counter()
        a = A[:]
        a[:] = data
        t1 = time.perf_counter()
        tm.commit()
        write.phases.append((t1 - t0, time.perf_counter() - t1))
        del a
        db.close()

    write.phases = []
    return write


def writers(cfg, nbytes):
    """(key, label, function, file name) of each variant; the baseline first."""
    big_budget = nbytes + 256 * MiB
    return [
        ("raw", "raw write + fdatasync (baseline)", raw_write, "w-raw"),
        (
            "outcore",
            "outcore, embedded store: write + commit",
            outcore_write(None, cfg.cache),
            "w-outcore",
        ),
        (
            "outcore-lz4",
            f"outcore, lz4 store: write + commit (budget {big_budget >> 20} MiB)",
            outcore_write("lz4", big_budget),
            "w-outcore-lz4",
        ),
        ("memmap", "numpy.memmap + flush", memmap_write, "w-memmap"),
        ("h5-contig", "h5py contiguous + fsync", h5_write(False), "w-contig.h5"),
        ("h5-chunked", "h5py chunked (2 MiB) + fsync", h5_write(True), "w-chunked.h5"),
        ("zarr", "zarr v3 + fsync of every file", zarr_write, "w-zarr"),
    ]


def time_writer(cfg, fn, name, data):
    """Times ``fn(path, data)`` into a fresh path per round, removing the previous store
    before each round (untimed) and the last one at the end."""
    paths = []

    def run():
        paths.append(cfg.fresh_path(name))
        fn(paths[-1], data)

    def cleanup():
        while paths:
            remove(paths.pop())

    try:
        return timed(run, cfg.rounds, setup=cleanup)
    finally:
        cleanup()


def write(cfg, data, log):
    """Workload 3."""
    nbytes = data.nbytes
    sec = Section("write", f"3. Write the whole {nbytes / GiB:.3g} GiB array + durable commit")
    sec.notes.append(
        f"Median of {cfg.rounds} rounds (after one untimed round), each into a fresh store that "
        "is deleted afterwards; from creating the store to the durable end. The data comes from "
        "the same in-RAM array. The lz4 store gets a budget larger than the array: written "
        "blocks of a fault-filled store stay in its budget until the commit."
    )
    times, labels, skipped = {}, {}, []
    writers_used = writers(cfg, nbytes)
    for key, label, fn, name in writers_used:
        labels[key] = label
        try:
            times[key] = time_writer(cfg, fn, name, data)
        except Missing as e:
            skipped.append([label, f"skipped: {e}", "", "", ""])
            continue
        log(f"  {key}: {gbps(nbytes, times[key].median):.2f} GB/s")
    base = times["raw"]
    header = ["system", "median s", "best s", "GB/s", "× raw write + fdatasync"]
    rows = [
        [
            labels[k],
            fmt(t.median),
            fmt(t.best),
            fmt(gbps(nbytes, t.median)),
            fmt(ratio(base.median, t.median)),
        ]
        for k, t in times.items()
    ] + skipped
    sec.tables.append((header, rows))
    sec.chart_unit = "GB/s written durably"
    sec.bars = [Bar(k, gbps(nbytes, t.median)) for k, t in times.items()]
    for key, _, fn, _ in writers_used:
        phases = getattr(fn, "phases", [])[-cfg.rounds :]
        if phases:
            copy, commit = (float(np.median(p)) for p in zip(*phases, strict=True))
            sec.notes.append(
                f"{labels[key]}, medians of the phases: copying the data into the view "
                f"(copy-on-write faults) {fmt(copy)} s, `commit` {fmt(commit)} s."
            )
    for key in ("outcore", "outcore-lz4"):
        if key in times:
            x = ratio(base.median, times[key].median)
            sec.checks.append(
                Check(
                    f"write + commit: {labels[key]} ≥ 0.8× raw write + fdatasync",
                    f"{fmt(x)}×",
                    "≥ 0.8×",
                    x >= 0.8,
                )
            )
    return sec
