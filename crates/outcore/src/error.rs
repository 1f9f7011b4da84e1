//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`]. Variants are meant to be matched on:
//! [`Error::Conflict`] and [`Error::SnapshotTooOld`] are the retryable ones (abort, then redo the
//! transaction).

use std::path::PathBuf;

use crate::storage::{Key, Tid};

/// Everything that can go wrong in outcore.
#[derive(Debug, thiserror::Error)]
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
    /// An error from PostgreSQL (connection or server), with the server's own message when it
    /// sent one; never shows credentials.
    #[error("PostgreSQL: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// An error from the LMDB index.
    #[error("index error: {0}")]
    Lmdb(#[from] heed::Error),
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
        matches!(self, Error::Conflict { .. } | Error::SnapshotTooOld { .. })
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The text of a PostgreSQL error: the client's summary (e.g. "db error") plus what the server
/// said (e.g. "FATAL: sorry, too many clients already"), which the summary alone omits.
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{e}: {} {} ({})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// Shorthand for `std::result::Result<T, outcore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
