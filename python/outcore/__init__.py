"""outcore: out-of-core, transactional NumPy arrays with a Rust core.

>>> import numpy as np, transaction, outcore
>>> db = outcore.open("mem:")
>>> root = db.root()
>>> root["A"] = A = outcore.BigArray((1000,), "f8")
>>> a = A[:]                 # a numpy.ndarray view; nothing is read until touched
>>> a[10:20] = np.arange(10)
>>> transaction.commit()
"""

from ._array import DEFAULT_BLKSIZE, BigArray, ZBigArray
from ._db import DB, DEFAULT_CACHE_BYTES, ConflictError, Connection, Root

__all__ = [
    "BigArray",
    "ZBigArray",
    "DB",
    "Connection",
    "Root",
    "ConflictError",
    "open",
    "DEFAULT_BLKSIZE",
    "DEFAULT_CACHE_BYTES",
]


def open(  # noqa: A001
    url, cache_bytes=None, readonly=False, at=None, compression=None, reserve_bytes=None
):
    """Opens the database at ``url``: a directory path (the embedded store, created if
    missing) or ``"mem:"`` (in memory). ``readonly`` refuses changes; ``at=tid`` opens the
    historical snapshot ``tid`` read-only; ``compression`` ("zstd" or "lz4") applies when a
    store is created; ``cache_bytes`` is the RAM budget for blocks that cannot be mapped
    (default 1 GiB or ``OUTCORE_CACHE_BYTES``); ``reserve_bytes`` the address space reserved
    per open array (default clamp(16 x size, 64 GiB, 1 TiB); an array growing past it gets a
    larger reservation for new views)."""
    return DB(
        url,
        cache_bytes=cache_bytes,
        readonly=readonly,
        at=at,
        compression=compression,
        reserve_bytes=reserve_bytes,
    )
