//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`]. Variants are meant to be matched on:
//! [`Error::Conflict`] and [`Error::SnapshotTooOld`] are the retryable ones (abort, then redo the
//! transaction).
//!
//! **Dependencies.** This module imports nothing of the crate but the leaf module `ids`
//! (keys and tids, which [`Error::Conflict`] and [`Error::Corrupt`] name): the storage layer
//! imports it, not the other way round. One error type for every layer (rather than a
//! storage-owned error wrapped here) because the storage kinds are the ones users match on:
//! a conflict, a snapshot too old or corrupt data must read the same whether the storage layer
//! or the database layer found them.
//!
//! **No foreign types in the API.** The PostgreSQL client's and LMDB's errors reach users as
//! [`PostgresError`] and [`IndexError`], which keep what a caller may act on (the SQLSTATE
//! code, a lost connection, a full index or disk) and the original as their
//! [`source`](std::error::Error::source). The backends build them and classify the original
//! there (`storage/postgres/errors.rs`, `storage/local/errors.rs`), so this module knows
//! neither client library.

use std::path::PathBuf;

use crate::ids::{Key, Tid};

/// Everything that can go wrong in outcore. New kinds may be added: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another transaction committed a newer version of `key` after this transaction's snapshot
    /// (`base`). First committer wins; abort and retry the transaction.
    #[error("conflict on {key}: committed at {committed} after this transaction's snapshot {base}; abort and retry")]
    Conflict {
        /// The first conflicting key found.
        key: Key,
        /// The snapshot the losing transaction read from.
        base: Tid,
        /// The tid of the winning version.
        committed: Tid,
    },
    /// Stored bytes do not match their checksum (or cannot be decoded).
    #[error("corrupt data for {key} at {tid}: {reason}")]
    Corrupt {
        /// The damaged key.
        key: Key,
        /// The version that is damaged.
        tid: Tid,
        /// What check failed.
        reason: String,
    },
    /// A named thing (array, store, version) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A read (or log read) at snapshot `requested`, older than the pack horizon `horizon`:
    /// pack may have removed versions that snapshot sees, so nothing is returned rather than
    /// other data. Happens to a reader whose lease expired (paused longer than the lease
    /// timeout) or to time travel past a pack. Retryable: a new transaction reads a newer
    /// snapshot.
    #[error("snapshot {requested} is older than the pack horizon {horizon}: pack removed history it needs (was the reader paused longer than the lease timeout?); abort and retry with a newer snapshot")]
    SnapshotTooOld {
        /// The snapshot (or log position) that was asked for.
        requested: Tid,
        /// The pack horizon.
        horizon: Tid,
    },
    /// The connection to the store was lost while the commit was being confirmed, and looking
    /// it up again failed within the window: it may or may not have been applied. Not
    /// retryable as is (a retry could apply it twice): look for its token in the commit log.
    #[error("commit outcome unknown: the connection was lost at COMMIT and the store stayed unreachable for {waited:?}; commit token {token} may or may not be applied. Do not retry blindly: look for the commit in the log (`outcore log`; its description and time, or token {token} in the outcore_log table) once the store is reachable ({cause})")]
    CommitOutcomeUnknown {
        /// The random token stored in the commit's log row.
        token: i64,
        /// How long outcore kept looking the commit up.
        waited: std::time::Duration,
        /// The last error seen.
        cause: String,
    },
    /// A shape, dtype, order or size that cannot be used.
    #[error("invalid shape: {0}")]
    InvalidShape(String),
    /// An index or slice outside the array.
    #[error("index out of bounds: {0}")]
    IndexOutOfBounds(String),
    /// An argument that makes no sense (bad url, bad option...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write was attempted through a read-only handle (read-only open or historical view).
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// Not enough free address space for a view (or the reservation behind it). Views of
    /// smaller parts of the array still work.
    #[error("out of address space: {0}")]
    AddressSpace(String),
    /// Writes through two views of one array that do not share memory (one made before the
    /// array outgrew its address-space window, one after) changed the same bytes
    /// differently; the commit wrote nothing. Not retryable as is: take views again.
    #[error("conflicting writes through views: {0}")]
    DivergentWrites(String),
    /// The connection could not move to the newest snapshot at its last transaction boundary
    /// (e.g. the store was unreachable right after a commit), so a commit now could build on a
    /// snapshot missing that commit. Retryable: abort (which tries to catch up again) and redo
    /// the transaction.
    #[error("snapshot out of date: {0}")]
    SnapshotStale(String),
    /// The object was used after `close()`.
    #[error("closed: {0}")]
    Closed(String),
    /// The store directory holds something this version cannot read.
    #[error("unsupported store format at {path}: {reason}")]
    Format {
        /// The store location.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An error from PostgreSQL (connection or server); never shows credentials.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] PostgresError),
    /// An error from the embedded store's index (LMDB).
    #[error("index error: {0}")]
    Index(#[source] IndexError),
    /// An operating-system error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What outcore was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for errors that a retry of the whole transaction may cure.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::SnapshotStale(_) | Error::SnapshotTooOld { .. }
        )
    }

    /// The message without the variant's own prefix (`invalid argument: `, `closed: `...):
    /// for the Python layer, whose exception class already says what kind of error it is.
    /// The prefixes that carry information (the PostgreSQL and index errors, an I/O error's
    /// context) stay.
    pub fn message(&self) -> String {
        match self {
            Error::NotFound(m)
            | Error::InvalidShape(m)
            | Error::IndexOutOfBounds(m)
            | Error::InvalidArgument(m)
            | Error::ReadOnly(m)
            | Error::AddressSpace(m)
            | Error::DivergentWrites(m)
            | Error::SnapshotStale(m)
            | Error::Closed(m) => m.clone(),
            Error::Format { path, reason } => format!("{}: {reason}", path.display()),
            Error::Conflict { .. }
            | Error::Corrupt { .. }
            | Error::SnapshotTooOld { .. }
            | Error::CommitOutcomeUnknown { .. }
            | Error::Index(_)
            | Error::Io { .. } => self.to_string(),
            #[cfg(feature = "postgres")]
            Error::Postgres(_) => self.to_string(),
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// An error from PostgreSQL: the connection failed or the server refused a statement.
///
/// Its text never shows credentials: for errors the server reports, the server's message,
/// detail, hint and SQLSTATE; for the others (a refused connection, a bad url option) the
/// client's chain of causes. The client's error is its [`source`](std::error::Error::source).
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct PostgresError {
    text: String,
    code: Option<String>,
    connection: bool,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

#[cfg(feature = "postgres")]
impl PostgresError {
    /// Built by the PostgreSQL store, which knows how to read the client's error.
    pub(crate) fn new(
        text: String,
        code: Option<String>,
        connection: bool,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        PostgresError {
            text,
            code,
            connection,
            source,
        }
    }

    /// The SQLSTATE code the server gave (`"40001"`, `"53300"`...), if it answered at all.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// True if the connection to the server failed — lost, refused, or the server shutting
    /// down, starting or out of connection slots — rather than the server refusing the
    /// statement: the same work may succeed on a new connection later. outcore has already
    /// retried work that is safe to repeat (see `PgOptions::outage_window`).
    pub fn is_connection_error(&self) -> bool {
        self.connection
    }
}

/// An error from the embedded store's index (LMDB). A full disk and a full index map are
/// usually reported as [`Error::Io`] with `StorageFull` instead, naming the index file;
/// this says so too for the cases that reach the caller unexplained. The index library's error
/// is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct IndexError {
    text: String,
    map_full: bool,
    os_error: Option<std::io::ErrorKind>,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl IndexError {
    /// Built by the embedded store, which knows how to read the index library's error.
    pub(crate) fn new(
        map_full: bool,
        os_error: Option<std::io::ErrorKind>,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        IndexError {
            text: source.to_string(),
            map_full,
            os_error,
            source,
        }
    }

    /// True if the index reached its map size (`MDB_MAP_FULL`): open the store with a larger
    /// `LocalOptions::map_size` (or `OUTCORE_LMDB_MAP_BYTES`).
    pub fn is_map_full(&self) -> bool {
        self.map_full
    }

    /// The kind of the operating-system error the index reported, if it was one (for
    /// example `StorageFull` for a full disk, `PermissionDenied`).
    pub fn os_error_kind(&self) -> Option<std::io::ErrorKind> {
        self.os_error
    }

    /// The index library's own error, for the embedded store's classification of errors.
    pub(crate) fn original<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref()
    }
}

/// Shorthand for `std::result::Result<T, outcore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
