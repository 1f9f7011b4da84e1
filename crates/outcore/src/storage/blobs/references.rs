//! The block versions the index still holds, found without a listing of the index: for the
//! keys of interest, the version at the pack horizon plus the version each later commit in
//! the log wrote. Pack keeps exactly those (the newest version at or before its horizon, and
//! every newer one), so these are all the bodies any snapshot or lease can reach.

use std::collections::BTreeSet;

use crate::storage::{Key, Storage, Tid};
use crate::Result;

/// One block version of the index: its key, tid and the stored record (a pointer).
pub(crate) struct Held {
    /// The block.
    pub key: Key,
    /// The version's tid.
    pub tid: Tid,
    /// The record the index holds for it.
    pub record: Vec<u8>,
}

/// Every version the index holds of the blocks in `keys`, plus — with `logged_too` — of every
/// block a commit after the pack horizon wrote. A pack that moves the horizon meanwhile makes
/// this fail with `SnapshotTooOld` (callers then delete nothing) or return versions that pack
/// just removed (kept one round longer): never fewer than the index holds.
pub(crate) fn held_versions(
    index: &dyn Storage,
    keys: &BTreeSet<Key>,
    logged_too: bool,
) -> Result<Vec<Held>> {
    let horizon = index.pack_horizon()?;
    let log = index.log(horizon, Tid::MAX)?;
    let mut keys = keys.clone();
    if logged_too {
        keys.extend(
            log.iter()
                .flat_map(|t| t.keys.iter().filter(|k| k.is_block())),
        );
    }
    let mut out = Vec::new();
    let mut take = |wanted: Vec<Key>, at: Tid, exact: bool| -> Result<()> {
        let found = index.load_many(&wanted, at)?;
        for (key, v) in wanted.into_iter().zip(found) {
            // A deletion at `at` reads as the absence of a version: nothing to keep.
            if let Some(v) = v.filter(|v| !exact || v.tid == at) {
                out.push(Held {
                    key,
                    tid: v.tid,
                    record: v.data,
                });
            }
        }
        Ok(())
    };
    if horizon != Tid::ZERO {
        take(keys.iter().copied().collect(), horizon, false)?;
    }
    for txn in log {
        let wanted: Vec<Key> = txn.keys.into_iter().filter(|k| keys.contains(k)).collect();
        if !wanted.is_empty() {
            take(wanted, txn.tid, true)?;
        }
    }
    Ok(out)
}
