//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`]. Variants are meant to be matched on:
//! [`Error::Conflict`] and [`Error::SnapshotTooOld`] are the retryable ones (abort, then redo the
//! transaction).

use std::path::PathBuf;

use crate::storage::{Key, Tid};

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
    /// An error from PostgreSQL (connection or server); never shows credentials. Its text is
    /// the server's own message for server errors, the chain of causes for the others.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {}", postgres_text(.0))]
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
            | Error::Lmdb(_)
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

/// The text of a PostgreSQL error. The client's own text says too little ("db error",
/// "error connecting to server", "invalid connection string"): server errors give the
/// server's message, detail, hint and SQLSTATE; the others their chain of causes (the refused
/// connection, the unknown url option).
#[cfg(feature = "postgres")]
pub(crate) fn postgres_text(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_string();
        for extra in [db.detail(), db.hint()].into_iter().flatten() {
            text.push_str("; ");
            text.push_str(extra);
        }
        text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Shorthand for `std::result::Result<T, outcore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
