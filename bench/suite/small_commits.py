"""Workload small-commits (issue 15): one-row appends (3 float64 each) to an array that starts
empty, each made durable by its own commit, and the variant committing every 100 appends.
Measures what every commit adds to the store on disk, the store's size before and after
``pack``, and the latency of an append + durable commit against h5py's append + flush + fsync
in the same run."""

import os
import time

import numpy as np
import outcore

from .append import h5_append
from .common import Bar, Check, Section, fmt, pattern, remove
from .probe import human, store_bytes
from .systems import Missing, outcore_open

#: float64 per appended row (the issue's 10,000 rows made a 234 KiB array).
ROW = 3
#: Appends per commit of the second variant.
EVERY = 100
PAGE = 4096


def disk_cap(directory):
    """Bytes a store of this workload may grow to before the loop stops early: half the free
    space of ``directory`` (format v1 stores 2 MiB per commit, 20 GB for 10,000 commits)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize // 2


def outcore_run(path, rows, every, cache, cap):
    """Appends ``rows`` one at a time, committing every ``every`` appends; stops early when
    the store outgrows ``cap`` bytes. Returns a dict of the measurements."""
    remove(path)
    db, conn, tm = outcore_open(path, cache)
    conn.root()["A"] = A = outcore.BigArray((0, ROW), np.float64)
    tm.commit()
    start = prev = store_bytes(path)
    latency, added = [], []
    done = 0
    for lo in range(0, len(rows) - every + 1, every):
        t0 = time.perf_counter()
        for i in range(lo, lo + every):
            A.append(rows[i : i + 1])
        tm.commit()
        latency.append(time.perf_counter() - t0)
        done = lo + every
        now = store_bytes(path)  # untimed
        added.append(now.allocated - prev.allocated)
        prev = now
        if now.allocated - start.allocated > cap:
            break
    if A.shape != (done, ROW) or float(np.sum(A[:])) != float(np.sum(rows[:done])):
        raise AssertionError(f"small-commits: the array read back differs after {done} appends")
    before_pack = store_bytes(path)
    db.pack(keep=0)
    after_pack = store_bytes(path)
    db.close()
    remove(path)
    return {
        "commits": len(latency),
        "latency": latency,
        "added": added,
        "start": start,
        "before_pack": before_pack,
        "after_pack": after_pack,
        "stopped": done < len(rows),
    }


def small_commits(cfg, log):
    """Workload small-commits."""
    n = cfg.commits
    rows = pattern(0, n * ROW).reshape(n, ROW)
    cap = disk_cap(cfg.dir)
    sec = Section(
        "small-commits",
        f"small-commits. {n} one-row appends ({ROW} float64) with a durable commit each, "
        f"and with a commit every {EVERY}",
    )
    sec.notes.append(
        f"The array starts empty (shape (0, {ROW})). Latency: median and p90 of one append + "
        "durable commit (for the second variant: of one commit and the appends before it). "
        "Bytes added: growth of the store (files under segments/ and index/) per commit, "
        "allocated (st_blocks × 512) and apparent (st_size); 'store' is the whole store before "
        "and after `db.pack(keep=0)`. h5py: chunked dataset (about 2 MiB chunks) with an "
        "unlimited first axis, `resize` + write + `flush` + fsync per row (durable). A loop "
        f"stops early if its store outgrows half the free space ({human(cap)})."
    )
    header = [
        "variant",
        "commits",
        "median ms per commit",
        "p90 ms",
        "bytes added per commit (allocated, mean)",
        "max per commit",
        "apparent, mean",
        "store before pack",
        "after pack",
        "store / (2 × commits × 4 KiB)",
    ]
    table, checks, bars = [], [], []
    medians = {}
    for every, key in ((1, "outcore-commit-each"), (EVERY, f"outcore-commit-every-{EVERY}")):
        r = outcore_run(cfg.fresh_path(key), rows, every, cfg.cache, cap)
        commits = r["commits"]
        grown = r["before_pack"] - r["start"]
        per_alloc, per_size = grown.allocated / commits, grown.size / commits
        store = r["before_pack"].allocated
        bound = 2 * commits * PAGE
        ms = np.array(r["latency"]) * 1e3
        medians[every] = float(np.median(ms))
        label = "append + commit each" if every == 1 else f"{EVERY} appends + commit"
        if r["stopped"]:
            label += f" (stopped after {commits} commits: store over {human(cap)})"
        log(f"  {key}: {medians[every]:.2f} ms per commit, {human(per_alloc)} added per commit")
        table.append(
            [
                f"outcore: {label}",
                commits,
                fmt(medians[every]),
                fmt(float(np.percentile(ms, 90))),
                human(per_alloc),
                human(max(r["added"])),
                human(per_size),
                human(store),
                human(r["after_pack"].allocated),
                fmt(store / bound),
            ]
        )
        bars.append(Bar(f"outcore, {label}", medians[every] * 1e3))
        appended = every * ROW * 8
        checks += [
            Check(
                f"small-commits ({label}): bytes added per commit ≤ 8 KiB + {appended} B",
                human(per_alloc),
                f"≤ {human(8192 + appended)}",
                per_alloc <= 8192 + appended,
            ),
            Check(
                f"small-commits ({label}): store before pack ≤ 2 × commits × 4 KiB",
                human(store),
                f"≤ {human(bound)}",
                store <= bound,
            ),
        ]
    try:
        h5_us = h5_append(
            cfg.fresh_path("small-commits-h5") + ".h5", rows[:0], rows, True, fsync_each=True
        )
    except Missing as e:
        table.append(["h5py `resize` + write + `flush` + fsync", f"skipped: {e}"] + [""] * 8)
        h5_us = None
    if h5_us is not None:
        log(f"  h5py append + flush + fsync: {h5_us / 1e3:.2f} ms")
        table.append(["h5py `resize` + write + `flush` + fsync", n, fmt(h5_us / 1e3)] + [""] * 7)
        bars.append(Bar("h5py resize + write + flush + fsync", h5_us))
        x = medians[1] * 1e3 / h5_us
        checks.append(
            Check(
                "small-commits: append + durable commit within 2× of h5py append + flush + fsync",
                f"{fmt(x)}× ({fmt(medians[1])} ms vs {fmt(h5_us / 1e3)} ms)",
                "≤ 2×",
                x <= 2,
            )
        )
    sec.tables.append((header, table))
    sec.checks = checks
    sec.bars = bars
    sec.chart_unit = "µs per durable commit"
    sec.chart_higher_is_better = False
    return sec
