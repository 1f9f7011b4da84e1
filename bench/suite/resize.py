"""Workload resize (issue 15): ``resize((0,))`` of a huge, mostly empty float64 array holding a
few written blocks, commit, then ``resize`` back to the original shape, commit; the same on a
1,000-element array. Measures the time of each resize and commit, the growth of the index file
and of the process's resident memory. Runs in a fresh interpreter so that the resident memory
is this workload's own."""

import time

import numpy as np
import outcore

from .common import Bar, Check, Section, fmt, remove
from .probe import human, in_fresh_process, index_bytes, status_bytes
from .systems import outcore_open

#: The issue's array: 8 TB of float64, mostly holes.
BIG = 10**12
SMALL = 10**3
#: Written elements: the first, the last and two in between (one block each).
WRITTEN = 4


def shape_text(elems):
    """``(10**12,)`` for a power of ten, else ``(1234,)``."""
    k = len(str(elems)) - 1
    return f"(10**{k},)" if elems == 10**k and k > 3 else f"({elems},)"


def one_run(path, elems, cache):
    """One resize to 0 and back on a fresh store; returns its measurements."""
    remove(path)
    db, conn, tm = outcore_open(path, cache)
    conn.root()["A"] = A = outcore.BigArray((elems,), np.float64)
    where = sorted({k * (elems - 1) // (WRITTEN - 1) for k in range(WRITTEN)})
    for i in where:
        # One commit per block: a view of a far block while another holds uncommitted
        # writes would need a second address-space window.
        A[i] = 1.0
        tm.commit()
    index0, rss0 = index_bytes(path), status_bytes("VmRSS")
    t0 = time.perf_counter()
    A.resize((0,))
    t1 = time.perf_counter()
    tm.commit()
    t2 = time.perf_counter()
    A.resize((elems,))
    t3 = time.perf_counter()
    tm.commit()
    t4 = time.perf_counter()
    index1, rss1 = index_bytes(path), status_bytes("VmRSS")
    got = [float(A[i]) for i in where]
    if A.shape != (elems,) or any(got):
        raise AssertionError(f"resize: after shrinking to 0 and growing back, {got} (expected 0)")
    db.close()
    remove(path)
    return {
        "shrink": t1 - t0,
        "shrink_commit": t2 - t1,
        "grow": t3 - t2,
        "grow_commit": t4 - t3,
        "index_before": index0.size,
        "index_growth": (index1 - index0).size,
        "index_growth_allocated": (index1 - index0).allocated,
        "rss_growth": rss1 - rss0,
        # The kernel's RSS counters are per-thread caches: a few pages of noise, never < 0.
        "peak_growth": max(0, status_bytes("VmHWM") - rss0),
    }


def runs(path, elems, cache, rounds):
    """``rounds`` runs in this process (the first one's memory growth is the process's)."""
    return [one_run(f"{path}-{k}", elems, cache) for k in range(rounds)]


def resize(cfg, log):
    """Workload resize."""
    big = BIG
    sec = Section(
        "resize",
        f"resize. `resize((0,))` and back of a {shape_text(big)} float64 array holding "
        f"{WRITTEN} written blocks, vs a {shape_text(SMALL)} array",
    )
    sec.notes.append(
        f"Median of {cfg.rounds} runs, each on a fresh store, in a fresh interpreter per array "
        "size. Index growth: data.mdb after both commits minus before the first resize (the "
        "first run's; apparent size, allocated in parentheses). RSS growth: VmRSS after both "
        "commits minus before (first run), and VmHWM minus that start (the peak)."
    )
    results = {}
    for elems in (big, SMALL):
        results[elems] = in_fresh_process(
            runs, cfg.fresh_path(f"resize-{elems}"), elems, cfg.cache, cfg.rounds
        )

    def med(elems, key):
        return float(np.median([r[key] for r in results[elems]]))

    def commits(elems):
        return float(np.median([r["shrink_commit"] + r["grow_commit"] for r in results[elems]]))

    header = [
        "array",
        "resize((0,)) s",
        "commit s",
        "resize back s",
        "commit s",
        "both commits s",
        "index before",
        "index growth",
        "RSS growth",
        "peak RSS growth",
    ]
    rows, bars = [], []
    for elems in (big, SMALL):
        first = results[elems][0]
        rows.append(
            [
                f"{shape_text(elems)} float64",
                fmt(med(elems, "shrink")),
                fmt(med(elems, "shrink_commit")),
                fmt(med(elems, "grow")),
                fmt(med(elems, "grow_commit")),
                fmt(commits(elems)),
                human(first["index_before"]),
                f"{human(first['index_growth'])} ({human(first['index_growth_allocated'])})",
                human(first["rss_growth"]),
                human(first["peak_growth"]),
            ]
        )
        bars.append(Bar(f"outcore {shape_text(elems)}: both commits", commits(elems) * 1e3))
        growth = human(first["index_growth"])
        log(f"  {shape_text(elems)}: commits {commits(elems):.3g} s, index +{growth}")
    sec.tables.append((header, rows))
    x = commits(big) / commits(SMALL)
    growth = results[big][0]["index_growth"]
    sec.checks = [
        Check(
            f"resize: commits of resize to 0 and back, {shape_text(big)} vs {shape_text(SMALL)}",
            f"{fmt(x)}× ({fmt(commits(big))} s vs {fmt(commits(SMALL))} s)",
            "≤ 2×",
            x <= 2,
        ),
        Check(
            f"resize: index growth, {shape_text(big)} to 0 and back",
            human(growth),
            "≤ 1 MB",
            growth <= 1_000_000,
        ),
    ]
    sec.bars = bars
    sec.chart_unit = "ms, both commits"
    sec.chart_higher_is_better = False
    return sec
