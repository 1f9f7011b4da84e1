"""Workload 5: the seed demo (``python -m outcore.demo gen`` then ``read``) in child processes,
with their wall time and peak memory: the peak resident set (VmHWM, which counts the
page-cache pages a process maps), as the demo prints it when it ends, and the peak anonymous
RSS (the memory the process itself holds), sampled from ``/proc/<pid>/status`` every 5 ms.

(``wait4``'s ru_maxrss is no use here: Linux carries the parent's high-water mark over a
vfork + exec, so every child would report the benchmark process's own peak.)"""

import re
import subprocess
import sys
import threading
import time

import outcore

from .common import MiB, Bar, Check, Section, fmt, remove

SLACK = 150 * MiB


def status_sampler(pid, peak):
    """Samples VmHWM and RssAnon of ``pid`` into ``peak`` (bytes) until the process is gone."""
    path = f"/proc/{pid}/status"
    while True:
        try:
            with open(path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            return
        if "RssAnon" not in fields:
            return  # a zombie
        for key in ("VmHWM", "RssAnon"):
            peak[key] = max(peak.get(key, 0), int(fields[key].split()[0]) * 1024)
        time.sleep(0.005)


def run_child(args):
    """Runs ``args``; returns (seconds, peak VmHWM bytes, peak RssAnon bytes, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {}
    sampler = threading.Thread(target=status_sampler, args=(p.pid, peak), daemon=True)
    sampler.start()
    out = p.stdout.read()
    p.wait()
    seconds = time.perf_counter() - t0
    sampler.join()
    if p.returncode:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {p.returncode}")
    # The demo prints its own VmHWM last ("peak N kB"), which no sample can miss.
    printed = [int(kb) * 1024 for kb in re.findall(r"peak (\d+) kB", out)]
    hwm = max(printed + [peak.get("VmHWM", 0)])
    return seconds, hwm, peak.get("RssAnon", 0), out


def demo(cfg, log):
    """Workload 5, on the embedded store and on an lz4 store (created first, so the demo's
    blocks go through the fault-filled path and the budget)."""
    ws, cache = cfg.demo_worksize >> 20, cfg.demo_cache >> 20
    sec = Section("demo", f"5. The seed demo at worksize {ws} MiB with a {cache} MiB budget")
    sec.notes.append(
        f"`python -m outcore.demo --worksize={ws} --cache={cache} gen|read DIR`, each step a child "
        "process (wall time includes Python start-up). Peak RSS (VmHWM) counts the "
        "page-cache pages the process maps: the embedded store maps its files, so reading "
        f"{ws} MiB shows up to {ws} MiB there although that memory is the kernel's reclaimable "
        "cache (bench/demo/run-in-cgroup.sh shows it fits a memory cgroup). Peak anonymous RSS "
        "is the memory the process itself holds. Target: peak ≤ budget + 150 MB."
    )
    header = ["store", "step", "wall s", "peak RSS (VmHWM) MiB", "peak anonymous RSS MiB"]
    rows = []
    for key, label, compression in (("embedded", "embedded (mapped)", None), ("lz4", "lz4 (fault-filled)", "lz4")):
        path = cfg.path(f"demo-{key}")
        remove(path)
        if compression:
            outcore.open(path, compression=compression).close()
        for step in ("gen", "read"):
            args = [sys.executable, "-m", "outcore.demo", f"--worksize={ws}", f"--cache={cache}", step, path]
            secs, hwm, anon, _ = run_child(args)
            log(f"  {key} {step}: {secs:.2f} s, VmHWM {hwm >> 20} MiB, anon {anon >> 20} MiB")
            rows.append([label, step, fmt(secs), str(hwm >> 20), str(anon >> 20)])
            sec.bars.append(Bar(f"{key} {step}", hwm / MiB))
            limit = cfg.demo_cache + SLACK
            sec.checks.append(Check(f"demo {step}, {label} store: peak RSS (VmHWM)", f"{hwm >> 20} MiB",
                                    f"≤ {limit >> 20} MiB", hwm <= limit))
            sec.checks.append(Check(f"demo {step}, {label} store: peak anonymous RSS", f"{anon >> 20} MiB",
                                    f"≤ {limit >> 20} MiB", anon <= limit))
        remove(path)
    sec.tables.append((header, rows))
    sec.chart_unit = "peak RSS MiB (VmHWM; lower is better)"
    sec.chart_higher_is_better = False
    return sec

