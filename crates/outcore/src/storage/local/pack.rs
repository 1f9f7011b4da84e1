//! Pack of a local store, online: commits go on while it copies.
//!
//! Steps (one pack at a time per store, across processes: the pack lock):
//!
//! 1. **Plan**, in one index read transaction: the horizon `min(upto, head, oldest live
//!    lease)`, every version, the removals (versions shadowed at or before the horizon), and
//!    `copied` = the commit segment current then.
//! 2. **Copy**, holding no index lock: every kept version's payload — deltas kept at the
//!    horizon and each key's newest version folded into whole versions — goes, in key order,
//!    into new staging-type segments of this process (marked, so no other process deletes
//!    them). Commits run meanwhile, appending to segment `copied` or later ones.
//! 3. **Catch up and switch**, under the index writer lock: versions committed since step 1
//!    whose payload lies in a segment about to be deleted (commit segments up to `copied`, or
//!    a staging segment) are copied too; then the kept versions' records point to their
//!    copies, the removed ones are deleted, the log up to the horizon goes, and commits move
//!    to a fresh segment if they were still appending to `copied`. One index commit.
//! 4. **Delete** the commit segments up to `copied` and the staging segments nobody may
//!    publish from (under the exclusive staging lock). Readers that still use a deleted
//!    segment keep their open descriptors and mappings; new reads find the new records.
//!
//! A crash or error before the index commit leaves the store as it was: the new segments
//! are unreferenced and carry this process's markers, so a later pack deletes them. After
//! it, undeleted old segments are unreferenced and the next pack deletes them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use super::files::sync_dir;
use super::staging::STAGING_BASE;
use super::{
    get_u64, put_u64, split_version_key, version_key, Shared, META_EPOCH, META_HEAD, META_HORIZON,
    META_NEXT_STAGING, META_SEGMENT, META_TAIL,
};
use crate::storage::lease::pack_removals;
use crate::storage::record::{self, Body, VersionRecord};
use crate::storage::StagedHold;
use crate::storage::{segment, Key, PackStats, Tid};
use crate::{Error, Result};

/// The segments a pack writes: staging-type segments held by this process's markers until
/// the pack is over; deleted again unless the pack commits.
struct Output<'a> {
    store: &'a Shared,
    /// Finished segments and the current one (id, file, end).
    files: Vec<(u32, File)>,
    tail: u64,
    /// This process's markers of the segments, removed when the pack is over.
    holds: Vec<StagedHold>,
    kept: bool,
}

impl<'a> Output<'a> {
    fn new(store: &'a Shared) -> Self {
        Output {
            store,
            files: Vec::new(),
            tail: 0,
            holds: Vec::new(),
            kept: false,
        }
    }

    /// Appends one payload; its segment and offset.
    fn append(&mut self, bytes: &[u8], key: Key) -> Result<(u32, u64)> {
        if self.files.is_empty() || self.tail >= self.store.segment_bytes {
            self.start_segment()?;
        }
        let (seg, file) = self.files.last().expect("started above");
        let offset = segment::append(file, self.tail, bytes, &key.to_string())?;
        self.tail = offset + bytes.len() as u64;
        Ok((*seg, offset))
    }

    fn start_segment(&mut self) -> Result<()> {
        if let Some((_, file)) = self.files.last() {
            file.sync_data()
                .map_err(|e| Error::io("syncing a packed segment", e))?;
        }
        let store = self.store;
        let hold = std::cell::RefCell::new(None);
        let seg = store.allocate_staging(&|seg| {
            *hold.borrow_mut() = Some(store.stager.hold(seg)?);
            Ok(())
        })?;
        self.holds.extend(hold.into_inner());
        let path = store.segments.path(seg);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        sync_dir(&store.dir.join("segments"))?;
        self.files.push((seg, file));
        self.tail = 0;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if let Some((_, file)) = self.files.last() {
            file.sync_data()
                .map_err(|e| Error::io("syncing a packed segment", e))?;
        }
        Ok(())
    }
}

impl Drop for Output<'_> {
    fn drop(&mut self) {
        if !self.kept {
            for (seg, _) in &self.files {
                let _ = std::fs::remove_file(self.store.segments.path(*seg));
            }
        }
        // The holds go with `self`: their markers are removed.
    }
}

impl Shared {
    /// The pack lock (`<store>/pack.lock`, `flock`): one pack at a time per store; `fence`
    /// takes it to wait for a running pack.
    pub(super) fn pack_lock(&self) -> Result<File> {
        super::files::lock_file(&self.dir.join("pack.lock"), true, "waiting for a pack")
    }

    /// The commit-log entries with `after < tid <= upto`, as `txn` sees them.
    pub(super) fn log_entries(
        &self,
        txn: &heed::RoTxn,
        after: Tid,
        upto: Tid,
    ) -> Result<Vec<crate::storage::TxnInfo>> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let lo = (after.0 + 1).to_be_bytes();
        let hi = upto.0.to_be_bytes();
        let range = (
            std::ops::Bound::Included(&lo[..]),
            std::ops::Bound::Included(&hi[..]),
        );
        let mut out = Vec::new();
        for item in self.log.range(txn, &range)? {
            let (k, v) = item?;
            let tid = Tid(u64::from_be_bytes(k.try_into().map_err(|_| {
                Error::Corrupt {
                    key: Key::Meta(crate::storage::Oid(0)),
                    tid: Tid::ZERO,
                    reason: "bad commit-log key".into(),
                }
            })?));
            out.push(record::decode_log(v, tid)?);
        }
        Ok(out)
    }

    /// Packs up to `upto` (see the module documentation).
    pub(super) fn pack(&self, upto: Tid) -> Result<PackStats> {
        let s = self;
        let _one_at_a_time = s.pack_lock()?;

        // 1. Plan.
        let txn = s.env.read_txn()?;
        let head = Tid(get_u64(&s.meta, &txn, META_HEAD)?);
        let old_horizon = Tid(get_u64(&s.meta, &txn, META_HORIZON)?);
        let oldest_lease = s.leases.oldest_live()?.unwrap_or(Tid::MAX);
        let horizon = upto.min(head).min(oldest_lease).max(old_horizon);
        let epoch = get_u64(&s.meta, &txn, META_EPOCH)?;
        let copied = get_u64(&s.meta, &txn, META_SEGMENT)? as u32;
        let mut all: Vec<(Key, Tid, VersionRecord)> = Vec::new();
        for item in s.versions.iter(&txn)? {
            let (k, v) = item?;
            let (key, tid) = split_version_key(k).ok_or_else(|| Error::Corrupt {
                key: Key::Meta(crate::storage::Oid(0)),
                tid: Tid::ZERO,
                reason: "bad version-index key".into(),
            })?;
            all.push((key, tid, VersionRecord::decode(v, key, tid)?));
        }
        drop(txn);
        let mut stats = PackStats {
            horizon,
            body_bytes_before: all.iter().map(|(_, _, r)| r.segment_bytes()).sum(),
            ..PackStats::default()
        };
        let removals = pack_removals(
            all.iter()
                .map(|(k, t, r)| (*k, *t, r.body == Body::Tombstone)),
            horizon,
        );
        stats.versions_removed = removals.len() as u64;
        let removed: HashSet<(Key, Tid)> = removals.iter().copied().collect();

        // 2. Copy, commits going on.
        let open = |seg: u32| s.segments.reader(seg, epoch);
        let mut out = Output::new(s);
        let mut moved: Vec<(Key, Tid, VersionRecord)> = Vec::new();
        for (i, (key, tid, _)) in all.iter().enumerate() {
            if removed.contains(&(*key, *tid)) {
                continue;
            }
            stats.versions_kept += 1;
            let Some((bytes, mut rec)) =
                record::packed_payload(&all, i, &removed, s.compression, &open)?
            else {
                continue;
            };
            let (seg, offset) = out.append(&bytes, *key)?;
            rec.body = rec.body.moved_to(seg, offset);
            stats.body_bytes_after += bytes.len() as u64;
            moved.push((*key, *tid, rec));
        }

        if let Some(path) = std::env::var_os("OUTCORE_PACK_PAUSE") {
            pause_for_test(std::path::Path::new(&path));
        }

        // 3. Catch up and switch.
        let mut txn = s.env.write_txn()?;
        let head_now = Tid(get_u64(&s.meta, &txn, META_HEAD)?);
        let staged_before = get_u64(&s.meta, &txn, META_NEXT_STAGING)?;
        for entry in s.log_entries(&txn, head, head_now)? {
            for key in entry.keys {
                let Some(rec) = s
                    .newest(&txn, key, entry.tid)?
                    .filter(|(t, _)| *t == entry.tid)
                    .map(|(_, r)| r)
                else {
                    continue;
                };
                let Some((seg, offset, len)) = rec.body.in_segment() else {
                    continue;
                };
                if seg > copied && seg < STAGING_BASE {
                    continue; // a commit segment that stays
                }
                let bytes = segment::read(&*open(seg)?, offset, len, &key.to_string())?;
                let (new_seg, new_offset) = out.append(&bytes, key)?;
                let mut rec = rec.clone();
                rec.body = rec.body.moved_to(new_seg, new_offset);
                stats.body_bytes_after += len;
                stats.versions_kept += 1;
                moved.push((key, entry.tid, rec));
            }
        }
        out.sync()?;
        for (key, tid, rec) in &moved {
            s.versions
                .put(&mut txn, &version_key(*key, *tid)[..], &rec.encode())?;
        }
        for (key, tid) in &removals {
            s.versions.delete(&mut txn, &version_key(*key, *tid)[..])?;
        }
        let hi = horizon.0.to_be_bytes();
        s.log.delete_range(
            &mut txn,
            &(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Included(&hi[..]),
            ),
        )?;
        if get_u64(&s.meta, &txn, META_SEGMENT)? as u32 == copied {
            // Commits still append to the segment about to be deleted: on to a fresh one.
            put_u64(&s.meta, &mut txn, META_SEGMENT, u64::from(copied) + 1)?;
            put_u64(&s.meta, &mut txn, META_TAIL, 0)?;
        }
        put_u64(&s.meta, &mut txn, META_EPOCH, epoch + 1)?;
        put_u64(&s.meta, &mut txn, META_HORIZON, horizon.0)?;
        txn.commit()?;
        out.kept = true;

        // 4. Delete what no record names any more.
        s.segments.delete_below(copied + 1)?;
        let _staging = s.stager.lock(true)?;
        let mut live = s.stager.live_segments()?;
        // This pack's own segments are live until `out` is dropped (its markers with it).
        live.extend(out.files.iter().map(|(seg, _)| *seg));
        s.segments.delete_staging_except(&live, staged_before)?;
        drop(out);
        Ok(stats)
    }
}

/// Internal, for tests of commits during a pack (`OUTCORE_PACK_PAUSE=<path>`): says the copy
/// is done by creating `<path>.copied`, then waits until `<path>` is removed.
fn pause_for_test(path: &std::path::Path) {
    let mut copied = path.as_os_str().to_owned();
    copied.push(".copied");
    let _ = File::create(&copied);
    while path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
