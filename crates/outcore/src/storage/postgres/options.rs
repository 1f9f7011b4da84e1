//! How a [`PgStorage`] is opened: [`PgOptions`], outcore's own url options (which libpq does
//! not know and never sees), and the url as messages show it (without its password).

use std::time::Duration;

use super::PgStorage;
use crate::storage::Compression;
use crate::{Error, Result};

/// A lease whose heartbeat is older than this no longer protects history from pack (the
/// default of [`PgOptions::lease_timeout`]).
const LEASE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default of [`PgOptions::outage_window`].
const OUTAGE_WINDOW: Duration = Duration::from_secs(60);
/// The default of [`PgOptions::pool_size`].
const POOL_SIZE: usize = 2;

/// How to open a [`PgStorage`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The PostgreSQL schema holding the store's tables (default `outcore`).
    pub schema: String,
    /// Block compression for a new store.
    pub compression: Compression,
    /// At most this many connections per process to this url, shared by every store opened
    /// on it (the first open sets it); parallel fetches use them all. Url option `pool_size`;
    /// default 2.
    pub pool_size: usize,
    /// A reader lease whose heartbeat is older than this no longer protects history from
    /// pack; heartbeats run every sixth of it. Url option `lease_timeout=SECONDS`; default
    /// 120 s. All nodes should use the same value: pack uses its own.
    pub lease_timeout: Duration,
    /// How long memory filled on first touch waits out an unreachable server before the
    /// touch fails (SIGBUS), and how long a commit whose reply was lost is looked up before
    /// [`Error::CommitOutcomeUnknown`]. Url option `outage_window=SECONDS` (the first open
    /// of a url sets it); default 60 s.
    pub outage_window: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "outcore".into(),
            compression: Compression::None,
            pool_size: POOL_SIZE,
            lease_timeout: LEASE_TIMEOUT,
            outage_window: OUTAGE_WINDOW,
        }
    }
}

impl PgStorage {
    /// Splits outcore's own parameters off `url`: the url libpq accepts, and the schema that
    /// `outcore_schema` names, if any. A url whose options are invalid comes back unchanged
    /// (opening it reports the error).
    pub fn split_schema(url: &str) -> (String, Option<String>) {
        let mut o = PgOptions {
            schema: String::new(),
            ..PgOptions::default()
        };
        match Self::split_options(url, &mut o) {
            Ok(base) => (base, Some(o.schema).filter(|s| !s.is_empty())),
            Err(_) => (url.to_string(), None),
        }
    }

    /// Splits outcore's own parameters off `url` (libpq does not know them) into `options`:
    /// `outcore_schema=NAME`, `lease_timeout=SECONDS`, `pool_size=N`, `outage_window=SECONDS`.
    /// Returns the url left for libpq.
    pub fn split_options(url: &str, options: &mut PgOptions) -> Result<String> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok(url.to_string());
        };
        let seconds = |name: &str, v: &str| -> Result<Duration> {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "url option {name}={v:?} must be a positive number of seconds"
                    ))
                })
        };
        let mut rest = Vec::new();
        for p in query.split('&').filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some(("outcore_schema", v)) => options.schema = v.to_string(),
                Some(("lease_timeout", v)) => options.lease_timeout = seconds("lease_timeout", v)?,
                Some(("outage_window", v)) => options.outage_window = seconds("outage_window", v)?,
                Some(("pool_size", v)) => {
                    options.pool_size = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "url option pool_size={v:?} must be a positive integer"
                        ))
                    })?
                }
                _ => rest.push(p),
            }
        }
        Ok(if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        })
    }
}

/// The url without its password, for messages.
pub(super) fn url_for_messages(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_passwords() {
        assert_eq!(
            url_for_messages("postgresql://me:secret@db.example:5432/x?sslmode=disable"),
            "postgresql://me@db.example:5432/x?sslmode=disable"
        );
        assert_eq!(
            url_for_messages("postgresql://me@h/x"),
            "postgresql://me@h/x"
        );
        let err = PgStorage::open("postgresql://me:secret@127.0.0.1:1/x").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        // Nobody listens there: a refused connection, which a retry later may cure.
        match &err {
            Error::Postgres(pe) => assert!(pe.is_connection_error() && pe.code().is_none()),
            other => panic!("{other:?}"),
        }
        let mut o = PgOptions::default();
        let url = PgStorage::split_options(
            "postgresql://h/x?a=1&outcore_schema=s&lease_timeout=2.5&b=2&pool_size=1",
            &mut o,
        )
        .unwrap();
        assert_eq!(url, "postgresql://h/x?a=1&b=2");
        assert_eq!(
            (o.schema.as_str(), o.lease_timeout, o.pool_size),
            ("s", Duration::from_millis(2500), 1)
        );
        assert_eq!(
            PgStorage::split_schema("postgresql://h/x?a=1&outcore_schema=s&pool_size=1"),
            ("postgresql://h/x?a=1".to_string(), Some("s".to_string()))
        );
        for bad in ["lease_timeout=0", "outage_window=x", "pool_size=0"] {
            let e = PgStorage::split_options(&format!("postgresql://h/x?{bad}"), &mut o);
            assert!(e
                .unwrap_err()
                .to_string()
                .contains(bad.split('=').next().unwrap()));
        }
    }
}
