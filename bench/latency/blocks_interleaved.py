"""Cold (or warm) 2 MiB blocks of a 1 GiB float64 array, the systems interleaved block by
block (the suite's workload 2 runs them one after another, so a busy disk can favour one):
outcore's embedded store read through a whole view (plain, after `A.prefetch(block)`, after
`A.load(block)`), h5py contiguous (`read_direct`), numpy.memmap. Medians and ratios to h5py.

    bench/.venv/bin/python bench/latency/blocks_interleaved.py cold 1
    bench/.venv/bin/python bench/latency/blocks_interleaved.py warm 2

The stores are made once under $BLOCKS_DIR (default /var/tmp/lat-scan). Warm: each block is
read once through the same reader after dropping the cache, then timed.
"""

import os, sys, time, numpy as np, outcore, transaction, h5py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from suite.common import drop_cache

D = os.environ.get("BLOCKS_DIR", "/var/tmp/lat-scan")
N = (1 << 30) // 8
B = (2 << 20) // 8
store, raw, h5 = D + "/store", D + "/raw.bin", D + "/a.h5"
if not os.path.exists(raw):
    os.makedirs(D, exist_ok=True)
    data = np.random.default_rng(1).integers(0, 1024, N).astype(np.float64)
    data.tofile(raw)
    db = outcore.open(store)
    tm = transaction.TransactionManager()
    c = db.open(transaction_manager=tm)
    c.root()["A"] = A = outcore.BigArray((N,), np.float64)
    tm.commit()
    for lo in range(0, N, 32 << 20):
        A[lo : lo + (32 << 20)] = data[lo : lo + (32 << 20)]
        tm.commit()
    db.close()
if not os.path.exists(h5):
    with h5py.File(h5, "w") as f:
        f.create_dataset("A", data=np.fromfile(raw))


def t_outcore(b, pre=False, load=False):
    db = outcore.open(store)
    c = db.open(transaction_manager=transaction.TransactionManager())
    A = c.root()["A"]
    a = A[:]
    t = time.perf_counter()
    if pre:
        A.prefetch(slice(b * B, (b + 1) * B))
    if load:
        A.load(slice(b * B, (b + 1) * B))
    s = float(np.sum(a[b * B : (b + 1) * B]))
    dt = time.perf_counter() - t
    del a, A
    db.close()
    return dt, s


def t_h5(b):
    f = h5py.File(h5, "r")
    ds = f["A"]
    out = np.empty(B)
    t = time.perf_counter()
    ds.read_direct(out, np.s_[b * B : (b + 1) * B], np.s_[0:B])
    s = float(np.sum(out))
    dt = time.perf_counter() - t
    f.close()
    return dt, s


def t_mm(b):
    m = np.memmap(raw, dtype=np.float64, mode="r")
    t = time.perf_counter()
    s = float(np.sum(m[b * B : (b + 1) * B]))
    dt = time.perf_counter() - t
    m._mmap.close()
    return dt, s


warm = sys.argv[1] == "warm"
subjects = {
    "outcore": t_outcore,
    "outcore+prefetch": lambda b: t_outcore(b, pre=True),
    "outcore+load": lambda b: t_outcore(b, load=True),
    "h5py": t_h5,
    "memmap": t_mm,
}
res = {k: [] for k in subjects}
blocks = np.random.default_rng(int(sys.argv[2])).choice(N // B, 24, replace=False)
for b in blocks:
    b = int(b)
    ref = None
    for k, f in subjects.items():
        drop_cache([store, raw, h5])
        if warm:
            f(b)  # fills the cache through the same reader
        dt, s = f(b)
        ref = s if ref is None else ref
        assert s == ref, k
        res[k].append(dt * 1e6)
h = np.median(res["h5py"])
for k, v in res.items():
    print(
        f"{sys.argv[1]} {k:17} median {np.median(v):7.0f} µs  p90 {np.percentile(v, 90):7.0f}  × h5py {np.median(v) / h:5.2f}"
    )
