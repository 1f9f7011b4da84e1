"""The exceptions of outcore.

Every error of the store, the data and the transactions is an :class:`Error`. Each class
also derives from the builtin exception code would catch without knowing outcore
(``KeyError`` for a missing name, ``FileNotFoundError`` for a missing store, ...), so
``except KeyError`` keeps working. Bad arguments (wrong types, shapes, indices, urls) raise
the plain builtins ``TypeError``, ``ValueError`` and ``IndexError``, as NumPy does.

The README's "Errors" table lists them all.
"""

import transaction.interfaces

from . import _native

__all__ = [
    "Error",
    "ConflictError",
    "NotFoundError",
    "ReadOnlyError",
    "ClosedError",
    "SnapshotTooOldError",
    "CommitOutcomeUnknownError",
    "DivergentWritesError",
    "AddressSpaceError",
    "StorageError",
    "StoreNotFoundError",
    "StoreFormatError",
    "CorruptionError",
]


class Error(Exception):
    """Base class of every outcore error."""


class ConflictError(Error, transaction.interfaces.TransientError):
    """Another transaction committed a change to the same block or array metadata first.

    The message names the array (or the root), the elements of the block and the
    transaction that won. Retryable: ``transaction.abort()`` and redo the work
    (``transaction.manager.attempts()`` does it for you).
    """


class NotFoundError(Error, KeyError):
    """A name that does not exist: an array not in the root."""

    # KeyError shows its argument's repr; this argument is a message.
    __str__ = Exception.__str__


class ReadOnlyError(Error, ValueError):
    """A change through a read-only database, connection or view (``readonly=True``,
    ``at=tid``)."""


class ClosedError(Error, ValueError):
    """A database or connection (or an array or view of one) used after ``close()``."""


class SnapshotTooOldError(ConflictError):
    """The snapshot read is older than the pack horizon: another node packed away history it
    needs (e.g. this process was paused longer than the lease timeout, or ``at=`` names a
    packed tid). Retryable like a conflict: the next transaction reads a newer snapshot."""


class DivergentWritesError(Error, ValueError):
    """Two views of one array that do not share memory changed the same bytes differently;
    the commit wrote nothing. Take the views again and redo the writes."""


class AddressSpaceError(Error, MemoryError):
    """Not enough free address space for a view; views of smaller parts still work."""


class StorageError(Error, OSError):
    """The store failed: file system, index or PostgreSQL (the message has the server's
    own text)."""


class CommitOutcomeUnknownError(StorageError):
    """The connection to the store was lost at COMMIT and the store stayed unreachable: the
    commit may or may not be applied. Not retryable blindly; the message says how to find
    out (``outcore log`` lists applied commits)."""


class StoreNotFoundError(StorageError, FileNotFoundError):
    """No store at the path of a read-only open (which never creates one)."""


class StoreFormatError(StorageError):
    """The location is not an outcore store this version can read: a regular file, a
    directory holding other things, a newer format."""


class CorruptionError(StorageError):
    """Stored bytes do not match their checksum; the message names the block and the tid."""


_native.set_error_classes({name: globals()[name] for name in __all__})
