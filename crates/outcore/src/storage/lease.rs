//! Reader leases: what keeps `pack` from removing versions a live snapshot can still see.

use std::sync::Arc;

use super::{Storage, Tid};
use crate::{Error, Result};

/// A registered reader snapshot. Pack never removes a version visible at [`ReaderLease::tid`].
/// Released by [`ReaderLease::release`] or when dropped.
#[derive(Debug)]
pub struct ReaderLease {
    storage: Arc<dyn Storage>,
    id: u64,
    at: Tid,
    /// Set by [`ReaderLease::release`]: the store no longer knows `id`.
    released: bool,
}

impl ReaderLease {
    /// A lease at the store's current head.
    ///
    /// The lease is registered (pinning all history) *before* the head is read, so a pack that
    /// runs concurrently can never remove a version this snapshot needs.
    pub fn at_head(storage: Arc<dyn Storage>) -> Result<Self> {
        let id = storage.acquire_lease(Tid::ZERO)?;
        let mut lease = ReaderLease {
            storage,
            id,
            at: Tid::ZERO,
            released: false,
        };
        lease.advance_to_head()?;
        Ok(lease)
    }

    /// A lease at an older snapshot `at` (time travel). Fails with
    /// [`Error::SnapshotTooOld`] if pack already removed history that `at` needs.
    pub fn at(storage: Arc<dyn Storage>, at: Tid) -> Result<Self> {
        let id = storage.acquire_lease(at)?;
        let lease = ReaderLease {
            storage,
            id,
            at,
            released: false,
        };
        // A pack that started before the lease existed may still be running: wait for it, so
        // the horizon read next is the one it published.
        lease.storage.fence()?;
        let packed = lease.storage.pack_horizon()?;
        if at < packed {
            return Err(Error::SnapshotTooOld {
                horizon: packed,
                requested: at,
            });
        }
        Ok(lease)
    }

    /// Moves the lease to the current head and returns it. The old snapshot stays pinned
    /// until the new one is registered.
    pub fn advance_to_head(&mut self) -> Result<Tid> {
        let head = self.storage.head()?;
        self.advance_to(head)?;
        Ok(head)
    }

    /// Moves the lease to `tid`, a head read while this lease pinned an older snapshot.
    /// Fails with [`Error::Closed`] once the lease is released.
    pub fn advance_to(&mut self, tid: Tid) -> Result<()> {
        if self.released {
            return Err(Error::Closed("the reader lease was released".into()));
        }
        self.storage.renew_lease(self.id, tid)?;
        self.at = tid;
        Ok(())
    }

    /// The snapshot this lease protects (or protected, once released).
    pub fn tid(&self) -> Tid {
        self.at
    }

    /// Unregisters the lease now, so pack may remove what only it kept, instead of when the
    /// lease is dropped (its owner may live on, e.g. a closed connection that views still
    /// reference). Releasing again does nothing.
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.storage.release_lease(self.id);
        }
    }
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        self.release();
    }
}

/// Decides which versions pack removes, given every version in (key, tid) order.
///
/// For each key, the newest version with `tid <= horizon` is kept (unless it is a deletion
/// marker) and every older one is removed; versions newer than the horizon are kept.
pub(crate) fn pack_removals<K: PartialEq + Copy>(
    versions: impl IntoIterator<Item = (K, Tid, bool)>,
    horizon: Tid,
) -> Vec<(K, Tid)> {
    let mut removals = Vec::new();
    // Versions of the current key at or before the horizon, oldest first.
    let mut group: Vec<(K, Tid, bool)> = Vec::new();
    let mut flush = |group: &mut Vec<(K, Tid, bool)>| {
        if let Some(&(key, tid, tombstone)) = group.last() {
            removals.extend(group[..group.len() - 1].iter().map(|&(k, t, _)| (k, t)));
            if tombstone {
                removals.push((key, tid));
            }
        }
        group.clear();
    };
    for (key, tid, tombstone) in versions {
        if group.first().is_some_and(|g| g.0 != key) {
            flush(&mut group);
        }
        if tid <= horizon {
            group.push((key, tid, tombstone));
        }
    }
    flush(&mut group);
    removals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_newest_visible_and_newer() {
        let v = vec![
            (1, Tid(1), false),
            (1, Tid(2), false),
            (1, Tid(5), false),
            (2, Tid(1), false),
            (2, Tid(3), true),
            (3, Tid(4), false),
            (4, Tid(2), true),
            (4, Tid(6), false),
        ];
        let r = pack_removals(v, Tid(4));
        assert_eq!(r, vec![(1, Tid(1)), (2, Tid(1)), (2, Tid(3)), (4, Tid(2))]);
    }
}
