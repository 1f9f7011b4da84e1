//! [`LocalStorage`]: the embedded default store — a directory, zero set-up.
//!
//! ```text
//! <dir>/index/       LMDB environment: version index, commit log, head, settings
//! <dir>/segments/    append-only segment files holding block bodies, each body 4 KiB-aligned
//! <dir>/leases/      one small file per live reader snapshot (see `leases.rs`)
//! ```
//!
//! **Commit protocol.** Inside one LMDB write transaction — LMDB's writer lock serialises
//! writers of every process — the commit checks conflicts, picks the tid, appends the block
//! bodies at the segment tail, `fdatasync`s the segment, then writes index records, log entry,
//! head and new tail and commits (LMDB fsyncs). A crash before the index commit leaves only
//! bytes past the recorded tail, which no snapshot references and the next commit overwrites.
//! The byte-level format is documented in `docs/FORMAT.md`.
//!
//! **Processes.** Any number of processes may open the same directory. Within a process one
//! LMDB environment per store is shared by every `LocalStorage` handle (a registry), as LMDB
//! requires.
//!
//! **Read-only media.** An open with `create: false` that cannot open the index for writing
//! (read-only filesystem or mount, a directory of another user, a full disk) opens it
//! read-only instead: LMDB's `MDB_RDONLY`, and `MDB_NOLOCK` where even LMDB's lock file cannot
//! be written (LMDB itself drops the lock file on a read-only filesystem). Such a store refuses
//! changes with [`Error::ReadOnly`]; its readers hold no lease (see `leases.rs`). Without the
//! lock file, LMDB cannot tell writers of other processes about this reader: reads are
//! consistent only while nobody commits to the store (published data, snapshots).
//!
//! **Failed writes.** A commit or pack that fails (a full disk above all) undoes what it
//! appended to the segments (`files::Uncommitted`), and errors of a full disk or index say
//! "no space left on device" (`Shared::explain_full`).

mod commit;
mod errors;
mod files;
mod leases;
mod open;
mod pack;
mod staging;

pub use staging::StagedExtent;

use super::{StagedHold, StagedRef};

use std::collections::HashMap;
use std::fs::{DirBuilder, File};
use std::ops::Range;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use super::codec::{self, Compression};
use super::delta::Tip;
use super::record::{self, encode_log, Body, Chain, VersionRecord};
use super::{
    segment, CommitRequest, Key, Located, Oid, PackStats, Storage, Tid, TxnInfo, VerifyReport,
    Version, Write,
};
use crate::{Error, Result};
use files::{SegmentDir, Uncommitted};
use leases::LeaseDir;

/// The on-disk format version this code writes (format 1 stores are read as they are and
/// upgraded by their first commit that stores a delta).
const FORMAT_VERSION: u64 = 2;

/// The oldest format version this code reads.
const OLDEST_FORMAT: u64 = 1;

/// How to open a [`LocalStorage`].
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Block compression for a *new* store (an existing store keeps its own setting).
    pub compression: Compression,
    /// Create the store if the directory holds none (default true). `false` also allows a
    /// read-only open of media this process cannot write (see the module documentation).
    pub create: bool,
    /// A commit starts a new segment file once the current one is this big (default 1 GiB).
    pub segment_bytes: u64,
    /// The LMDB map size: the largest the index may grow (default 1 TiB of address space,
    /// or `OUTCORE_LMDB_MAP_BYTES`; the file only takes what it uses).
    pub map_size: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            compression: Compression::None,
            create: true,
            segment_bytes: 1 << 30,
            // Address-space-limited environments (ulimit -v, valgrind) can ask for less.
            map_size: std::env::var("OUTCORE_LMDB_MAP_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 40),
        }
    }
}

/// The embedded store: an LMDB index plus page-aligned segment files in one directory.
/// Cheap to clone; clones share one environment.
#[derive(Clone, Debug)]
pub struct LocalStorage {
    shared: Arc<Shared>,
}

/// Everything one process holds open for one store directory.
struct Shared {
    dir: PathBuf,
    /// (device, inode) of the index directory when opened: tells a store deleted and created
    /// anew at the same path from the one this process has open.
    identity: (u64, u64),
    env: Env<WithoutTls>,
    /// (key ‖ tid big-endian) → encoded `VersionRecord`.
    versions: Database<Bytes, Bytes>,
    /// tid big-endian → encoded log entry.
    log: Database<Bytes, Bytes>,
    /// Named settings and counters (see the `META_*` constants).
    meta: Database<Str, Bytes>,
    compression: Compression,
    segment_bytes: u64,
    segments: SegmentDir,
    leases: LeaseDir,
    /// False when the index could only be opened read-only: every change is refused.
    writable: bool,
    /// Oids allocated durably but not handed out yet (see `new_oids`).
    spare_oids: std::sync::Mutex<Range<u64>>,
    /// Block versions written before their commit (see `staging`).
    stager: staging::Stager,
}

/// Oids taken from the index at a time: allocating is a durable index commit (an fsync), so
/// creating 100,000 arrays one by one would cost that 100,000 times. Oids of a batch unused
/// when the process ends are skipped for good (there are 2**64).
const OID_BATCH: u64 = 1024;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStorage")
            .field("dir", &self.dir)
            .finish()
    }
}

const META_FORMAT: &str = "format";
const META_COMPRESSION: &str = "compression";
const META_HEAD: &str = "head";
const META_NEXT_OID: &str = "next_oid";
const META_SEGMENT: &str = "segment";
const META_TAIL: &str = "tail";
const META_EPOCH: &str = "pack_epoch";
const META_HORIZON: &str = "pack_horizon";
const META_NEXT_STAGING: &str = "next_staging";

/// The stores this process has open, by canonical directory: LMDB forbids opening one
/// environment twice in a process.
static REGISTRY: Mutex<Option<HashMap<PathBuf, Weak<Shared>>>> = Mutex::new(None);

/// (device, inode) of `dir`.
fn dir_identity(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    Ok((m.dev(), m.ino()))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating directory {}", dir.display()), e))
}

fn version_key(key: Key, tid: Tid) -> [u8; Key::ENCODED_LEN + 8] {
    let mut out = [0u8; Key::ENCODED_LEN + 8];
    out[..Key::ENCODED_LEN].copy_from_slice(&key.encode());
    out[Key::ENCODED_LEN..].copy_from_slice(&tid.0.to_be_bytes());
    out
}

fn split_version_key(bytes: &[u8]) -> Option<(Key, Tid)> {
    if bytes.len() != Key::ENCODED_LEN + 8 {
        return None;
    }
    let key = Key::decode(&bytes[..Key::ENCODED_LEN])?;
    let tid = u64::from_be_bytes(bytes[Key::ENCODED_LEN..].try_into().ok()?);
    Some((key, Tid(tid)))
}

impl LocalStorage {
    /// Opens (creating with default options if missing) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, LocalOptions::default())
    }

    /// Opens the store in `dir` with `options`.
    pub fn open_with(dir: impl AsRef<Path>, options: LocalOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.join("index").exists() {
            if !options.create {
                return Err(Error::NotFound(format!(
                    "no outcore store at {}",
                    dir.display()
                )));
            }
            if dir.exists()
                && dir
                    .read_dir()
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                return Err(Error::Format {
                    path: dir.to_path_buf(),
                    reason: "directory exists, is not empty and holds no outcore store".into(),
                });
            }
        }
        create_private_dir(&dir.join("index"))?;
        let canonical = dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let registry = registry.get_or_insert_with(HashMap::new);
        if let Some(shared) = registry.get(&canonical).and_then(Weak::upgrade) {
            if options.create && !shared.writable {
                return Err(Error::ReadOnly(format!(
                    "the store at {} is open read-only in this process (its media could not \
                     be written when it was opened): close it first to open it for writing",
                    canonical.display()
                )));
            }
            if shared.identity != dir_identity(&canonical.join("index"))? {
                // LMDB (and heed) allow one environment per path and process.
                return Err(Error::InvalidArgument(format!(
                    "the store at {} was deleted and created anew while this process still \
                     uses the old one (arrays or connections of it are alive): close them \
                     first, or use another path",
                    canonical.display()
                )));
            }
            return Ok(LocalStorage { shared });
        }
        let shared = match Shared::open(canonical.clone(), &options) {
            Err(e) if !options.create && errors::cannot_write(&e) => {
                Shared::open_readonly(canonical.clone(), &options)?
            }
            other => other?,
        };
        let shared = Arc::new(shared);
        registry.retain(|_, w| w.strong_count() > 0);
        registry.insert(canonical, Arc::downgrade(&shared));
        Ok(LocalStorage { shared })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The block compression of this store.
    pub fn compression(&self) -> Compression {
        self.shared.compression
    }
}

/// The store's compression setting as recorded in its index.
fn stored_compression(meta: &Database<Str, Bytes>, txn: &RoTxn, dir: &Path) -> Result<Compression> {
    let code = meta
        .get(txn, META_COMPRESSION)?
        .and_then(|b| b.first().copied());
    code.and_then(Compression::from_code)
        .ok_or_else(|| Error::Format {
            path: dir.to_path_buf(),
            reason: "unknown compression setting".into(),
        })
}

fn get_u64(meta: &Database<Str, Bytes>, txn: &RoTxn, name: &str) -> Result<u64> {
    Ok(meta
        .get(txn, name)?
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0))
}

fn put_u64(meta: &Database<Str, Bytes>, txn: &mut RwTxn, name: &str, v: u64) -> Result<()> {
    meta.put(txn, name, &v.to_le_bytes())?;
    Ok(())
}

impl Shared {
    /// Refuses changes to a store opened read-only.
    fn check_writable(&self) -> Result<()> {
        if self.writable {
            return Ok(());
        }
        Err(Error::ReadOnly(format!(
            "the store at {} was opened read-only: this process cannot write its directory",
            self.dir.display()
        )))
    }

    /// [`errors::explain_full`] for this store's index.
    fn explain_full(&self, e: Error) -> Error {
        errors::explain_full(e, &self.dir.join("index"))
    }

    /// Fails if snapshot `at` is older than the pack horizon (a lease-less reader, or a read at
    /// a snapshot nobody leased): see [`super::check_horizon`]. `txn` must be the index
    /// snapshot the caller reads from, so a pack committing meanwhile cannot slip between
    /// check and read.
    fn check_horizon(&self, txn: &RoTxn, at: Tid) -> Result<()> {
        let packed = Tid(get_u64(&self.meta, txn, META_HORIZON)?);
        super::check_horizon(at, packed)
    }

    /// The newest version of `key` at or before `at`, as seen by `txn`.
    fn newest(&self, txn: &RoTxn, key: Key, at: Tid) -> Result<Option<(Tid, VersionRecord)>> {
        let probe = version_key(key, at);
        let Some((k, v)) = self.versions.get_lower_than_or_equal_to(txn, &probe[..])? else {
            return Ok(None);
        };
        match split_version_key(k) {
            Some((found, tid)) if found == key => {
                Ok(Some((tid, VersionRecord::decode(v, key, tid)?)))
            }
            _ => Ok(None),
        }
    }

    /// Runs a read of the version of `key` at `at` (with the versions it is a delta over)
    /// against a fresh index snapshot, retrying if a concurrent pack deleted the segment the
    /// snapshot named between the index read and the file open.
    fn read_segment_retrying<T>(
        &self,
        key: Key,
        at: Tid,
        mut f: impl FnMut(&Chain, &dyn Fn(u32) -> Result<Arc<File>>) -> Result<T>,
        absent: impl Fn() -> T,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let txn = self.env.read_txn()?;
            let epoch = get_u64(&self.meta, &txn, META_EPOCH)?;
            let found = self.newest(&txn, key, at)?;
            if found.is_none() {
                // Nothing at `at`: a hole, or a version pack removed? (See `check_horizon`.)
                self.check_horizon(&txn, at)?;
            }
            let Some(found) = found else {
                return Ok(absent());
            };
            let chain = Chain::collect(key, found, |before| self.newest(&txn, key, before))?;
            drop(txn);
            let open = |seg: u32| self.segments.reader(seg, epoch);
            match f(&chain, &open) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 2 =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Encodes one write into a record (see [`record::encode_write`]), appending block bodies
    /// to segment `seg_state.0` at `seg_state.1`, or to a new segment once that one is full.
    fn prepare(
        &self,
        key: Key,
        write: &Write,
        tip: Option<Tip>,
        out: &mut Option<(File, u32)>,
        seg_state: &mut (u32, u64),
    ) -> Result<VersionRecord> {
        record::encode_write(key, write, tip, self.compression, |stored| {
            if out.is_none() {
                let (seg, tail) = seg_state;
                let fresh = *tail >= self.segment_bytes;
                if fresh {
                    *seg += 1;
                    *tail = 0;
                }
                *out = Some((self.segments.writer(*seg, fresh || *tail == 0)?, *seg));
            }
            let (file, seg) = out.as_ref().expect("segment opened above");
            let offset = segment::append(file, seg_state.1, stored, &key.to_string())?;
            seg_state.1 = offset + stored.len() as u64;
            Ok((*seg, offset))
        })
    }
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.shared.dir.display().to_string()
    }

    fn head(&self) -> Result<Tid> {
        let s = &self.shared;
        let txn = s.env.read_txn()?;
        Ok(Tid(get_u64(&s.meta, &txn, META_HEAD)?))
    }

    fn new_oids(&self, n: u64) -> Result<Range<u64>> {
        let s = &self.shared;
        s.check_writable()?;
        let mut spare = s.spare_oids.lock().unwrap_or_else(|p| p.into_inner());
        if spare.end - spare.start < n {
            let batch = n.max(OID_BATCH);
            let allocate = || {
                let mut txn = s.env.write_txn()?;
                let start = get_u64(&s.meta, &txn, META_NEXT_OID)?.max(1);
                put_u64(&s.meta, &mut txn, META_NEXT_OID, start + batch)?;
                txn.commit()?;
                Ok(start..start + batch)
            };
            *spare = allocate().map_err(|e| s.explain_full(e))?;
        }
        let out = spare.start..spare.start + n;
        spare.start += n;
        Ok(out)
    }

    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
        self.shared
            .read_segment_retrying(key, at, |chain, open| chain.load(key, open), || None)
    }

    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        self.shared.read_segment_retrying(
            key,
            at,
            |chain, open| chain.load_into(key, open, out),
            || None,
        )
    }

    fn locate(&self, key: Key, at: Tid) -> Result<Located> {
        self.shared.read_segment_retrying(
            key,
            at,
            |chain, open| chain.locate(key, open),
            || Located::Absent,
        )
    }

    fn commit(&self, req: CommitRequest) -> Result<Tid> {
        let s = &self.shared;
        s.check_writable()?;
        s.commit(req).map_err(|e| s.explain_full(e))
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        self.shared.log(after, upto)
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        self.shared.block_indices(file, at)
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        self.shared.leases.acquire(at)
    }

    fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        self.shared.leases.renew(id, at)
    }

    fn release_lease(&self, id: u64) {
        self.shared.leases.release(id)
    }

    fn fence(&self) -> Result<()> {
        let s = &self.shared;
        if !s.writable {
            // No writer lock to take; readers here hold no lease and check the horizon
            // with every read instead.
            return Ok(());
        }
        // Pack holds its lock from start to end.
        drop(s.pack_lock()?);
        Ok(())
    }

    fn stage(&self, len: u64) -> Result<Option<Arc<StagedExtent>>> {
        let s = &self.shared;
        if !s.writable || s.compression != Compression::None {
            // Compressed versions are encoded at commit; nothing to write ahead.
            return Ok(None);
        }
        if len == 0 || len % segment::PAGE != 0 {
            return Err(Error::InvalidArgument(format!(
                "staged space must be a positive multiple of 4096 bytes, not {len}"
            )));
        }
        let allocate = |mark: &dyn Fn(u32) -> Result<()>| s.allocate_staging(mark);
        s.stager
            .stage(len, s.segment_bytes, s.identity, allocate, |seg| {
                s.segments.path(seg)
            })
            .map_err(|e| s.explain_full(e))
    }

    fn stages_bodies(&self) -> bool {
        self.shared.writable && self.shared.compression == Compression::None
    }

    fn hold_staged(&self, version: &StagedRef) -> Result<StagedHold> {
        let (segment, _) = staging::place_of(version)?;
        self.shared.stager.hold(segment)
    }

    fn pack_horizon(&self) -> Result<Tid> {
        let s = &self.shared;
        let txn = s.env.read_txn()?;
        Ok(Tid(get_u64(&s.meta, &txn, META_HORIZON)?))
    }

    fn pack(&self, upto: Tid) -> Result<PackStats> {
        let s = &self.shared;
        s.check_writable()?;
        s.pack(upto).map_err(|e| s.explain_full(e))
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.shared.verify()
    }
}

/// The work of the [`Storage`] methods that are more than a line.
impl Shared {
    /// Allocates a staging segment id from the index; `mark` (which creates the segment's
    /// marker) runs inside the allocating transaction (see `staging`).
    fn allocate_staging(&self, mark: &dyn Fn(u32) -> Result<()>) -> Result<u32> {
        let mut txn = self.env.write_txn()?;
        let next =
            get_u64(&self.meta, &txn, META_NEXT_STAGING)?.max(u64::from(staging::STAGING_BASE));
        let seg = u32::try_from(next).map_err(|_| Error::Format {
            path: self.dir.clone(),
            reason: "staging segment ids exhausted".into(),
        })?;
        mark(seg)?;
        put_u64(&self.meta, &mut txn, META_NEXT_STAGING, next + 1)?;
        txn.commit()?;
        Ok(seg)
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        let txn = self.env.read_txn()?;
        let packed = Tid(get_u64(&self.meta, &txn, META_HORIZON)?);
        if after < packed {
            return Err(Error::SnapshotTooOld {
                horizon: packed,
                requested: after,
            });
        }
        self.log_entries(&txn, after, upto)
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        let s = self;
        let txn = s.env.read_txn()?;
        s.check_horizon(&txn, at)?;
        let lo = version_key(Key::Block { file, index: 0 }, Tid::ZERO);
        let hi = version_key(
            Key::Block {
                file,
                index: u64::MAX,
            },
            Tid::MAX,
        );
        let range = (
            std::ops::Bound::Included(&lo[..]),
            std::ops::Bound::Included(&hi[..]),
        );
        let mut out = Vec::new();
        let mut newest: Option<(u64, bool)> = None;
        for item in s.versions.range(&txn, &range)? {
            let (k, v) = item?;
            let Some((Key::Block { index, .. }, tid)) = split_version_key(k) else {
                continue;
            };
            if let Some((i, live)) = newest {
                if i != index {
                    if live {
                        out.push(i);
                    }
                    newest = None;
                }
            }
            if tid <= at {
                let live = VersionRecord::decode(v, Key::Block { file, index }, tid)?.body
                    != Body::Tombstone;
                newest = Some((index, live));
            }
        }
        if let Some((i, true)) = newest {
            out.push(i);
        }
        Ok(out)
    }

    fn verify(&self) -> Result<VerifyReport> {
        let s = self;
        let txn = s.env.read_txn()?;
        let epoch = get_u64(&s.meta, &txn, META_EPOCH)?;
        let mut report = VerifyReport::default();
        for item in s.versions.iter(&txn)? {
            let (k, v) = item?;
            report.versions_checked += 1;
            let Some((key, tid)) = split_version_key(k) else {
                report.problems.push(Error::Corrupt {
                    key: Key::Meta(super::Oid(0)),
                    tid: Tid::ZERO,
                    reason: "bad version-index key".into(),
                });
                continue;
            };
            let checked = VersionRecord::decode(v, key, tid).and_then(|rec| {
                report.bytes_checked += rec.raw_len;
                rec.load(key, tid, |seg| s.segments.reader(seg, epoch))
            });
            if let Err(e) = checked {
                report.problems.push(e);
            }
        }
        Ok(report)
    }
}
