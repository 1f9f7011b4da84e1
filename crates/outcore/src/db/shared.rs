//! [`ConnShared`]: the part of a connection its arrays share — the store, the live views,
//! and the transaction state behind one lock.
//!
//! Its own module because both sides of the connection use it: a
//! [`Connection`](super::Connection) makes [`BigArray`](super::BigArray)s, and every
//! `BigArray` holds its connection's `ConnShared` (to read the snapshot, map blocks, check
//! writability and wait for views). With it here the imports run one way: `connection` →
//! `bigarray` → `shared`.
//!
//! **Lock order** (levels 1–3 of docs/DESIGN.md's locking rules): the views' hold
//! ([`ConnShared::boundary`]) before the state lock ([`ConnShared::lock`]), the state lock
//! before an `ArrayHandle`'s locks; `ArrayHandle` never takes the state lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::handle::ArrayHandle;
use super::views::{Hold, Scope, ViewBook};
use crate::storage::{Oid, ReaderLease, Storage, Tid};
use crate::{Error, Result};

/// The state a connection shares with its arrays.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub storage: Arc<dyn Storage>,
    /// False for read-only and historical connections.
    pub writable: bool,
    /// Address space to reserve per array (None: the default rule).
    pub reserve: Option<u64>,
    /// True for a connection pinned at an old tid.
    pub historical: bool,
    /// The live views of the connection's arrays: memory changes wait for them.
    pub views: ViewBook,
    pub state: Mutex<ConnState>,
}

/// A connection's transaction state, behind [`ConnShared::lock`].
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The snapshot, leased so pack keeps what it sees.
    pub lease: ReaderLease,
    pub closed: bool,
    /// The root namespace as of the snapshot.
    pub root_committed: BTreeMap<String, Oid>,
    /// The root namespace as this transaction changed it.
    pub root: BTreeMap<String, Oid>,
    /// Open arrays by metadata oid.
    pub arrays: BTreeMap<Oid, Arc<ArrayHandle>>,
    /// Arrays created in this transaction.
    pub created: BTreeSet<Oid>,
    /// Incremented at every transaction boundary; savepoints of older transactions are void.
    pub serial: u64,
    /// Why the last boundary could not move to the newest snapshot (then commits are
    /// refused: the snapshot may miss this connection's own last commit).
    pub behind: Option<String>,
}

impl ConnShared {
    /// The transaction state; fails once the connection is closed.
    pub fn lock(&self) -> Result<MutexGuard<'_, ConnState>> {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return Err(Error::Closed("the connection is closed".into()));
        }
        Ok(g)
    }

    /// The snapshot tid (for mapping blocks).
    pub fn snapshot(&self) -> Result<Tid> {
        Ok(self.lock()?.lease.tid())
    }

    /// Releases the idle windows (no view, no uncommitted write) of every open array, so
    /// that kernel mappings and address space are available for new views.
    pub fn release_idle_windows(&self) -> Result<usize> {
        let st = self.lock()?;
        let mut released = 0;
        for h in st.arrays.values() {
            released += h.release_idle_windows()?;
        }
        Ok(released)
    }

    /// Holds every array of the connection for `what` (a transaction boundary): waits
    /// until the views of other threads are dropped; an error if this thread has one.
    pub fn boundary(&self, what: &str) -> Result<Hold<'_>> {
        self.views
            .hold(Scope::Connection, true, || what.to_string())
    }

    /// Fails with [`Error::ReadOnly`] unless the connection may change data.
    pub fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else if self.historical {
            Err(Error::ReadOnly(
                "a historical connection cannot change data".into(),
            ))
        } else {
            Err(Error::ReadOnly("the database was opened read-only".into()))
        }
    }
}
