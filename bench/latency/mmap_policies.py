"""Which read-ahead policy the kernel honours for a cold (or warm) 2 MiB block of a file
mapping, side by side with one pread of it (issue 17; the experiment behind
crates/outcore/src/vm/readahead.rs). Plain mmap + numpy, no outcore.

    python bench/latency/mmap_policies.py cold pread,default,random,huge,huge+random,willneed,pop 1
    python bench/latency/mmap_policies.py warm pread,default,huge,pop,huge+pop 2
    SHIFT=65536 python bench/latency/mmap_policies.py cold pread,default,huge,willneed 3

Arguments: cold|warm, comma-separated strategies (words joined by '+': huge = MADV_HUGEPAGE,
random = MADV_RANDOM, seq = MADV_SEQUENTIAL on the whole mapping; willneed = MADV_WILLNEED,
fadv = POSIX_FADV_WILLNEED, readahead = readahead(2), pop = MADV_POPULATE_READ on the block
before reading it; default = none; pread = one pread), a seed. 24 random blocks of a 2 GiB
file in /var/tmp (made once); per block every strategy in turn, each after dropping the
file's page cache (warm: then one untimed read through the same strategy); medians and
ratios to pread. SHIFT moves the blocks off 2 MiB alignment in the file.
"""

import ctypes, mmap, os, sys, time, numpy as np

libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.readahead.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_size_t]
WILLNEED, RANDOM, SEQ, HUGE, POP = 3, 1, 2, 14, 22
PATH = os.environ.get("MMAP_POLICIES_FILE", "/var/tmp/lat-exp.bin")
SIZE = 2 << 30
BLK = 2 << 20
if not os.path.exists(PATH) or os.path.getsize(PATH) != SIZE:
    with open(PATH, "wb") as f:
        for _ in range(SIZE // (64 << 20)):
            f.write(
                np.random.default_rng()
                .integers(0, 1 << 30, (64 << 20) // 4, dtype=np.int32)
                .tobytes()
            )
        os.fsync(f.fileno())


def drop():
    fd = os.open(PATH, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def mad(addr, off, n, adv):
    if libc.madvise(addr + off, n, adv) != 0:
        raise OSError(ctypes.get_errno(), f"madvise {adv}")


def mapped(strategy, b, warm=False):
    fd = os.open(PATH, os.O_RDONLY)
    mm = mmap.mmap(fd, SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    arr = np.frombuffer(mm, dtype=np.int32)
    addr = arr.ctypes.data
    if "huge" in strategy:
        mad(addr, 0, SIZE, HUGE)
    if "random" in strategy:
        mad(addr, 0, SIZE, RANDOM)
    if "seq" in strategy:
        mad(addr, 0, SIZE, SEQ)
    off = b * BLK + int(os.environ.get("SHIFT", "0"))
    t0 = time.perf_counter()
    if "willneed" in strategy:
        mad(addr, off, BLK, WILLNEED)
    if "fadv" in strategy:
        os.posix_fadvise(fd, off, BLK, os.POSIX_FADV_WILLNEED)
    if "readahead" in strategy:
        libc.readahead(fd, off, BLK)
    if "pop" in strategy:
        mad(addr, off, BLK, POP)
    s = int(arr[off // 4 : (off + BLK) // 4].sum(dtype=np.int64))
    dt = time.perf_counter() - t0
    del arr
    mm.close()
    os.close(fd)
    return dt * 1e6, s


def pread(strategy, b, warm=False):
    fd = os.open(PATH, os.O_RDONLY)
    buf = bytearray(BLK)
    t0 = time.perf_counter()
    os.preadv(fd, [buf], b * BLK + int(os.environ.get("SHIFT", "0")))
    s = int(np.frombuffer(buf, dtype=np.int32).sum(dtype=np.int64))
    dt = time.perf_counter() - t0
    os.close(fd)
    return dt * 1e6, s


strategies = sys.argv[2].split(",")
warm = sys.argv[1] == "warm"
rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
blocks = rng.choice(SIZE // BLK, 24, replace=False)
res = {s: [] for s in strategies}
for b in blocks:
    ref = None
    for s in strategies:
        if not warm:
            drop()
        else:
            drop()
            (pread if s == "pread" else mapped)(s.replace("pop", ""), int(b))
        dt, got = (pread if s == "pread" else mapped)(s, int(b), warm)
        if ref is None:
            ref = got
        assert got == ref, s
        res[s].append(dt)
base = np.median(res["pread"]) if "pread" in res else None
for s in strategies:
    m = np.median(res[s])
    print(
        f"{sys.argv[1]:5} {s:22} median {m:8.0f} µs  p90 {np.percentile(res[s],90):8.0f}"
        + (f"  ×pread {m/base:5.2f}" if base else "")
    )
