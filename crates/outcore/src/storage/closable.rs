//! [`ClosableStorage`]: a store that can be closed while others still hold it.
//!
//! Connections, arrays and leases each hold an `Arc` of their store, and language bindings
//! keep those alive as long as any object (or view) of a database lives. Closing a database
//! must not wait for all of them: this wrapper drops its store at [`ClosableStorage::close`]
//! (closing files, the LMDB environment, network connections) and fails every later call.
//!
//! One kind of holder must keep working after close: memory that fetches blocks on first
//! touch (compressed and remote stores). It reads through a [`FetchPin`], which keeps the
//! store open and also keeps the leases released meanwhile registered until it is gone, so
//! pack cannot remove a block version such memory may still fetch (a failed fetch of touched
//! memory ends in SIGBUS). Stores whose blocks are mapped never create a pin: their leases and
//! files go at once.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock, Weak};

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
    /// The pin of the fetch-on-touch memory made through this wrapper, while any lives.
    pin: Mutex<Weak<FetchPin>>,
}

impl ClosableStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        ClosableStorage {
            description: inner.describe(),
            remote: inner.is_remote(),
            inner: RwLock::new(Some(inner)),
            leases: Mutex::new(BTreeSet::new()),
            pin: Mutex::new(Weak::new()),
        }
    }

    /// The wrapped store; [`Error::Closed`] once closed. Calls run on a clone of the `Arc`, so
    /// a call in progress finishes normally when the store is closed meanwhile.
    fn target(&self) -> Result<Arc<dyn Storage>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::Closed(format!("the database {} is closed", self.description)))
    }

    /// Releases lease `id` of `inner` now, or when the fetch-on-touch memory is gone.
    fn release_on(&self, inner: &Arc<dyn Storage>, id: u64) {
        let pin = self.pin.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
        match pin {
            Some(pin) => pin.defer(id),
            None => inner.release_lease(id),
        }
    }

    /// Releases the leases still held through this wrapper and drops the store: it closes as
    /// soon as calls in progress finish and no fetch-on-touch memory needs it any more (see
    /// the module documentation). Later calls fail with [`Error::Closed`]. Closing
    /// again does nothing.
    pub fn close(&self) {
        let inner = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(inner) = inner {
            let leases =
                std::mem::take(&mut *self.leases.lock().unwrap_or_else(|p| p.into_inner()));
            for id in leases {
                self.release_on(&inner, id);
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

/// What memory fetching blocks on first touch reads through: the wrapped store itself, kept
/// open by this pin, which also holds back the leases released while it lives.
#[derive(Debug)]
struct FetchPin {
    inner: Arc<dyn Storage>,
    deferred: Mutex<Vec<u64>>,
}

impl FetchPin {
    fn target(&self) -> Result<Arc<dyn Storage>> {
        Ok(self.inner.clone())
    }

    fn defer(&self, id: u64) {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }
}

impl Drop for FetchPin {
    fn drop(&mut self) {
        let deferred =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        for id in deferred {
            self.inner.release_lease(id);
        }
    }
}

/// The [`Storage`] methods that just forward to `self.target()?`.
macro_rules! forward_storage {
    () => {
        fn head(&self) -> Result<Tid> {
            self.target()?.head()
        }

        fn new_oids(&self, n: u64) -> Result<Range<u64>> {
            self.target()?.new_oids(n)
        }

        fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
            self.target()?.load(key, at)
        }

        fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
            self.target()?.load_into(key, at, out)
        }

        fn locate(&self, key: Key, at: Tid) -> Result<Located> {
            self.target()?.locate(key, at)
        }

        fn commit(&self, req: CommitRequest) -> Result<Tid> {
            self.target()?.commit(req)
        }

        fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
            self.target()?.log(after, upto)
        }

        fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
            self.target()?.renew_lease(id, at)
        }

        fn fence(&self) -> Result<()> {
            self.target()?.fence()
        }

        fn pack_horizon(&self) -> Result<Tid> {
            self.target()?.pack_horizon()
        }

        fn stage(&self, len: u64) -> Result<Option<Arc<super::StagedExtent>>> {
            self.target()?.stage(len)
        }

        fn stages_bodies(&self) -> bool {
            self.target().is_ok_and(|s| s.stages_bodies())
        }

        fn stage_body(&self, key: Key, bytes: &[u8]) -> Result<Option<super::StagedRef>> {
            self.target()?.stage_body(key, bytes)
        }

        fn hold_staged(&self, version: &super::StagedRef) -> Result<super::StagedHold> {
            self.target()?.hold_staged(version)
        }

        fn pack(&self, upto: Tid) -> Result<PackStats> {
            self.target()?.pack(upto)
        }

        fn verify(&self) -> Result<VerifyReport> {
            self.target()?.verify()
        }

        fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
            self.target()?.block_indices(file, at)
        }

        fn load_many(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
            self.target()?.load_many(keys, at)
        }

        fn changes(&self, after: Tid, upto: Tid) -> Result<Vec<(Tid, Vec<Key>)>> {
            self.target()?.changes(after, upto)
        }
    };
}

impl Storage for ClosableStorage {
    forward_storage!();

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        let inner = self.target()?;
        let id = inner.acquire_lease(at)?;
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(id)
    }

    fn release_lease(&self, id: u64) {
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // After close, `close` released (or deferred) every lease itself.
        if let (true, Ok(inner)) = (held, self.target()) {
            self.release_on(&inner, id);
        }
    }

    fn is_remote(&self) -> bool {
        self.remote
    }

    fn fetch_store(&self) -> Option<Arc<dyn Storage>> {
        let inner = self.target().ok()?;
        let mut pin = self.pin.lock().unwrap_or_else(|p| p.into_inner());
        let live = match pin.upgrade() {
            Some(live) => live,
            None => {
                let fresh = Arc::new(FetchPin {
                    inner,
                    deferred: Mutex::new(Vec::new()),
                });
                *pin = Arc::downgrade(&fresh);
                fresh
            }
        };
        Some(live)
    }
}

impl Storage for FetchPin {
    forward_storage!();

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        self.inner.acquire_lease(at)
    }

    fn release_lease(&self, id: u64) {
        self.inner.release_lease(id);
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
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

    #[test]
    fn fetch_on_touch_memory_keeps_the_store_and_its_snapshots() {
        let mem: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let s = ClosableStorage::new(mem.clone());
        let first = commit(&s, 1);
        let lease = s.acquire_lease(first).unwrap();
        let fetcher = s.fetch_store().unwrap();
        commit(&s, 2);
        s.release_lease(lease);
        s.close();
        assert_eq!(
            fetcher
                .load(Key::Meta(Oid(7)), first)
                .unwrap()
                .unwrap()
                .data,
            vec![1; 16],
            "still readable after close"
        );
        assert_eq!(
            mem.pack(Tid::MAX).unwrap().versions_removed,
            0,
            "still pinned"
        );
        drop(fetcher);
        assert_eq!(
            mem.pack(Tid::MAX).unwrap().versions_removed,
            1,
            "released with the pin"
        );
    }
}
