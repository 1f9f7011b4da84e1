//! How the PostgreSQL client's errors become [`Error::Postgres`]: their text (which never
//! shows credentials) and whether they mean a failed connection, decided once here so the
//! pool's retries and the commit's outcome check read a flag instead of the client's error.

use crate::error::PostgresError;
use crate::Error;

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Postgres(PostgresError::new(
            text(&e),
            e.code().map(|c| c.code().to_string()),
            is_connection_error(&e),
            Box::new(e),
        ))
    }
}

/// The text of a PostgreSQL error. The client's own text says too little ("db error",
/// "error connecting to server", "invalid connection string"): server errors give the
/// server's message, detail, hint and SQLSTATE; the others their chain of causes (the refused
/// connection, the unknown url option).
pub(super) fn text(e: &postgres::Error) -> String {
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

/// True if `e` means the connection (or the server) went away or refused us, so the work may
/// be retried on a new connection.
fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    use postgres::error::SqlState;
    if let Some(code) = e.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            // No connection slot free: others will finish (see `Pool::take`).
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code);
    }
    // A dropped or refused connection, not (say) a TLS certificate the client rejected.
    use std::io::ErrorKind as K;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::TimedOut
            );
        }
        source = s.source();
    }
    false
}

/// True if the server refused a connection because all its slots are taken.
pub(super) fn is_too_many_clients(e: &Error) -> bool {
    matches!(e, Error::Postgres(pe)
        if pe.code() == Some(postgres::error::SqlState::TOO_MANY_CONNECTIONS.code()))
}

/// True if `e` means the connection (or the server) went away or refused us, so the work may
/// be retried on a new connection (or, for a commit, its outcome must be looked up).
pub(super) fn is_connection_lost(e: &Error) -> bool {
    matches!(e, Error::Postgres(pe) if pe.is_connection_error())
}
