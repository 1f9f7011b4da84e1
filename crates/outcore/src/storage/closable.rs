//! [`ClosableStorage`]: a store that can be closed while others still hold it.
//!
//! Connections, arrays and leases each hold an `Arc` of their store, and language bindings
//! keep those alive as long as any object (or view) of a database lives. Closing a database
//! must not wait for all of them: this wrapper drops its store at [`ClosableStorage::close`]
//! (closing files, the LMDB environment, network connections) and fails every later call.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};

use super::{
    CommitRequest, Key, Located, Oid, PackStats, Storage, Tid, TxnInfo, VerifyReport, Version,
};
use crate::{Error, Result};

/// A store wrapper whose [`close`](ClosableStorage::close) releases the store at once, however
/// many holders remain. [`Database`](crate::db::Database) wraps every store in one.
#[derive(Debug)]
pub struct ClosableStorage {
    /// The store's description, still available after close (for messages).
    description: String,
    remote: bool,
    /// `None` once closed.
    inner: RwLock<Option<Arc<dyn Storage>>>,
    /// Leases acquired through this wrapper and not released yet: released at close, so a
    /// closed database pins no history even if a lease's owner is never dropped.
    leases: Mutex<BTreeSet<u64>>,
}

impl ClosableStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        ClosableStorage {
            description: inner.describe(),
            remote: inner.is_remote(),
            inner: RwLock::new(Some(inner)),
            leases: Mutex::new(BTreeSet::new()),
        }
    }

    /// The wrapped store; [`Error::Closed`] once closed. Calls run on a clone of the `Arc`, so
    /// a call in progress finishes normally when the store is closed meanwhile.
    fn get(&self) -> Result<Arc<dyn Storage>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::Closed(format!("the database {} is closed", self.description)))
    }

    /// Releases the leases still held through this wrapper and drops the store: it closes as
    /// soon as calls in progress finish, unless memory that fetches blocks on first touch
    /// still needs it (see [`Storage::fetch_store`]). Later calls fail with [`Error::Closed`].
    /// Closing again does nothing.
    pub fn close(&self) {
        let inner = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(inner) = inner {
            let leases =
                std::mem::take(&mut *self.leases.lock().unwrap_or_else(|p| p.into_inner()));
            for id in leases {
                inner.release_lease(id);
            }
        }
    }

    /// True once [`close`](ClosableStorage::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

impl Storage for ClosableStorage {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn head(&self) -> Result<Tid> {
        self.get()?.head()
    }

    fn new_oids(&self, n: u64) -> Result<Range<u64>> {
        self.get()?.new_oids(n)
    }

    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
        self.get()?.load(key, at)
    }

    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        self.get()?.load_into(key, at, out)
    }

    fn locate(&self, key: Key, at: Tid) -> Result<Located> {
        self.get()?.locate(key, at)
    }

    fn commit(&self, req: CommitRequest) -> Result<Tid> {
        self.get()?.commit(req)
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        self.get()?.log(after, upto)
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        let inner = self.get()?;
        let id = inner.acquire_lease(at)?;
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(id)
    }

    fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        self.get()?.renew_lease(id, at)
    }

    fn release_lease(&self, id: u64) {
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // After close the store released every lease itself.
        if let (true, Ok(inner)) = (held, self.get()) {
            inner.release_lease(id);
        }
    }

    fn fence(&self) -> Result<()> {
        self.get()?.fence()
    }

    fn pack_horizon(&self) -> Result<Tid> {
        self.get()?.pack_horizon()
    }

    fn pack(&self, upto: Tid) -> Result<PackStats> {
        self.get()?.pack(upto)
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.get()?.verify()
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        self.get()?.block_indices(file, at)
    }

    fn is_remote(&self) -> bool {
        self.remote
    }

    fn load_many(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
        self.get()?.load_many(keys, at)
    }

    fn changes(&self, after: Tid, upto: Tid) -> Result<Vec<(Tid, Vec<Key>)>> {
        self.get()?.changes(after, upto)
    }

    fn fetch_store(&self) -> Option<Arc<dyn Storage>> {
        // The wrapped store itself: memory already handed out keeps working after close.
        self.get().ok().map(|s| s.fetch_store().unwrap_or(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, TxnMeta, Write};

    fn commit(s: &dyn Storage, byte: u8) -> Tid {
        s.commit(CommitRequest {
            base: s.head().unwrap(),
            writes: vec![(Key::Meta(Oid(7)), Write::Store(vec![byte; 16]))],
            meta: TxnMeta::new("test", ""),
        })
        .unwrap()
    }

    #[test]
    fn close_fails_later_calls_and_releases_leases() {
        let mem: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let s = ClosableStorage::new(mem.clone());
        let first = commit(&s, 1);
        let lease = s.acquire_lease(first).unwrap();
        commit(&s, 2);
        assert_eq!(
            mem.pack(Tid::MAX).unwrap().versions_removed,
            0,
            "the lease pins 1"
        );
        s.close();
        assert!(s.is_closed());
        assert_eq!(
            mem.pack(Tid::MAX).unwrap().versions_removed,
            1,
            "close released it"
        );
        let err = s.head().unwrap_err();
        assert!(matches!(err, Error::Closed(_)), "{err}");
        assert!(err.to_string().contains("mem:"), "{err}");
        s.release_lease(lease); // a late release by the lease's owner is harmless
        s.close();
        assert_eq!(s.describe(), mem.describe());
    }
}
