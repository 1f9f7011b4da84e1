//! Staged block versions of a local store: space in a segment file where a block's next
//! version is written (through a shared mapping) *before* the commit that publishes it.
//!
//! A process stages into its own **staging segments**: files `segments/s<id>.seg` with ids
//! from [`STAGING_BASE`] up, allocated from the index counter `next_staging` (so they never
//! collide with the segments commits append to, whose cleanup deletes files by number). Each
//! has a marker `staging/<pid>-<id>` while its process may still publish from it, created
//! inside the index transaction that allocates the id.
//!
//! Life of one staged extent ([`StagedExtent`]):
//!
//! 1. **stage**: the next `len` bytes of the current staging segment (the file is extended,
//!    sparse); a new segment once it outgrows the store's segment size.
//! 2. **write**: the memory layer maps it `MAP_SHARED`: writes land in the page cache once,
//!    and the kernel writes them back and may evict them (memory stays bounded).
//! 3. **publish**: a commit with [`Write::Staged`](crate::storage::Write::Staged) syncs the
//!    file and records the extent as the block's version (no copy).
//! 4. **discard**: dropping an unpublished extent punches a hole over it (the space is free
//!    at once).
//!
//! **Crash.** A killed process leaves its staging segments and markers. Pack rewrites every
//! live version (published staged ones included) into new segments and then deletes the
//! staging segments allocated before it started whose marker names a dead process or that
//! have no marker: unpublished data is reclaimed by the next pack. (Pack holds the index's
//! writer lock, so every id allocated before it has its marker; ids allocated after it are
//! never touched.) Segments of live processes are kept (their published
//! extents, copied by pack, stay as garbage until the process ends and a pack runs).

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::storage::{Key, StagedHold, StagedPlace, StagedRef};
use crate::{Error, Result};

/// The first staging segment id. Commit segments count up from 0 and never get here.
pub(crate) const STAGING_BASE: u32 = 1 << 31;

/// Free space staging leaves on the file system (below it, new data goes to memory and is
/// written by the commit, as without staging).
const STAGING_HEADROOM: u64 = 1 << 30;

/// Space for one block version in a staging segment, written before the commit that
/// publishes it. Dropped unpublished, its space is given back (a hole punched over it).
pub struct StagedExtent {
    file: Arc<File>,
    offset: u64,
    len: u64,
    seg: u32,
    /// The store it belongs to: (device, inode) of its index directory.
    store: (u64, u64),
    published: AtomicBool,
    /// Keeps the segment's marker while this extent may still be published.
    _segment: Arc<SegmentHold>,
}

impl StagedExtent {
    /// The staging segment, open for reading and writing.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Byte offset of the extent in the file (a multiple of 4096).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the extent in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an extent of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The staging segment's id.
    pub(crate) fn segment(&self) -> u32 {
        self.seg
    }

    /// True if this extent was staged by the store whose index has identity `store`.
    pub(crate) fn belongs_to(&self, store: (u64, u64)) -> bool {
        self.store == store
    }

    /// Marks the extent as a committed version: its space is the store's from now on.
    pub(crate) fn mark_published(&self) {
        self.published.store(true, Ordering::Release);
    }

    /// Marks the extent as the committed version of its first `used` bytes, and gives back
    /// the space past them (allocated when staged, named by no record).
    pub(crate) fn publish(&self, used: u64) {
        self.mark_published();
        self.trim(used);
    }

    /// Frees the extent's space past its first `used` bytes (whole pages).
    fn trim(&self, used: u64) {
        let keep = used.next_multiple_of(4096).min(self.len);
        if keep < self.len {
            if let Err(e) = punch_hole(&self.file, self.offset + keep, self.len - keep) {
                tracing::warn!("giving back unused staged space: {e}");
            }
        }
    }

    /// True once a commit published the extent.
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }
}

impl StagedExtent {
    /// Hands the extent over to another process, which publishes it with
    /// [`Write::Adopt`](crate::storage::Write::Adopt): the first `len` bytes written to it
    /// (raw, up to the last non-zero page), with their xxh3-64 `checksum`, are synced here, and
    /// this process no longer gives the space back when the extent is dropped. Only block
    /// `key` can publish it. Until some process publishes it, the space is reclaimed by a
    /// pack once no live process holds the segment (the publishing process holds it with
    /// `LocalStorage::hold_staged` from when it receives the reference until its transaction
    /// ends, so pack keeps it even if the writer exits).
    pub fn hand_over(&self, key: Key, len: u64, checksum: u64) -> Result<StagedRef> {
        if len > self.len {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes do not fit the {} bytes staged",
                self.len
            )));
        }
        self.trim(len);
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing a staged version", e))?;
        self.mark_published();
        Ok(StagedRef {
            key,
            place: StagedPlace::Segment {
                segment: self.seg,
                offset: self.offset,
            },
            len,
            checksum,
        })
    }
}

impl std::fmt::Debug for StagedExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StagedExtent(segment s{}, {} bytes at {})",
            self.seg, self.len, self.offset
        )
    }
}

impl Drop for StagedExtent {
    fn drop(&mut self) {
        if self.is_published() {
            return;
        }
        if let Err(e) = punch_hole(&self.file, self.offset, self.len) {
            tracing::warn!("giving back staged space: {e}");
        }
    }
}

/// The staging segment and offset of `version`, which a store of this kind staged; a
/// reference to a body staged elsewhere is refused.
pub(crate) fn place_of(version: &StagedRef) -> Result<(u32, u64)> {
    match version.place {
        StagedPlace::Segment { segment, offset } if segment >= STAGING_BASE => {
            Ok((segment, offset))
        }
        _ => Err(version.foreign("the embedded store")),
    }
}

/// Frees `len` bytes at `offset` of `file` (reads as zeros afterwards), keeping its size.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A staging segment's marker: removed when nothing can publish from the segment any more
/// (the process moved on to another segment and every extent was published or dropped).
#[derive(Debug)]
struct SegmentHold {
    marker: PathBuf,
}

impl Drop for SegmentHold {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.marker);
    }
}

/// The staging segment a process fills now.
#[derive(Debug)]
struct Current {
    seg: u32,
    file: Arc<File>,
    next: u64,
    hold: Arc<SegmentHold>,
}

/// The staging side of one open local store.
#[derive(Debug)]
pub(super) struct Stager {
    /// `<store>/staging`: markers.
    markers: PathBuf,
    current: Mutex<Option<Current>>,
}

impl Stager {
    pub fn new(store: &std::path::Path) -> Self {
        Stager {
            markers: store.join("staging"),
            current: Mutex::new(None),
        }
    }

    /// Stages `len` bytes (a multiple of 4096) in the current staging segment, starting a new
    /// one when there is none or it holds `segment_bytes` already. `None` when the file
    /// system cannot allocate the space (full, over quota, or no `fallocate`). `allocate` takes a new
    /// segment id from the index inside a write transaction and calls its argument (which
    /// creates the segment's marker) before committing it: pack, holding the writer lock,
    /// thus sees the marker of every id allocated before it started (see `live_segments`).
    pub fn stage(
        &self,
        len: u64,
        segment_bytes: u64,
        store: (u64, u64),
        allocate: impl FnOnce(&dyn Fn(u32) -> Result<()>) -> Result<u32>,
        path: impl Fn(u32) -> PathBuf,
    ) -> Result<Option<Arc<StagedExtent>>> {
        let free = super::files::free_bytes(&self.markers.with_file_name("segments"));
        if free.is_none_or(|free| free < len.saturating_add(STAGING_HEADROOM)) {
            // Staged space is allocated when staged: leave room for commits and for others.
            return Ok(None);
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_none_or(|c| c.next >= segment_bytes) {
            let seg = allocate(&|seg| self.create_marker(seg))?;
            *current = Some(self.start_segment(seg, &path)?);
        }
        let c = current.as_mut().expect("started above");
        let offset = c.next;
        let end = offset + len;
        // Allocate the space now (and extend the file over it): a write through a shared
        // mapping that needs a block the file system cannot give kills the process with
        // SIGBUS; here a full disk is an answer instead. (Reads of allocated, unwritten space
        // are zeros; the memory layer may then count read pages as written: harmless.)
        // SAFETY: fallocate on our own descriptor with plain integer arguments.
        let r = unsafe {
            libc::fallocate(
                c.file.as_raw_fd(),
                0,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // Give back whatever part was allocated.
            let _ = punch_hole(&c.file, offset, len);
            return match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EOPNOTSUPP) => {
                    tracing::debug!("not staging {len} bytes in segment s{}: {e}", c.seg);
                    Ok(None)
                }
                _ => Err(Error::io(
                    format!("allocating staged space in s{}", c.seg),
                    e,
                )),
            };
        }
        c.next = end;
        Ok(Some(Arc::new(StagedExtent {
            file: c.file.clone(),
            offset,
            len,
            seg: c.seg,
            store,
            published: AtomicBool::new(false),
            _segment: c.hold.clone(),
        })))
    }

    fn marker(&self, seg: u32) -> PathBuf {
        self.markers.join(format!("{}-{seg}", std::process::id()))
    }

    fn create_marker(&self, seg: u32) -> Result<()> {
        super::create_private_dir(&self.markers)?;
        let marker = self.marker(seg);
        File::create(&marker)
            .map(drop)
            .map_err(|e| Error::io(format!("creating {}", marker.display()), e))
    }

    /// Creates the file of staging segment `seg`, whose marker exists.
    fn start_segment(&self, seg: u32, path: &impl Fn(u32) -> PathBuf) -> Result<Current> {
        let hold = Arc::new(SegmentHold {
            marker: self.marker(seg),
        });
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path(seg))
            .map_err(|e| Error::io(format!("creating staging segment s{seg}"), e))?;
        // Commits will name this file: its directory entry must be durable first.
        if let Some(dir) = path(seg).parent() {
            super::files::sync_dir(dir)?;
        }
        Ok(Current {
            seg,
            file: Arc::new(file),
            next: 0,
            hold,
        })
    }

    /// Holds staging segment `seg` for this process (a marker `<pid>-<seg>-<n>`), as a
    /// process that will publish versions another process staged there.
    pub fn hold(&self, seg: u32) -> Result<StagedHold> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        super::create_private_dir(&self.markers)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let marker = self
            .markers
            .join(format!("{}-{seg}-{n}", std::process::id()));
        File::create(&marker)
            .map_err(|e| Error::io(format!("creating {}", marker.display()), e))?;
        Ok(StagedHold::new(SegmentHold { marker }))
    }

    /// Takes the staging lock (`staging/.lock`, `flock`): exclusive for pack while it decides
    /// which staging segments to delete and deletes them, shared for commits that publish
    /// versions staged by other processes while they check those segments exist. So such a
    /// commit either sees a deleted segment (and fails, nothing written) or keeps it.
    pub fn lock(&self, exclusive: bool) -> Result<File> {
        super::create_private_dir(&self.markers)?;
        super::files::lock_file(
            &self.markers.join(".lock"),
            exclusive,
            "locking staging segments",
        )
    }

    /// The staging segments some live process may still publish from (by its marker).
    pub fn live_segments(&self) -> Result<std::collections::HashSet<u32>> {
        let mut live = std::collections::HashSet::new();
        let entries = match fs::read_dir(&self.markers) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(live),
            Err(e) => return Err(Error::io("listing staging markers", e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // `<pid>-<seg>` (the stager's) or `<pid>-<seg>-<n>` (a process holding it).
            let mut parts = name.to_str().unwrap_or("").split('-');
            let (Some(pid), Some(seg)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(pid), Ok(seg)) = (pid.parse::<i32>(), seg.parse::<u32>()) else {
                continue;
            };
            if super::leases::process_alive(pid) {
                live.insert(seg);
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(live)
    }
}
