"""demo-wendelin: outcore's seed demo against the demo it was modelled on, wendelin.core's
``demo_zbigarray.py``, side by side: ``gen`` (and then ``read``) in child processes at the same
worksizes, alternating between the two, a fresh store for each run and the page cache dropped
before each step. Reports the median wall times, the ratio wendelin.core / outcore (above 1:
outcore is faster) and each step's peak resident set.

wendelin.core runs from its own venv, made by ``bench/wendelin-setup.sh`` (Python 3.7 and
wendelin.core 0.13: it does not build on current Pythons); without it the workload is skipped."""

import os
import re
import statistics
import subprocess
import sys

from .common import Bar, Check, MiB, Section, fmt, ratio, remove
from .demo import run_child

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WENDELIN_VENV = os.path.join(HERE, ".venv-wendelin")
WENDELIN_PYTHON = os.path.join(WENDELIN_VENV, "bin", "python")
#: 0.13's demo with Python 2's ``xrange`` replaced (made by wendelin-setup.sh).
WENDELIN_DEMO = os.path.join(WENDELIN_VENV, "demo_zbigarray.py")
#: Issue 16: ``outcore.demo gen`` at 2 GiB at least 3× faster than wendelin.core's.
TARGET_SIZE, TARGET_RATIO = 2048, 3.0
SYSTEMS = ("outcore", "wendelin.core")


def missing():
    """Why wendelin.core cannot run here, or None when it can."""
    if not (os.path.exists(WENDELIN_PYTHON) and os.path.exists(WENDELIN_DEMO)):
        return (
            "bench/.venv-wendelin is missing: run \"bash bench/wendelin-setup.sh\" first "
            "(Python 3.7 with wendelin.core 0.13)"
        )
    return None


def wendelin_versions():
    """``Python x, wendelin.core y, ...`` of the wendelin venv."""
    code = (
        "import sys, pkg_resources as p; print('Python %s, ' % sys.version.split()[0] + ', '.join("
        "'%s %s' % (d, p.get_distribution(d).version) for d in "
        "('wendelin.core', 'numpy', 'ZODB', 'BTrees', 'transaction')))"
    )
    return subprocess.run(
        [WENDELIN_PYTHON, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def drop_page_cache():
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: the previous run's dirty pages reach the
    disk and every run starts from a cold cache. False when not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def commands(system, ws, step, path):
    """The command line of one step: outcore with its default budget (wendelin.core has none,
    it keeps clean pages until /dev/shm is full)."""
    if system == "outcore":
        return [sys.executable, "-m", "outcore.demo", f"--worksize={ws}", step, path]
    return [WENDELIN_PYTHON, WENDELIN_DEMO, f"--worksize={ws}", step, path]


def imports(system):
    """A child that only imports what the demo imports: run once after dropping the page cache,
    it brings the interpreter and libraries back, so that the timed step pays for a cold store,
    not for reading NumPy from disk; timed again, it is the demo's start-up cost."""
    if system == "outcore":
        return [sys.executable, "-c", "import numpy, transaction, outcore, outcore.demo"]
    return [
        WENDELIN_PYTHON,
        "-c",
        "import numpy, psutil, transaction, wendelin.bigarray.array_zodb, wendelin.lib.zodb",
    ]


def child(args):
    """Runs ``args`` (run_child); returns (seconds, VmHWM bytes, stdout), or fails with the end
    of what it printed (run_child does not keep stderr: run the command by hand for that)."""
    code, secs, hwm, _anon, out = run_child(args)
    if code:
        raise RuntimeError(
            f"`{' '.join(args)}` failed with exit code {code} (stderr not kept: run it by hand); "
            "end of its stdout: " + " | ".join(out.strip().splitlines()[-5:])
        )
    return secs, hwm, out


def read_sum(system, out):
    """The sum of the array that ``read`` printed."""
    pattern = r"read: mean \S+\s+sum (\S+)" if system == "outcore" else r"S\(sig\):\s+(\S+)"
    m = re.search(pattern, out)
    return float(m.group(1)) if m else None


def one_round(cfg, system, ws):
    """``gen`` then ``read`` of one system on a fresh store, each after dropping the page cache
    and an untimed import child; yields (step, seconds, VmHWM bytes, stdout) for start-up
    (VmHWM 0), gen and read, and ("not-dropped", None, 0, "") when the cache could not be
    dropped."""
    # outcore creates its store directory; a FileStorage is a file (with .index, .lock and
    # .tmp beside it), kept in a directory of its own.
    store = cfg.fresh_path(f"demo-{system.split('.')[0]}-{ws}")
    path = store
    if system != "outcore":
        os.makedirs(store)
        path = os.path.join(store, "data.fs")
    for step in ("gen", "read"):
        if not drop_page_cache():
            yield "not-dropped", None, 0, ""
        child(imports(system))
        if step == "gen":
            secs, _, _ = child(imports(system))
            yield "start-up", secs, 0, ""
        yield (step, *child(commands(system, ws, step, path)))
    remove(store)


def demo_vs_wendelin(cfg, log):
    """Both demos at each of ``cfg.wendelin_sizes`` (MiB), ``cfg.rounds`` times each."""
    import outcore

    sizes = cfg.wendelin_sizes
    sec = Section(
        "demo-wendelin",
        "demo-wendelin. outcore's demo and wendelin.core's demo_zbigarray.py, side by side",
    )
    sec.notes.append(
        "`python -m outcore.demo --worksize=MB gen|read DIR` (outcore's default budget, "
        f"{outcore.DEFAULT_CACHE_BYTES >> 20} MiB; embedded store) against wendelin.core's "
        "`demo_zbigarray.py --worksize=MB gen|read FILE.fs` (a ZODB FileStorage; local-cache "
        f"mode, no WCFS; {wendelin_versions()}; the copy made by `bench/wendelin-setup.sh`, "
        "with Python 2's `xrange` replaced by `range`). Both generate S(t) = 15·sin(0.2·t) in "
        "32 MiB chunks with NumPy `out=` ufuncs and commit after each chunk (both commits "
        "fsync), then `read` maps the whole array and prints its mean and sum. They differ in "
        "the ufuncs: wendelin.core's chunk takes six passes (`=1`, cumsum, `+=`, `*=`, sin, "
        "`*=`), outcore's four (arange, multiply, sin, multiply). Each step is a child "
        "process; wall time includes interpreter start-up (Python 3.7 vs "
        f"{sys.version.split()[0]})."
    )
    sec.notes.append(
        f"Each size: {cfg.rounds} round(s), alternating outcore and wendelin.core (the order "
        "flips every round), a fresh store each round, `sync; echo 3 > "
        "/proc/sys/vm/drop_caches` before every step, then an untimed child that only imports "
        "the demo's modules (so a step pays for a cold store, not for reading NumPy from "
        "disk); medians of the rounds. The start-up row times that import child again (warm): "
        "the part of every step's wall time that is interpreter and imports. "
        "Ratio = wendelin.core / outcore (above 1: outcore is faster). Peak RSS is VmHWM "
        "(includes mapped page-cache pages). The two `read` sums must agree."
    )
    times = {}  # (system, size, step) -> [seconds]
    peaks = {}  # (system, size, step) -> [bytes]
    sums = {}  # (system, size) -> the sum the last read printed
    dropped = True
    for ws in sizes:
        for r in range(cfg.rounds):
            for system in SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]:
                for step, secs, hwm, out in one_round(cfg, system, ws):
                    if step == "not-dropped":
                        dropped = False
                        continue
                    if step != "start-up":
                        log(f"  {system} {ws} MiB {step}: {secs:.2f} s, VmHWM {hwm >> 20} MiB")
                    times.setdefault((system, ws, step), []).append(secs)
                    peaks.setdefault((system, ws, step), []).append(hwm)
                    if step == "read":
                        sums[(system, ws)] = read_sum(system, out)
    if not dropped:
        sec.notes.append(
            "**The page cache could not be dropped (not root): runs started with a warm cache.**"
        )
    header = [
        "worksize MiB",
        "step",
        "outcore s",
        "wendelin.core s",
        "ratio wendelin.core / outcore",
        "outcore peak RSS MiB",
        "wendelin.core peak RSS MiB",
        "runs (outcore; wendelin.core)",
    ]
    rows = []
    for ws in sizes:
        a, b = sums[("outcore", ws)], sums[("wendelin.core", ws)]
        # Both sum 15·sin(0.2·t) over the same t; NumPy versions may differ in the last bits
        # of sin and outcore prints 7 digits. Garbage or zeros would be far off.
        # (The sum stays below 150 in magnitude whatever the size: the tolerance must too.)
        if a is None or b is None or abs(a - b) > 1e-4 * abs(b) + 1e-12 * (ws * MiB // 8):
            raise AssertionError(f"demo read at {ws} MiB: sums differ: outcore {a}, wendelin {b}")
        sec.notes.append(f"Sums read at {ws} MiB: outcore {a!r}, wendelin.core {b!r}.")
        for step in ("start-up", "gen", "read"):
            med = {s: statistics.median(times[(s, ws, step)]) for s in SYSTEMS}
            peak = {s: statistics.median(peaks[(s, ws, step)]) for s in SYSTEMS}
            q = ratio(med["wendelin.core"], med["outcore"])
            runs = "; ".join(
                ", ".join(f"{t:.2f}" for t in times[(s, ws, step)]) for s in SYSTEMS
            )
            rows.append(
                [
                    str(ws),
                    step,
                    fmt(med["outcore"]),
                    fmt(med["wendelin.core"]),
                    f"{q:.2f}×",
                    str(int(peak["outcore"]) >> 20) if peak["outcore"] else "–",
                    str(int(peak["wendelin.core"]) >> 20) if peak["wendelin.core"] else "–",
                    runs,
                ]
            )
            if step != "start-up":
                sec.bars += [
                    Bar(f"{s} {step} {ws} MiB", med[s], ours=s == "outcore") for s in SYSTEMS
                ]
            if step == "gen" and ws == TARGET_SIZE:
                sec.checks.append(
                    Check(
                        f"demo gen at {ws} MiB: wendelin.core / outcore (issue 16)",
                        f"{q:.2f}×",
                        f"≥ {TARGET_RATIO:g}×",
                        q >= TARGET_RATIO,
                    )
                )
    sec.tables.append((header, rows))
    sec.chart_unit = "seconds (median)"
    sec.chart_higher_is_better = False
    return sec
