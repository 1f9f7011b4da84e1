//! The per-process pool of PostgreSQL connections, with reconnect-and-retry for work that is
//! safe to repeat.
//!
//! **One pool per url per process**, shared by every store opened on that url (any schema; a
//! connection's `search_path` is switched when it serves another schema), and bounded: at most
//! `pool_size` connections are open at once; more work waits for a free one. When the server
//! refuses a connection for lack of slots ("too many clients"), a pool that already holds one
//! shrinks to what it has instead of failing; a pool holding none retries like an outage.
//!
//! **Retries.** Work that fails because the connection or server went away is retried on a
//! new connection with backoff. How long depends on who waits: a caller that can receive an
//! error (`load()`, view creation, commits) gives up after [`PROMPT`] (0.05 + 0.2 + 1 + 3 s
//! between 5 attempts); the threads that fill memory on first touch — whose failure is a
//! SIGBUS — keep retrying until the store has been unreachable for the outage window (url
//! option `outage_window`, default 60 s), counted from the first failure of the outage. A
//! process without any connection that finds the server full waits for a slot for up to the
//! outage window as well (other processes finish), whatever the caller.

use std::cell::Cell;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::errors::{is_connection_lost, is_too_many_clients};
use super::tls;

use crate::{Error, Result};

/// At most this many connections of one url are open at once in one process.
pub(super) struct Pool {
    config: Config,
    tls: MakeRustlsConnect,
    state: Mutex<State>,
    /// Signalled when a connection is returned or closed.
    freed: Condvar,
    /// How long fault-path work waits out an outage.
    outage_window: Duration,
}

struct State {
    idle: Vec<Conn>,
    /// Connections open (idle or in use) or being opened.
    open: usize,
    /// The bound: `pool_size`, lowered when the server has no slot for more.
    limit: usize,
}

/// A connection and the schema its `search_path` names.
pub(super) struct Conn {
    client: Client,
    schema: String,
}

/// Delays between attempts of retryable work a caller waits for (errors reach it promptly).
const PROMPT: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(1000),
    Duration::from_millis(3000),
];

/// The longest pause between attempts while the fault path waits out an outage.
const PATIENT_STEP: Duration = Duration::from_secs(2);

/// A fault-path thread's failures further apart than this belong to different outages.
const OUTAGE_GAP: Duration = Duration::from_secs(30);

thread_local! {
    /// When the store became unreachable for this (fault-path) thread, and when it last
    /// failed: the outage window counts from the start across the memory layer's own retries
    /// of one fetch (a few seconds apart), not across unrelated outages.
    static OUTAGE_SINCE: Cell<Option<(Instant, Instant)>> = const { Cell::new(None) };
}

/// True on the memory layer's threads that fill memory on first touch: a failure there cannot
/// be returned to anyone and ends in SIGBUS, so they wait out outages (see the module docs).
fn on_fault_path() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("outcore-fetch") || n == "outcore-faults")
}

/// The shared pool of `url` (a libpq url without outcore's own options), created with
/// `pool_size` and `outage_window` by the first store that opens it in this process.
pub(super) fn shared(url: &str, pool_size: usize, outage_window: Duration) -> Result<Arc<Pool>> {
    static POOLS: OnceLock<Mutex<HashMap<String, Weak<Pool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pools.retain(|_, p| p.strong_count() > 0);
    if let Some(pool) = pools.get(url).and_then(Weak::upgrade) {
        return Ok(pool);
    }
    let pool = Arc::new(Pool::new(url, pool_size, outage_window)?);
    pools.insert(url.to_string(), Arc::downgrade(&pool));
    Ok(pool)
}

impl Pool {
    /// A pool for `url` holding at most `size` connections.
    fn new(url: &str, size: usize, outage_window: Duration) -> Result<Self> {
        let (url, verify) = tls::split_tls_params(url)?;
        let tls = tls::connector(&verify)?;
        let mut config = Config::from_str(&url).map_err(|e| {
            Error::InvalidArgument(format!("bad PostgreSQL url: {}", super::errors::text(&e)))
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
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                limit: size.max(1),
            }),
            freed: Condvar::new(),
            outage_window,
        })
    }

    /// How many connections parallel fetches may use now.
    pub fn size(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An open connection with `search_path` set to `schema`: an idle one, a new one while
    /// under the bound, or the next one returned.
    fn take(&self, schema: &str) -> Result<Conn> {
        let mut state = self.lock();
        let mut conn = loop {
            // Prefer a connection already on this schema.
            let pick = state
                .idle
                .iter()
                .rposition(|c| c.schema == schema)
                .or(state.idle.len().checked_sub(1));
            if let Some(i) = pick {
                let c = state.idle.swap_remove(i);
                if c.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                break c;
            }
            if state.open < state.limit {
                state.open += 1;
                drop(state);
                match self.connect(schema) {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        state = self.lock();
                        state.open -= 1;
                        self.freed.notify_one();
                        // No slot left on the server, but some of ours are open: make do
                        // with those.
                        if is_too_many_clients(&e) && state.open > 0 {
                            state.limit = state.open;
                            tracing::warn!(
                                "PostgreSQL has no connection slot left; this process keeps \
                                 using {} ({e})",
                                state.open
                            );
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        };
        drop(state);
        if conn.schema != schema {
            if let Err(e) = conn
                .client
                .batch_execute(&format!("SET search_path TO {schema}"))
            {
                self.put(conn);
                return Err(e.into());
            }
            conn.schema = schema.to_string();
        }
        Ok(conn)
    }

    fn connect(&self, schema: &str) -> Result<Conn> {
        let mut client = self.config.connect(self.tls.clone())?;
        client.batch_execute(&format!(
            "SET search_path TO {schema}; SET synchronous_commit TO on"
        ))?;
        Ok(Conn {
            client,
            schema: schema.to_string(),
        })
    }

    /// Returns a connection (a closed one frees its slot).
    fn put(&self, conn: Conn) {
        let mut state = self.lock();
        if conn.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        self.freed.notify_one();
    }

    /// Closes the idle connections (after a connection error: they are likely dead too).
    fn drop_idle(&self) {
        let mut state = self.lock();
        let n = state.idle.len();
        state.idle.clear();
        state.open -= n;
        self.freed.notify_all();
    }

    /// Runs `f` on a pooled connection of `schema`; if the connection or server fails,
    /// retries on a new connection with backoff (see the module docs for how long). Only for
    /// work that is safe to repeat (reads, idempotent updates, transactions that roll back
    /// on failure).
    pub fn with_client<T>(
        &self,
        schema: &str,
        mut f: impl FnMut(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let fault_path = on_fault_path();
        let mut since = None;
        let mut attempt = 0;
        loop {
            let result = self.take(schema).and_then(|mut c| {
                let r = f(&mut c.client);
                self.put(c);
                r
            });
            let e = match result {
                Err(e) if is_connection_lost(&e) => e,
                other => {
                    if fault_path {
                        OUTAGE_SINCE.set(None);
                    }
                    return other;
                }
            };
            if !is_too_many_clients(&e) {
                self.drop_idle();
            }
            let delay = if fault_path || is_too_many_clients(&e) {
                // The fault path counts the outage across the memory layer's own retries.
                let start = match fault_path {
                    true => OUTAGE_SINCE
                        .get()
                        .filter(|(_, last)| last.elapsed() < OUTAGE_GAP)
                        .map(|(start, _)| start),
                    false => since,
                }
                .unwrap_or_else(Instant::now);
                since = Some(start);
                if fault_path {
                    OUTAGE_SINCE.set(Some((start, Instant::now())));
                }
                match self.patient_delay(start, attempt) {
                    Some(d) => d,
                    None => return Err(e),
                }
            } else {
                match PROMPT.get(attempt) {
                    Some(&d) => d,
                    None => return Err(e),
                }
            };
            tracing::warn!("PostgreSQL connection lost or refused ({e}); retrying");
            std::thread::sleep(delay);
            attempt += 1;
        }
    }

    /// The pause before attempt `attempt + 1` of work waiting out an outage (or a full server)
    /// that began at `start`; `None` once the outage window is over.
    fn patient_delay(&self, start: Instant, attempt: usize) -> Option<Duration> {
        let left = self.outage_window.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        Some(
            PROMPT
                .get(attempt)
                .copied()
                .unwrap_or(PATIENT_STEP)
                .min(PATIENT_STEP)
                .min(left),
        )
    }

    /// A connection for work that is not retried; waits for a slot while the server has none
    /// free (for up to the outage window).
    fn take_waiting_for_a_slot(&self, schema: &str) -> Result<Conn> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match self.take(schema) {
                Err(e) if is_too_many_clients(&e) => match self.patient_delay(start, attempt) {
                    Some(d) => std::thread::sleep(d),
                    None => return Err(e),
                },
                other => return other,
            }
            attempt += 1;
        }
    }

    /// Runs `f` once on a pooled connection of `schema`, without retry (for commits, whose
    /// outcome must be checked rather than repeated when the connection fails).
    pub fn with_fresh_client<T>(
        &self,
        schema: &str,
        f: impl FnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let mut c = self.take_waiting_for_a_slot(schema)?;
        // A pooled connection may have died with a server restart: check before relying on
        // it for work that is not retried.
        if c.client.is_valid(Duration::from_secs(5)).is_err() {
            self.put(c);
            self.drop_idle();
            c = self.take_waiting_for_a_slot(schema)?;
        }
        let r = f(&mut c.client);
        self.put(c);
        r
    }

    /// How long work on the fault path, and the lookup of a commit whose reply was lost, wait
    /// out an outage.
    pub fn outage_window(&self) -> Duration {
        self.outage_window
    }
}
