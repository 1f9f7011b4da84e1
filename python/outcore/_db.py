"""Databases, connections (the ``transaction`` data manager) and the root namespace."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
import os
import warnings
import weakref
from collections.abc import Iterator, MutableMapping
from datetime import datetime, timedelta, timezone
from typing import Any, Generator, SupportsIndex, TypeAlias

import transaction
import transaction.interfaces
from zope.interface import implementer

from . import _native
from ._array import BigArray, dtype_descriptor
from .errors import ClosedError, ConflictError, NotFoundError

log = logging.getLogger("outcore")

#: RAM budget for blocks that cannot be mapped from local files (remote or compressed
#: stores), unless ``cache_bytes`` or ``OUTCORE_CACHE_BYTES`` says otherwise.
DEFAULT_CACHE_BYTES = 1 << 30


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


def _cache_bytes(value: int | str | None) -> int:
    if value is None:
        value = os.environ.get("OUTCORE_CACHE_BYTES", DEFAULT_CACHE_BYTES)
    value = int(value)
    if value <= 0:
        raise ValueError(f"cache_bytes must be positive, not {value}")
    return value


def _check_compression(native: _native.Database, requested: str | None) -> None:
    """Refuses a ``compression`` other than the store's own: it applies only when a store is
    created, and silently ignoring it would leave the user believing the data compressed."""
    actual = native.compression()
    if requested is None or actual is None or actual == requested:
        return
    where = native.describe()  # the url without its password
    native.close()
    state = "is not compressed" if actual == "none" else f"is compressed with {actual}"
    raise ValueError(
        f"{where} {state}; compression={requested!r} applies only when a store is created "
        "(omit it to open this store)"
    )


#: What :func:`tid` (and ``at=``, ``before=``) accept: an int, hex text or a datetime.
TidLike: TypeAlias = SupportsIndex | str | datetime


def tid(value: TidLike) -> int:
    """A transaction id from what people have: an ``int``, the hexadecimal text ``outcore log``
    and :meth:`DB.history` print (``"18eef36ab8db58fc"``, ``0x`` optional), or a ``datetime``
    (the snapshot as of that moment; naive datetimes are local time)."""
    if isinstance(value, bool):
        raise TypeError("a tid is an int, a hex string or a datetime, not a bool")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        ns = (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        return max(ns, 0) * 1000
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        try:
            value = int(text, 16)
        except ValueError:
            raise ValueError(f"{value!r} is not a tid (hexadecimal, as `outcore log` prints)") from None
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"a tid is an int, a hex string or a datetime, not {type(value).__name__}"
        ) from None
    if not 0 <= value < 2**64:
        raise ValueError(f"tid {value} is out of range")
    return value


@dataclasses.dataclass(frozen=True)
class Stats:
    """What :meth:`DB.stats` measured."""

    #: The snapshot measured (the head when measuring began).
    tid: int
    #: Named arrays.
    arrays: int
    #: Sum over the named arrays of itemsize x number of elements.
    logical_bytes: int
    #: Bytes the store holds for the current versions of the named arrays (blocks and
    #: metadata) and the root, as stored (compressed where compression helped).
    stored_bytes: int
    #: Stored blocks of the named arrays.
    blocks: int
    #: Blocks never written (read as zeros, cost nothing).
    holes: int
    #: Bytes of versions the head no longer shows: older versions since the pack horizon (and
    #: the ones kept at it), arrays removed since.
    history_bytes: int
    #: How many such versions.
    history_versions: int
    #: Reader leases of live processes (this one's connections included); ``None`` for
    #: stores that do not tell (in-memory, PostgreSQL).
    leases: int | None

    @property
    def ratio(self) -> float | None:
        """``stored_bytes / logical_bytes`` (below 1: compression and holes save space);
        ``None`` when nothing is stored logically."""
        return self.stored_bytes / self.logical_bytes if self.logical_bytes else None


def _is_embedded(url: str) -> bool:
    """True for urls of the embedded store (a directory)."""
    return url != "mem:" and not url.startswith(("postgresql://", "postgres://"))


class DB:
    """An outcore database. Open it with :func:`outcore.open`."""

    def __init__(
        self,
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
    ) -> None:
        self._closed = True  # until opened: repr() and close() work on a failed open
        self._url: str = url if isinstance(url, str) else repr(url)
        if not isinstance(url, (str, os.PathLike)):
            raise TypeError(f"url must be a string or path, not {type(url).__name__}")
        url = os.fspath(url)
        self.cache_bytes = _cache_bytes(cache_bytes)
        self.readonly = bool(readonly) or at is not None
        self._at = None if at is None else tid(at)
        self._url = url
        self._native = _native.Database(
            url,
            readonly=bool(readonly),
            compression=compression,
            reserve_bytes=reserve_bytes,
            cache_bytes=self.cache_bytes,
            dirty_bytes=_positive("dirty_bytes", dirty_bytes),
            blobs=blobs,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            cache_disk_bytes=cache_disk_bytes,
        )
        _check_compression(self._native, compression)
        self._default: Connection | None = None
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<outcore.DB {self._url!r} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the database is closed")

    def open(self, transaction_manager: Any = None) -> Connection:
        """A new connection with its own snapshot, joined to ``transaction_manager`` (the
        thread-local ``transaction.manager`` by default)."""
        self._check_open()
        native = self._native.connect() if self._at is None else self._native.connect_at(self._at)
        conn = Connection(self, native, transaction_manager)
        self._connections.add(conn)
        return conn

    def _default_connection(self) -> Connection:
        self._check_open()
        if self._default is None or self._default._closed:
            self._default = self.open()
        return self._default

    def root(self) -> Root:
        """The root namespace of this database's default connection."""
        return self._default_connection().root()

    @contextlib.contextmanager
    def transaction(self) -> Generator[Root, None, None]:
        """``with db.transaction(): ...`` commits on success and aborts on an exception
        (on the default connection's transaction manager). Yields the root."""
        conn = self._default_connection()
        tm = conn.transaction_manager
        try:
            yield conn.root()
        except BaseException:
            tm.abort()
            raise
        tm.commit()

    def pack(
        self, keep: float | timedelta | None = None, before: TidLike | None = None
    ) -> dict[str, int]:
        """Drops history no snapshot needs: versions replaced before the horizon, and the log
        up to it. Give exactly one of ``keep`` (history to keep: seconds or a
        ``datetime.timedelta``) or ``before`` (a tid as :func:`tid` accepts: an int, the hex
        text ``outcore log`` prints, or a ``datetime``). Live readers hold the horizon back
        (``horizon`` in the result says where it ended up). Returns a dict: horizon,
        versions_removed, versions_kept, bytes_before, bytes_after (block bodies)."""
        self._check_open()
        if (keep is None) == (before is None):
            raise ValueError("give exactly one of keep= (history to keep) or before= (a tid)")
        if keep is not None:
            if isinstance(keep, timedelta):
                keep = keep.total_seconds()
            keep = float(keep)
            if keep < 0:
                raise ValueError(f"keep must not be negative, not {keep}")
            upto = tid(datetime.now(timezone.utc) - timedelta(seconds=keep))
        else:
            assert before is not None  # exactly one of keep and before, checked above
            upto = tid(before)
        horizon, removed, kept, before_bytes, after_bytes = self._native.pack(upto)
        return {
            "horizon": horizon,
            "versions_removed": removed,
            "versions_kept": kept,
            "bytes_before": before_bytes,
            "bytes_after": after_bytes,
        }

    def verify(self) -> dict[str, Any]:
        """Reads every stored version and checks its checksum. Returns a dict:
        versions_checked, bytes_checked, problems (messages naming each damaged block and
        tid; empty when the store is sound)."""
        self._check_open()
        checked, nbytes, problems = self._native.verify()
        return {"versions_checked": checked, "bytes_checked": nbytes, "problems": problems}

    def stats(self) -> Stats:
        """Measures the store at its head (see :class:`Stats`): logical and stored bytes of
        the named arrays, history bytes, live reader leases; ``ratio`` is stored / logical.
        Reads the block index; blocks that cannot be mapped (compressed and PostgreSQL
        stores) are read to learn their stored size."""
        self._check_open()
        leases = len(_native.reader_leases(self._url)) if _is_embedded(self._url) else None
        return Stats(*self._native.stats(), leases=leases)

    def history(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """The most recent ``limit`` transactions (all of them if ``limit`` is 0 or None,
        like ``outcore log --limit 0``), newest first: dicts with tid, time, user,
        description and arrays (the names of the arrays the transaction changed, by the
        names at the head, else as of the transaction; ``"(the root)"`` when names were
        added or removed; ``"oid N"`` when no name is known)."""
        self._check_open()
        if limit is None:
            limit = 0
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit} (0 or None: all)")
        return [
            {
                "tid": tid,
                "time": datetime.fromtimestamp(secs, tz=timezone.utc),
                "user": user,
                "description": description,
                "arrays": arrays,
            }
            for tid, secs, user, description, arrays in self._native.history(limit)
        ]

    def close(self) -> None:
        """Closes every connection (see :meth:`Connection.close`), then the store: its files
        and network connections are released now, even while objects of this database live
        on. Views stay readable."""
        if self._closed:
            return
        for conn in list(self._connections):
            conn._close(stacklevel=3)
        self._closed = True
        self._native.close()

    def __enter__(self) -> DB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@implementer(transaction.interfaces.ISavepointDataManager, transaction.interfaces.ISynchronizer)
class Connection:
    """A snapshot of the database with a transaction in progress; the ``transaction``
    package's data manager for it. One connection belongs to one thread."""

    def __init__(
        self, db: DB, native: _native.Connection, transaction_manager: Any = None
    ) -> None:
        tm = transaction_manager if transaction_manager is not None else transaction.manager
        # The thread-local manager delegates to this thread's real one: keep that.
        self.transaction_manager = getattr(tm, "manager", tm)
        self._db = db
        self._native = native
        self._joined = None
        self._closed = False
        #: Bumped whenever mapped memory may change under cached element views (the
        #: snapshot moves, changes are dropped, an array's shape changes, the connection
        #: closes): BigArray's element access maps again when it differs from its chunk's.
        self._generation = 0
        self._root = Root(self)
        #: The BigArrays handed out, by oid (weakly: unused ones go).
        self._arrays: weakref.WeakValueDictionary[int, BigArray] = weakref.WeakValueDictionary()
        self.transaction_manager.registerSynch(self)

    def __repr__(self) -> str:
        if self._is_closed():
            return f"<outcore.Connection to {self._describe()} closed>"
        return f"<outcore.Connection to {self._describe()} at tid {self._native.tid():#x}>"

    def _describe(self) -> str:
        return self._db._url

    def _is_closed(self) -> bool:
        return self._closed or self._db._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the connection is closed")
        self._db._check_open()

    def root(self) -> Root:
        """The persistent mapping of names to arrays."""
        self._check_open()
        return self._root

    def _moved(self) -> None:
        """Invalidates the chunk views that element access caches (see ``_generation``) and
        drops them: held on, they would keep their windows from being released as idle."""
        self._generation += 1
        for array in self._arrays.values():
            array._chunk = None

    def _join(self) -> None:
        """Joins the current transaction: called before every change (reads do not join;
        writes through views are found by :meth:`beforeCompletion`)."""
        self._check_open()
        txn = self.transaction_manager.get()
        if self._joined is not txn:
            txn.join(self)
            self._joined = txn

    def close(self) -> None:
        """Closes the connection and leaves its transaction: uncommitted changes are
        discarded (with a warning naming the database if there were any), the snapshot is
        released (pack may reclaim what only it kept). Views stay readable."""
        self._close(stacklevel=3)

    def _close(self, stacklevel: int) -> None:
        if self._closed:
            return
        try:
            dirty = not self._db._closed and self._native.is_dirty()
        except Exception:  # closing must not fail on a broken store; the close reports it
            dirty = False
        # From here on every data manager method is a no-op: the transaction this connection
        # joined may still list it, and must commit or abort without it.
        self._closed = True
        self._moved()
        self._joined = None
        try:
            self.transaction_manager.unregisterSynch(self)
        except KeyError:
            pass
        self._native.close()
        if dirty:
            warnings.warn(
                f"outcore: closing a connection to {self._describe()} discarded its "
                "uncommitted changes (commit before closing to keep them)",
                stacklevel=stacklevel,
            )

    # ISynchronizer: writes through views never call Python, so join when anything is dirty.
    def beforeCompletion(self, txn: Any) -> None:
        if not self._closed and self._joined is not txn and self._native.is_dirty():
            txn.join(self)
            self._joined = txn

    def afterCompletion(self, txn: Any) -> None:
        self._joined = None
        self._sync()

    def newTransaction(self, txn: Any) -> None:
        self._sync()

    def _sync(self) -> None:
        """Moves to the newest snapshot (at a transaction boundary, nothing dirty)."""
        self._moved()
        if self._closed:
            return
        try:
            if not self._native.is_dirty():
                self._native.abort()
        except Exception:  # a boundary must not fail; the next call reports the problem
            log.exception("outcore: moving to the newest snapshot failed")

    # IDataManager
    def sortKey(self) -> str:
        # Sort last: outcore commits in tpc_vote, after every other resource voted.
        return f"~outcore:{self._db._url}:{id(self):x}"

    def abort(self, txn: Any) -> None:
        # Also called mid-transaction when a savepoint taken before this connection joined is
        # rolled back: drop the changes but keep the snapshot (it moves at the boundary).
        self._joined = None
        self._moved()
        if not self._closed:
            self._native.discard()

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        if not self._closed:
            self._moved()
            self._native.commit(str(txn.user or ""), str(txn.description or ""))

    def tpc_finish(self, txn: Any) -> None:
        self._joined = None

    def tpc_abort(self, txn: Any) -> None:
        self._joined = None
        self._moved()
        try:
            if not self._closed:
                self._native.discard()
        except Exception:
            log.exception("outcore: abort after a failed commit failed")

    def savepoint(self) -> _Savepoint:
        return _Savepoint(self, None if self._closed else self._native.savepoint())

    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, ConflictError)


class _Savepoint:
    def __init__(self, conn: Connection, native: _native.Savepoint | None) -> None:
        self._conn = conn
        self._native = native

    def rollback(self) -> None:
        # A closed connection has nothing left to roll back (and no native savepoint).
        if not self._conn._closed and self._native is not None:
            self._conn._moved()
            self._conn._native.rollback(self._native)


class Root(MutableMapping[str, BigArray]):
    """The root namespace: ``name -> BigArray``, changed transactionally."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @staticmethod
    def _check_name(name: object) -> None:
        if not isinstance(name, str):
            raise TypeError(f"array names are strings, not {type(name).__name__}")

    def __getitem__(self, name: str) -> BigArray:
        self._check_name(name)
        self._conn._check_open()
        if not self._conn._native.contains(name):
            raise NotFoundError(f"no array named {name!r} in the root")
        native = self._conn._native.array(name)
        # One BigArray per array and connection, as ZODB gives one object per oid:
        # root["A"] is root["A"].
        cached = self._conn._arrays.get(native.oid())
        if cached is not None:
            return cached
        array = BigArray._bind(self._conn, native)
        self._conn._arrays[native.oid()] = array
        return array

    def __setitem__(self, name: str, value: BigArray) -> None:
        self._check_name(name)
        if not isinstance(value, BigArray):
            raise TypeError(f"the root holds BigArrays, not {type(value).__name__}")
        self._conn._join()
        if value._native is None:
            dt = value._dtype
            native = self._conn._native.create(
                name,
                dtype_descriptor(dt),
                dt.itemsize,
                list(value._shape),
                value._order,
                value._blksize,
            )
            value._attach(self._conn, native)
            self._conn._arrays[native.oid()] = value
            if value._pending_attrs:
                value.attrs = value._pending_attrs
                value._pending_attrs = {}
        elif value._conn is self._conn:
            self._conn._native.link(name, value._native)
        else:
            raise ValueError(
                "this BigArray is stored through another connection; "
                "store a new BigArray and copy the data into it"
            )

    def __delitem__(self, name: str) -> None:
        self._check_name(name)
        self._conn._join()
        if not self._conn._native.contains(name):
            raise NotFoundError(f"no array named {name!r} in the root")
        self._conn._native.remove(name)

    def __iter__(self) -> Iterator[str]:
        self._conn._check_open()
        return iter(self._conn._native.names())

    def __len__(self) -> int:
        self._conn._check_open()
        return len(self._conn._native.names())

    def __contains__(self, name: object) -> bool:
        self._conn._check_open()
        return isinstance(name, str) and self._conn._native.contains(name)

    def __repr__(self) -> str:
        if self._conn._is_closed():
            return f"<outcore.Root of {self._conn._describe()} closed>"
        return f"<outcore.Root {list(self)!r}>"
