"""Shared pieces of the side-by-side benchmark: configuration, the data, timing, the page
cache, the machine description and the result types the report is made of."""

import dataclasses
import gc
import importlib.metadata
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable

import numpy as np

MiB = 1 << 20
GiB = 1 << 30
#: Elements per 2 MiB block of float64 (outcore's default block, zarr's and h5py's chunk).
BLOCK_ELEMS = (2 * MiB) // 8


@dataclasses.dataclass
class Config:
    """Sizes and options of one run. ``quick()`` and ``full()`` are the two presets; the
    command line can override each field."""

    mode: str
    size: int  # bytes of the float64 array of workloads 1, 2, 3
    cache: int  # outcore's RAM budget (cache_bytes) for fault-filled stores
    slab: int  # bytes read per call by chunked readers (h5py, zarr, TensorStore)
    rounds: int  # timed repetitions; medians are reported
    fault_blocks: int  # cold 2 MiB blocks read per system (workload 2)
    points: int  # random point reads per system (workload 2; a tenth for slow readers)
    append_small: int  # bytes of the small array of workload 4
    append_large: int  # bytes of the large array of workload 4
    appends: int  # single-row appends timed per array (workload 4)
    row_width: int  # float64 per appended row
    demo_worksize: int  # bytes (workload 5)
    demo_cache: int  # bytes (workload 5)
    pg_size: int  # bytes (workload 6)
    commits: int  # one-row appends, each durably committed (small-commits)
    small_arrays: int  # 8 KB arrays (many-small)
    deltas_size: int  # bytes of the array of deltas-scan
    deltas_commits: int  # one-element commits of deltas-scan
    map_size: int  # bytes of the array of mapping-budget
    map_commits: int  # commits of mapping-budget ...
    map_pages: int  # ... each rewriting this many random 4 KiB pages
    wendelin_sizes: tuple  # worksizes in MiB of demo-wendelin
    rows_size: int  # bytes of the 2-D float32 array of random-rows ...
    rows_limit: int  # ... read inside a memory cgroup of this many bytes
    dask_size: int  # bytes of the array reduced by workload dask (half as many are written)
    dir: str = "/var/tmp/outcore-bench"  # run.py makes a fresh one per run
    pg_url: str | None = None
    seed: int = 7

    @classmethod
    def quick(cls):
        return cls(
            mode="quick",
            size=128 * MiB,
            cache=32 * MiB,
            slab=8 * MiB,
            rounds=3,
            fault_blocks=16,
            points=2000,
            append_small=1 * MiB,
            append_large=32 * MiB,
            appends=50,
            row_width=16,
            demo_worksize=256 * MiB,
            demo_cache=32 * MiB,
            pg_size=64 * MiB,
            commits=500,
            small_arrays=100,
            deltas_size=256 * MiB,
            deltas_commits=100,
            map_size=32 * MiB,
            map_commits=10,
            map_pages=200,
            wendelin_sizes=(32, 64),
            rows_size=512 * MiB,
            rows_limit=160 * MiB,
            dask_size=256 * MiB,
        )

    @classmethod
    def full(cls):
        return cls(
            mode="full",
            size=4 * GiB,
            cache=1 * GiB,
            slab=64 * MiB,
            rounds=5,
            fault_blocks=64,
            points=20000,
            append_small=1 * MiB,
            append_large=1 * GiB,
            appends=200,
            row_width=16,
            demo_worksize=4 * GiB,
            demo_cache=512 * MiB,
            pg_size=4 * GiB,
            commits=10_000,
            small_arrays=1000,
            deltas_size=4 * GiB,
            deltas_commits=1000,
            map_size=512 * MiB,
            map_commits=50,
            map_pages=2000,
            wendelin_sizes=(512, 2048),
            rows_size=2 * GiB,
            rows_limit=512 * MiB,
            dask_size=8 * GiB,
        )

    @property
    def n(self):
        """Elements of the main array (a whole number of 2 MiB blocks)."""
        return max(1, self.size // (2 * MiB)) * BLOCK_ELEMS

    def path(self, name):
        return os.path.join(self.dir, name)

    def fresh_path(self, name):
        """A path never used before in this run. (outcore keeps a store open in-process while
        any array object of it lives, even after ``db.close()``; re-creating a deleted store at
        the same path would then fail with "creating lease ...: No such file or directory".)"""
        self._serial = getattr(self, "_serial", 0) + 1
        return os.path.join(self.dir, f"{name}-{self._serial}")


# ---------------------------------------------------------------------------------- data


def pattern(lo, hi):
    """Elements ``lo..hi`` of the benchmark data: pseudo-random integers 0..1023 (a
    multiplicative hash of the index) as float64, so every sum is exact and can be checked.
    The bytes compress like low-entropy measurements (lz4: to about half), not to nothing."""
    x = np.arange(lo, hi, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    return (x >> np.uint64(54)).astype(np.float64)


def make_data(n, chunk=8 * MiB):
    """The whole array in RAM (the source of every store and the in-RAM baseline) and its
    exact sum."""
    out = np.empty(n, dtype=np.float64)
    step = chunk // 8
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        out[lo:hi] = pattern(lo, hi)
    return out, float(out.sum())


def check_sum(got, expected, what):
    """Fails loudly when a pass read wrong data: a benchmark of garbage is worthless."""
    if got != expected:
        raise AssertionError(f"{what}: sum {got!r}, expected {expected!r}")


# ---------------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Seconds of the timed repetitions of one variant."""

    runs: list

    @property
    def median(self):
        return statistics.median(self.runs)

    @property
    def best(self):
        return min(self.runs)


def timed(fn: Callable, rounds: int, setup: Callable | None = None, warmup: int = 1) -> Timing:
    """Runs ``fn`` ``warmup`` times untimed, then ``rounds`` times timed (``setup`` before each
    timed run, untimed)."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    runs = []
    for _ in range(rounds):
        if setup:
            setup()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(runs)


# ---------------------------------------------------------------------------------- files


def files_under(path):
    """Every regular file at or under ``path``."""
    if os.path.isfile(path):
        return [path]
    found = []
    for d, _, names in os.walk(path):
        found.extend(os.path.join(d, n) for n in names)
    return found


def drop_cache(paths):
    """Drops the page cache of the files at or under ``paths`` (fdatasync, then
    ``posix_fadvise(DONTNEED)``): a cold read afterwards comes from the disk. Pages still
    mapped by this process are not dropped, so close readers first."""
    for path in paths:
        for f in files_under(path):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def fsync_tree(path):
    """fsyncs every file under ``path`` and every directory (what a durable commit of a
    directory store such as zarr's needs)."""
    for d, _, names in os.walk(path):
        for n in names:
            fd = os.open(os.path.join(d, n), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- machine


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def filesystem_of(path):
    """``type on device`` of the mount holding ``path``."""
    path = os.path.realpath(path)
    best = (0, "unknown")
    for line in _read("/proc/self/mounts").splitlines():
        f = line.split()
        inside = len(f) >= 3 and (path == f[1] or path.startswith(f[1].rstrip("/") + "/"))
        if inside and len(f[1]) >= best[0]:
            best = (len(f[1]), f"{f[2]} on {f[0]}")
    return best[1]


def machine(cfg):
    """Lines describing the machine and the software versions."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled").strip() or "unknown"
    return [
        f"cpu: {cpu}",
        f"cores (nproc): {os.cpu_count()}",
        f"memory: {mem_kb / (1 << 20):.1f} GiB",
        f"kernel: {platform.release()}",
        f"transparent hugepages: {thp}",
        f"data directory: {cfg.dir} ({filesystem_of(cfg.dir)})",
        f"python: {platform.python_version()}; " + ", ".join(versions()),
    ]


def versions():
    """Versions of the installed peers."""
    out = []
    for dist in (
        "outcore", "numpy", "zarr", "h5py", "tensorstore", "dask", "distributed", "psycopg",
        "matplotlib",
    ):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} not installed")
    return out


# ---------------------------------------------------------------------------------- results


@dataclasses.dataclass
class Check:
    """One target of the issue: ``passed`` is None when it could not be measured."""

    what: str
    measured: str
    target: str
    passed: bool | None


@dataclasses.dataclass
class Bar:
    """One bar of the chart."""

    label: str
    value: float
    ours: bool | None = None  # outcore's bar (None: when the label says "outcore")

    @property
    def is_outcore(self):
        return "outcore" in self.label if self.ours is None else self.ours


@dataclasses.dataclass
class Section:
    """The result of one workload: text, tables (header + rows), checks, and chart bars."""

    key: str
    title: str
    notes: list = dataclasses.field(default_factory=list)
    tables: list = dataclasses.field(default_factory=list)  # (header, rows)
    checks: list = dataclasses.field(default_factory=list)
    chart_unit: str = ""
    chart_higher_is_better: bool = True
    chart_target: tuple | None = None  # (value, label) drawn as a dashed line
    bars: list = dataclasses.field(default_factory=list)


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9


def fmt(x, digits=3):
    """A number with ``digits`` significant digits (plain notation)."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def ratio(a, b):
    return a / b if b else float("nan")


def verdict(ok):
    return {True: "PASS", False: "MISS", None: "n/a"}[ok]
