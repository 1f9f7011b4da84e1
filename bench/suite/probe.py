"""What the storage and memory workloads measure besides time: the bytes a store takes on
disk, the resident memory and the kernel mappings of this process, and a fresh interpreter
to measure them in (so earlier workloads' memory and mappings do not count)."""

import concurrent.futures
import dataclasses
import multiprocessing
import os

#: The parts of an embedded store that hold data (leases/ holds a few bytes per reader).
STORE_PARTS = ("segments", "index")


@dataclasses.dataclass
class DiskBytes:
    """Bytes of some files: ``size`` (the sum of st_size) and ``allocated`` (st_blocks × 512,
    what the file system really holds: preallocated or sparse files differ)."""

    size: int = 0
    allocated: int = 0

    def __add__(self, other):
        return DiskBytes(self.size + other.size, self.allocated + other.allocated)

    def __sub__(self, other):
        return DiskBytes(self.size - other.size, self.allocated - other.allocated)


def disk_bytes(path):
    """:class:`DiskBytes` of the regular files at or under ``path`` (0 if it is missing)."""
    total = DiskBytes()
    paths = [path] if os.path.isfile(path) else []
    for d, _, names in os.walk(path):
        paths.extend(os.path.join(d, n) for n in names)
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue  # a segment pack deleted meanwhile
        total += DiskBytes(st.st_size, st.st_blocks * 512)
    return total


def store_bytes(path):
    """:class:`DiskBytes` of an embedded store's segments/ and index/."""
    total = DiskBytes()
    for part in STORE_PARTS:
        total += disk_bytes(os.path.join(path, part))
    return total


def index_bytes(path):
    """:class:`DiskBytes` of an embedded store's LMDB index file."""
    return disk_bytes(os.path.join(path, "index", "data.mdb"))


def status_bytes(field):
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, RssAnon) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{field} is not in /proc/self/status")


def mapping_count():
    """Kernel mappings (VMAs) of this process: the lines of /proc/self/maps."""
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def max_map_count():
    """``vm.max_map_count``: the kernel's limit of mappings per process."""
    with open("/proc/sys/vm/max_map_count") as f:
        return int(f.read())


def human(nbytes):
    """Bytes for a table: B below 10 KiB, KiB below 10 MiB, then MB (10^6 B)."""
    if abs(nbytes) < 10 * 1024:
        return f"{nbytes:.0f} B"
    if abs(nbytes) < 10 * (1 << 20):
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 1e6:.1f} MB"


def in_fresh_process(fn, *args):
    """``fn(*args)`` run in a newly spawned interpreter (``fn`` must be importable); returns
    its result, re-raises its exception. Used where the process's own mappings, resident
    memory or peak memory are the measurement."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()
