//! One object-store client, and the runtime its connections live on, per configuration and
//! process: every open of a store on the same bucket with the same `AWS_*` environment shares
//! them. Building a client loads the system's TLS root certificates, which took most of an
//! `open` (2–3 ms of about 4 here, every time); a warm scan opens the store each time and then
//! sends no request at all. Shared clients also keep their pooled connections from one open to
//! the next. They live as long as the process (a few per process in practice: one per bucket
//! and environment used).
//!
//! A forked child gets its own (the key holds the process id): the parent's runtime has no
//! threads in the child, and its connections are the parent's sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::{Error, Result};

/// A client and the runtime that runs its requests.
pub(crate) struct Client {
    /// The client of one bucket.
    pub store: Arc<dyn ObjectStore>,
    /// Runs the client's requests (and keeps its pooled connections alive).
    pub runtime: tokio::runtime::Runtime,
}

/// What a client was built from: equal keys give equal clients.
#[derive(PartialEq, Eq)]
struct ClientKey {
    pid: u32,
    bucket: String,
    retry_window: Duration,
    /// Every `AWS_*` variable (what `AmazonS3Builder::from_env` reads), sorted.
    env: Vec<(String, String)>,
}

/// The clients built so far in this process (and, after a fork, the parent's: never used).
/// Lock held only to look up or insert, never while building.
static CLIENTS: Mutex<Vec<(ClientKey, Arc<Client>)>> = Mutex::new(Vec::new());

/// The client of `bucket` (of the store `url`, for messages) for the current `AWS_*`
/// environment: the one built before for the same configuration in this process, else a new
/// one. A request that fails in a way worth
/// retrying (no connection, a timeout, a 5xx answer) is retried with backoff until
/// `retry_window` has passed since its first attempt. Errors say what could not be configured,
/// never the credentials.
pub(crate) fn client(url: &str, bucket: &str, retry_window: Duration) -> Result<Arc<Client>> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    env.sort();
    let key = ClientKey {
        pid: std::process::id(),
        bucket: bucket.to_owned(),
        retry_window,
        env,
    };
    let lock = || CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, found)) = lock().iter().find(|(k, _)| *k == key) {
        return Ok(found.clone());
    }
    let built = Arc::new(build(url, bucket, retry_window)?);
    let mut clients = lock();
    // Another thread may have built the same meanwhile: keep the first, so all share one.
    if let Some((_, found)) = clients.iter().find(|(k, _)| *k == key) {
        return Ok(found.clone());
    }
    clients.push((key, built.clone()));
    Ok(built)
}

/// A new client of `bucket` (of `url`) configured from the `AWS_*` environment, with its
/// runtime.
fn build(url: &str, bucket: &str, retry_window: Duration) -> Result<Client> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        // The window decides, not a count: a server restart takes as long as it takes.
        max_retries: usize::MAX,
        retry_timeout: retry_window,
    };
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .build()
        .map_err(|e| {
            Error::io(
                format!("configuring the object store for {url}"),
                std::io::Error::other(e.to_string()),
            )
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("outcore-s3")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the object-store runtime", e))?;
    Ok(Client {
        store: Arc::new(store),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_bucket_and_configuration() {
        let window = Duration::from_secs(7);
        let a = client("s3://shared-a/x", "shared-a", window).unwrap();
        let again = client("s3://shared-a/y", "shared-a", window).unwrap();
        assert!(
            Arc::ptr_eq(&a, &again),
            "same bucket and configuration: shared"
        );
        let other_bucket = client("s3://shared-b", "shared-b", window).unwrap();
        assert!(!Arc::ptr_eq(&a, &other_bucket));
        let other_window = client("s3://shared-a", "shared-a", window * 2).unwrap();
        assert!(!Arc::ptr_eq(&a, &other_window));
    }
}
