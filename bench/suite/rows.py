"""Workload random-rows (issue 17): 10,000 random rows of a 2-D float32 array larger than the
memory left to it, read one at a time, as a training loop samples examples or a service looks
records up by index. Each system reads in a child process inside a cgroup-v1 memory cgroup
whose limit (page cache included) is a fraction of the array, after the files' page cache was
dropped; rows/s per system, the systems interleaved, every round of every system in the same
run. The child checks the sum of what it read against the data's formula.

Run the child alone: ``python -m suite.rows SYSTEM PATH ROWS COLS COUNT SEED``."""

import json
import os
import subprocess
import sys
import time

import numpy as np

from .common import Bar, Check, MiB, Section, drop_cache, fmt, remove
from .demo import MemoryCgroup

COLS = 1024  # float32 per row: 4 KiB rows
COUNT = 10_000  # rows read per run
ZARR_ROWS = 64  # rows per zarr chunk (256 KiB, uncompressed)
SYSTEMS = {
    "outcore": "outcore, embedded store: `A[i]`",
    "outcore-view": "outcore, one whole view `a = A[:]`, then `a[i]`",
    "h5py": "h5py contiguous: `ds[i]`",
    "zarr": f"zarr v3, chunks of {ZARR_ROWS} rows, uncompressed: `z[i]`",
    "memmap": "numpy.memmap: `m[i]`",
}
PEERS = ("h5py", "zarr", "memmap")


def rows_of(lo, hi, cols=COLS):
    """Rows ``lo..hi`` of the data: row i holds (i mod 1021) + column / cols (exact in
    float32), so any row read from the wrong place changes the checked sum."""
    i = np.arange(lo, hi, dtype=np.float64)[:, None] % 1021
    return (i + np.arange(cols, dtype=np.float64)[None, :] / cols).astype(np.float32)


def expected_sum(idx, cols=COLS):
    return float(sum(rows_of(int(i), int(i) + 1, cols).sum(dtype=np.float64) for i in idx))


def build(system, path, nrows, log):
    """Writes the ``nrows`` × COLS array for ``system`` at ``path`` (untimed)."""
    step = max(1, (64 * MiB) // (COLS * 4))
    if system == "outcore":
        import outcore
        import transaction

        remove(path)
        db = outcore.open(path)
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        conn.root()["A"] = A = outcore.BigArray((nrows, COLS), np.float32)
        tm.commit()
        for lo in range(0, nrows, step):
            A[lo : min(lo + step, nrows)] = rows_of(lo, min(lo + step, nrows))
            tm.commit()
        db.close()
    elif system == "h5py":
        import h5py

        with h5py.File(path, "w") as f:
            ds = f.create_dataset("A", shape=(nrows, COLS), dtype=np.float32)
            for lo in range(0, nrows, step):
                ds[lo : min(lo + step, nrows)] = rows_of(lo, min(lo + step, nrows))
    elif system == "zarr":
        import zarr

        remove(path)
        z = zarr.create_array(
            path, shape=(nrows, COLS), chunks=(ZARR_ROWS, COLS), dtype="float32", compressors=None
        )
        for lo in range(0, nrows, step):
            z[lo : min(lo + step, nrows)] = rows_of(lo, min(lo + step, nrows))
    elif system == "memmap":
        with open(path, "wb") as f:
            for lo in range(0, nrows, step):
                f.write(rows_of(lo, min(lo + step, nrows)).tobytes())
    log(f"  built {system}")


def child(system, path, nrows, cols, count, seed):
    """Reads ``count`` random rows one at a time; prints rows/s and whether the sum matched."""
    idx = np.random.default_rng(seed).integers(0, nrows, size=count)
    if system in ("outcore", "outcore-view"):
        import outcore

        db = outcore.open(path, readonly=True)
        A = db.open().root()["A"]
        get = A.__getitem__
        if system == "outcore-view":
            get = A[:].__getitem__
    elif system == "h5py":
        import h5py

        get = h5py.File(path, "r")["A"].__getitem__
    elif system == "zarr":
        import zarr

        get = zarr.open_array(path, mode="r").__getitem__
    elif system == "memmap":
        get = np.memmap(path, dtype=np.float32, mode="r", shape=(nrows, cols)).__getitem__
    total = 0.0
    t0 = time.perf_counter()
    for i in idx:
        total += float(get(int(i)).sum(dtype=np.float64))
    seconds = time.perf_counter() - t0
    ok = total == expected_sum(idx, cols)
    print(json.dumps({"rows_per_s": count / seconds, "ok": ok}))


def random_rows(cfg, log):
    """The workload: build each store, then per round and system a cold read in the cgroup."""
    nrows = cfg.rows_size // (COLS * 4)
    limit = cfg.rows_limit
    sec = Section("random-rows", "Random rows: 10,000 random rows of a 2-D float32 array")
    sec.notes.append(
        f"A ({nrows:,}, {COLS}) float32 array ({cfg.rows_size >> 20} MiB, 4 KiB rows); "
        f"{COUNT:,} random rows (the same for every system) read one at a time and summed, in "
        f"a child process inside a cgroup-v1 memory cgroup limited to {limit >> 20} MiB (page "
        "cache included), after dropping the files' page cache. outcore reads through its "
        "embedded store, read-only. The systems alternate, "
        f"{cfg.rounds} rounds each; the median rows/s is reported. Target: outcore ≥ 1.0× the "
        "best peer."
    )
    cgroup = MemoryCgroup.make(limit)
    if cgroup is None:
        raise RuntimeError("random-rows needs root and a cgroup-v1 memory controller")
    paths = {s: cfg.path(f"rows-{s}") for s in ("outcore", "h5py", "zarr", "memmap")}
    try:
        for system, path in paths.items():
            build(system, path, nrows, log)
        rates = {s: [] for s in SYSTEMS}
        for r in range(cfg.rounds):
            for system in SYSTEMS:
                path = paths["outcore" if system.startswith("outcore") else system]
                drop_cache([path])
                args = [sys.executable, "-m", "suite.rows", system, path, str(nrows), str(COLS)]
                args += [str(COUNT), str(cfg.seed + r)]
                out = subprocess.run(
                    cgroup.wrap(args),
                    capture_output=True,
                    text=True,
                    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                )
                if out.returncode:
                    raise RuntimeError(f"{system}: exit {out.returncode}: {out.stderr[-2000:]}")
                got = json.loads(out.stdout.strip().splitlines()[-1])
                if not got["ok"]:
                    raise AssertionError(f"{system}: the rows read do not sum as written")
                rates[system].append(got["rows_per_s"])
                log(f"  round {r + 1} {system}: {got['rows_per_s']:.0f} rows/s")
    finally:
        cgroup.remove()
        for path in paths.values():
            remove(path)
    med = {s: float(np.median(v)) for s, v in rates.items()}
    best = max(PEERS, key=lambda s: med[s])
    header = ["system", "rows/s (median)", "rounds", "× best peer"]
    rows = [
        [SYSTEMS[s], fmt(med[s]), ", ".join(fmt(x) for x in rates[s]), fmt(med[s] / med[best])]
        for s in SYSTEMS
    ]
    sec.tables.append((header, rows))
    sec.chart_unit = "rows/s"
    sec.chart_higher_is_better = True
    sec.bars = [Bar(s, med[s], ours=s.startswith("outcore")) for s in SYSTEMS]
    x = med["outcore"] / med[best]
    sec.checks.append(
        Check(
            f"random rows: outcore `A[i]` vs the best peer ({best})",
            f"{fmt(x)}× ({fmt(med['outcore'])} vs {fmt(med[best])} rows/s)",
            "≥ 1.0×",
            x >= 1.0,
        )
    )
    return sec


if __name__ == "__main__":
    system, path, nrows, cols, count, seed = sys.argv[1:7]
    child(system, path, int(nrows), int(cols), int(count), int(seed))
