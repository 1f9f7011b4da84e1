"""Workload 5: the seed demo (``python -m outcore.demo gen`` then ``read``) in child processes,
with their wall time and peak memory: the peak resident set (VmHWM, which counts the
page-cache pages a process maps), as the demo prints it when it ends, and the peak anonymous
RSS (the memory the process itself holds), sampled from ``/proc/<pid>/status`` every 5 ms.

(``wait4``'s ru_maxrss is no use here: Linux carries the parent's high-water mark over a
vfork + exec, so every child would report the benchmark process's own peak.)"""

import os
import re
import subprocess
import sys
import threading
import time

from .common import Bar, Check, MiB, Section, fmt, remove

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
    """Runs ``args``; returns (exit code, seconds, peak VmHWM bytes, peak RssAnon bytes,
    stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {}
    sampler = threading.Thread(target=status_sampler, args=(p.pid, peak), daemon=True)
    sampler.start()
    out = p.stdout.read()
    p.wait()
    seconds = time.perf_counter() - t0
    sampler.join()
    # The demo prints its own VmHWM last ("peak N kB"), which no sample can miss.
    printed = [int(kb) * 1024 for kb in re.findall(r"peak (\d+) kB", out)]
    hwm = max(printed + [peak.get("VmHWM", 0)])
    return p.returncode, seconds, hwm, peak.get("RssAnon", 0), out


class MemoryCgroup:
    """A cgroup-v1 memory cgroup below this process's own, limited to ``limit`` bytes (needs
    root); ``None`` from :meth:`make` when the machine has none we can use."""

    def __init__(self, path):
        self.path = path

    @classmethod
    def make(cls, limit):
        with open("/proc/self/cgroup") as f:
            rel = next(
                (ln.split(":", 2)[2].strip() for ln in f if ln.split(":")[1] == "memory"), None
            )
        base = "/sys/fs/cgroup/memory" + (rel or "").rstrip("/")
        if rel is None or not os.access(base, os.W_OK):
            return None
        path = os.path.join(base, f"outcore-bench-{os.getpid()}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        return cls(path)

    def wrap(self, args):
        """``args`` run inside the cgroup (the shell puts itself in, then execs them)."""
        self.reset()
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *args]

    def reset(self):
        with open(os.path.join(self.path, "memory.max_usage_in_bytes"), "w") as f:
            f.write("0")

    def peak(self):
        with open(os.path.join(self.path, "memory.max_usage_in_bytes")) as f:
            return int(f.read())

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def demo(cfg, log):
    """Workload 5: the demo's two steps, first unconstrained, then each step in a memory
    cgroup limited to budget + 150 MB (when the machine has cgroup v1 and we are root)."""
    ws, cache = cfg.demo_worksize >> 20, cfg.demo_cache >> 20
    limit = cfg.demo_cache + SLACK
    sec = Section("demo", f"5. The seed demo at worksize {ws} MiB with a {cache} MiB budget")
    sec.notes.append(
        f"`python -m outcore.demo --worksize={ws} --cache={cache} gen|read DIR` on the embedded "
        "store, each step a child process (wall time includes Python start-up). Peak RSS (VmHWM) "
        "counts the page-cache pages a process maps: the embedded store maps its files, so "
        f"reading {ws} MiB can show up to {ws} MiB there although that memory is the kernel's "
        "reclaimable page cache. Peak anonymous RSS is the memory the process itself holds. So "
        f"the steps run again inside a memory cgroup limited to {limit >> 20} MiB (budget + 150 "
        "MB; page cache included), where they must complete (an overrun is an OOM kill). (The "
        "demo's sine data do not compress, so an lz4 store would store them raw and map them "
        "the same way.) Target: peak ≤ budget + 150 MB."
    )
    header = [
        "run",
        "step",
        "wall s",
        "peak RSS (VmHWM) MiB",
        "peak anonymous RSS MiB",
        "cgroup peak MiB",
    ]
    rows = []
    cgroup = MemoryCgroup.make(limit)
    if cgroup is None:
        sec.notes.append(
            "No writable cgroup-v1 memory controller here: the cgroup runs were skipped."
        )
    runs = [("free", "unconstrained", None)] + (
        [("cgroup", f"cgroup limit {limit >> 20} MiB", cgroup)] if cgroup else []
    )
    try:
        for key, label, cg in runs:
            path = cfg.fresh_path(f"demo-{key}")
            for step in ("gen", "read"):
                args = [
                    sys.executable,
                    "-m",
                    "outcore.demo",
                    f"--worksize={ws}",
                    f"--cache={cache}",
                    step,
                    path,
                ]
                code, secs, hwm, anon, _out = run_child(cg.wrap(args) if cg else args)
                cg_peak = cg.peak() if cg else None
                if code and not cg:
                    raise RuntimeError(f"{' '.join(args)} failed with exit code {code}")
                log(
                    f"  {key} {step}: {secs:.2f} s, VmHWM {hwm >> 20} MiB, anon {anon >> 20} MiB"
                    + (f", cgroup peak {cg_peak >> 20} MiB" if cg else "")
                )
                rows.append(
                    [
                        label,
                        step,
                        fmt(secs),
                        str(hwm >> 20),
                        str(anon >> 20),
                        str(cg_peak >> 20) if cg else "–",
                    ]
                )
                if cg:
                    sec.bars.append(Bar(f"{step} in cgroup: cgroup peak", cg_peak / MiB, ours=True))
                else:
                    sec.bars.append(Bar(f"{step}: VmHWM", hwm / MiB, ours=True))
                    sec.bars.append(Bar(f"{step}: anonymous", anon / MiB, ours=True))
                if cg:
                    # VmHWM is no measure here: it also counts mapped pages (shared libraries)
                    # charged to other cgroups. The cgroup's own peak is capped by the limit.
                    done = "completed" if code == 0 else f"failed (exit code {code}: OOM kill?)"
                    sec.checks.append(
                        Check(f"demo {step} inside a {label}", done, "completes", code == 0)
                    )
                else:
                    sec.checks.append(
                        Check(
                            f"demo {step}, {label}: peak RSS (VmHWM)",
                            f"{hwm >> 20} MiB",
                            f"≤ {limit >> 20} MiB",
                            hwm <= limit,
                        )
                    )
                    sec.checks.append(
                        Check(
                            f"demo {step}, {label}: peak anonymous RSS",
                            f"{anon >> 20} MiB",
                            f"≤ {limit >> 20} MiB",
                            anon <= limit,
                        )
                    )
            remove(path)
    finally:
        if cgroup:
            cgroup.remove()
    sec.tables.append((header, rows))
    sec.chart_unit = "peak memory MiB"
    sec.chart_higher_is_better = False
    sec.chart_target = (limit / MiB, "budget + 150 MB")
    return sec
