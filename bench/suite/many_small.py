"""Workload many-small (issue 15): many arrays of 8 KB (1,000 float64) each, one element of each
written, committed in one transaction or one commit per array. Measures the bytes the store
takes on disk: the issue's target is 16 MB for 1,000 arrays (16 KB per array)."""

import time

import numpy as np
import outcore

from .common import Bar, Check, Section, fmt
from .probe import human, store_bytes
from .systems import outcore_open

ELEMS = 1000
#: The issue's target: 16 MB for 1,000 arrays.
TARGET_PER_ARRAY = 16_000


def outcore_run(path, count, commit_each, cache):
    """Creates ``count`` arrays with one element written each; returns (empty store bytes,
    store bytes, seconds)."""
    db, conn, tm = outcore_open(path, cache)
    empty = store_bytes(path)
    root = conn.root()
    t0 = time.perf_counter()
    for i in range(count):
        root[f"a{i}"] = A = outcore.BigArray((ELEMS,), np.float64)
        A[i % ELEMS] = float(i + 1)
        if commit_each:
            tm.commit()
    tm.commit()
    seconds = time.perf_counter() - t0
    full = store_bytes(path)
    for i in range(count):
        got = float(np.sum(root[f"a{i}"][:]))
        if got != float(i + 1):
            raise AssertionError(f"many-small: array a{i} sums to {got}, expected {i + 1}")
    db.close()
    return empty, full, seconds


def many_small(cfg, log):
    """Workload many-small."""
    n = cfg.small_arrays
    target = TARGET_PER_ARRAY * n
    sec = Section(
        "many-small",
        f"many-small. {n} arrays of {ELEMS * 8 // 1000} KB ({ELEMS} float64), one element of "
        "each written",
    )
    sec.notes.append(
        "Each variant writes a fresh store. Bytes on disk: the files under segments/ and index/, "
        "allocated (st_blocks × 512) and apparent (st_size); the empty store's bytes are "
        f"included (shown apart). Target: 16 MB per 1,000 arrays ({human(target)} for {n})."
    )
    header = [
        "variant",
        "store allocated",
        "apparent",
        "empty store",
        "per array",
        "× the arrays' bytes",
        "seconds",
    ]
    rows, checks, bars = [], [], []
    for commit_each, key, label in (
        (False, "one-txn", "one transaction"),
        (True, "commit-each", "one commit per array"),
    ):
        empty, full, seconds = outcore_run(
            cfg.fresh_path(f"many-small-{key}"), n, commit_each, cfg.cache
        )
        total = full.allocated
        log(f"  {key}: {human(total)} on disk for {n} arrays")
        rows.append(
            [
                f"outcore, {label}",
                human(total),
                human(full.size),
                human(empty.allocated),
                human(total / n),
                fmt(total / (n * ELEMS * 8)),
                fmt(seconds),
            ]
        )
        bars.append(Bar(f"outcore, {label}", total / 1e6))
        checks.append(
            Check(
                f"many-small ({label}): {n} arrays of 8 KB on disk ≤ 16 MB per 1,000",
                human(total),
                f"≤ {human(target)}",
                total <= target,
            )
        )
    sec.tables.append((header, rows))
    sec.checks = checks
    sec.bars = bars
    sec.chart_unit = "MB on disk"
    sec.chart_target = (target / 1e6, "target")
    sec.chart_higher_is_better = False
    return sec
