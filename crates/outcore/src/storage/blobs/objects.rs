//! The object-store side of the blob layer: one bucket prefix, the client and small tokio
//! runtime the process shares for its bucket (`client.rs`), and the batched requests the
//! store makes (parallel PUTs and GETs, a listing, deletions; one body's PUT or GET is
//! `upload.rs`'s or `fetch.rs`'s). Synchronous callers
//! block on the runtime; retries with backoff are the client's (`object_store`'s
//! `RetryConfig`). Endpoint, region and credentials come from the `AWS_*`
//! environment variables only, and no message built here contains them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::body::Body;
use super::client::Client;
use crate::storage::{Key, Oid};
use crate::{Error, Result};

/// Requests in flight at once within one batch.
const PARALLEL: usize = 16;

/// An object of the store found by [`Objects::list`].
#[derive(Debug)]
pub(crate) struct Listed {
    /// The block it holds a body of.
    pub key: Key,
    /// Its name under the block (the pointer's id).
    pub id: u128,
    /// Its full path, for deletion.
    pub path: Path,
    /// Its size in bytes.
    pub size: u64,
    /// When the object store says it was written.
    pub modified: SystemTime,
}

/// A bucket prefix of an S3-compatible object store.
pub(crate) struct Objects {
    /// `s3://bucket/prefix`, for messages.
    url: String,
    /// Every object of the store lies under it: `<prefix>/<file oid>/<block>/<id>`.
    prefix: Path,
    /// The client and runtime shared by every store of the process on the same bucket and
    /// environment (`client.rs`).
    client: Arc<Client>,
    /// The process that started the runtime: a forked child has none of its threads, and
    /// waiting on it there would hang.
    pid: u32,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("url", &self.url).finish()
    }
}

/// Wraps an object-store error with what was being done (the client's text names the
/// request and the server's answer, never the credentials).
fn failed(what: String, e: impl std::fmt::Display) -> Error {
    Error::io(what, std::io::Error::other(e.to_string()))
}

impl Objects {
    /// The prefix `url` (`s3://bucket[/prefix]`) of the store `AWS_*` describes. Connects
    /// lazily: a wrong endpoint or bucket shows at the first request. A request that fails
    /// in a way worth retrying (no connection, a timeout, a 5xx answer) is retried with
    /// backoff until `retry_window` has passed since its first attempt.
    pub fn open(url: &str, retry_window: Duration) -> Result<Objects> {
        let bad = || {
            Error::InvalidArgument(format!(
                "blobs={url:?}: expected s3://bucket or s3://bucket/prefix"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad());
        }
        let client = super::client::client(url, bucket, retry_window)?;
        Ok(Objects {
            url: url.to_owned(),
            prefix: Path::from(prefix),
            client,
            pid: std::process::id(),
        })
    }

    /// Runs `work` on the store's runtime until it completes; refused in a forked child.
    fn run<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.same_process()?;
        Ok(self.client.runtime.block_on(work))
    }

    /// Refuses a forked child, which has none of the runtime's threads (waiting on them
    /// there would hang).
    fn same_process(&self) -> Result<()> {
        if std::process::id() == self.pid {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "the object store {} was opened by process {} before this one forked from it: \
             open the database again in this process",
            self.url, self.pid
        )))
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where body `id` of block `key` lives: a name no other write can produce.
    pub fn path(&self, key: Key, id: u128) -> Path {
        let (file, index) = match key {
            Key::Block { file, index } => (file.0, index),
            Key::Meta(oid) => (oid.0, u64::MAX),
        };
        self.prefix
            .clone()
            .join(file.to_string())
            .join(index.to_string())
            .join(format!("{id:032x}"))
    }

    /// Uploads every `(path, bytes)` in parallel; on failure deletes what did upload (best
    /// effort: pack removes what is left) and says which failed.
    pub fn put_all(&self, uploads: Vec<(Path, bytes::Bytes)>) -> Result<()> {
        let client = &self.client.store;
        let results: Vec<(Path, object_store::Result<()>)> = self.run(
            stream::iter(uploads)
                .map(|(path, bytes)| async move {
                    let r = super::upload::put_body(client, &path, bytes).await;
                    (path, r)
                })
                .buffer_unordered(PARALLEL)
                .collect(),
        )?;
        let Some((path, Err(e))) = results.iter().find(|(_, r)| r.is_err()) else {
            return Ok(());
        };
        let error = failed(
            format!(
                "uploading block bodies to {} ({path}; nothing was committed)",
                self.url
            ),
            e,
        );
        let uploaded: Vec<Path> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(p, _)| p.clone())
            .collect();
        self.delete_quietly(uploaded);
        Err(error)
    }

    /// Fetches the bodies of every `(block, path, expected length)` in parallel, in the order
    /// given (large ones in parallel ranges, `fetch.rs`). A missing object is `Ok(None)`.
    pub fn get_all(&self, paths: &[(Key, Path, u64)]) -> Result<Vec<Result<Option<Body>>>> {
        let client = &self.client.store;
        let url = &self.url;
        self.run(
            stream::iter(paths)
                .map(|(key, path, len)| get_one(client, url, *key, path, *len))
                .buffered(PARALLEL)
                .collect(),
        )
    }

    /// The size and write time of every object of `paths`, in parallel, in the order given;
    /// `None` for a missing object.
    pub fn head_all(&self, paths: &[Path]) -> Result<Vec<Option<(u64, SystemTime)>>> {
        let client = &self.client.store;
        let url = &self.url;
        let results: Vec<Result<Option<(u64, SystemTime)>>> = self.run(
            stream::iter(paths)
                .map(|path| async move {
                    match client.head(path).await {
                        Ok(m) => Ok(Some((m.size, SystemTime::from(m.last_modified)))),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(failed(format!("looking up {path} in {url}"), e)),
                    }
                })
                .buffered(PARALLEL)
                .collect(),
        )?;
        results.into_iter().collect()
    }

    /// [`Objects::get_all`] of one body in the background: `done` gets what `get_all` would
    /// have returned for it. In a forked child (no runtime threads) `done` gets the refusal
    /// at once.
    pub fn spawn_get(
        &self,
        key: Key,
        path: Path,
        len: u64,
        done: impl FnOnce(Result<Option<Body>>) + Send + 'static,
    ) {
        if let Err(e) = self.same_process() {
            return done(Err(e));
        }
        let (client, url) = (self.client.store.clone(), self.url.clone());
        self.client.runtime.spawn(async move {
            done(get_one(&client, &url, key, &path, len).await);
        });
    }

    /// Every object under the prefix that names a block body; other objects are skipped
    /// (never deleted).
    pub fn list(&self) -> Result<Vec<Listed>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .run(self.client.store.list(Some(&self.prefix)).try_collect())?
            .map_err(|e| failed(format!("listing {}", self.url), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let (key, id) = self.parse(&m.location)?;
                Some(Listed {
                    key,
                    id,
                    path: m.location,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect())
    }

    /// The block and id of a body's path, `None` for other paths.
    fn parse(&self, path: &Path) -> Option<(Key, u128)> {
        let mut parts = path.prefix_match(&self.prefix)?;
        let file: u64 = parts.next()?.as_ref().parse().ok()?;
        let index: u64 = parts.next()?.as_ref().parse().ok()?;
        let id = parts.next()?;
        let id = id.as_ref();
        if parts.next().is_some() || id.len() != 32 {
            return None;
        }
        let id = u128::from_str_radix(id, 16).ok()?;
        Some((
            Key::Block {
                file: Oid(file),
                index,
            },
            id,
        ))
    }

    /// Deletes `paths` in parallel; an object already gone counts as deleted.
    pub fn delete_all(&self, paths: Vec<Path>) -> Result<()> {
        let client = &self.client.store;
        let url = &self.url;
        let results: Vec<Result<()>> = self.run(
            stream::iter(paths)
                .map(|path| async move {
                    match client.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(failed(format!("deleting {path} from {url}"), e)),
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect(),
        )?;
        results.into_iter().collect()
    }

    /// [`Objects::delete_all`] for objects nothing references, whose leftovers pack removes
    /// anyway: failures are only logged.
    pub fn delete_quietly(&self, paths: Vec<Path>) {
        if paths.is_empty() {
            return;
        }
        if let Err(e) = self.delete_all(paths) {
            tracing::warn!("unreferenced block bodies stay until the next pack: {e}");
        }
    }
}

/// The body of `key` in object `path` of `url` (expected to hold `len` bytes): `Ok(None)` if
/// the object is missing, an error naming the block if it cannot be fetched.
async fn get_one(
    client: &Arc<dyn ObjectStore>,
    url: &str,
    key: Key,
    path: &Path,
    len: u64,
) -> Result<Option<Body>> {
    match super::fetch::get_body(client, path, len).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(failed(
            format!("fetching the body of {key} (object {path} of {url})"),
            e,
        )),
    }
}
