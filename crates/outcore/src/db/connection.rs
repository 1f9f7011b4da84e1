//! [`Connection`]: one snapshot of the database, one transaction at a time.

mod commit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::bigarray::BigArray;
use super::handle::{ArrayHandle, ArraySavepoint};
use super::root::{self, ROOT_KEY};
use super::shared::{ConnShared, ConnState};
use super::views::{Scope, ViewBook};
use crate::array::{ArrayMeta, Element, Order, DEFAULT_BLKSIZE};
use crate::storage::{Key, Oid, ReaderLease, Storage, Tid};
use crate::{Error, Result};

/// A view of the database at one snapshot, with one transaction in progress.
///
/// The snapshot moves to the newest commit at every transaction boundary ([`commit`],
/// [`abort`], [`begin`]); other connections' commits become visible then, never in between.
/// Arrays opened through a connection share its transaction. A connection may be used from
/// any thread, but one transaction is one unit. The memory under views changes only at
/// boundaries, and those wait until the views of the connection's arrays
/// ([`BigArray::view`](super::BigArray::view) and friends) held by other threads are dropped;
/// a view held by the calling thread makes them fail instead (drop it first).
///
/// [`commit`]: Connection::commit
/// [`abort`]: Connection::abort
/// [`begin`]: Connection::begin
#[derive(Debug)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
}

/// A point inside a transaction to roll back to ([`Connection::rollback`]).
#[derive(Debug)]
pub struct Savepoint {
    serial: u64,
    root: BTreeMap<String, Oid>,
    created: BTreeSet<Oid>,
    arrays: Vec<(Arc<ArrayHandle>, ArraySavepoint)>,
}

impl Connection {
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        writable: bool,
        at: Option<Tid>,
        reserve: Option<u64>,
    ) -> Result<Self> {
        let lease = match at {
            Some(tid) => ReaderLease::at(storage.clone(), tid)?,
            None => ReaderLease::at_head(storage.clone())?,
        };
        let root_committed = match storage.load(ROOT_KEY, lease.tid())? {
            Some(v) => root::decode(&v.data, v.tid)?,
            None => BTreeMap::new(),
        };
        Ok(Connection {
            shared: Arc::new(ConnShared {
                storage,
                writable: writable && at.is_none(),
                reserve,
                historical: at.is_some(),
                views: ViewBook::default(),
                state: Mutex::new(ConnState {
                    lease,
                    closed: false,
                    root: root_committed.clone(),
                    root_committed,
                    arrays: BTreeMap::new(),
                    created: BTreeSet::new(),
                    serial: 0,
                    behind: None,
                }),
            }),
        })
    }

    /// The snapshot this connection reads.
    pub fn tid(&self) -> Result<Tid> {
        self.shared.snapshot()
    }

    /// The names in the root namespace, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.shared.lock()?.root.keys().cloned().collect())
    }

    /// True if the root namespace has `name`.
    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.shared.lock()?.root.contains_key(name))
    }

    /// Creates an array of element type `T` under `name` (replacing any array of that name),
    /// filled with zeros, with the default block size.
    pub fn create<T: Element>(&self, name: &str, shape: &[u64], order: Order) -> Result<BigArray> {
        self.create_raw(
            name,
            &T::dtype(),
            std::mem::size_of::<T>(),
            shape,
            order,
            DEFAULT_BLKSIZE,
        )
    }

    /// Creates an array with a runtime dtype descriptor and element size (the Python layer's
    /// entry point); see [`Connection::create`].
    pub fn create_raw(
        &self,
        name: &str,
        dtype: &str,
        itemsize: usize,
        shape: &[u64],
        order: Order,
        blksize: usize,
    ) -> Result<BigArray> {
        root::check_name(name)?;
        self.shared.check_writable()?;
        let mut st = self.shared.lock()?;
        let ids = self.shared.storage.new_oids(2)?;
        let (oid, file) = (Oid(ids.start), Oid(ids.start + 1));
        let meta = ArrayMeta::new(dtype, itemsize, shape, order, blksize, file)?;
        let handle = Arc::new(ArrayHandle::new(oid, meta, None, true, self.shared.reserve));
        st.arrays.insert(oid, handle.clone());
        st.created.insert(oid);
        st.root.insert(name.to_string(), oid);
        Ok(BigArray {
            conn: self.shared.clone(),
            handle,
        })
    }

    /// The array stored under `name`.
    pub fn array(&self, name: &str) -> Result<BigArray> {
        let mut st = self.shared.lock()?;
        let oid = *st
            .root
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no array named {name:?}")))?;
        if let Some(h) = st.arrays.get(&oid) {
            if !h.is_detached() {
                return Ok(BigArray {
                    conn: self.shared.clone(),
                    handle: h.clone(),
                });
            }
        }
        let at = st.lease.tid();
        let v = self
            .shared
            .storage
            .load(Key::Meta(oid), at)?
            .ok_or_else(|| Error::Corrupt {
                key: Key::Meta(oid),
                tid: at,
                reason: format!("array {name:?} is named in the root but has no metadata record"),
            })?;
        let meta = ArrayMeta::decode_stored(oid, &v)?;
        let handle = Arc::new(ArrayHandle::new(
            oid,
            meta.clone(),
            Some(meta),
            self.shared.writable,
            self.shared.reserve,
        ));
        st.arrays.insert(oid, handle.clone());
        Ok(BigArray {
            conn: self.shared.clone(),
            handle,
        })
    }

    /// Stores `array` (of this connection) under `name` too (replacing what was there).
    pub fn link(&self, name: &str, array: &BigArray) -> Result<()> {
        root::check_name(name)?;
        self.shared.check_writable()?;
        if !Arc::ptr_eq(&array.conn, &self.shared) {
            return Err(Error::InvalidArgument(
                "the array belongs to another connection".into(),
            ));
        }
        let oid = array.handle.oid;
        self.shared.lock()?.root.insert(name.to_string(), oid);
        Ok(())
    }

    /// Removes `name` from the root namespace (the data stays in history until pack).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.shared.check_writable()?;
        let mut st = self.shared.lock()?;
        st.root
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::NotFound(format!("no array named {name:?}")))
    }

    /// True if this transaction changed anything.
    pub fn is_dirty(&self) -> Result<bool> {
        let st = self.shared.lock()?;
        if st.root != st.root_committed {
            return Ok(true);
        }
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            if h.is_dirty()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Discards every change of the transaction, then moves to the newest snapshot.
    pub fn abort(&self) -> Result<()> {
        let _views = self.shared.boundary("abort")?;
        let mut st = self.shared.lock()?;
        self.discard_locked(&mut st)?;
        self.sync(&mut st)
    }

    /// Discards every change of the transaction but stays at the same snapshot (the
    /// `transaction` package calls this when a savepoint from before this connection joined
    /// is rolled back; the snapshot moves at the transaction boundary).
    pub fn discard(&self) -> Result<()> {
        let _views = self.shared.boundary("discard the transaction's changes")?;
        let mut st = self.shared.lock()?;
        self.discard_locked(&mut st)
    }

    fn discard_locked(&self, st: &mut ConnState) -> Result<()> {
        let at = st.lease.tid();
        let created = std::mem::take(&mut st.created);
        for oid in created {
            if let Some(h) = st.arrays.remove(&oid) {
                h.detach()?;
            }
        }
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            h.abort(&self.shared.storage, at)?;
        }
        st.root = st.root_committed.clone();
        Ok(())
    }

    /// Starts a new transaction at the newest snapshot, discarding uncommitted changes (as
    /// [`abort`](Connection::abort) does).
    pub fn begin(&self) -> Result<()> {
        let _views = self.shared.boundary("begin a transaction")?;
        let mut st = self.shared.lock()?;
        self.discard_locked(&mut st)?;
        self.sync(&mut st)
    }

    /// Moves to the newest snapshot, applying other transactions' commits from the log.
    /// Called with no uncommitted changes. Historical connections stay where they are.
    ///
    /// If applying the log fails (history packed away, no kernel mapping left to re-map a
    /// block, a store error), every mapped block of every array is re-mapped at the newest
    /// snapshot instead. If that fails too, the connection stays *behind*: its commits are
    /// refused with [`Error::SnapshotStale`] (retryable) until a later boundary catches up,
    /// so it never commits on a snapshot that misses its own last commit.
    fn sync(&self, st: &mut ConnState) -> Result<()> {
        st.serial += 1;
        if self.shared.historical {
            return Ok(());
        }
        let from_log = self.sync_from_log(st);
        let result = match from_log {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(
                    "moving to the newest snapshot from the commit log failed ({e}); re-mapping \
                     every block of the open arrays instead"
                );
                self.reload(st)
            }
        };
        st.behind = result.as_ref().err().map(|e| e.to_string());
        result
    }

    /// Moves to the newest snapshot without the log: reloads the root and every open
    /// array's metadata and re-maps all their mapped blocks. Called with no uncommitted
    /// changes.
    fn reload(&self, st: &mut ConnState) -> Result<()> {
        let storage = &self.shared.storage;
        let head = storage.head()?;
        st.root_committed = match storage.load(ROOT_KEY, head)? {
            Some(v) => root::decode(&v.data, v.tid)?,
            None => BTreeMap::new(),
        };
        st.root = st.root_committed.clone();
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            h.reload(storage, head)?;
        }
        st.arrays.retain(|_, h| !h.is_detached());
        st.lease.advance_to(head)
    }

    /// Moves to the newest snapshot by applying the commits since this one from the log.
    fn sync_from_log(&self, st: &mut ConnState) -> Result<()> {
        // The snapshot moves only once every cached block is invalidated: if anything below
        // fails, the caller re-maps everything or the next boundary starts again.
        let old = st.lease.tid();
        let head = self.shared.storage.head()?;
        if head == old {
            return Ok(());
        }
        let storage = &self.shared.storage;
        let changes = storage.changes(old, head)?;
        let mut blocks: BTreeMap<Oid, Vec<u64>> = BTreeMap::new();
        let mut metas: BTreeSet<Oid> = BTreeSet::new();
        let mut root_changed = false;
        for (_, keys) in changes {
            for key in keys {
                match key {
                    ROOT_KEY => root_changed = true,
                    Key::Meta(oid) => {
                        metas.insert(oid);
                    }
                    Key::Block { file, index } => blocks.entry(file).or_default().push(index),
                }
            }
        }
        if root_changed {
            st.root_committed = match storage.load(ROOT_KEY, head)? {
                Some(v) => root::decode(&v.data, v.tid)?,
                None => BTreeMap::new(),
            };
            st.root = st.root_committed.clone();
        }
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            let meta_changed = metas.contains(&h.oid);
            let file = h.meta()?.file;
            let changed = blocks.get(&file).map_or(&[][..], Vec::as_slice);
            if meta_changed || !changed.is_empty() {
                h.invalidate(storage, head, changed, meta_changed)?;
            }
        }
        st.arrays.retain(|_, h| !h.is_detached());
        st.lease.advance_to(head)
    }

    /// Remembers the current state of the transaction.
    pub fn savepoint(&self) -> Result<Savepoint> {
        // Reads the written pages: no mutable view may write them meanwhile.
        let _views = self
            .shared
            .views
            .hold(Scope::Connection, false, || "take a savepoint".into())?;
        let st = self.shared.lock()?;
        let mut arrays = Vec::new();
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            arrays.push((h.clone(), h.savepoint()?));
        }
        Ok(Savepoint {
            serial: st.serial,
            root: st.root.clone(),
            created: st.created.clone(),
            arrays,
        })
    }

    /// Restores the transaction to `savepoint` (data, shapes, names). The savepoint stays
    /// usable for further rollbacks within the same transaction.
    pub fn rollback(&self, savepoint: &Savepoint) -> Result<()> {
        let _views = self.shared.boundary("roll back")?;
        let mut st = self.shared.lock()?;
        if savepoint.serial != st.serial {
            return Err(Error::InvalidArgument(
                "the savepoint belongs to an earlier transaction".into(),
            ));
        }
        let at = st.lease.tid();
        let later: Vec<Oid> = st.created.difference(&savepoint.created).copied().collect();
        for oid in later {
            if let Some(h) = st.arrays.remove(&oid) {
                h.detach()?;
            }
        }
        for (h, sp) in &savepoint.arrays {
            h.rollback(sp, &self.shared.storage, at)?;
        }
        // Arrays first opened after the savepoint had no changes at that point.
        let known: BTreeSet<Oid> = savepoint.arrays.iter().map(|(h, _)| h.oid).collect();
        for h in st
            .arrays
            .values()
            .filter(|h| !known.contains(&h.oid) && !h.is_detached())
        {
            h.abort(&self.shared.storage, at)?;
        }
        st.created = savepoint.created.clone();
        st.root = savepoint.root.clone();
        Ok(())
    }

    /// Closes the connection: uncommitted changes are discarded, the reader lease is released
    /// (pack may reclaim what only this snapshot kept), later calls fail with
    /// [`Error::Closed`]. Raw views ([`BigArray::raw_view`](super::BigArray::raw_view)) stay
    /// valid memory (they show the last snapshot). The connection is closed even if
    /// discarding fails; the first such error is returned. Waits for views like
    /// [`commit`](Connection::commit); dropping a connection while this thread holds a view
    /// leaves it open until its arrays are dropped.
    pub fn close(&self) -> Result<()> {
        let _views = self.shared.boundary("close the connection")?;
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Ok(());
        }
        let mut failed = None;
        for h in st.arrays.values() {
            if !h.is_detached() {
                if let Err(e) = h.discard_all() {
                    failed.get_or_insert(e);
                }
            }
        }
        st.closed = true;
        st.arrays.clear();
        // Now, not when the last reference goes: views and Python objects may keep this
        // connection alive long after it was closed.
        st.lease.release();
        failed.map_or(Ok(()), Err)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
