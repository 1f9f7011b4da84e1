//! What a store holds, in the user's terms: logical and stored bytes of the named arrays,
//! bytes of history, the arrays a transaction changed, and the reader leases of an embedded
//! store. The storage layer knows keys and versions; this module names them through the root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::root::{self, ROOT_KEY};
use super::Database;
use crate::array::ArrayMeta;
use crate::storage::{codec, Key, Located, Oid, Storage, Tid, TxnInfo};
use crate::{Error, Result};

/// What [`Database::stats`] measured, at snapshot `tid`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// The snapshot measured (the head when measuring began).
    pub tid: Tid,
    /// Named arrays.
    pub arrays: u64,
    /// Sum over the named arrays of itemsize × number of elements.
    pub logical_bytes: u64,
    /// Bytes the store holds for the current versions of the named arrays (blocks and
    /// metadata records) and the root record, as stored (compressed where compression helped).
    pub stored_bytes: u64,
    /// Stored blocks of the named arrays.
    pub blocks: u64,
    /// Blocks under the named arrays' shapes with no stored version (read as zeros, cost
    /// nothing).
    pub holes: u64,
    /// Bytes of versions the head no longer shows: older versions written after the pack
    /// horizon or kept at it, and the current versions of arrays removed since the horizon.
    pub history_bytes: u64,
    /// How many such versions.
    pub history_versions: u64,
}

/// What [`Database::changed_arrays`] lists for a transaction that changed the names in the
/// root (added, removed or renamed arrays).
pub const ROOT_CHANGED: &str = "(the root)";

/// One reader lease of an embedded store: the file `leases/<pid>-<n>` of a live process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The process holding it.
    pub pid: u32,
    /// The snapshot it pins (`None` if the file is unreadable or half-written: it pins all).
    pub tid: Option<Tid>,
}

/// The named arrays at one snapshot: name, metadata oid and metadata.
struct Names {
    arrays: Vec<(String, Oid, ArrayMeta)>,
}

impl Names {
    fn load(storage: &dyn Storage, at: Tid) -> Result<Names> {
        let arrays = root::named_arrays(storage, at)?
            .into_iter()
            .map(|a| (a.name, a.meta_oid, a.meta))
            .collect();
        Ok(Names { arrays })
    }

    /// The name of the array `key` belongs to.
    fn of(&self, key: Key) -> Option<&str> {
        self.arrays
            .iter()
            .find(|(_, oid, meta)| match key {
                Key::Meta(o) => o == *oid,
                Key::Block { file, .. } => file == meta.file,
            })
            .map(|(name, _, _)| name.as_str())
    }
}

impl Database {
    /// The bytes the store holds for the version of `key` visible at `at` (`None`: no
    /// version). Versions that cannot be mapped (compressed, remote, inline) are loaded and
    /// encoded again as the store encodes them (deterministic), which costs a read.
    pub fn stored_len(&self, key: Key, at: Tid) -> Result<Option<u64>> {
        let storage = &*self.storage;
        Ok(match storage.locate(key, at)? {
            Located::Absent => None,
            Located::Mapped(extent) => Some(extent.len),
            // A whole version with page deltas over it: the bytes it is composed of.
            Located::Pieces { pieces, .. } => Some(pieces.iter().map(|p| p.len).sum()),
            Located::CopyOnly(_) => storage.load(key, at)?.map(|v| {
                let compression = self.compression.unwrap_or_default();
                codec::encode(&v.data, compression).stored.len() as u64
            }),
        })
    }

    /// Measures the store at its head: logical and stored bytes of the named arrays and the
    /// bytes of history (see [`StoreStats`]). Reads the block index; blocks that cannot be
    /// mapped (compressed and PostgreSQL stores) are read to learn their stored size.
    pub fn stats(&self) -> Result<StoreStats> {
        // No lease: one released while fetch-on-touch memory lives stays registered until
        // that memory goes, holding pack back. Current versions are never packed; history a
        // concurrent pack removed fails with SnapshotTooOld, and measuring again sees the new
        // horizon.
        let mut attempts = 0;
        loop {
            match self.measure() {
                Err(Error::SnapshotTooOld { .. }) if attempts < 3 => attempts += 1,
                result => return result,
            }
        }
    }

    fn measure(&self) -> Result<StoreStats> {
        let storage = &*self.storage;
        let head = storage.head()?;
        let names = Names::load(storage, head)?;
        let mut s = StoreStats {
            tid: head,
            arrays: names.arrays.len() as u64,
            ..StoreStats::default()
        };
        // The current version of every key the named arrays and the root show.
        let mut current: HashMap<Key, Tid> = HashMap::new();
        let mut count = |key: Key, s: &mut StoreStats| -> Result<bool> {
            let Some(tid) = storage.locate(key, head)?.tid() else {
                return Ok(false);
            };
            current.insert(key, tid);
            s.stored_bytes += self.stored_len(key, head)?.unwrap_or(0);
            Ok(true)
        };
        count(ROOT_KEY, &mut s)?;
        for (_, oid, meta) in &names.arrays {
            s.logical_bytes += meta.nbytes();
            count(Key::Meta(*oid), &mut s)?;
            let nblocks = meta.nblocks();
            let stored = storage.block_indices(meta.file, head)?;
            s.holes += nblocks - stored.iter().filter(|&&i| i < nblocks).count() as u64;
            for index in stored {
                if count(
                    Key::Block {
                        file: meta.file,
                        index,
                    },
                    &mut s,
                )? {
                    s.blocks += 1;
                }
            }
        }
        // Versions since the pack horizon, and the ones pack kept at it.
        let horizon = storage.pack_horizon()?;
        let mut versions: BTreeSet<(Key, Tid)> = BTreeSet::new();
        for txn in storage.log(horizon, head)? {
            versions.extend(txn.keys.iter().map(|&k| (k, txn.tid)));
        }
        let keys: BTreeSet<Key> = versions.iter().map(|&(k, _)| k).collect();
        for key in keys {
            if let Some(tid) = storage.locate(key, horizon)?.tid() {
                versions.insert((key, tid));
            }
        }
        for (key, tid) in versions {
            if current.get(&key) == Some(&tid) {
                continue;
            }
            if let Some(len) = self.stored_len(key, tid)? {
                s.history_bytes += len;
                s.history_versions += 1;
            }
        }
        Ok(s)
    }

    /// The arrays each of `log`'s transactions changed, by name: names at snapshot `at` (the
    /// head, for what exists now), else at the transaction's own snapshot (arrays removed or
    /// replaced since), else just before it (arrays it removed), else `oid N`;
    /// [`ROOT_CHANGED`] when the names themselves changed.
    pub fn changed_arrays(&self, log: &[TxnInfo], at: Tid) -> Result<Vec<Vec<String>>> {
        let storage = &*self.storage;
        let now = Names::load(storage, at)?;
        let mut then: BTreeMap<Tid, Option<Names>> = BTreeMap::new();
        Ok(log
            .iter()
            .map(|txn| {
                let mut changed = BTreeSet::new();
                for &key in &txn.keys {
                    if key == ROOT_KEY {
                        changed.insert(ROOT_CHANGED.to_string());
                        continue;
                    }
                    // After the transaction, or just before it for what it removed.
                    let before = Tid(txn.tid.0.saturating_sub(1));
                    let name = now.of(key).map(str::to_string).or_else(|| {
                        [txn.tid, before].into_iter().find_map(|t| {
                            then.entry(t)
                                .or_insert_with(|| Names::load(storage, t).ok())
                                .as_ref()
                                .and_then(|n| n.of(key).map(str::to_string))
                        })
                    });
                    changed.insert(name.unwrap_or_else(|| match key {
                        Key::Meta(oid) | Key::Block { file: oid, .. } => format!("oid {}", oid.0),
                    }));
                }
                changed.into_iter().collect()
            })
            .collect())
    }
}

/// The reader leases of the embedded store in directory `dir` held by live processes (as
/// `/proc` tells), oldest snapshot first; empty if the store has no lease directory.
pub fn reader_leases(dir: &Path) -> Vec<LeaseInfo> {
    let Ok(entries) = std::fs::read_dir(dir.join("leases")) else {
        return Vec::new();
    };
    let mut leases: Vec<LeaseInfo> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let pid: u32 = name.to_str()?.split_once('-')?.0.parse().ok()?;
            if !Path::new("/proc").join(pid.to_string()).exists() {
                return None; // stale: pack removes it
            }
            let tid = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .map(Tid);
            Some(LeaseInfo { pid, tid })
        })
        .collect();
    leases.sort_by_key(|l| (l.tid.unwrap_or(Tid::ZERO), l.pid));
    leases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Order;
    use crate::storage::{Compression, TxnMeta};

    #[test]
    fn stats_and_names() {
        let db = Database::open_with(
            "mem:",
            super::super::DbOptions {
                compression: Compression::Zstd,
                ..Default::default()
            },
        )
        .unwrap();
        let conn = db.connect().unwrap();
        // 3 blocks of 4096 bytes, one written (zeros compress well), two holes.
        let mut a = conn
            .create_raw("a", "<f8", 8, &[1536], Order::C, 4096)
            .unwrap();
        a.slice_mut::<f64, _>(ndarray::s![..10]).unwrap().fill(1.0);
        let first = conn.commit_with(TxnMeta::new("me", "one")).unwrap();
        let s = db.stats().unwrap();
        assert_eq!(
            (s.arrays, s.logical_bytes, s.blocks, s.holes),
            (1, 12288, 1, 2)
        );
        assert!(s.stored_bytes > 0 && s.stored_bytes < 4096, "{s:?}");
        assert_eq!((s.history_bytes, s.history_versions), (0, 0));
        a.slice_mut::<f64, _>(ndarray::s![..10]).unwrap().fill(2.0);
        conn.commit().unwrap();
        let later = db.stats().unwrap();
        assert_eq!(later.history_versions, 1, "{later:?}");
        assert!(later.history_bytes > 0);
        conn.remove("a").unwrap();
        conn.commit().unwrap();
        let log = db.history(10).unwrap();
        let head = db.storage().head().unwrap();
        let names = db.changed_arrays(&log, head).unwrap();
        assert_eq!(names[0], vec!["(the root)".to_string(), "a".to_string()]);
        assert_eq!(
            names[1],
            vec!["a".to_string()],
            "named as of its own snapshot"
        );
        assert_eq!(log[2].tid, first);
        assert_eq!(names[2], vec!["(the root)".to_string(), "a".to_string()]);
        assert_eq!(db.stats().unwrap().arrays, 0);
    }

    #[test]
    fn leases_of_live_processes() {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        std::fs::create_dir(&leases).unwrap();
        std::fs::write(
            leases.join(format!("{}-1", std::process::id())),
            "00000000000000ff",
        )
        .unwrap();
        std::fs::write(
            leases.join(format!("{}-2", u32::MAX - 1)),
            "0000000000000001",
        )
        .unwrap();
        std::fs::write(leases.join("junk"), "").unwrap();
        assert_eq!(
            reader_leases(dir.path()),
            vec![LeaseInfo {
                pid: std::process::id(),
                tid: Some(Tid(255))
            }]
        );
        assert!(reader_leases(&dir.path().join("none")).is_empty());
    }
}
