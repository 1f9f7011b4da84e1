"""outcore: out-of-core, transactional NumPy arrays with a Rust core.

>>> import numpy as np, transaction, outcore
>>> db = outcore.open("mem:")
>>> root = db.root()
>>> root["A"] = A = outcore.BigArray((1000,), "f8")
>>> a = A[:]                 # a numpy.ndarray view; nothing is read until touched
>>> a[10:20] = np.arange(10)
>>> transaction.commit()
"""

from __future__ import annotations

import os

from . import _native, errors
from ._array import DEFAULT_BLKSIZE, BigArray, ZBigArray
from ._interop import from_hdf5, from_zarr, to_hdf5, to_zarr
from ._db import DB, DEFAULT_CACHE_BYTES, Connection, Root, Stats, TidLike, tid
from .errors import (
    AddressSpaceError,
    ClosedError,
    ConflictError,
    CorruptionError,
    DivergentWritesError,
    Error,
    CommitOutcomeUnknownError,
    NotFoundError,
    ReadOnlyError,
    SnapshotTooOldError,
    StorageError,
    StoreFormatError,
    StoreNotFoundError,
)

#: The version of this package (the Rust core's crate version).
__version__ = _native.__version__

__all__ = [
    "__version__",
    "BigArray",
    "ZBigArray",
    "DB",
    "Connection",
    "Root",
    "Stats",
    "tid",
    "open",
    "from_zarr",
    "to_zarr",
    "from_hdf5",
    "to_hdf5",
    "set_log_level",
    "DEFAULT_BLKSIZE",
    "DEFAULT_CACHE_BYTES",
    *errors.__all__,
]


def open(  # noqa: A001
    url: str | os.PathLike[str],
    *,
    cache_bytes: int | None = None,
    readonly: bool = False,
    at: TidLike | None = None,
    compression: str | None = None,
    reserve_bytes: int | None = None,
    dirty_bytes: int | None = None,
    blobs: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_disk_bytes: int | None = None,
) -> DB:
    """Opens the database at ``url``: a directory path (the embedded store, created if
    missing) or ``"mem:"`` (in memory). ``readonly`` refuses changes; ``at=tid`` opens the
    historical snapshot ``tid`` read-only; ``compression`` ("zstd" or "lz4") applies when a
    store is created; ``cache_bytes`` is the RAM budget for blocks that cannot be mapped
    (default 1 GiB or ``OUTCORE_CACHE_BYTES``); ``reserve_bytes`` the address space reserved
    per window of an array (default clamp(16 x the bytes viewed, 64 MiB, 1 TiB); an array
    growing past its window gets another for new views); ``dirty_bytes`` the budget of
    uncommitted writes kept in RAM, process-wide (default a quarter of RAM or of the memory
    cgroup's limit, or ``OUTCORE_DIRTY_BYTES``): above it written blocks are spilled to disk
    ahead of the commit, so a transaction may change more than RAM.
    ``blobs="s3://bucket/prefix"``, when the store is created, keeps block bodies in that
    S3-compatible object store (endpoint, region and credentials from the ``AWS_*``
    environment variables); the store records it, so later opens need only ``url``. For such
    stores ``cache_dir`` keeps fetched block bodies on local disk (default: a directory per
    object store under ``$XDG_CACHE_HOME/outcore`` or ``~/.cache/outcore``; mapped from there;
    at most ``cache_disk_bytes``, default 10 GiB, least recently used out;
    ``cache_disk_bytes=0`` turns it off). Every option is keyword-only."""
    return DB(
        url,
        cache_bytes=cache_bytes,
        readonly=readonly,
        at=at,
        compression=compression,
        reserve_bytes=reserve_bytes,
        dirty_bytes=dirty_bytes,
        blobs=blobs,
        cache_dir=cache_dir,
        cache_disk_bytes=cache_disk_bytes,
    )


#: ``logging`` level names that differ from the Rust ones.
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error", "FATAL": "error"}


def set_log_level(level: int | str) -> None:
    """Chooses which events of the Rust core reach the ``outcore`` logger (and its children
    such as ``outcore.db.handle``): a ``logging`` level (``logging.INFO``, ``"DEBUG"``) or a
    filter in ``OUTCORE_LOG`` syntax (``"outcore::vm=debug,warn"``). The default is
    ``OUTCORE_LOG`` from the environment, else WARNING. The logger's own level and handlers
    apply on top, as for any logger."""
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"level must be a logging level or a filter string, not {level!r}")
    if isinstance(level, int):
        floors = ((40, "error"), (30, "warn"), (20, "info"), (10, "debug"))
        spec = next((name for floor, name in floors if level >= floor), "trace")
    else:
        spec = _LEVEL_NAMES.get(level.upper(), level)
    _native.set_log_filter(spec)
