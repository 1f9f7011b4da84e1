//! [`BlobStorage`]: the [`Storage`] whose block bodies are objects (see the module docs).

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::body::Body;
use super::cache_writer::CachedBodies;
use super::objects::Objects;
use super::pointer::Pointer;
use super::references::held_versions;
use readahead::ReadAhead;

mod readahead;
use crate::storage::codec::checksum;
use crate::storage::delta::{check_runs, used_len};
use crate::storage::{
    CommitRequest, Extent, Key, Located, Oid, PackStats, Payload, StagedHold, StagedRef, Storage,
    Tid, TxnInfo, VerifyReport, Version, Write,
};
use crate::{Error, Result};

/// How a [`BlobStorage`] behaves.
#[derive(Clone, Debug)]
pub struct BlobOptions {
    /// Pack deletes an unreferenced object only once it is this old (by the object store's
    /// clock): longer than any commit takes from uploading its bodies to committing the index,
    /// whose objects would otherwise be deleted under it. Default: one hour.
    pub grace: Duration,
    /// A directory for the disk cache of fetched bodies (see [`BlobOptions::cache_disk_bytes`]);
    /// `None` (the default): no disk cache, every first touch fetches from the object store.
    /// Processes of a node may share one directory.
    pub cache_dir: Option<PathBuf>,
    /// The disk cache's budget in bytes; least recently used bodies are deleted beyond it.
    /// Default 10 GiB.
    pub cache_disk_bytes: u64,
    /// How long a failing object-store request is retried (with backoff: 100 ms doubling to
    /// 5 s) before the operation fails: an outage shorter than this is ridden out, a longer one
    /// fails `load` and `commit` after it (a commit then writes nothing). Default two minutes.
    pub retry_window: Duration,
}

impl Default for BlobOptions {
    fn default() -> Self {
        BlobOptions {
            grace: Duration::from_secs(3600),
            cache_dir: None,
            cache_disk_bytes: 10 << 30,
            retry_window: Duration::from_secs(120),
        }
    }
}

/// A store whose block bodies are immutable objects in an S3-compatible object store, and
/// whose index (versions, log, leases, metadata records) is another store. How commits,
/// reads and pack work: the module docs of `storage/blobs/mod.rs`.
#[derive(Debug)]
pub struct BlobStorage {
    index: Arc<dyn Storage>,
    objects: Objects,
    /// Fetched bodies on local disk, mapped by `locate` ([`BlobOptions::cache_dir`]).
    cache: Option<CachedBodies>,
    /// Bodies fetched ahead of single loads (`store/readahead.rs`).
    read_ahead: ReadAhead,
    options: BlobOptions,
}

/// Array memory (or any payload) as the bytes of an upload, without a copy.
struct Owner(Arc<dyn Payload>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl BlobStorage {
    /// Wraps `index`, keeping block bodies under `url` (`s3://bucket[/prefix]`; endpoint,
    /// region and credentials from the `AWS_*` environment variables). Records nothing: use
    /// [`Database::open_with`](crate::db::Database::open_with) with
    /// [`DbOptions::blobs`](crate::db::DbOptions::blobs) to create a store that remembers it.
    pub fn new(index: Arc<dyn Storage>, url: &str, options: BlobOptions) -> Result<Self> {
        let cache = match &options.cache_dir {
            Some(dir) => Some(CachedBodies::open(dir, options.cache_disk_bytes)?),
            None => None,
        };
        Ok(BlobStorage {
            index,
            objects: Objects::open(url, options.retry_window)?,
            cache,
            read_ahead: ReadAhead::default(),
            options,
        })
    }

    /// The index store.
    pub fn index(&self) -> &Arc<dyn Storage> {
        &self.index
    }

    /// The object holding the body of block `key`'s newest version `<= at` (its path in the
    /// bucket), `None` for a hole or an empty body: for tools and tests.
    pub fn object_path(&self, key: Key, at: Tid) -> Result<Option<String>> {
        let Some(v) = self.index.load(key, at)? else {
            return Ok(None);
        };
        let p = self.pointer(key, v.tid, &v.data)?;
        Ok(p.has_object()
            .then(|| self.objects.path(key, p.id).to_string()))
    }

    /// Waits until the bodies fetched so far are in the disk cache, which a background
    /// thread writes them to (for tools and tests; nothing needs to wait for it).
    pub fn flush_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.flush();
        }
    }

    /// The pointer a block version's record holds; `Corrupt` if it holds none.
    fn pointer(&self, key: Key, tid: Tid, record: &[u8]) -> Result<Pointer> {
        Pointer::decode(record).ok_or_else(|| Error::Corrupt {
            key,
            tid,
            reason: format!(
                "the index holds {} bytes that are no pointer to an object in {}",
                record.len(),
                self.objects.url()
            ),
        })
    }

    /// The bodies of the versions `(key, tid, record)`: from the disk cache where
    /// `use_cache` and it has them, else fetched in parallel (and then handed to the disk
    /// cache, which shares them); all checked. Fails as a whole only where no request could
    /// be made.
    fn fetch(
        &self,
        versions: &[(Key, Tid, &[u8])],
        use_cache: bool,
    ) -> Result<Vec<Result<Arc<Body>>>> {
        /// What a version needs: nothing more, or a GET of the object a pointer names.
        enum Step {
            Done(Result<Body>),
            Get(Pointer),
        }
        let steps: Vec<Step> = versions
            .iter()
            .map(|&(key, tid, record)| {
                let p = match self.pointer(key, tid, record) {
                    Ok(p) => p,
                    Err(e) => return Step::Done(Err(e)),
                };
                if !p.has_object() {
                    return Step::Done(Ok(Body::default()));
                }
                match use_cache.then(|| self.cached(&p)).flatten() {
                    Some(body) => Step::Done(Ok(body)),
                    None => Step::Get(p),
                }
            })
            .collect();
        let paths: Vec<_> = versions
            .iter()
            .zip(&steps)
            .filter_map(|(&(key, ..), step)| match step {
                Step::Get(p) => Some((key, self.objects.path(key, p.id), p.len)),
                Step::Done(_) => None,
            })
            .collect();
        let mut fetched = self.objects.get_all(&paths)?.into_iter();
        Ok(versions
            .iter()
            .zip(steps)
            .map(|(&(key, tid, _), step)| match step {
                Step::Done(r) => r.map(Arc::new),
                Step::Get(p) => {
                    let got = fetched.next().expect("one fetch per object")?;
                    let body = Arc::new(self.check(key, tid, &p, got)?);
                    if use_cache {
                        self.keep(p.id, &body);
                    }
                    Ok(body)
                }
            })
            .collect())
    }

    /// Hands a fetched, checked body to the disk cache (if there is one), which shares it.
    fn keep(&self, id: u128, body: &Arc<Body>) {
        if let Some(cache) = &self.cache {
            cache.put(id, body.clone());
        }
    }

    /// The body `p` points at from the disk cache, if there and intact (a damaged copy is
    /// ignored: the object store's is fetched and cached over it).
    fn cached(&self, p: &Pointer) -> Option<Body> {
        let mut file = self.cache.as_ref()?.get(p.id, p.len)?;
        let mut body = Body::zeroed(usize::try_from(p.len).ok()?);
        std::io::Read::read_exact(&mut file, body.as_mut_slice()).ok()?;
        (body.checksum() == p.checksum).then_some(body)
    }

    /// `got`, the object `p` points at, if it is there and intact.
    fn check(&self, key: Key, tid: Tid, p: &Pointer, got: Option<Body>) -> Result<Body> {
        let path = self.objects.path(key, p.id);
        let corrupt = |reason: String| Error::Corrupt { key, tid, reason };
        let data = got.ok_or_else(|| {
            corrupt(format!(
                "its body, object {path} of {}, is missing",
                self.objects.url()
            ))
        })?;
        if data.len() as u64 != p.len {
            return Err(corrupt(format!(
                "object {path} holds {} bytes, the index says {}",
                data.len(),
                p.len
            )));
        }
        let sum = data.checksum();
        if sum != p.checksum {
            return Err(corrupt(format!(
                "object {path}: checksum {sum:016x}, expected {:016x}",
                p.checksum
            )));
        }
        Ok(data)
    }

    /// What pack does after the index packed: deletes the objects no version the index holds
    /// points at, once older than the grace period. Returns the bytes of the objects before
    /// and after.
    fn collect_garbage(&self) -> Result<(u64, u64)> {
        let listed = self.objects.list()?;
        let before: u64 = listed.iter().map(|o| o.size).sum();
        let now = SystemTime::now();
        let old: Vec<_> = listed
            .into_iter()
            // A time ahead of ours (clock skew) counts as age zero.
            .filter(|o| now.duration_since(o.modified).unwrap_or_default() >= self.options.grace)
            .collect();
        let keys: BTreeSet<Key> = old.iter().map(|o| o.key).collect();
        let mut referenced: HashSet<(Key, u128)> = HashSet::new();
        for held in held_versions(&*self.index, &keys, false)? {
            let p = self.pointer(held.key, held.tid, &held.record)?;
            referenced.insert((held.key, p.id));
        }
        let (gone, freed): (Vec<_>, u64) = old
            .into_iter()
            .filter(|o| !referenced.contains(&(o.key, o.id)))
            .fold((Vec::new(), 0), |(mut paths, bytes), o| {
                paths.push(o.path);
                (paths, bytes + o.size)
            });
        let count = gone.len();
        self.objects.delete_all(gone)?;
        tracing::info!(
            "pack of {}: deleted {count} unreferenced objects ({freed} bytes)",
            self.describe()
        );
        Ok((before, before - freed))
    }
}

impl Storage for BlobStorage {
    fn describe(&self) -> String {
        format!(
            "{} (block bodies in {})",
            self.index.describe(),
            self.objects.url()
        )
    }

    fn head(&self) -> Result<Tid> {
        self.index.head()
    }

    fn new_oids(&self, n: u64) -> Result<Range<u64>> {
        self.index.new_oids(n)
    }

    /// A block is loaded with read-ahead (`store/readahead.rs`).
    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
        if key.is_block() {
            return Ok(self.load_block(key, at)?.map(|(tid, body)| Version {
                tid,
                data: body.to_vec(),
            }));
        }
        Ok(self.load_many(&[key], at)?.pop().flatten())
    }

    /// As `load`, the body copied from the fetched bytes straight into `out` (the disk cache
    /// shares those bytes rather than copying them too).
    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        let mut copy = |tid: Tid, bytes: &[u8]| {
            let room = out.len();
            let target = out.get_mut(..bytes.len()).ok_or_else(|| Error::Corrupt {
                key,
                tid,
                reason: format!(
                    "length {} exceeds the {room} bytes it must fit in",
                    bytes.len()
                ),
            })?;
            target.copy_from_slice(bytes);
            Ok(Some(bytes.len()))
        };
        if !key.is_block() {
            return match self.load(key, at)? {
                Some(v) => copy(v.tid, &v.data),
                None => Ok(None),
            };
        }
        match self.load_block(key, at)? {
            Some((tid, body)) => copy(tid, body.as_slice()),
            None => Ok(None),
        }
    }

    /// Blocks whose body is in the disk cache are mapped from there; the others are
    /// `CopyOnly` (fetched, and so cached, by `load`).
    fn locate(&self, key: Key, at: Tid) -> Result<Located> {
        let Some(cache) = self.cache.as_ref().filter(|_| key.is_block()) else {
            return Ok(match self.index.locate(key, at)? {
                located if !key.is_block() => located,
                located => located.tid().map_or(Located::Absent, Located::CopyOnly),
            });
        };
        let Some(v) = self.index.load(key, at)? else {
            return Ok(Located::Absent);
        };
        let p = self.pointer(key, v.tid, &v.data)?;
        Ok(match cache.get(p.id, p.len).filter(|_| p.has_object()) {
            Some(file) => Located::Mapped(Extent {
                file: Arc::new(file),
                offset: 0,
                len: p.len,
                tid: v.tid,
                checksum: p.checksum,
            }),
            None => Located::CopyOnly(v.tid),
        })
    }

    fn commit(&self, req: CommitRequest) -> Result<Tid> {
        let mut uploads = Vec::new();
        let mut writes = Vec::with_capacity(req.writes.len());
        for (key, write) in req.writes {
            let body = match (key.is_block(), write) {
                (true, Write::Store(v)) => Bytes::from(v),
                (true, Write::StoreFrom(p) | Write::Staged { from: p, .. }) => {
                    Bytes::from_owner(Owner(p))
                }
                (true, Write::Pages { pages, from }) => {
                    check_runs(key, &pages, from.bytes().len())?;
                    Bytes::from_owner(Owner(from))
                }
                (_, other) => {
                    writes.push((key, other));
                    continue;
                }
            };
            // Short like the other stores keep them: up to the last non-zero page.
            let body = body.slice(..used_len(&body));
            let pointer = if body.is_empty() {
                Pointer {
                    id: 0,
                    len: 0,
                    checksum: 0,
                }
            } else {
                let id = rand::random::<u128>().max(1);
                let pointer = Pointer {
                    id,
                    len: body.len() as u64,
                    checksum: checksum(&body),
                };
                uploads.push((self.objects.path(key, id), body));
                pointer
            };
            writes.push((key, Write::Store(pointer.encode())));
        }
        // Bodies staged ahead become pointers to their objects (`staging.rs`).
        super::staging::publish(&self.objects, self.options.grace, &mut writes)?;
        let paths: Vec<_> = uploads.iter().map(|(p, _)| p.clone()).collect();
        self.objects.put_all(uploads)?;
        let done = self.index.commit(CommitRequest {
            base: req.base,
            writes,
            meta: req.meta,
        });
        // Refused before anything was written: the bodies are nobody's. (Other failures may
        // leave the outcome unknown; pack deletes the bodies if nothing references them.)
        if let Err(Error::Conflict { .. } | Error::InvalidArgument(_)) = &done {
            self.objects.delete_quietly(paths);
        }
        done
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        self.index.log(after, upto)
    }

    fn stages_bodies(&self) -> bool {
        true
    }

    fn stage_body(&self, key: Key, bytes: &[u8]) -> Result<Option<StagedRef>> {
        super::staging::stage(&self.objects, key, bytes)
    }

    fn hold_staged(&self, version: &StagedRef) -> Result<StagedHold> {
        super::staging::hold(&self.objects, self.options.grace, version)
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        self.index.acquire_lease(at)
    }

    fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        self.index.renew_lease(id, at)
    }

    fn release_lease(&self, id: u64) {
        self.index.release_lease(id)
    }

    fn fence(&self) -> Result<()> {
        self.index.fence()
    }

    fn pack_horizon(&self) -> Result<Tid> {
        self.index.pack_horizon()
    }

    /// Packs the index, then deletes the objects no version it still holds points at (older
    /// than [`BlobOptions::grace`]). The body bytes reported are the objects' bytes.
    fn pack(&self, upto: Tid) -> Result<PackStats> {
        let stats = self.index.pack(upto)?;
        let (before, after) = self.collect_garbage().map_err(|e| {
            Error::io(
                format!(
                    "the index of {} was packed (horizon {}), but deleting unreferenced objects \
                     failed; pack again to retry",
                    self.describe(),
                    stats.horizon
                ),
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(PackStats {
            body_bytes_before: before,
            body_bytes_after: after,
            ..stats
        })
    }

    /// Verifies the index, then fetches every object a block version it holds points at and
    /// checks it is there with the recorded length and checksum.
    fn verify(&self) -> Result<VerifyReport> {
        let mut report = self.index.verify()?;
        let keys: BTreeSet<Key> = self.objects.list()?.into_iter().map(|o| o.key).collect();
        let held = held_versions(&*self.index, &keys, true)?;
        for chunk in held.chunks(64) {
            let versions: Vec<(Key, Tid, &[u8])> = chunk
                .iter()
                .map(|h| (h.key, h.tid, &h.record[..]))
                .collect();
            for got in self.fetch(&versions, false)? {
                match got {
                    Ok(body) => report.bytes_checked += body.len() as u64,
                    Err(e @ Error::Corrupt { .. }) => report.problems.push(e),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        self.index.block_indices(file, at)
    }

    fn is_remote(&self) -> bool {
        true
    }

    /// Reads the records from the index in one batch, then fetches the objects in parallel.
    fn load_many(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
        let records = self.index.load_many(keys, at)?;
        let blocks: Vec<(Key, Tid, &[u8])> = keys
            .iter()
            .zip(&records)
            .filter_map(|(&key, v)| {
                let v = v.as_ref().filter(|_| key.is_block())?;
                Some((key, v.tid, &v.data[..]))
            })
            .collect();
        let mut bodies = self.fetch(&blocks, true)?.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for (key, v) in keys.iter().zip(records.iter()) {
            out.push(match v {
                Some(v) if key.is_block() => Some(Version {
                    tid: v.tid,
                    data: bodies.next().expect("one body per block version")?.to_vec(),
                }),
                other => other.clone(),
            });
        }
        Ok(out)
    }

    fn changes(&self, after: Tid, upto: Tid) -> Result<Vec<(Tid, Vec<Key>)>> {
        self.index.changes(after, upto)
    }
}
