//! The local disk cache of fetched bodies: one immutable file per object, named by the
//! object's random id, so a cached body can be *mapped* (`Located::Mapped`) — zero copy, one
//! page-cache copy shared by every process of the node using the same directory. Bounded by a
//! byte budget, least recently used first out (a hit renews the file's mtime if older than
//! [`TOUCH_AFTER`]). Files are
//! written under a temporary name, synced, then renamed: a reader sees a whole body or none.
//! Deleting a file another process has mapped is safe (the mapping keeps the inode).
//!
//! Bodies are written with `O_DIRECT` where the file system takes it (from the page-aligned
//! [`Body`] the fetch filled): the disk reads them from that memory, so writing the cache costs
//! the CPU next to nothing — a buffered write copied every byte into the page cache and then
//! wrote it back, the largest part of a cold scan's client work. The page cache holds a body
//! only once something maps or reads it. Where `O_DIRECT` is refused (tmpfs, some network
//! file systems), bodies are written the ordinary way.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime};

use super::body::Body;
use crate::{Error, Result};

/// Temporary files start with this; never taken for bodies, removed when found stale.
const TEMP_PREFIX: &str = ".tmp-";

/// A hit renews a body's mtime only when it is older than this: least recently used at a
/// minute's resolution, and a scan of cached blocks (which opens every body) writes no inode.
const TOUCH_AFTER: Duration = Duration::from_secs(60);

/// A directory of cached bodies with a byte budget.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    budget: u64,
    /// Bytes this process believes the directory holds, with the bodies it is writing (other
    /// processes add to it too: each eviction recounts from the directory).
    used: AtomicU64,
    /// Bytes of the bodies this process is writing (not yet under their names, so not in a
    /// listing of the directory).
    pending: AtomicU64,
    /// One eviction at a time in this process.
    evicting: Mutex<()>,
    /// Cleared once the directory's file system refuses `O_DIRECT`: then bodies are written
    /// through the page cache.
    direct: AtomicBool,
    /// Done once the bytes already in the directory are added to `used`: at the first write,
    /// so that opening the cache (every open of the store) lists nothing.
    counted: Once,
}

impl DiskCache {
    /// The cache in `dir` (created if missing), holding at most about `budget` bytes.
    pub fn open(dir: &Path, budget: u64) -> Result<DiskCache> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating the cache directory {}", dir.display()), e))?;
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            budget,
            used: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            evicting: Mutex::new(()),
            direct: AtomicBool::new(true),
            counted: Once::new(),
        };
        Ok(cache)
    }

    /// Adds the bytes already in the directory to `used`, once (stale temporary files are
    /// removed on the way). A body this process names meanwhile may be counted twice: an
    /// over-estimate, corrected by the next eviction's recount.
    fn count_existing(&self) {
        self.counted.call_once(|| match self.entries() {
            Ok(entries) => {
                let bytes = entries.iter().map(|e| e.size).sum();
                self.used.fetch_add(bytes, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!("{e}; its size is counted at the next eviction"),
        });
    }

    fn path(&self, id: u128) -> PathBuf {
        self.dir.join(format!("{id:032x}"))
    }

    /// The cached body `id` of `len` bytes, opened for reading; `None` if not cached (or the
    /// file is not that long: not ours, left alone).
    pub fn get(&self, id: u128, len: u64) -> Option<File> {
        let file = File::open(self.path(id)).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() != len {
            return None;
        }
        // Recently used: eviction takes the oldest mtime first. Best effort (a read-only
        // cache directory still serves hits). An mtime ahead of the clock counts as recent.
        let now = SystemTime::now();
        let stale = meta
            .modified()
            .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > TOUCH_AFTER));
        if stale {
            let _ = file.set_modified(now);
        }
        Some(file)
    }

    /// Caches body `id` (see [`DiskCache::put_all`]).
    #[cfg(test)]
    pub fn put(&self, id: u128, bytes: &[u8]) {
        self.put_all(&[(id, &Body::copy_of(bytes))]);
    }

    /// Caches the bodies `(id, bytes)`; failures (a full disk) only cost the cache, so they
    /// are logged. Room is made first: the directory stays within the budget but for bodies
    /// other processes are writing at the same moment. Every body is written under a
    /// temporary name, all are synced, then all are named: a crash never leaves a named file
    /// whose contents the disk did not get (it would be mapped unchecked), and one journal
    /// commit of the file system serves the whole batch.
    pub fn put_all(&self, bodies: &[(u128, &Body)]) {
        // Groups of at most a quarter of the budget (or one body), so that making room for a
        // group never means emptying the cache, nor overrunning it.
        let mut group: Vec<(u128, &Body)> = Vec::new();
        let mut bytes = 0;
        for &(id, body) in bodies {
            let len = body.len() as u64;
            if len > self.budget {
                continue;
            }
            if !group.is_empty() && bytes + len > self.budget / 4 {
                self.put_group(&group, bytes);
                (group, bytes) = (Vec::new(), 0);
            }
            group.push((id, body));
            bytes += len;
        }
        if !group.is_empty() {
            self.put_group(&group, bytes);
        }
    }

    /// [`DiskCache::put_all`] of `bodies`, `total` bytes, each within the budget.
    fn put_group(&self, bodies: &[(u128, &Body)], total: u64) {
        self.count_existing();
        // Pending before used: a body an eviction's count of `used` includes is pending or
        // in the directory when the eviction looks (see `evict`).
        self.pending.fetch_add(total, Ordering::SeqCst);
        let used = self.used.fetch_add(total, Ordering::SeqCst) + total;
        if used > self.budget {
            if let Err(e) = self.evict() {
                tracing::warn!("evicting from the cache {}: {e}", self.dir.display());
            }
        }
        let written: Vec<_> = bodies
            .iter()
            .map(|&(id, body)| (id, body.len() as u64, self.write_temp(id, body)))
            .collect();
        for (id, len, temp) in written {
            let named = temp.and_then(|(path, file)| {
                let done = file
                    .sync_data()
                    .and_then(|()| std::fs::rename(&path, self.path(id)));
                if done.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                done
            });
            if let Err(e) = named {
                self.used.fetch_sub(len, Ordering::SeqCst);
                tracing::warn!("not caching a fetched block in {}: {e}", self.dir.display());
            }
        }
        self.pending.fetch_sub(total, Ordering::SeqCst);
    }

    /// Writes `body` to a new temporary file (with `O_DIRECT` where the file system takes
    /// it), not synced; removed again on failure.
    fn write_temp(&self, id: u128, body: &Body) -> std::io::Result<(PathBuf, File)> {
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{id:032x}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let direct = match self.direct.load(Ordering::Relaxed) {
            true => write_direct(&temp, body),
            false => Ok(None),
        };
        let written = direct.and_then(|file| match file {
            Some(file) => Ok(file),
            None => {
                self.direct.store(false, Ordering::Relaxed);
                let mut file = File::create(&temp)?;
                file.write_all(body.as_slice())?;
                Ok(file)
            }
        });
        match written {
            Ok(f) => Ok((temp, f)),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// The cached bodies with size and mtime; stale temporary files (over an hour old, from
    /// a crashed writer) are removed on the way.
    fn entries(&self) -> Result<Vec<Entry>> {
        let read = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing the cache {}", self.dir.display()), e))?;
        let now = SystemTime::now();
        let mut out = Vec::new();
        for entry in read.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let modified = meta.modified().unwrap_or(now);
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let stale = now
                    .duration_since(modified)
                    .is_ok_and(|age| age.as_secs() > 3600);
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            if meta.is_file() {
                out.push(Entry {
                    path: entry.path(),
                    size: meta.len(),
                    modified,
                });
            }
        }
        Ok(out)
    }

    /// Deletes least recently used bodies until the directory and the bodies this process is
    /// writing hold at most 90% of the budget (so evictions are not one per fetch), and
    /// recounts the bytes used from the directory (other processes write to it too).
    fn evict(&self) -> Result<()> {
        let _one = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        // Read in this order, a body counted in `believed` is in `pending` or in the listing
        // (or both: an over-estimate, so an eviction a little early). Bodies other threads
        // add meanwhile stay counted: the count is corrected by a difference, not replaced.
        let believed = self.used.load(Ordering::SeqCst);
        let pending = self.pending.load(Ordering::SeqCst);
        let mut entries = self.entries()?;
        let mut used: u64 = entries.iter().map(|e| e.size).sum::<u64>() + pending;
        entries.sort_by_key(|e| e.modified);
        let target = self.budget / 10 * 9;
        for e in entries {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&e.path).is_ok() {
                used -= e.size;
            }
        }
        self.used
            .fetch_add(used.wrapping_sub(believed), Ordering::SeqCst);
        Ok(())
    }
}

/// Writes `body` to the new file `path` with `O_DIRECT`: whole pages from its page-aligned
/// memory, then the file cut to the body's length. `None` (and no file) where the file system
/// refuses `O_DIRECT` (`EINVAL`): the caller writes it the ordinary way.
fn write_direct(path: &Path, body: &Body) -> std::io::Result<Option<File>> {
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.write_all(body.padded()) {
        Ok(()) => {}
        Err(e) if refused(&e) => {
            drop(file);
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    file.set_len(body.len() as u64)?;
    Ok(Some(file))
}

/// A cached body found by a listing.
struct Entry {
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_budget_least_recently_used_first_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 30_000).unwrap();
        assert!(cache.get(1, 10).is_none());
        for id in 1..=3u128 {
            cache.put(id, &[id as u8; 10_000]);
        }
        // Touch 1 (older mtimes than 2 and 3 otherwise), then overflow: 2 goes first.
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        for id in 2..=3 {
            File::open(cache.path(id))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(cache.get(1, 10_000).is_some());
        File::open(cache.path(3))
            .unwrap()
            .set_modified(old + std::time::Duration::from_secs(1))
            .unwrap();
        cache.put(4, &[4; 10_000]);
        assert!(cache.get(2, 10_000).is_none(), "least recently used");
        assert!(cache.get(3, 10_000).is_none(), "next least recently used");
        let mut f = cache.get(1, 10_000).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).unwrap();
        assert_eq!(bytes, vec![1; 10_000]);
        assert!(cache.get(4, 10_000).is_some());
        assert!(cache.get(4, 9_999).is_none(), "a length mismatch is no hit");
        // Bodies larger than the whole budget are not cached.
        cache.put(5, &vec![5; 40_000]);
        assert!(cache.get(5, 40_000).is_none());
        // A new cache on the directory counts what is there (once it writes).
        let again = DiskCache::open(dir.path(), 30_000).unwrap();
        again.count_existing();
        assert_eq!(again.used.load(Ordering::Relaxed), 20_000);
        // Another makes room for what it writes, counting the directory first: 4 (the least
        // recently used) goes.
        File::open(cache.path(4))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let third = DiskCache::open(dir.path(), 30_000).unwrap();
        third.put(6, &[6; 10_001]);
        assert!(third.get(4, 10_000).is_none(), "evicted for body 6");
        assert!(third.get(1, 10_000).is_some() && third.get(6, 10_001).is_some());
    }

    #[test]
    fn a_hit_renews_only_a_stale_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 30_000).unwrap();
        cache.put(1, &[1; 100]);
        let mtime = |id| {
            std::fs::metadata(cache.path(id))
                .unwrap()
                .modified()
                .unwrap()
        };
        let set = |id, t| File::open(cache.path(id)).unwrap().set_modified(t).unwrap();
        let recent = SystemTime::now() - Duration::from_secs(10);
        set(1, recent);
        assert!(cache.get(1, 100).is_some());
        assert_eq!(mtime(1), recent, "used 10 s ago: left alone");
        let stale = SystemTime::now() - TOUCH_AFTER - Duration::from_secs(10);
        set(1, stale);
        assert!(cache.get(1, 100).is_some());
        assert!(mtime(1) > recent, "renewed");
    }

    /// Bodies of any length come back exactly, written with `O_DIRECT` (whole pages, then cut
    /// to length) and written through the page cache (where `O_DIRECT` is refused).
    #[test]
    fn bodies_of_any_length_are_cached_exactly_either_way() {
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cache = DiskCache::open(dir.path(), 1 << 30).unwrap();
            cache.direct.store(direct, Ordering::Relaxed);
            let lens = [1usize, 511, 4095, 4096, 4097, 100_000, (2 << 20) + 1];
            let bodies: Vec<(u128, Body)> = lens
                .iter()
                .map(|&len| {
                    let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 255 + 1) as u8).collect();
                    (len as u128, Body::copy_of(&bytes))
                })
                .collect();
            let refs: Vec<(u128, &Body)> = bodies.iter().map(|(id, b)| (*id, b)).collect();
            cache.put_all(&refs);
            for (id, body) in &bodies {
                let mut file = cache.get(*id, body.len() as u64).expect("cached");
                let mut back = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut back).unwrap();
                assert_eq!(
                    back,
                    body.as_slice(),
                    "{} bytes, direct {direct}",
                    body.len()
                );
            }
            // Nothing but the bodies is left in the directory (no temporary files).
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), lens.len());
        }
    }
}
