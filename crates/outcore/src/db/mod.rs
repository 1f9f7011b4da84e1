//! The database: named persistent arrays, connections and transactions.
//!
//! ```
//! use outcore::db::Database;
//! use outcore::array::Order;
//!
//! let db = Database::open("mem:")?;
//! let conn = db.connect()?;
//! let mut a = conn.create::<f64>("signal", &[1000], Order::C)?;
//! a.view_mut::<f64>()?.fill(1.5);
//! conn.commit()?;
//! a.append(ndarray::arr1(&[2.0, 3.0]).into_dyn().view())?;
//! assert_eq!(a.shape()?, vec![1002]);
//! conn.abort()?;                                   // the append is undone
//! assert_eq!(a.shape()?, vec![1000]);
//! assert_eq!(a.view::<f64>()?.sum(), 1500.0);
//! # Ok::<(), outcore::Error>(())
//! ```

mod bigarray;
mod connection;
mod describe;
mod handle;
pub(crate) mod root;
mod scratch;
mod shared;
mod source;
mod stats;
mod views;

use std::sync::Arc;

pub use bigarray::{BigArray, RawView};
pub use views::{View, ViewMut};

pub use connection::{Connection, Savepoint};
pub use root::{named_arrays, NamedArray};
pub use stats::{reader_leases, LeaseInfo, StoreStats, ROOT_CHANGED};

use crate::storage::{
    ClosableStorage, Compression, Key, LocalOptions, LocalStorage, MemStorage, Oid, StagedRef,
    Storage, Tid, TxnInfo,
};
use crate::{Error, Result};

/// How to open a [`Database`].
#[derive(Clone, Debug, Default)]
pub struct DbOptions {
    /// Refuse every change.
    pub readonly: bool,
    /// Block compression when the store is created (ignored for existing stores; see
    /// [`Database::compression`]).
    pub compression: Compression,
    /// RAM budget (bytes) for fetched blocks of stores that cannot be mapped (PostgreSQL,
    /// compressed): clean ones beyond it are dropped and fetched again when touched. The
    /// budget is process-wide; `None` keeps the current one (default 1 GiB, or
    /// `OUTCORE_CACHE_BYTES`).
    pub cache_bytes: Option<u64>,
    /// Address space reserved for each address-space window of an array (default:
    /// clamp(16 × the bytes viewed, 64 MiB, 1 TiB), at least twice those bytes; at least the
    /// bytes viewed either way). Windows are reserved when views first need them; an array
    /// that outgrows its window gets another for new views (see README, "Address space").
    pub reserve_bytes: Option<u64>,
    /// Budget (bytes) of uncommitted writes kept in private memory, process-wide: above it,
    /// written blocks are spilled to disk (staged space of the embedded uncompressed store,
    /// else the process's scratch file), so a transaction may change more than RAM. `None` keeps the current one
    /// (default a quarter of RAM or of the memory cgroup's limit, or `OUTCORE_DIRTY_BYTES`).
    pub dirty_bytes: Option<u64>,
    /// Where block bodies live: `s3://bucket/prefix` keeps them as objects in an S3-compatible
    /// object store (endpoint, region and credentials from the `AWS_*` environment
    /// variables), the index in the store `url` names. Chosen when the store is created and
    /// recorded in it: later opens, from any node, need only the url (`None`); naming another
    /// object store, or one for a store created without, is refused. See README, "Object
    /// storage".
    pub blobs: Option<String>,
    /// For stores whose block bodies are in an object store: the directory of the disk cache
    /// of fetched bodies, which are then mapped from there (zero copy, shared by the processes
    /// of a node using the same directory). `None`: the default, a directory per object store
    /// under `$XDG_CACHE_HOME/outcore` (else `~/.cache/outcore`); no disk cache where that
    /// cannot be made.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The disk cache's budget in bytes (least recently used bodies go first; default
    /// 10 GiB); `Some(0)` turns the disk cache off.
    pub cache_disk_bytes: Option<u64>,
}

/// A database: a store plus the means to open connections to it. Clones share the store
/// (and [`close`](Database::close) it for each other).
#[derive(Clone, Debug)]
pub struct Database {
    /// The store, wrapped so that [`Database::close`] can release it while connections,
    /// arrays and views still hold references.
    closable: Arc<ClosableStorage>,
    /// The same object as `closable`, as the trait object connections use.
    storage: Arc<dyn Storage>,
    options: DbOptions,
    /// The store's block compression, when known.
    compression: Option<Compression>,
}

/// Refuses a path that names a regular file (or anything but a directory): the embedded
/// store would otherwise call it a foreign directory, or not found.
fn check_not_a_file(path: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(Error::Format {
            path: path.into(),
            reason: "this is a file, not an outcore store (a store is a directory)".into(),
        }),
        _ => Ok(()),
    }
}

/// The PostgreSQL store at `url` and its compression.
#[cfg(feature = "postgres")]
fn open_postgres(url: &str, options: &DbOptions) -> Result<(Arc<dyn Storage>, Compression)> {
    use crate::storage::{PgOptions, PgStorage};
    let pg_options = PgOptions {
        compression: options.compression,
        ..PgOptions::default()
    };
    let store = PgStorage::open_with(url, pg_options)?;
    let compression = store.compression();
    Ok((Arc::new(store), compression))
}

/// Without the `postgres` feature: a clear error.
#[cfg(not(feature = "postgres"))]
fn open_postgres(url: &str, _options: &DbOptions) -> Result<(Arc<dyn Storage>, Compression)> {
    Err(Error::InvalidArgument(format!(
        "cannot open {url:?}: this build of outcore has no PostgreSQL support (cargo feature \
         \"postgres\")"
    )))
}

impl Database {
    /// Opens `url`: `mem:` for a fresh in-memory store, a filesystem path for the embedded
    /// store (created if missing), `postgresql://user@host/db` for the shared store (its
    /// schema is created if missing). A store created with [`DbOptions::blobs`] keeps its
    /// block bodies in that object store.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, DbOptions::default())
    }

    /// Opens `url` with `options`.
    pub fn open_with(url: &str, options: DbOptions) -> Result<Self> {
        if let Some(bytes) = options.cache_bytes {
            crate::vm::set_cache_budget(bytes);
        }
        if let Some(bytes) = options.dirty_bytes {
            crate::vm::set_dirty_budget(bytes);
        }
        let (storage, compression): (Arc<dyn Storage>, _) = if url == "mem:" {
            let store = MemStorage::with_compression(options.compression);
            (Arc::new(store), options.compression)
        } else if url.starts_with("postgresql://") || url.starts_with("postgres://") {
            open_postgres(url, &options)?
        } else if url.is_empty() || url.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "cannot open {url:?}: use a directory path, \"mem:\" or a postgresql:// url"
            )));
        } else {
            check_not_a_file(url)?;
            let store = LocalStorage::open_with(
                url,
                LocalOptions {
                    compression: options.compression,
                    create: !options.readonly,
                    ..LocalOptions::default()
                },
            )?;
            let compression = store.compression();
            (Arc::new(store), compression)
        };
        let (storage, in_objects) = crate::storage::blobs::setting::attach(storage, &options)?;
        // Bodies in an object store are stored as they are (the index compresses only its
        // own records).
        let compression = if in_objects {
            Compression::None
        } else {
            compression
        };
        Ok(Self::wrap(storage, options, Some(compression)))
    }

    /// Wraps an existing store.
    pub fn from_storage(storage: Arc<dyn Storage>) -> Self {
        Self::wrap(storage, DbOptions::default(), None)
    }

    fn wrap(
        storage: Arc<dyn Storage>,
        options: DbOptions,
        compression: Option<Compression>,
    ) -> Self {
        let closable = Arc::new(ClosableStorage::new(storage));
        Database {
            storage: closable.clone(),
            closable,
            options,
            compression,
        }
    }

    /// The block compression of the store: its own setting, which for an existing store need
    /// not be the one [`DbOptions::compression`] asked for. `None` for stores wrapped with
    /// [`from_storage`](Database::from_storage).
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// Closes the store for this database, its clones and every connection: their reader
    /// leases are released, files, the index and network connections are closed, and later
    /// calls fail with [`Error::Closed`]. Close connections first to discard their changes
    /// cleanly. Views stay readable; blocks of compressed and remote stores that views have
    /// not fetched yet keep the store itself open until those views are gone. Closing again
    /// does nothing.
    pub fn close(&self) {
        self.closable.close();
    }

    /// A new connection at the newest snapshot.
    pub fn connect(&self) -> Result<Connection> {
        Connection::open(
            self.storage.clone(),
            !self.options.readonly,
            None,
            self.options.reserve_bytes,
        )
    }

    /// A read-only connection at the historical snapshot `at` (time travel).
    pub fn connect_at(&self, at: Tid) -> Result<Connection> {
        Connection::open(
            self.storage.clone(),
            false,
            Some(at),
            self.options.reserve_bytes,
        )
    }

    /// The most recent `limit` transactions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<TxnInfo>> {
        let horizon = self.storage.pack_horizon()?;
        let mut log = self.storage.log(horizon, Tid::MAX)?;
        log.reverse();
        log.truncate(limit);
        Ok(log)
    }

    /// The underlying store.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// For a process that computes a block's new contents for another to commit (a dask
    /// worker): writes `bytes` (at most a block) into the store as an unpublished version of
    /// block `block` of block file `file` ([`Storage::stage_body`]) and returns its reference;
    /// the committing process gives it to [`BigArray::adopt`]. `None` where the store cannot
    /// stage (compressed embedded, in-memory, nearly full): send the bytes instead.
    pub fn stage_block(&self, file: Oid, block: u64, bytes: &[u8]) -> Result<Option<StagedRef>> {
        self.storage
            .stage_body(Key::Block { file, index: block }, bytes)
    }
}
