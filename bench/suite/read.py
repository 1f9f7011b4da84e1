"""Workloads 1 (full sequential scan, warm page cache) and 2 (cold 2 MiB block faults and
random point reads after load). Every system reads the same stores, built from the same data
by ``prepare``."""

import gc
import time

import numpy as np

from .common import (
    BLOCK_ELEMS,
    Bar,
    Check,
    GiB,
    Section,
    check_sum,
    drop_cache,
    fmt,
    gbps,
    ratio,
    timed,
)
from .systems import OutcoreReader, Skipped

#: Readers whose Python-level single-element access costs tens of µs or more: they get a
#: tenth of the point reads (the mean per element is what is compared).
SLOW_POINTS = ("h5-contig", "h5-chunked", "zarr", "tensorstore")


def prepare(readers, data, log):
    """Builds every reader's store from ``data`` (untimed)."""
    for key, r in readers.items():
        if isinstance(r, Skipped):
            continue
        t0 = time.perf_counter()
        r.build(data)
        log(f"  built {key} in {time.perf_counter() - t0:.1f} s")


def skipped_rows(readers, width):
    return [
        [r.label, f"skipped: {r.reason}"] + [""] * (width - 2)
        for r in readers.values()
        if isinstance(r, Skipped)
    ]


# ---------------------------------------------------------------------------------- 1: scan


def memcpy_timing(data, rounds):
    """memcpy bandwidth: ``np.copyto`` of up to 1 GiB of the in-RAM data into a buffer
    touched before (bytes copied per second)."""
    src = data[: min(len(data), GiB // 8)]
    dst = np.ones_like(src)
    return src.nbytes, timed(lambda: np.copyto(dst, src), rounds)


def scan(cfg, readers, data, total, log):
    """Workload 1: ``np.sum`` over the whole array, page cache warm (one untimed pass first)."""
    nbytes = data.nbytes
    sec = Section(
        "scan",
        f"1. Full sequential scan: sum of a {nbytes / GiB:.3g} GiB float64 array, warm page cache",
    )
    sec.notes.append(
        f"Median of {cfg.rounds} passes after one untimed pass (which warms the page cache). "
        f"outcore's budget (cache_bytes) is {cfg.cache >> 20} MiB; the embedded store maps its "
        "files (the budget does not apply), the lz4 store decodes blocks on first touch into "
        f"that budget, so every pass re-faults every block. h5py, zarr and TensorStore read "
        f"{cfg.slab >> 20} MiB slabs (h5py into one reused buffer). Every pass's sum is checked."
    )
    cp_bytes, cp = memcpy_timing(data, cfg.rounds)
    log(f"  memcpy {gbps(cp_bytes, cp.median):.2f} GB/s")
    ram = timed(lambda: check_sum(float(np.sum(data)), total, "in-RAM"), cfg.rounds)
    log(f"  in-RAM sum {gbps(nbytes, ram.median):.2f} GB/s")
    times = {}
    for key, r in readers.items():
        if isinstance(r, Skipped):
            continue
        r.open()
        times[key] = timed(lambda r=r: check_sum(r.sum_all(), total, r.label), cfg.rounds)
        r.close()
        log(f"  {key}: {gbps(nbytes, times[key].median):.2f} GB/s")
    base = times.get("memmap")
    header = ["system", "median s", "best s", "GB/s", "× numpy.memmap", "× in-RAM sum"]
    rows = [
        [
            f"memcpy (limit; {cp_bytes >> 20} MiB copied)",
            fmt(cp.median),
            fmt(cp.best),
            fmt(gbps(cp_bytes, cp.median)),
            "",
            "",
        ],
        [
            "in-RAM `np.sum` (limit)",
            fmt(ram.median),
            fmt(ram.best),
            fmt(gbps(nbytes, ram.median)),
            fmt(ratio(base.median, ram.median)) if base else "–",
            "1",
        ],
    ]
    for key, t in times.items():
        rows.append(
            [
                readers[key].label,
                fmt(t.median),
                fmt(t.best),
                fmt(gbps(nbytes, t.median)),
                fmt(ratio(base.median, t.median)) if base else "–",
                fmt(ratio(ram.median, t.median)),
            ]
        )
    rows += skipped_rows(readers, len(header))
    sec.tables.append((header, rows))
    sec.chart_unit = "GB/s"
    sec.bars = [
        Bar("memcpy", gbps(cp_bytes, cp.median)),
        Bar("in-RAM sum", gbps(nbytes, ram.median)),
    ]
    sec.bars += [Bar(short(key), gbps(nbytes, t.median)) for key, t in times.items()]
    for key in ("outcore", "outcore-lz4", "outcore-lz4-ro"):
        if key not in times:
            continue
        t, label = times[key].median, readers[key].label
        if base:
            x = ratio(base.median, t)
            sec.checks.append(
                Check(f"scan: {label} ≥ 1.0× numpy.memmap", f"{fmt(x)}×", "≥ 1.0×", x >= 1.0)
            )
        for peer in ("h5-contig", "h5-chunked", "zarr"):
            if peer in times:
                x = ratio(times[peer].median, t)
                sec.checks.append(
                    Check(
                        f"scan: {label} ≥ 2× {readers[peer].label}", f"{fmt(x)}×", "≥ 2×", x >= 2.0
                    )
                )
        x = t / ram.median
        sec.checks.append(
            Check(
                f"scan: {label} within 2× of the in-RAM sum",
                f"{fmt(x)}× the time",
                "≤ 2×",
                x <= 2.0,
            )
        )
    return sec


def short(key):
    return {
        "outcore": "outcore",
        "outcore-lz4": "outcore lz4",
        "outcore-lz4-ro": "outcore lz4 read-only",
        "outcore-prefetch": "outcore + prefetch",
        "memmap": "memmap",
        "h5-contig": "h5py contig",
        "h5-chunked": "h5py chunked",
        "zarr": "zarr",
        "tensorstore": "tensorstore",
    }.get(key, key)


# ---------------------------------------------------------------------------------- 2: faults


def cold_open(r):
    """Opens ``r`` with none of its files in the page cache (and nothing mapped yet)."""
    gc.collect()
    drop_cache(r.files())
    r.open()


def block_reads(r, data, blocks):
    """µs to read (sum) each whole 2 MiB block of ``blocks`` just after a fresh open."""
    us = []
    for b in blocks:
        lo, hi = b * BLOCK_ELEMS, (b + 1) * BLOCK_ELEMS
        t0 = time.perf_counter()
        got = r.sum_range(lo, hi)
        us.append((time.perf_counter() - t0) * 1e6)
        check_sum(got, float(np.sum(data[lo:hi])), f"{r.label} block {b}")
    r.close()
    return us


def first_touches(r, data, blocks):
    """µs to read one element in the middle of each block of ``blocks`` after a fresh open."""
    us = []
    for b in blocks:
        i = b * BLOCK_ELEMS + BLOCK_ELEMS // 2
        t0 = time.perf_counter()
        got = r.get(i)
        us.append((time.perf_counter() - t0) * 1e6)
        check_sum(float(got), float(data[i]), f"{r.label} element {i}")
    r.close()
    return us


def block_faults(r, data, blocks):
    """Medians and p90 of: cold whole blocks, cold first touches, and whole blocks after a
    fresh open with the page cache warm (the fault mechanism without the disk)."""
    cold_open(r)
    cold = block_reads(r, data, blocks)
    cold_open(r)
    touch = first_touches(r, data, blocks)
    r.open()
    r.sum_all()  # everything in the page cache
    r.close()
    r.open()
    warm = block_reads(r, data, blocks)
    return {
        "cold": float(np.median(cold)),
        "cold90": float(np.percentile(cold, 90)),
        "touch": float(np.median(touch)),
        "warm": float(np.median(warm)),
    }


def point_reads(r, data, idx, rounds):
    """µs per element of reading ``idx`` one by one after the whole array was loaded (the
    median of ``rounds`` passes over ``idx``: one pass takes only milliseconds)."""
    r.open()
    r.load()
    r.sum_all()  # the page cache and mappings (or outcore's budget) now hold the data
    got = []
    t = timed(lambda: got.append([r.get(i) for i in idx]), rounds, warmup=0)
    r.close()
    if not np.array_equal(np.asarray(got[-1], dtype=np.float64).ravel(), data[idx]):
        raise AssertionError(f"{r.label}: point reads returned wrong values")
    return t.median * 1e6 / len(idx)


def fault_readers(readers):
    """The readers of workload 2: those of workload 1, plus outcore's embedded store read
    with ``A.prefetch(block)`` before each block (right after plain outcore)."""
    out = {}
    for key, r in readers.items():
        if isinstance(r, Skipped):
            continue
        out[key] = r
        if key == "outcore":
            label = "outcore, embedded store + `A.prefetch(block)` first"
            out["outcore-prefetch"] = OutcoreReader(label, r.path, r.cache, prefetch=True)
    return out


def fault(cfg, readers, data, log):
    """Workload 2: cold 2 MiB blocks and random point reads."""
    rng = np.random.default_rng(cfg.seed)
    nblocks = len(data) // BLOCK_ELEMS
    blocks = rng.choice(nblocks, size=min(cfg.fault_blocks, nblocks), replace=False)
    idx = rng.integers(0, len(data), size=cfg.points)
    sec = Section("fault", "2. Cold block faults and random point reads")
    sec.notes.append(
        "Cold: the page cache of the store's files is dropped (fdatasync + posix_fadvise "
        f"DONTNEED) and the store opened afresh, then {len(blocks)} random 2 MiB blocks are read "
        "(summed) one at a time; median and p90 µs per block. 'first touch': one element of each "
        "block instead, again after dropping the cache (mapped readers fault a 4 KiB page plus "
        "the kernel's read-ahead, the fault-filled path a whole block). 'warm cache': whole "
        "blocks after a fresh open with the files in the page cache — the fault mechanism "
        "without the disk. The `A.prefetch` row asks outcore to read each block ahead (its "
        f"public API) just before reading it. Point reads: {cfg.points} random elements read "
        "one at a time from Python (`x[i]`) after a full pass loaded the data, median of "
        f"{cfg.rounds} passes ({cfg.points // 10} elements for h5py, zarr and TensorStore); "
        "outcore's lz4 store gets a budget larger than the array here."
    )
    header = [
        "system",
        "cold block µs",
        "cold block p90 µs",
        "cold first touch µs",
        "warm-cache block µs",
        "point read µs/elem",
        "point × memmap",
    ]
    results, points = {}, {}
    subjects = fault_readers(readers)
    for key, r in subjects.items():
        results[key] = block_faults(r, data, blocks)
        f = results[key]
        log(f"  {key}: cold {f['cold']:.0f} µs, touch {f['touch']:.0f} µs, warm {f['warm']:.0f} µs")
        if key == "outcore-prefetch":
            continue  # the same reads as "outcore"
        if key in ("outcore-lz4", "outcore-lz4-ro"):
            budget = data.nbytes + (64 << 20)
            label = r.label.split(" (")[0] + " (budget ≥ array)"
            r = OutcoreReader(label, r.path, budget, readonly=r.readonly)
        n = len(idx) // 10 if key in SLOW_POINTS else len(idx)
        points[key] = point_reads(r, data, idx[: max(1, n)], cfg.rounds)
        log(f"  {key}: point {points[key]:.2f} µs")
    mm = points.get("memmap")
    rows = [
        [
            subjects[k].label,
            fmt(f["cold"]),
            fmt(f["cold90"]),
            fmt(f["touch"]),
            fmt(f["warm"]),
            fmt(points.get(k)),
            fmt(ratio(points[k], mm)) if mm and k in points else "–",
        ]
        for k, f in results.items()
    ]
    rows += skipped_rows(readers, len(header))
    sec.tables.append((header, rows))
    sec.chart_unit = "µs per cold 2 MiB block"
    sec.chart_higher_is_better = False
    sec.bars = [Bar(short(k), f["cold"]) for k, f in results.items()]
    sec.chart_target = (300, "target 300 µs")
    for key in ("outcore", "outcore-prefetch", "outcore-lz4", "outcore-lz4-ro"):
        if key not in results:
            continue
        f, label = results[key], subjects[key].label
        sec.checks.append(
            Check(
                f"fault: {label}, cold 2 MiB block (disk)",
                f"{fmt(f['cold'])} µs",
                "≤ 300 µs",
                f["cold"] <= 300,
            )
        )
        sec.checks.append(
            Check(
                f"fault: {label}, 2 MiB block, warm page cache",
                f"{fmt(f['warm'])} µs",
                "≤ 300 µs",
                f["warm"] <= 300,
            )
        )
        if mm and key in points:
            x = ratio(points[key], mm)
            sec.checks.append(
                Check(
                    f"point reads: {label} within 2× of numpy.memmap",
                    f"{fmt(x)}× ({fmt(points[key])} µs)",
                    "≤ 2×",
                    x <= 2.0,
                )
            )
    return sec
