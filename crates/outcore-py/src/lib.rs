//! `outcore._native`: the Rust core as a Python extension module.
//!
//! Thin glue only: the pure-Python package `outcore` (python/outcore) builds the public API
//! (`outcore.open`, `BigArray`, the `transaction` data manager) on these classes. Every call
//! that may block (storage I/O, fsync, locks) releases the GIL; no Rust code here ever calls
//! back into Python while holding a core lock: `tracing` events reach Python's `logging`
//! through a queue ([`logging`]).

mod errors;
mod logging;

use std::ffi::c_int;
use std::sync::{Arc, Mutex};

use outcore::array::Order;
use outcore::db;
use outcore::storage::{Compression, Tid, TxnMeta};
use outcore::vm::Reservation;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use errors::to_py;

trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for outcore::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// [`db::StoreStats`] as Python gets it: (tid, arrays, logical bytes, stored bytes, stored
/// blocks, holes, history bytes, history versions).
type StatsTuple = (u64, u64, u64, u64, u64, u64, u64, u64);

/// A database (store + connection factory).
#[pyclass(frozen, module = "outcore._native")]
struct Database {
    db: db::Database,
}

#[pymethods]
impl Database {
    #[new]
    // One argument per keyword of `outcore.open`: Python callers name them.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (url, readonly=false, compression=None, reserve_bytes=None, cache_bytes=None, dirty_bytes=None, blobs=None, cache_dir=None, cache_disk_bytes=None))]
    fn new(
        py: Python<'_>,
        url: String,
        readonly: bool,
        compression: Option<String>,
        reserve_bytes: Option<u64>,
        cache_bytes: Option<u64>,
        dirty_bytes: Option<u64>,
        blobs: Option<String>,
        cache_dir: Option<std::path::PathBuf>,
        cache_disk_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let compression: Compression = compression.as_deref().unwrap_or("none").parse().py()?;
        let options = db::DbOptions {
            readonly,
            compression,
            reserve_bytes,
            cache_bytes,
            dirty_bytes,
            blobs,
            cache_dir,
            cache_disk_bytes,
        };
        let db = logging::call(py, move || db::Database::open_with(&url, options))
            .map_err(errors::open_error)?;
        Ok(Database { db })
    }

    /// The store's block compression ("none", "lz4", "zstd"); None if unknown.
    fn compression(&self) -> Option<String> {
        self.db.compression().map(|c| c.to_string())
    }

    /// A connection at the newest snapshot.
    fn connect(&self, py: Python<'_>) -> PyResult<Connection> {
        let db = self.db.clone();
        let conn = logging::call(py, move || db.connect()).py()?;
        Ok(Connection { conn })
    }

    /// A read-only connection at snapshot `tid`.
    fn connect_at(&self, py: Python<'_>, tid: u64) -> PyResult<Connection> {
        let db = self.db.clone();
        let conn = logging::call(py, move || db.connect_at(Tid(tid))).py()?;
        Ok(Connection { conn })
    }

    /// The newest `limit` transactions (all if 0), newest first: a list of (tid, unix time,
    /// user, description, names of the arrays changed).
    #[allow(clippy::type_complexity)]
    fn history(
        &self,
        py: Python<'_>,
        limit: usize,
    ) -> PyResult<Vec<(u64, f64, String, String, Vec<String>)>> {
        let db = self.db.clone();
        let limit = if limit == 0 { usize::MAX } else { limit };
        let (log, names) = logging::call(py, move || {
            let head = db.storage().head()?;
            let log = db.history(limit)?;
            let names = db.changed_arrays(&log, head)?;
            Ok::<_, outcore::Error>((log, names))
        })
        .py()?;
        Ok(log
            .into_iter()
            .zip(names)
            .map(|(t, names)| {
                let secs = t
                    .tid
                    .time()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                (t.tid.0, secs, t.user, t.description, names)
            })
            .collect())
    }

    /// Measures the store at its head (see [`StatsTuple`]).
    fn stats(&self, py: Python<'_>) -> PyResult<StatsTuple> {
        let db = self.db.clone();
        let s = logging::call(py, move || db.stats()).py()?;
        Ok((
            s.tid.0,
            s.arrays,
            s.logical_bytes,
            s.stored_bytes,
            s.blocks,
            s.holes,
            s.history_bytes,
            s.history_versions,
        ))
    }

    /// Drops history older than `upto` (bounded by live readers): (horizon used, versions
    /// removed, versions kept, block bytes before, block bytes after).
    fn pack(&self, py: Python<'_>, upto: u64) -> PyResult<(u64, u64, u64, u64, u64)> {
        let db = self.db.clone();
        let s = logging::call(py, move || db.storage().pack(Tid(upto))).py()?;
        Ok((
            s.horizon.0,
            s.versions_removed,
            s.versions_kept,
            s.body_bytes_before,
            s.body_bytes_after,
        ))
    }

    /// Reads every stored version and checks it: (versions checked, bytes checked, the
    /// problems found as messages).
    fn verify(&self, py: Python<'_>) -> PyResult<(u64, u64, Vec<String>)> {
        let db = self.db.clone();
        let r = logging::call(py, move || db.storage().verify()).py()?;
        let problems = r.problems.iter().map(|e| e.to_string()).collect();
        Ok((r.versions_checked, r.bytes_checked, problems))
    }

    /// Writes `data` (the new contents of block `block` of block file `file`) into the store
    /// ahead of the commit that publishes it, for another process to adopt
    /// (`Array.adopt`): its reference (opaque bytes, to send anywhere), or `None` where the
    /// store cannot stage.
    fn stage_block<'py>(
        &self,
        py: Python<'py>,
        file: u64,
        block: u64,
        data: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let db = self.db.clone();
        let r = logging::call(py, move || {
            db.stage_block(outcore::storage::Oid(file), block, data)
        })
        .py()?;
        Ok(r.map(|r| PyBytes::new(py, &r.to_bytes())))
    }

    /// True if `stage_block` stages blocks in this store (it may still answer `None` when
    /// the disk is nearly full).
    fn stages_blocks(&self) -> bool {
        self.db.storage().stages_bodies()
    }

    /// The store's location.
    fn describe(&self) -> String {
        self.db.storage().describe()
    }

    /// Closes the store now (leases, files, network connections), even while connections,
    /// arrays and views of it live on; their later calls raise `ValueError`.
    fn close(&self, py: Python<'_>) {
        logging::call(py, || self.db.close());
    }
}

/// One connection: a snapshot and a transaction.
#[pyclass(frozen, module = "outcore._native")]
struct Connection {
    conn: db::Connection,
}

#[pymethods]
impl Connection {
    fn names(&self) -> PyResult<Vec<String>> {
        self.conn.names().py()
    }

    fn contains(&self, name: &str) -> PyResult<bool> {
        self.conn.contains(name).py()
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        py: Python<'_>,
        name: &str,
        dtype: &str,
        itemsize: usize,
        shape: Vec<u64>,
        order: &str,
        blksize: usize,
    ) -> PyResult<Array> {
        let order: Order = order.parse().py()?;
        let arr = logging::call(py, || {
            self.conn
                .create_raw(name, dtype, itemsize, &shape, order, blksize)
        })
        .py()?;
        Ok(Array { arr })
    }

    fn array(&self, py: Python<'_>, name: &str) -> PyResult<Array> {
        let arr = logging::call(py, || self.conn.array(name)).py()?;
        Ok(Array { arr })
    }

    fn link(&self, name: &str, array: &Array) -> PyResult<()> {
        self.conn.link(name, &array.arr).py()
    }

    fn remove(&self, name: &str) -> PyResult<()> {
        self.conn.remove(name).py()
    }

    fn is_dirty(&self, py: Python<'_>) -> PyResult<bool> {
        logging::call(py, || self.conn.is_dirty()).py()
    }

    #[pyo3(signature = (user="", description=""))]
    fn commit(&self, py: Python<'_>, user: &str, description: &str) -> PyResult<u64> {
        let meta = TxnMeta::new(user, description);
        logging::call(py, || {
            self.conn.commit_with(meta).map_err(|e| {
                // Named in the terms of the database while the snapshot still names them.
                let described = self.conn.describe_conflict(&e);
                (e, described)
            })
        })
        .map(|t| t.0)
        .map_err(|(e, described)| match described {
            Some(msg) => errors::Class::of(&e).err(msg),
            None => to_py(e),
        })
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        logging::call(py, || self.conn.abort()).py()
    }

    fn discard(&self, py: Python<'_>) -> PyResult<()> {
        logging::call(py, || self.conn.discard()).py()
    }

    fn savepoint(&self, py: Python<'_>) -> PyResult<Savepoint> {
        let sp = logging::call(py, || self.conn.savepoint()).py()?;
        Ok(Savepoint { sp: Mutex::new(sp) })
    }

    fn rollback(&self, py: Python<'_>, savepoint: &Savepoint) -> PyResult<()> {
        let sp = savepoint.sp.lock().unwrap_or_else(|p| p.into_inner());
        logging::call(py, || self.conn.rollback(&sp)).py()
    }

    fn tid(&self) -> PyResult<u64> {
        self.conn.tid().py().map(|t| t.0)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        logging::call(py, || self.conn.close()).py()
    }
}

/// A savepoint of a connection's transaction.
#[pyclass(frozen, module = "outcore._native")]
struct Savepoint {
    sp: Mutex<db::Savepoint>,
}

/// One persistent array of a connection.
#[pyclass(frozen, module = "outcore._native")]
struct Array {
    arr: db::BigArray,
}

#[pymethods]
impl Array {
    /// The array's identity (the oid of its metadata record).
    fn oid(&self) -> u64 {
        self.arr.oid().0
    }

    /// The block file holding the array's blocks (what `Database.stage_block` stages for).
    fn file(&self) -> PyResult<u64> {
        Ok(self.arr.meta().py()?.file.0)
    }

    /// (dtype descriptor, itemsize, shape, order, blksize).
    fn meta(&self) -> PyResult<(String, usize, Vec<u64>, String, usize)> {
        let m = self.arr.meta().py()?;
        Ok((m.dtype, m.itemsize, m.shape, m.order.to_string(), m.blksize))
    }

    /// Maps major-axis indices `lo..hi` and returns (memory, byte strides): `memory` exports
    /// exactly the bytes of those indices as a buffer (read-only unless writable) and keeps
    /// `owner` alive.
    #[pyo3(signature = (lo, hi, owner=None))]
    fn map(
        &self,
        py: Python<'_>,
        lo: u64,
        hi: u64,
        owner: Option<Py<PyAny>>,
    ) -> PyResult<(Mapping, Vec<isize>)> {
        let raw = logging::call(py, || self.arr.raw_view(lo..hi)).py()?;
        let mapping = Mapping {
            keep: raw.keepalive.clone(),
            addr: raw.ptr as usize,
            len: raw.len,
            writable: raw.writable,
            _owner: owner,
        };
        Ok((mapping, raw.strides))
    }

    /// The user attributes (JSON text written by the Python layer), or None.
    fn attrs(&self) -> PyResult<Option<String>> {
        Ok(self.arr.meta().py()?.attrs)
    }

    /// Replaces the user attributes (None removes them); joins the transaction's changes.
    fn set_attrs(&self, attrs: Option<String>) -> PyResult<()> {
        self.arr.set_attrs(attrs).py()
    }

    fn resize(&self, py: Python<'_>, shape: Vec<u64>) -> PyResult<()> {
        logging::call(py, || self.arr.resize(&shape)).py()
    }

    /// Appends raw bytes (in the array's order) of `shape`.
    fn append_bytes(&self, py: Python<'_>, data: &[u8], shape: Vec<u64>) -> PyResult<()> {
        logging::call(py, || self.arr.append_bytes(data, &shape)).py()
    }

    fn load(&self, py: Python<'_>, lo: u64, hi: u64) -> PyResult<()> {
        logging::call(py, || self.arr.load(lo..hi)).py()
    }

    /// Makes a version another process staged (`Database.stage_block`, whose reference
    /// `version` is) block `block`'s new version in this transaction.
    fn adopt(&self, py: Python<'_>, block: u64, version: &[u8]) -> PyResult<()> {
        let r = outcore::storage::StagedRef::from_bytes(version).py()?;
        logging::call(py, || self.arr.adopt(block, r)).py()
    }

    fn prefetch(&self, py: Python<'_>, lo: u64, hi: u64) -> PyResult<()> {
        logging::call(py, || self.arr.prefetch(lo..hi)).py()
    }
}

/// Array memory exported as a buffer; the base object of every view. It keeps the memory
/// mapped while any view lives, and exports exactly the mapped bytes of its views (writable
/// only on writable connections, so a read-only view cannot be flipped back to writeable).
#[pyclass(frozen, module = "outcore._native")]
struct Mapping {
    keep: Arc<Reservation>,
    addr: usize,
    len: usize,
    writable: bool,
    /// The Python connection the memory belongs to: kept alive by every view, so writes
    /// through a view are committed even when nothing else references the connection.
    _owner: Option<Py<PyAny>>,
}

#[pymethods]
impl Mapping {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (addr, len, writable) = {
            let m = slf.get();
            debug_assert!(Arc::strong_count(&m.keep) > 0);
            (m.addr, m.len, m.writable)
        };
        // SAFETY: `view` is the Py_buffer CPython asked us to fill; `addr..addr+len` is mapped
        // memory of the reservation that `slf` (referenced by the buffer) keeps alive.
        // PyBuffer_FillInfo refuses a writable request on read-only memory and takes a new
        // reference to `slf`.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                addr as *mut std::ffi::c_void,
                len as pyo3::ffi::Py_ssize_t,
                c_int::from(!writable),
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "array memory cannot be pickled; pickle a copy (np.array(view)) instead",
        ))
    }
}

/// The reader leases of live processes on the embedded store in directory `dir`: a list of
/// (pid, leased tid or None), oldest snapshot first.
#[pyfunction]
fn reader_leases(dir: std::path::PathBuf) -> Vec<(u32, Option<u64>)> {
    db::reader_leases(&dir)
        .into_iter()
        .map(|l| (l.pid, l.tid.map(|t| t.0)))
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Database>()?;
    m.add_class::<Connection>()?;
    m.add_class::<Array>()?;
    m.add_class::<Mapping>()?;
    m.add_class::<Savepoint>()?;
    m.add_function(wrap_pyfunction!(errors::set_error_classes, m)?)?;
    m.add_function(wrap_pyfunction!(logging::set_log_filter, m)?)?;
    m.add_function(wrap_pyfunction!(reader_leases, m)?)?;
    logging::install();
    Ok(())
}
