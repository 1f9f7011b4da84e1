//! A small pool of PostgreSQL connections, with reconnect-and-retry for work that is safe to
//! repeat.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls;

use crate::{Error, Result};

/// Connections to one database, all with `search_path` set to the store's schema.
pub(super) struct Pool {
    config: Config,
    tls: MakeRustlsConnect,
    schema: String,
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
}

/// Delays between attempts of retryable work.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(1000),
    Duration::from_millis(3000),
];

/// True if `e` means the connection (or the server) went away, so the work may be retried on
/// a new connection.
pub(super) fn is_connection_error(e: &Error) -> bool {
    let Error::Postgres(pe) = e else {
        return false;
    };
    if pe.is_closed() {
        return true;
    }
    use postgres::error::SqlState;
    if let Some(code) = pe.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
        ]
        .contains(code);
    }
    // A dropped or refused connection, not (say) a TLS certificate the client rejected.
    use std::io::ErrorKind as K;
    let mut source = std::error::Error::source(pe);
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

impl Pool {
    /// A pool for `url` whose connections use `schema`.
    pub fn new(url: &str, schema: &str, max_idle: usize) -> Result<Self> {
        let (url, verify) = tls::split_tls_params(url)?;
        let tls = tls::connector(&verify)?;
        let mut config = Config::from_str(&url).map_err(|e| {
            Error::InvalidArgument(format!(
                "bad PostgreSQL url: {}",
                crate::error::postgres_text(&e)
            ))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("outcore");
        }
        // libpq convention: a password not in the url comes from PGPASSWORD.
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        config.connect_timeout(Duration::from_secs(10));
        Ok(Pool {
            config,
            tls,
            schema: schema.to_string(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// How many connections the pool keeps (and parallel fetches use).
    pub fn size(&self) -> usize {
        self.max_idle
    }

    fn connect(&self) -> Result<Client> {
        let mut client = self.config.connect(self.tls.clone())?;
        client.batch_execute(&format!(
            "SET search_path TO {}; SET synchronous_commit TO on",
            self.schema
        ))?;
        Ok(client)
    }

    fn take(&self) -> Result<Client> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    fn put(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(client);
        }
    }

    /// Runs `f` on a pooled connection; if the connection or server fails, retries on a new
    /// connection with backoff. Only for work that is safe to repeat (reads, idempotent
    /// updates, transactions that roll back on failure).
    pub fn with_client<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let result = self.take().and_then(|mut c| {
                let r = f(&mut c).map_err(Into::into);
                self.put(c);
                r
            });
            match result {
                Err(e) if is_connection_error(&e) && attempt < BACKOFF.len() => {
                    tracing::warn!("PostgreSQL connection lost ({e}); retrying");
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    std::thread::sleep(BACKOFF[attempt]);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `f` once on a pooled connection, without retry (for commits, whose outcome must be
    /// checked rather than repeated when the connection fails).
    pub fn with_fresh_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.take()?;
        // A pooled connection may have died with a server restart: check before relying on
        // it for work that is not retried.
        if c.is_valid(Duration::from_secs(5)).is_err() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            c = self.connect()?;
        }
        let r = f(&mut c);
        self.put(c);
        r
    }
}
