"""Picklable references to stored arrays: what ``pickle.dumps(A)`` writes and what Dask
puts into its task graphs.

A reference names a store (its url), an array (its metadata oid) and a snapshot (a tid).
Resolving it opens the store once per process, read-only, and reads the array as of that
snapshot: a reference is a snapshot, not a live connection (uncommitted changes of the
process that made it are not seen, later commits neither).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import transaction

from ._array import dtype_from_descriptor

if TYPE_CHECKING:
    from ._array import BigArray
    from ._db import DB, Connection

#: Stores opened by references in this process, by url (read-only, never closed: they live
#: as long as the process, like the dask workers that use them).
_stores: dict[str, DB] = {}
#: Read-only connections at a snapshot, by (url, tid).
_snapshots: dict[tuple[str, int], Connection] = {}
#: Snapshots kept open: older ones are closed (releasing their reader leases, so pack can
#: reclaim history) and opened again if a reference to them is resolved later.
KEEP_SNAPSHOTS = 8
#: Guards both caches: dask runs tasks in many threads.
_lock = threading.Lock()


def _snapshot(db: DB, url: str, at: int) -> Connection:
    """The cached read-only connection of ``db`` at snapshot ``at``.

    It has a transaction manager of its own, which nothing ever commits: transaction
    boundaries of the threads reading through it must not move it to a newer snapshot.
    """
    from ._db import Connection

    key = (url if url != "mem:" else f"mem:{id(db):x}", at)
    with _lock:
        conn = _snapshots.pop(key, None)  # put back last: the most recently used
        if conn is not None and not conn._is_closed():
            _snapshots[key] = conn
        else:
            native = db._native.connect_at(at)
            conn = Connection(db, native, transaction.TransactionManager())
            _snapshots[key] = conn
            while len(_snapshots) > KEEP_SNAPSHOTS:
                _snapshots.pop(next(iter(_snapshots))).close()
        return conn


def _store(url: str) -> DB:
    from ._db import DB

    with _lock:
        db = _stores.get(url)
        if db is None or db._closed:
            db = _stores[url] = DB(url, readonly=True)
        return db


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """A stored array as of a snapshot: store url, name and metadata oid, snapshot tid, and
    dtype, shape and order to check what is found (and for Dask to plan without reading).

    ``db`` is the database of the process that made the reference; it is not pickled. A
    reference to a ``mem:`` store resolves only through it (in that process)."""

    url: str
    name: str
    oid: int
    tid: int
    dtype: str
    shape: tuple[int, ...]
    order: str
    db: DB | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, array: BigArray) -> ArrayRef:
        """The reference to ``array`` at its connection's snapshot. Refuses arrays not stored
        yet, and arrays that do not exist at that snapshot (created and not committed):
        ``TypeError``, as pickle expects of what it cannot pickle."""
        native = array._stored()
        conn = array._conn
        db = conn._db
        at = conn._native.tid()
        url = db._url
        if url != "mem:" and not url.startswith(("postgresql://", "postgres://")):
            url = os.path.abspath(url)  # the embedded store, wherever the unpickler runs
        oid = native.oid()
        snap = _snapshot(db, url, at)
        name = next((n for n in snap._native.names() if snap._native.array(n).oid() == oid), None)
        if name is None:
            raise TypeError(
                f"this array is not committed in {db._url}: a pickled or dask array refers to "
                "it as of the last commit this connection saw; commit it first"
            )
        dtype, _, shape, order, _ = snap._native.array(name).meta()
        return cls(url, name, oid, at, dtype, tuple(shape), order, db)

    def __reduce__(self) -> Any:
        if self.url == "mem:":
            raise TypeError(
                "an array of a mem: store cannot be pickled: a mem: store lives in one "
                "process; use a store on disk or PostgreSQL to share arrays between processes"
            )
        fields = (self.url, self.name, self.oid, self.tid, self.dtype, self.shape, self.order)
        return (ArrayRef, fields)

    def open(self) -> BigArray:
        """The array as of the snapshot, read-only (one store and one connection per process
        and snapshot, cached)."""
        db = self.db if self.db is not None and not self.db._closed else None
        if db is None:
            if self.url == "mem:":
                raise ValueError("the mem: store of this reference is closed")
            db = _store(self.url)
        array = _snapshot(db, self.url, self.tid).root()[self.name]
        native = array._stored()
        if native.oid() != self.oid or array.shape != self.shape:
            raise ValueError(
                f"{self.url}: array {self.name!r} at tid {self.tid:#x} is not the one referred "
                f"to (oid {native.oid()}, shape {array.shape}; expected oid {self.oid}, shape "
                f"{self.shape})"
            )
        return array

    # What dask.array.from_array needs to plan without reading.
    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The NumPy dtype."""
        return dtype_from_descriptor(self.dtype)


def _open(ref: ArrayRef) -> BigArray:
    """Unpickles a BigArray: the array its reference names, read-only at that snapshot."""
    return ref.open()
