//! The commit path of a [`Connection`]: collecting the transaction's writes (changed blocks
//! and metadata, deleted arrays, the root), committing them, and merging the root when the
//! only conflict is other names changed meanwhile. docs/DESIGN.md, "The commit path", tells
//! the whole story.

use std::collections::{BTreeMap, BTreeSet};

use super::super::root::{self, ROOT_KEY};
use super::super::shared::ConnState;
use super::Connection;
use crate::array::ArrayMeta;
use crate::storage::{CommitRequest, Key, Oid, Tid, TxnMeta, Write};
use crate::{Error, Result};

impl Connection {
    /// Commits every change of the transaction atomically and durably, then moves to the
    /// newest snapshot. On [`Error::Conflict`] nothing is written and the changes are kept:
    /// call [`abort`](Connection::abort) and redo the transaction.
    pub fn commit(&self) -> Result<Tid> {
        self.commit_with(TxnMeta::default())
    }

    /// [`commit`](Connection::commit) with a user and description for the log.
    pub fn commit_with(&self, meta: TxnMeta) -> Result<Tid> {
        let _views = self.shared.boundary("commit")?;
        let mut st = self.shared.lock()?;
        let mut writes: Vec<(Key, Write)> = Vec::new();
        // Arrays no longer named in the root are gone: nothing of theirs is written, and
        // what was stored of them is deleted (so pack can reclaim it).
        let live: BTreeSet<Oid> = st.root.values().copied().collect();
        for h in st.arrays.values().filter(|h| !live.contains(&h.oid)) {
            h.detach()?;
        }
        let mut dropped: Vec<Oid> = st
            .root_committed
            .values()
            .copied()
            .filter(|o| !live.contains(o))
            .collect();
        dropped.sort_unstable();
        dropped.dedup();
        let base = st.lease.tid();
        for oid in dropped {
            let storage = &self.shared.storage;
            if let Some(v) = storage.load(Key::Meta(oid), base)? {
                let file = ArrayMeta::decode_stored(oid, &v)?.file;
                for index in storage.block_indices(file, base)? {
                    writes.push((Key::Block { file, index }, Write::Delete));
                }
            }
            writes.push((Key::Meta(oid), Write::Delete));
        }
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            h.collect_writes(&self.shared.storage, base, &mut writes)?;
        }
        if st.root != st.root_committed {
            writes.push((ROOT_KEY, Write::Store(root::encode(&st.root))));
        }
        if writes.is_empty() {
            self.sync(&mut st)?;
            return Ok(st.lease.tid());
        }
        self.shared.check_writable()?;
        if let Some(why) = &st.behind {
            return Err(Error::SnapshotStale(format!(
                "this connection could not move to the newest snapshot at its last transaction \
                 boundary ({why}), so its changes cannot be committed safely: abort and redo \
                 the transaction"
            )));
        }
        let tid = self.commit_merging_root(&mut st, writes, meta)?;
        // The commit is durable: what follows must not make the caller think otherwise (a
        // retry would apply it twice). A failure here leaves the snapshot where it was; the
        // next transaction boundary catches up from the log.
        for h in st.arrays.values().filter(|h| !h.is_detached()) {
            if let Err(e) = h.committed() {
                tracing::warn!("after commit {tid}: {e}");
            }
        }
        st.root_committed = st.root.clone();
        st.created.clear();
        if let Err(e) = self.sync(&mut st) {
            tracing::warn!("after commit {tid}, moving to the newest snapshot failed: {e}");
        }
        Ok(tid)
    }

    /// Commits `writes` on this connection's snapshot. When the only conflict is the root
    /// record (another transaction added, removed or renamed *other* names since this
    /// snapshot), the root changes are merged by name onto the newest root and the commit is
    /// retried on the newest snapshot — provided nothing else this transaction writes (or
    /// the arrays it writes) changed meanwhile. The same name changed by both is a conflict.
    fn commit_merging_root(
        &self,
        st: &mut ConnState,
        mut writes: Vec<(Key, Write)>,
        meta: TxnMeta,
    ) -> Result<Tid> {
        let storage = &self.shared.storage;
        let snapshot = st.lease.tid();
        let mut base = snapshot;
        // The root as of `base`, and as this transaction wants it on top of that.
        let mut base_root = st.root_committed.clone();
        let mut ours = st.root.clone();
        // Root merges retried before giving up (each retry follows a newer commit).
        const ROOT_MERGES: usize = 8;
        for _ in 0..ROOT_MERGES {
            let request = CommitRequest {
                base,
                writes: writes.clone(),
                meta: meta.clone(),
            };
            let head = match storage.commit(request) {
                Ok(tid) => {
                    st.root = ours;
                    return Ok(tid);
                }
                Err(Error::Conflict { key: ROOT_KEY, .. }) if ours != base_root => {
                    storage.head()?
                }
                Err(e) => return Err(e),
            };
            self.check_only_root_changed(st, &writes, base, head)?;
            let theirs = match storage.load(ROOT_KEY, head)? {
                Some(v) => root::decode(&v.data, v.tid)?,
                None => BTreeMap::new(),
            };
            let merged = merge_roots(&base_root, &ours, &theirs).map_err(|name| {
                tracing::debug!("root name {name:?} changed by this transaction and another");
                Error::Conflict {
                    key: ROOT_KEY,
                    base,
                    committed: head,
                }
            })?;
            for (key, write) in writes.iter_mut() {
                if *key == ROOT_KEY {
                    *write = Write::Store(root::encode(&merged));
                }
            }
            ours = merged;
            base_root = theirs;
            base = head;
        }
        Err(Error::Conflict {
            key: ROOT_KEY,
            base: snapshot,
            committed: base,
        })
    }

    /// Fails with [`Error::Conflict`] if a commit in `(base, head]` changed a key other than
    /// the root that `writes` write, or any key of an array they change or delete.
    fn check_only_root_changed(
        &self,
        st: &ConnState,
        writes: &[(Key, Write)],
        base: Tid,
        head: Tid,
    ) -> Result<()> {
        let mut files: BTreeSet<Oid> = BTreeSet::new();
        let mut metas: BTreeSet<Oid> = BTreeSet::new();
        for (key, _) in writes {
            match *key {
                Key::Block { file, .. } => {
                    files.insert(file);
                }
                Key::Meta(oid) => {
                    metas.insert(oid);
                }
            }
        }
        // The arrays whose blocks are written: their metadata matters too (a deletion).
        for h in st.arrays.values() {
            if let Ok(meta) = h.meta() {
                if files.contains(&meta.file) {
                    metas.insert(h.oid);
                }
            }
        }
        for (tid, keys) in self.shared.storage.changes(base, head)? {
            for key in keys {
                let clash = match key {
                    ROOT_KEY => false,
                    Key::Meta(oid) => metas.contains(&oid),
                    Key::Block { file, .. } => files.contains(&file),
                };
                if clash {
                    return Err(Error::Conflict {
                        key,
                        base,
                        committed: tid,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The root `ours` made from `base`, applied onto `theirs` (a newer root): names this
/// transaction added, removed or re-pointed take its value; the others keep `theirs`. A name
/// both changed differently is returned as the error.
fn merge_roots(
    base: &BTreeMap<String, Oid>,
    ours: &BTreeMap<String, Oid>,
    theirs: &BTreeMap<String, Oid>,
) -> std::result::Result<BTreeMap<String, Oid>, String> {
    let mut merged = theirs.clone();
    let names: BTreeSet<&String> = base.keys().chain(ours.keys()).collect();
    for name in names {
        let (b, o, t) = (base.get(name), ours.get(name), theirs.get(name));
        if o == b {
            continue; // not ours to change
        }
        if t != b && t != o {
            return Err(name.clone());
        }
        match o {
            Some(oid) => merged.insert(name.clone(), *oid),
            None => merged.remove(name),
        };
    }
    Ok(merged)
}
