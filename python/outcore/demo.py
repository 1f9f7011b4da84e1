"""The seed demo: ``python -m outcore.demo [--worksize=MB] [--cache=MB] (gen|read) <url>``.

``gen`` creates ``root["signalv"]``, a float64 array of ``worksize`` bytes (default: twice the
cache budget), and fills it with S(t) = 15·sin(0.2·t) in 32 MiB chunks using NumPy ``out=``
ufuncs, one commit per chunk. ``read`` maps the whole array as one view and prints its mean
and sum. Both print the process's virtual and resident memory: memory stays bounded whatever
the worksize, because clean data is the kernel's page cache.
"""

import argparse
import sys
import time

import numpy as np
import transaction

import outcore

CHUNK = 32 << 20


def memory() -> str:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return (
        f"VIRT {fields.get('VmSize', '?')}  RSS {fields.get('VmRSS', '?')} "
        f"(anonymous {fields.get('RssAnon', '?')}, file {fields.get('RssFile', '?')}, "
        f"peak {fields.get('VmHWM', '?')})"
    )


def gen(db: outcore.DB, worksize: int) -> None:
    n = worksize // 8
    root = db.root()
    root["signalv"] = A = outcore.BigArray((n,), np.float64)
    transaction.commit()
    per_chunk = CHUNK // 8
    t0 = time.perf_counter()
    for start in range(0, n, per_chunk):
        stop = min(start + per_chunk, n)
        a = A[start:stop]
        a[:] = np.arange(start, stop, dtype=np.float64)
        np.multiply(a, 0.2, out=a)
        np.sin(a, out=a)
        np.multiply(a, 15, out=a)
        transaction.get().note(f"signal {start}..{stop}")
        transaction.commit()
        print(f"\rgen: {100 * stop / n:5.1f} %", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"gen: {n} float64 ({worksize >> 20} MiB) in {time.perf_counter() - t0:.2f} s")
    print(f"gen: {memory()}")


def read(db: outcore.DB) -> None:
    A = db.root()["signalv"]
    t0 = time.perf_counter()
    a = A[:]
    mean, total = a.mean(), a.sum()
    print(f"read: mean {mean:.6e}  sum {total:.6e}  in {time.perf_counter() - t0:.2f} s")
    print(f"read: {memory()}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m outcore.demo", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--worksize", type=int, help="array size in MB (default: 2 x cache)")
    p.add_argument("--cache", type=int, help="RAM budget in MB (default: outcore's)")
    p.add_argument("command", choices=["gen", "read"])
    p.add_argument("url", help="database: a directory path, or mem:")
    args = p.parse_args(argv)
    cache = args.cache << 20 if args.cache else None
    db = outcore.open(args.url, cache_bytes=cache)
    worksize = (args.worksize << 20) if args.worksize else 2 * db.cache_bytes
    if args.command == "gen":
        gen(db, worksize)
    else:
        read(db)
    db.close()


if __name__ == "__main__":
    main()
