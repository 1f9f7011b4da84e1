"""Workload deltas-scan (issue 15): an array written fully and committed, then many small
commits each changing one element at a random position (with format v2, blocks that carry
page deltas), then a warm-cache scan (``np.sum`` of the whole view) against the same data
after ``db.pack`` (freshly packed). Target: the scan with deltas at least 0.9× as fast."""

import time

import numpy as np

from .common import Bar, Check, GiB, Section, check_sum, fmt, gbps, pattern, remove, timed
from .probe import human, mapping_count, store_bytes
from .systems import OutcoreReader, outcore_build_from, outcore_open


def small_commits(path, n, count, cache, seed):
    """``count`` commits, each adding 1 to one element at a random position (all distinct);
    returns the seconds of each commit."""
    db, conn, tm = outcore_open(path, cache)
    A = conn.root()["A"]
    seconds = []
    for i in np.random.default_rng(seed).choice(n, size=count, replace=False):
        t0 = time.perf_counter()
        A[int(i)] = float(A[int(i)]) + 1.0
        tm.commit()
        seconds.append(time.perf_counter() - t0)
    db.close()
    return seconds


def pack(path, cache):
    """``db.pack(keep=0)``: drops every version no snapshot needs; returns its result."""
    db, _, _ = outcore_open(path, cache)
    try:
        return db.pack(keep=0)
    finally:
        db.close()


def scan(cfg, path, expected):
    """Median warm-cache scan of the whole array (one untimed pass first; every pass's sum
    checked) and the process's mapping count after the scans minus before opening."""
    maps0 = mapping_count()
    r = OutcoreReader("outcore", path, cfg.cache)
    r.open()
    try:
        t = timed(lambda: check_sum(r.sum_all(), expected, "deltas-scan"), cfg.rounds)
        return t, mapping_count() - maps0
    finally:
        r.close()


def deltas_scan(cfg, log):
    """Workload deltas-scan."""
    n = cfg.deltas_size // 8
    k = cfg.deltas_commits
    path = cfg.fresh_path("deltas")
    total = outcore_build_from(path, n, pattern, cfg.cache)
    built = store_bytes(path)
    commit_s = small_commits(path, n, k, cfg.cache, cfg.seed)
    expected = total + k
    with_deltas = store_bytes(path)
    log(f"  {k} one-element commits: median {np.median(commit_s) * 1e3:.2f} ms")
    t_deltas, maps_deltas = scan(cfg, path, expected)
    packed = pack(path, cfg.cache)
    after_pack = store_bytes(path)
    t_packed, maps_packed = scan(cfg, path, expected)
    remove(path)
    x = t_packed.median / t_deltas.median
    log(f"  scan with deltas {t_deltas.median:.3f} s, packed {t_packed.median:.3f} s ({x:.2f}×)")

    size = n * 8
    sec = Section(
        "deltas-scan",
        f"deltas-scan. Scan of a {size / GiB:.3g} GiB array after {k} one-element commits vs "
        "the same data freshly packed",
    )
    sec.notes.append(
        f"The array is written fully and committed, then {k} commits each add 1 to one element "
        f"at a random position (median {fmt(float(np.median(commit_s)) * 1e3)} ms per commit). "
        f"Scan: `np.sum` of the whole view, page cache warm, median of {cfg.rounds} passes after "
        "an untimed one, every sum checked. Then `db.pack(keep=0)` (removed "
        f"{packed['versions_removed']} versions) and the same scan. Mappings: lines of "
        "/proc/self/maps after the scans minus before opening the store."
    )
    sec.tables.append(
        (
            ["store", "median s", "best s", "GB/s", "× packed", "mappings added", "store bytes"],
            [
                [
                    f"after {k} one-element commits",
                    fmt(t_deltas.median),
                    fmt(t_deltas.best),
                    fmt(gbps(size, t_deltas.median)),
                    fmt(x),
                    maps_deltas,
                    human(with_deltas.allocated),
                ],
                [
                    "freshly packed",
                    fmt(t_packed.median),
                    fmt(t_packed.best),
                    fmt(gbps(size, t_packed.median)),
                    "1",
                    maps_packed,
                    human(after_pack.allocated),
                ],
            ],
        )
    )
    sec.notes.append(
        f"Store (allocated) after the full write {human(built.allocated)}, after the "
        f"{k} commits {human(with_deltas.allocated)} (+{human((with_deltas - built).allocated)}, "
        f"{human((with_deltas - built).allocated / k)} per commit), packed "
        f"{human(after_pack.allocated)}."
    )
    sec.checks = [
        Check(
            f"deltas-scan: scan after {k} one-element commits ≥ 0.9× freshly packed",
            f"{fmt(x)}×",
            "≥ 0.9×",
            x >= 0.9,
        )
    ]
    sec.bars = [
        Bar(f"outcore after {k} commits", gbps(size, t_deltas.median)),
        Bar("outcore freshly packed", gbps(size, t_packed.median)),
    ]
    sec.chart_unit = "GB/s scanned"
    return sec
