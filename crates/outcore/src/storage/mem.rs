//! [`MemStorage`]: the whole store in process memory, for tests and scratch work.
//!
//! Block bodies live in an anonymous memory file (`memfd`) at page-aligned offsets, exactly like
//! the segment files of [`LocalStorage`](super::LocalStorage), so arrays on a `mem:` store are
//! mapped zero-copy by the same code path.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::codec::Compression;
use super::lease::pack_removals;
use super::record::{self, Body, Chain, VersionRecord};
use super::{
    segment, CommitRequest, Key, Located, Oid, PackStats, Storage, Tid, TxnInfo, VerifyReport,
    Version,
};
use crate::{Error, Result};

/// An in-process store. Cloning is not offered: share it as `Arc<MemStorage>`.
#[derive(Debug)]
pub struct MemStorage {
    compression: Compression,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    versions: BTreeMap<(Key, Tid), VersionRecord>,
    log: BTreeMap<Tid, TxnInfo>,
    head: Tid,
    horizon: Tid,
    next_oid: u64,
    segments: HashMap<u32, Arc<File>>,
    current_segment: u32,
    tail: u64,
    leases: HashMap<u64, Tid>,
    next_lease: u64,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStorage {
    /// An empty store with uncompressed blocks.
    pub fn new() -> Self {
        Self::with_compression(Compression::None)
    }

    /// An empty store compressing block payloads with `compression`.
    pub fn with_compression(compression: Compression) -> Self {
        MemStorage {
            compression,
            inner: Mutex::new(Inner {
                next_oid: 1,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit (commits mutate
        // only after every check), so the data behind a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fresh anonymous memory file.
fn memfd() -> Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor
    // or -1, and touches no memory of ours besides the name.
    let fd = unsafe { libc::memfd_create(c"outcore-mem".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Inner {
    /// Fails for snapshots older than the pack horizon (see [`super::check_horizon`]).
    fn check_horizon(&self, at: Tid) -> Result<()> {
        super::check_horizon(at, self.horizon)
    }

    /// The newest version of `key` at `at`; if there is none, fails for snapshots older than
    /// the pack horizon (see [`super::check_horizon`]).
    fn newest_checked(&self, key: Key, at: Tid) -> Result<Option<(Tid, &VersionRecord)>> {
        let found = self.newest(key, at);
        if found.is_none() {
            self.check_horizon(at)?;
        }
        Ok(found)
    }

    fn newest(&self, key: Key, at: Tid) -> Option<(Tid, &VersionRecord)> {
        self.versions
            .range((key, Tid::ZERO)..=(key, at))
            .next_back()
            .map(|((_, t), r)| (*t, r))
    }

    /// The chain of version `found` of `key` (see [`Chain`]).
    fn chain(&self, key: Key, found: (Tid, &VersionRecord)) -> Result<Chain> {
        Chain::collect(key, (found.0, found.1.clone()), |before| {
            Ok(self.newest(key, before).map(|(t, r)| (t, r.clone())))
        })
    }

    fn segment(&self, seg: u32) -> Result<Arc<File>> {
        self.segments
            .get(&seg)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("memory segment {seg}")))
    }

    /// Appends a body to the current segment (creating it if needed).
    fn append(&mut self, stored: &[u8], what: &str) -> Result<(u32, u64)> {
        if !self.segments.contains_key(&self.current_segment) {
            self.segments
                .insert(self.current_segment, Arc::new(memfd()?));
            self.tail = 0;
        }
        let file = self.segment(self.current_segment)?;
        let offset = segment::append(&file, self.tail, stored, what)?;
        self.tail = offset + stored.len() as u64;
        Ok((self.current_segment, offset))
    }
}

impl Storage for MemStorage {
    fn describe(&self) -> String {
        "mem:".into()
    }

    fn head(&self) -> Result<Tid> {
        Ok(self.lock().head)
    }

    fn new_oids(&self, n: u64) -> Result<Range<u64>> {
        let mut g = self.lock();
        let start = g.next_oid;
        g.next_oid += n;
        Ok(start..start + n)
    }

    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
        let g = self.lock();
        match g.newest_checked(key, at)? {
            None => Ok(None),
            Some(found) => g.chain(key, found)?.load(key, &|s| g.segment(s)),
        }
    }

    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        let g = self.lock();
        match g.newest_checked(key, at)? {
            None => Ok(None),
            Some(found) => g.chain(key, found)?.load_into(key, &|s| g.segment(s), out),
        }
    }

    fn locate(&self, key: Key, at: Tid) -> Result<Located> {
        let g = self.lock();
        match g.newest_checked(key, at)? {
            None => Ok(Located::Absent),
            Some(found) => g.chain(key, found)?.locate(key, &|s| g.segment(s)),
        }
    }

    fn commit(&self, req: CommitRequest) -> Result<Tid> {
        req.refuse_adoption("a mem: store")?;
        let mut g = self.lock();
        let mut tips = Vec::with_capacity(req.writes.len());
        for (key, _) in &req.writes {
            let current = g.newest(*key, Tid::MAX);
            if let Some((committed, _)) = current {
                if committed > req.base {
                    return Err(Error::Conflict {
                        key: *key,
                        base: req.base,
                        committed,
                    });
                }
            }
            tips.push(current.and_then(|(_, rec)| rec.tip()));
        }
        let tid = Tid::next_after(g.head);
        let mut records = Vec::with_capacity(req.writes.len());
        for ((key, write), tip) in req.writes.iter().zip(tips) {
            let record = record::encode_write(*key, write, tip, self.compression, |stored| {
                g.append(stored, &key.to_string())
            })?;
            records.push((*key, record));
        }
        let mut keys: Vec<Key> = records.iter().map(|(k, _)| *k).collect();
        keys.sort();
        for (key, record) in records {
            g.versions.insert((key, tid), record);
        }
        g.log.insert(
            tid,
            TxnInfo {
                tid,
                user: req.meta.user,
                description: req.meta.description,
                keys,
            },
        );
        g.head = tid;
        Ok(tid)
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        let g = self.lock();
        if after < g.horizon {
            return Err(Error::SnapshotTooOld {
                horizon: g.horizon,
                requested: after,
            });
        }
        if upto <= after {
            return Ok(Vec::new());
        }
        Ok(g.log
            .range(Tid(after.0 + 1)..=upto)
            .map(|(_, t)| t.clone())
            .collect())
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        let g = self.lock();
        g.check_horizon(at)?;
        let lo = (Key::Block { file, index: 0 }, Tid::ZERO);
        let hi = (
            Key::Block {
                file,
                index: u64::MAX,
            },
            Tid::MAX,
        );
        let mut out: Vec<u64> = Vec::new();
        let mut newest: Option<(u64, bool)> = None;
        for ((key, tid), rec) in g.versions.range(lo..=hi) {
            let Key::Block { index, .. } = *key else {
                continue;
            };
            if let Some((i, live)) = newest {
                if i != index && live {
                    out.push(i);
                }
                if i != index {
                    newest = None;
                }
            }
            if *tid <= at {
                newest = Some((index, rec.body != Body::Tombstone));
            }
        }
        if let Some((i, true)) = newest {
            out.push(i);
        }
        Ok(out)
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        let mut g = self.lock();
        g.next_lease += 1;
        let id = g.next_lease;
        g.leases.insert(id, at);
        Ok(id)
    }

    fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        self.lock().leases.insert(id, at);
        Ok(())
    }

    fn release_lease(&self, id: u64) {
        self.lock().leases.remove(&id);
    }

    fn pack_horizon(&self) -> Result<Tid> {
        Ok(self.lock().horizon)
    }

    fn pack(&self, upto: Tid) -> Result<PackStats> {
        let mut g = self.lock();
        let oldest_lease = g.leases.values().copied().min().unwrap_or(Tid::MAX);
        let horizon = upto.min(g.head).min(oldest_lease).max(g.horizon);
        let mut stats = PackStats {
            horizon,
            body_bytes_before: g.versions.values().map(|r| r.segment_bytes()).sum(),
            ..PackStats::default()
        };
        let all: Vec<(Key, Tid, VersionRecord)> = g
            .versions
            .iter()
            .map(|((k, t), r)| (*k, *t, r.clone()))
            .collect();
        let removals = pack_removals(
            all.iter()
                .map(|(k, t, r)| (*k, *t, r.body == Body::Tombstone)),
            horizon,
        );
        stats.versions_removed = removals.len() as u64;
        let removed: std::collections::HashSet<(Key, Tid)> = removals.into_iter().collect();
        // Rewrite the live bodies contiguously, in key order, into a fresh memory file.
        let old = std::mem::take(&mut g.segments);
        let open = |seg: u32| {
            old.get(&seg)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("memory segment {seg}")))
        };
        g.current_segment += 1;
        g.tail = 0;
        let mut versions = BTreeMap::new();
        for (i, (key, tid, rec)) in all.iter().enumerate() {
            if removed.contains(&(*key, *tid)) {
                continue;
            }
            let rec = match record::packed_payload(&all, i, &removed, self.compression, &open)? {
                Some((bytes, mut rec)) => {
                    let (seg, offset) = g.append(&bytes, &key.to_string())?;
                    rec.body = rec.body.moved_to(seg, offset);
                    rec
                }
                None => rec.clone(),
            };
            versions.insert((*key, *tid), rec);
        }
        g.versions = versions;
        g.log = g.log.split_off(&Tid(horizon.0.saturating_add(1)));
        g.horizon = horizon;
        stats.versions_kept = g.versions.len() as u64;
        stats.body_bytes_after = g.versions.values().map(|r| r.segment_bytes()).sum();
        Ok(stats)
    }

    fn verify(&self) -> Result<VerifyReport> {
        let g = self.lock();
        let mut report = VerifyReport::default();
        for ((key, tid), rec) in &g.versions {
            report.versions_checked += 1;
            report.bytes_checked += rec.raw_len;
            if let Err(e) = rec.load(*key, *tid, |s| g.segment(s)) {
                report.problems.push(e);
            }
        }
        Ok(report)
    }
}
