//! The segment files of a local store: naming, creation, and a cache of open descriptors.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// The `segments/` directory of a store and the descriptors this process has open in it.
#[derive(Debug)]
pub(super) struct SegmentDir {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The pack epoch the cached descriptors belong to: after a pack, cached descriptors of
    /// deleted segments are dropped so their disk space can be freed.
    epoch: u64,
    files: HashMap<u32, Arc<File>>,
}

impl SegmentDir {
    /// Uses `dir` for segments, creating it if `create`.
    pub fn open(dir: PathBuf, create: bool) -> Result<Self> {
        if create {
            super::create_private_dir(&dir)?;
        }
        Ok(SegmentDir {
            dir,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The path of segment `seg`.
    pub fn path(&self, seg: u32) -> PathBuf {
        if seg >= super::staging::STAGING_BASE {
            // Staging segments do not parse as commit segments, whose cleanup deletes by number.
            return self.dir.join(format!("s{seg}.seg"));
        }
        self.dir.join(format!("{seg:08}.seg"))
    }

    /// Deletes the staging segments with ids below `below` that are not in `live` (pack, after
    /// rewriting every version they held); the number deleted.
    pub fn delete_staging_except(
        &self,
        live: &std::collections::HashSet<u32>,
        below: u64,
    ) -> Result<u64> {
        let mut deleted = 0;
        let entries =
            fs::read_dir(&self.dir).map_err(|e| Error::io("listing segments".to_string(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_prefix('s'))
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            if id.is_some_and(|id| u64::from(id) < below && !live.contains(&id)) {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io(format!("deleting {}", entry.path().display()), e))?;
                deleted += 1;
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.files.retain(|&id, _| {
            id < super::staging::STAGING_BASE || u64::from(id) >= below || live.contains(&id)
        });
        Ok(deleted)
    }

    /// A read-only descriptor of segment `seg`, cached. `epoch` is the store's pack epoch as
    /// read in the same index transaction that named the segment.
    pub fn reader(&self, seg: u32, epoch: u64) -> Result<Arc<File>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.epoch != epoch {
            cache.files.clear();
            cache.epoch = epoch;
        }
        if let Some(f) = cache.files.get(&seg) {
            return Ok(f.clone());
        }
        let path = self.path(seg);
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("opening segment {}", path.display()), e))?;
        let file = Arc::new(file);
        cache.files.insert(seg, file.clone());
        Ok(file)
    }

    /// Opens segment `seg` for appending; `fresh` truncates it first (a new segment may hold
    /// unreferenced bytes left by a crash).
    pub fn writer(&self, seg: u32, fresh: bool) -> Result<File> {
        let path = self.path(seg);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(fresh)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening segment {}", path.display()), e))?;
        if fresh {
            // Make the new directory entry durable along with the data written into it.
            sync_dir(&self.dir)?;
        }
        Ok(file)
    }

    /// Deletes every segment file with an id below `first_live`. Processes that still map or
    /// hold them keep reading valid data; the space is freed when the last one lets go.
    pub fn delete_below(&self, first_live: u32) -> Result<u64> {
        let mut deleted = 0;
        let entries =
            fs::read_dir(&self.dir).map_err(|e| Error::io("listing segments".to_string(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            if id.is_some_and(|id| id < first_live) {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io(format!("deleting {}", entry.path().display()), e))?;
                deleted += 1;
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.files.retain(|&id, _| id >= first_live);
        Ok(deleted)
    }
}

/// What a writer (commit or pack) appended to the segments and has not committed yet: undone
/// when dropped unless [`Uncommitted::keep`] was called, so a failed write (a full disk, a
/// failed index commit) leaves the segments as the index last recorded them and frees the
/// space it took. Only the holder of the index's writer lock may create one: nobody else
/// writes segments meanwhile, and nothing references bytes past the recorded tail.
pub(super) struct Uncommitted<'a> {
    segments: &'a SegmentDir,
    /// The current segment and its tail as recorded in the index.
    seg: u32,
    tail: u64,
    keep: bool,
}

impl<'a> Uncommitted<'a> {
    /// Starts tracking writes made after the recorded state (`seg`, `tail`).
    pub fn new(segments: &'a SegmentDir, seg: u32, tail: u64) -> Self {
        Uncommitted {
            segments,
            seg,
            tail,
            keep: false,
        }
    }

    /// The index now references the writes: keep them.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Uncommitted<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Best effort: what cannot be undone here is unreferenced and overwritten (the
        // current segment's tail) or truncated (newer segments) by the next writer.
        if let Ok(entries) = fs::read_dir(&self.segments.dir) {
            for entry in entries.flatten() {
                let id = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse::<u32>().ok());
                if id.is_some_and(|id| id > self.seg) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let current = self.segments.path(self.seg);
        if let Ok(file) = OpenOptions::new().write(true).open(&current) {
            if file.metadata().is_ok_and(|m| m.len() > self.tail) {
                let _ = file.set_len(self.tail);
            }
        }
        let _ = sync_dir(&self.segments.dir);
    }
}

/// True if the filesystem holding `path` has (almost) no space left: LMDB reports a write cut
/// short by a full disk as EIO, and this tells that case from a failing device.
pub(super) fn nearly_full(path: &Path) -> bool {
    // Less than 1 MiB for unprivileged writers (root's reserve is no comfort either).
    free_bytes(path).is_some_and(|free| free < 1 << 20)
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable statvfs buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Opens (creating, mode 0600) the lock file at `path` and locks it (see [`flock`]); the lock
/// is held until the returned file is dropped.
pub(super) fn lock_file(path: &Path, exclusive: bool, what: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    flock(&file, exclusive, what)?;
    Ok(file)
}

/// Takes an advisory lock on `file` (`flock`: exclusive or shared), retrying when
/// interrupted; it is released when the descriptor is closed.
fn flock(file: &File, exclusive: bool, what: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let how = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a descriptor the caller holds open.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(what.to_string(), e));
        }
    }
}

/// fsyncs a directory, so that entries created in it survive a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}
