"""Workload mapping-budget (issue 16): an array rewritten by many commits, each changing one
element in each of many random 4 KiB pages; then, in a fresh interpreter, the kernel mappings
of the process (lines of /proc/self/maps) before and after taking a whole-array view and
scanning it, a commit through that view, and the scan against the same data freshly packed.
The budget is a quarter of ``vm.max_map_count``; at the budget outcore may get slower, never
wrong, so failures of the view, the scan or the commit are reported, not raised."""

import time

import numpy as np

from .common import Bar, Check, MiB, Section, check_sum, fmt, gbps, pattern, remove, timed
from .deltas import pack
from .probe import in_fresh_process, mapping_count, max_map_count
from .systems import outcore_build_from, outcore_open

PAGE_ELEMS = 4096 // 8


def rewrite(path, n, commits, pages, cache, seed):
    """``commits`` commits, each adding 1 to one random element of ``pages`` distinct random
    4 KiB pages; returns the median seconds per commit."""
    rng = np.random.default_rng(seed)
    db, conn, tm = outcore_open(path, cache)
    A = conn.root()["A"]
    seconds = []
    for _ in range(commits):
        idx = rng.choice(n // PAGE_ELEMS, size=pages, replace=False) * PAGE_ELEMS
        idx += rng.integers(0, PAGE_ELEMS, size=pages)
        t0 = time.perf_counter()
        a = A[:]
        a[idx] += 1.0
        del a
        tm.commit()
        seconds.append(time.perf_counter() - t0)
    db.close()
    return float(np.median(seconds))


def view_scan_commit(path, expected, cache, rounds):
    """Opens the store, counts mappings before the view, after it and after the scans
    (median seconds), then commits a change through the view and reads it back."""
    out = {"error": None, "commit_ok": False}
    db, conn, tm = outcore_open(path, cache)
    try:
        A = conn.root()["A"]
        out["maps_before"] = mapping_count()
        a = A[:]
        out["maps_view"] = mapping_count()
        t = timed(lambda: check_sum(float(np.sum(a)), expected, "mapping-budget"), rounds)
        out["scan"] = t.median
        out["maps_scan"] = mapping_count()
        old = float(a[0])
        a[0] = old + 1.0
        tm.commit()
        out["commit_ok"] = float(A[0]) == old + 1.0
        out["maps_commit"] = mapping_count()
    except Exception as e:  # noqa: BLE001 -- a failure at the budget is the measurement
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        db.close()
    return out


def fresh_process_part(path, n, expected, cache, rounds):
    """In a fresh interpreter: the fragmented store measured, packed, measured again."""
    frag = view_scan_commit(path, expected, cache, rounds)
    if frag["error"] is None:
        expected += 1.0  # the commit through the view
    pack(path, cache)
    packed = view_scan_commit(path, expected, cache, rounds)
    return frag, packed


def mapping_budget(cfg, log):
    """Workload mapping-budget."""
    n = cfg.map_size // 8
    path = cfg.fresh_path("mappings")
    total = outcore_build_from(path, n, pattern, cfg.cache)
    commit_s = rewrite(path, n, cfg.map_commits, cfg.map_pages, cfg.cache, cfg.seed)
    expected = total + cfg.map_commits * cfg.map_pages
    frag, packed = in_fresh_process(fresh_process_part, path, n, expected, cfg.cache, cfg.rounds)
    remove(path)
    limit = max_map_count()
    budget = limit // 4
    nbytes = n * 8
    sec = Section(
        "mapping-budget",
        f"mapping-budget. A {nbytes / MiB:.0f} MiB array after {cfg.map_commits} commits of "
        f"{cfg.map_pages} random 4 KiB pages each: mappings, scan, commit",
    )
    sec.notes.append(
        f"Each commit adds 1 to one element in each of {cfg.map_pages} distinct random 4 KiB "
        f"pages (median {fmt(commit_s * 1e3)} ms per commit). Then, in a fresh interpreter: "
        "open the store, take `a = A[:]`, scan (`np.sum`, page cache warm, median of "
        f"{cfg.rounds} passes after an untimed one, sums checked), change `a[0]` and commit; "
        "then `db.pack(keep=0)` and the same on the packed store. Mappings: lines of "
        f"/proc/self/maps of that process. Budget: vm.max_map_count / 4 = {limit} / 4 = "
        f"{budget}."
    )
    rows, bars = [], []
    for label, r in (("after the commits", frag), ("freshly packed", packed)):
        if r["error"]:
            rows.append([label, f"failed: {r['error']}"] + [""] * 6)
            continue
        rows.append(
            [
                label,
                r["maps_before"],
                r["maps_view"],
                r["maps_scan"],
                r["maps_commit"],
                fmt(r["scan"]),
                fmt(gbps(nbytes, r["scan"])),
                "yes" if r["commit_ok"] else "NO",
            ]
        )
        bars.append(Bar(f"outcore {label}", gbps(nbytes, r["scan"])))
    sec.tables.append(
        (
            [
                "store",
                "mappings before the view",
                "after `A[:]`",
                "after the scans",
                "after the commit",
                "scan median s",
                "GB/s",
                "commit through the view",
            ],
            rows,
        )
    )
    ok = frag["error"] is None
    peak = max(frag.get(k, 0) for k in ("maps_view", "maps_scan", "maps_commit"))
    if ok and packed["error"] is None:
        x = packed["scan"] / frag["scan"]
        sec.notes.append(f"Scan after the commits: {fmt(x)}× the speed of the packed copy.")
        log(f"  mappings {peak} (budget {budget}); scan {x:.2f}× packed")
    sec.checks = [
        Check(
            "mapping-budget: mappings with a whole-array view of the rewritten array",
            str(peak) if ok else frag["error"],
            f"≤ {budget} (max_map_count / 4)",
            ok and peak <= budget,
        ),
        Check(
            "mapping-budget: view, scan and commit of the rewritten array work",
            "yes" if ok and frag["commit_ok"] else (frag["error"] or "commit read back wrong"),
            "work",
            ok and frag["commit_ok"],
        ),
    ]
    sec.bars = bars
    sec.chart_unit = "GB/s scanned"
    return sec
