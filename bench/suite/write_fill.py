"""Workloads write-new and write-rewrite (issue 16): a whole array written through one view
(``a = A[:]; a[:] = value``) and made durable by one commit, against raw ``write`` +
``fdatasync`` of the same bytes to a new file in the same run. write-new fills a new array;
write-rewrite fills an array whose data was written and committed before (untimed), so every
block is a rewrite of existing data. Targets: ≥ 0.8× raw (new), ≥ 0.6× raw (rewrite)."""

import gc
import os
import time

import numpy as np
import outcore

from .common import Bar, Check, GiB, MiB, Section, Timing, fmt, gbps, ratio, remove
from .systems import outcore_open

#: Bytes per ``write`` of the raw baselines.
CHUNK = 64 * MiB


def raw_fill(path, n, value, overwrite=False):
    """``n`` float64 equal to ``value`` written by ``write`` of one reused 64 MiB buffer, then
    ``fdatasync``; into a new file, or over the existing one with ``overwrite``."""
    buf = memoryview(np.full(CHUNK // 8, value)).cast("B")
    flags = os.O_WRONLY | (0 if overwrite else os.O_CREAT | os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        left = n * 8
        while left:
            left -= os.write(fd, buf[: min(left, CHUNK)])
        os.fdatasync(fd)
    finally:
        os.close(fd)


class OutcoreFill:
    """An outcore store holding root["A"] of ``n`` float64."""

    def __init__(self, path, n, cache, dirty_bytes):
        self.path, self.n, self.cache, self.dirty_bytes = path, n, cache, dirty_bytes
        self.db = None

    def create(self):
        self.db, self.conn, self.tm = outcore_open(
            self.path, self.cache, dirty_bytes=self.dirty_bytes
        )
        self.conn.root()["A"] = self.A = outcore.BigArray((self.n,), np.float64)

    def fill(self, value):
        """One view over the whole array, every element set to ``value``, one commit."""
        a = self.A[:]
        a[:] = value
        del a
        self.tm.commit()

    def check(self, value):
        """The whole array sums to ``n × value`` (untimed; the sum is exact)."""
        got = float(np.sum(self.A[:]))
        if got != self.n * value:
            raise AssertionError(f"{self.path}: sum {got!r}, expected {self.n * value!r}")

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = self.conn = self.tm = self.A = None
        remove(self.path)


def rounds(cfg, run):
    """``run(k)`` returns the seconds of round ``k``; one untimed round, then ``cfg.rounds``."""
    runs = []
    for k in range(cfg.rounds + 1):
        gc.collect()
        runs.append(run(k))
    return Timing(runs[1:])


def raw_timing(cfg, n, overwrite=False):
    """Raw write + fdatasync of ``n`` float64 (each round a new file, or an overwrite of a file
    written untimed before)."""

    def run(k):
        path = cfg.fresh_path("fill-raw")
        if overwrite:
            raw_fill(path, n, 1.0)
        t0 = time.perf_counter()
        raw_fill(path, n, 2.0 + k, overwrite)
        seconds = time.perf_counter() - t0
        remove(path)
        return seconds

    return rounds(cfg, run)


#: The dirty budget of runs that should not spill (more than any array here).
NO_SPILL = 1 << 50

#: The dirty budget of the spilling rewrite: what a process in a 1 GiB memory cgroup gets.
SPILL_BUDGET = 256 * MiB


def outcore_timing(cfg, n, rewrite, dirty_bytes=NO_SPILL):
    """outcore: new store, array, fill + commit (timed from creating the store); with
    ``rewrite``, the array is filled and committed untimed first and the second fill is
    timed. ``dirty_bytes`` is the dirty budget (below the array's size, blocks spill)."""

    def run(k):
        s = OutcoreFill(cfg.fresh_path("fill-outcore"), n, cfg.cache, dirty_bytes)
        try:
            t0 = time.perf_counter()
            s.create()
            if rewrite:
                s.fill(1.0)
                t0 = time.perf_counter()
            value = 2.0 + k
            s.fill(value)
            seconds = time.perf_counter() - t0
            s.check(value)
            return seconds
        finally:
            s.close()

    return rounds(cfg, run)


def outcore_open_reset():
    """Gives later workloads of this process a budget that does not spill."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        outcore.open(os.path.join(d, "reset"), dirty_bytes=NO_SPILL).close()


def section(cfg, n, rewrite, log):
    """write-new or write-rewrite."""
    nbytes = n * 8
    key = "write-rewrite" if rewrite else "write-new"
    goal = 0.6 if rewrite else 0.8
    size = f"{nbytes / GiB:.3g} GiB"
    title = f"Rewrite all of an existing {size} array" if rewrite else f"Fill a new {size} array"
    sec = Section(key, f"{key}. {title} through one view + durable commit")
    timed_part = (
        "the array was filled and committed untimed before: only the rewrite and its commit"
        if rewrite
        else "from creating the store"
    )
    if rewrite:
        sec.notes.append(
            "The spilling row keeps at most a 256 MiB budget of rewritten blocks in private "
            "memory: the spill thread writes the rest out ahead of the commit (changes larger "
            "than RAM); the plain row has no budget in the way (all changes in RAM)."
        )
    sec.notes.append(
        "`a = A[:]; a[:] = value` then one durable commit, into a fresh embedded store per "
        f"round (timed: {timed_part}). Baseline: `write` of the same bytes (one reused "
        f"{CHUNK >> 20} MiB buffer) to a new file + `fdatasync`. Median of {cfg.rounds} rounds "
        "after an untimed one; every round's array is checked (exact sum) after the commit."
    )
    times = {"raw": raw_timing(cfg, n)}
    labels = {"raw": "raw write + fdatasync, new file (baseline)"}
    if rewrite:
        times["raw-over"] = raw_timing(cfg, n, overwrite=True)
        labels["raw-over"] = "raw write + fdatasync over an existing file"
    times["outcore"] = outcore_timing(cfg, n, rewrite)
    labels["outcore"] = f"outcore: {'rewrite' if rewrite else 'fill'} + commit"
    if rewrite:
        times["outcore-spill"] = outcore_timing(cfg, n, rewrite, SPILL_BUDGET)
        labels["outcore-spill"] = (
            f"outcore: rewrite + commit, spilling above a {SPILL_BUDGET >> 20} MiB dirty budget"
        )
        outcore_open_reset()
    base = times["raw"].median
    rows = []
    for k, t in times.items():
        log(f"  {k}: {gbps(nbytes, t.median):.2f} GB/s")
        rows.append(
            [
                labels[k],
                fmt(t.median),
                fmt(t.best),
                fmt(gbps(nbytes, t.median)),
                fmt(ratio(base, t.median)),
            ]
        )
    sec.tables.append((["system", "median s", "best s", "GB/s", "× raw write + fdatasync"], rows))
    x = ratio(base, times["outcore"].median)
    sec.checks = [
        Check(
            f"{key}: {labels['outcore']} ≥ {goal}× raw write + fdatasync",
            f"{fmt(x)}×",
            f"≥ {goal}×",
            x >= goal,
        )
    ]
    sec.bars = [Bar(labels[k], gbps(nbytes, t.median)) for k, t in times.items()]
    sec.chart_unit = "GB/s written durably"
    return sec


def write_new(cfg, log):
    """Workload write-new."""
    return section(cfg, cfg.n, False, log)


def write_rewrite(cfg, log):
    """Workload write-rewrite."""
    return section(cfg, cfg.n, True, log)
