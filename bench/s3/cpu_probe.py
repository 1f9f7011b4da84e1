#!/usr/bin/env python3
"""Where a cold or warm S3 scan's time and CPU go (issue 18), outcore against the same server
used raw, the systems interleaved round by round so that a loaded machine hurts all alike.

Rounds of outcore with a cold disk cache (emptied first) and raw parallel GETs of the very
objects (obstore, 16 in flight, each summed), then rounds of outcore with a warm cache (mapped)
and numpy.memmap of the same bytes. Printed per system: median wall time, the ratios, and per pass the client's
CPU time by thread name (the fault workers ``outcore-fetch``, the object-store runtime
``outcore-s3``, Python) and the server's CPU time (the SeaweedFS process). Threads that end
during a pass (the disk cache's writer ends with the store) count only in the client total.

    eval "$(scripts/s3-test-server.sh start)"        # or AWS_* and OUTCORE_TEST_S3_URL
    N_MIB=1024 ROUNDS=3 bench/.venv/bin/python bench/s3/cpu_probe.py
    WHAT=warm,mm bench/.venv/bin/python bench/s3/cpu_probe.py   # a subset

Data and the disk cache go to ``$PROBE_DIR`` (default /var/tmp/outcore-s3-probe); the array is
built once per size and reused. The server's CPU time needs its pid: ``OUTCORE_TEST_S3_DIR``/pid
(scripts/s3-test-server.sh writes it) or ``SERVER_PID``; without either it is not reported.
"""

import asyncio
import os
import shutil
import statistics
import time
import uuid

import numpy as np
import obstore
import outcore
import transaction
from obstore.store import S3Store

MiB = 1 << 20
N_MIB = int(os.environ.get("N_MIB", "1024"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WHAT = os.environ.get("WHAT", "cold,raw,warm,mm").split(",")
BLOCK = 2 * MiB // 8
WORK = os.environ.get("PROBE_DIR", "/var/tmp/outcore-s3-probe")
INDEX = f"{WORK}/index-{N_MIB}"
CACHE = f"{WORK}/cache"
TICK = os.sysconf("SC_CLK_TCK")


def server_pid():
    if os.environ.get("SERVER_PID"):
        return int(os.environ["SERVER_PID"])
    pid_file = os.path.join(os.environ.get("OUTCORE_TEST_S3_DIR", "/nonexistent"), "pid")
    return int(open(pid_file).read()) if os.path.exists(pid_file) else None


def cpu_of(pid):
    """User + system seconds of process ``pid``."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads():
    """User and system seconds of this process's live threads, summed by name (digits cut)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            raw = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")].rstrip("0123456789-")
        fields = raw.rsplit(")", 1)[1].split()
        acc = out.setdefault(name, [0.0, 0.0])
        acc[0] += int(fields[11]) / TICK
        acc[1] += int(fields[12]) / TICK
    return out


def main():
    os.makedirs(WORK, exist_ok=True)
    n = N_MIB * MiB // 8
    data = np.random.default_rng(1).random(n)
    total = float(data.sum())
    url_file = f"{INDEX}.url"
    if not os.path.exists(url_file):
        url = f"{os.environ['OUTCORE_TEST_S3_URL'].rstrip('/')}/probe-{uuid.uuid4().hex[:8]}"
        shutil.rmtree(INDEX, ignore_errors=True)
        db = outcore.open(INDEX, blobs=url, cache_disk_bytes=0)
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        conn.root()["A"] = A = outcore.BigArray((n,), np.float64)
        tm.commit()
        for lo in range(0, n, 128 * BLOCK):
            A[lo : lo + 128 * BLOCK] = data[lo : lo + 128 * BLOCK]
            tm.commit()
        del A
        db.close()
        open(url_file, "w").write(url)
    url = open(url_file).read()
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    store = S3Store(bucket, client_options={"allow_http": True} if http else None)
    objects = [m["path"] for batch in obstore.list(store, prefix=prefix) for m in batch]
    mm_path = f"{WORK}/memmap-{N_MIB}.bin"
    if not os.path.exists(mm_path):
        data.tofile(mm_path)

    def check(s):
        assert abs(s - total) <= 1e-6 * abs(total), (s, total)

    def scan():
        db = outcore.open(INDEX, cache_dir=CACHE, cache_disk_bytes=4 * n * 8)
        try:
            conn = db.open(transaction_manager=transaction.TransactionManager())
            check(float(np.sum(conn.root()["A"][:])))
        finally:
            db.close()

    async def raw_gets():
        sem = asyncio.Semaphore(16)

        async def one(path):
            async with sem:
                got = await obstore.get_async(store, path)
                return float(np.frombuffer(await got.bytes_async(), dtype=np.float64).sum())

        return sum(await asyncio.gather(*(one(p) for p in objects)))

    systems = {
        "cold": (scan, lambda: shutil.rmtree(CACHE, ignore_errors=True)),
        "raw": (lambda: check(asyncio.run(raw_gets())), None),
        "warm": (scan, None),
        "mm": (lambda: check(float(np.sum(np.memmap(mm_path, dtype=np.float64)))), None),
    }
    server = server_pid()
    wall, cpu, per_thread = {}, {}, {}

    def rounds(group):
        for _ in range(ROUNDS):
            for w in group:
                fn, setup = systems[w]
                if setup:
                    setup()
                c0, t0 = os.times(), threads()
                s0 = cpu_of(server) if server else 0.0
                start = time.perf_counter()
                fn()
                wall.setdefault(w, []).append(time.perf_counter() - start)
                c1, t1 = os.times(), threads()
                s1 = cpu_of(server) if server else 0.0
                cpu.setdefault(w, []).append((c1.user - c0.user, c1.system - c0.system, s1 - s0))
                for name, (u, s) in t1.items():
                    u0, s0_ = t0.get(name, (0.0, 0.0))
                    per_thread.setdefault(w, {}).setdefault(name, []).append((u - u0, s - s0_))

    # Cold and raw interleaved, then warm and memmap interleaved: a warm pass right after a
    # cold one would read bodies back from disk (written with O_DIRECT) or fetch those the
    # cold pass did not cache. One untimed pass of each first; warm gets four (every body
    # cached and in the page cache).
    cold_group = [w for w in WHAT if w in ("cold", "raw")]
    warm_group = [w for w in WHAT if w in ("warm", "mm")]
    for group in (cold_group, warm_group):
        for w in group:
            fn, setup = systems[w]
            for _ in range(4 if w == "warm" else 1):
                if setup:
                    setup()
                fn()
        rounds(group)
    gb = n * 8 / 1e9
    med = {w: statistics.median(v) for w, v in wall.items()}
    print(f"{N_MIB} MiB, {ROUNDS} rounds, load average {os.getloadavg()[0]:.1f}")
    for w in WHAT:
        u, s, srv = (statistics.median(x) for x in zip(*cpu[w]))
        print(
            f"{w:5s} {med[w]:.3f} s ({gb / med[w]:.2f} GB/s); client CPU user {u:.2f} s "
            f"sys {s:.2f} s" + (f", server {srv:.2f} s" if server else "")
        )
        busy = {
            k: tuple(round(statistics.median(x), 2) for x in zip(*v))
            for k, v in per_thread[w].items()
            if sum(map(sum, v)) > 0
        }
        print(f"      by thread (user, sys): {busy}")
    if "cold" in med and "raw" in med:
        print(f"cold / raw GETs = {med['raw'] / med['cold']:.3f}")
    if "warm" in med and "mm" in med:
        print(f"warm / memmap = {med['mm'] / med['warm']:.3f}")


if __name__ == "__main__":
    main()
