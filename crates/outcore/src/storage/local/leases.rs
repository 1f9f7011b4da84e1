//! Reader leases of a local store: one small file per lease in `leases/`, named
//! `<pid>-<n>` and holding the leased tid in hex.
//!
//! Files, not index records, because a lease changes at every transaction boundary and must
//! not cost an fsync. A lease whose process is gone (checked with `kill(pid, 0)`) is stale and
//! removed by pack; a reused pid only makes pack more conservative, never unsafe.
//!
//! **Unleased readers.** Where a lease file cannot be written — read-only media, a directory
//! of another user, a full disk — the reader goes on without one rather than failing: on media
//! nobody can write nobody can pack either. Where others can still pack, this process's reads
//! check the pack horizon in the same index snapshot as the version they read (every read of
//! the store does), so a reader whose snapshot was packed away gets [`Error::SnapshotTooOld`]
//! instead of wrong data.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::storage::Tid;
use crate::{Error, Result};

/// The lease files of one store, and the ones this process holds.
#[derive(Debug)]
pub(super) struct LeaseDir {
    dir: PathBuf,
    held: Mutex<HashMap<u64, File>>,
    counter: AtomicU64,
}

/// The id handed out for a reader that holds no lease file. Real ids carry a pid in their
/// high half, which never reaches `u32::MAX`.
const UNLEASED: u64 = u64::MAX;

/// True for errors that say this process cannot write a lease file here (media read-only or
/// not ours, no space or quota left), as opposed to faults worth reporting.
fn cannot_write_here(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ReadOnlyFilesystem
            | K::PermissionDenied
            | K::StorageFull
            | K::QuotaExceeded
            | K::NotFound
    )
}

impl LeaseDir {
    /// Uses `dir` for leases, creating it if `create` (a read-only open creates nothing; a
    /// missing directory then means unleased readers).
    pub fn open(dir: PathBuf, create: bool) -> Result<Self> {
        if create {
            super::create_private_dir(&dir)?;
        }
        Ok(LeaseDir {
            dir,
            held: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{}", id >> 32, id & u64::from(u32::MAX)))
    }

    /// Registers a lease at `at` and returns its id. Where no lease file can be written, the
    /// reader goes on unleased (see the module comment).
    pub fn acquire(&self, at: Tid) -> Result<u64> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & u64::from(u32::MAX);
        let id = (u64::from(std::process::id()) << 32) | n;
        let path = self.path(id);
        let created = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path);
        let written = created.and_then(|file| {
            write_tid(&file, at).map(|()| file).inspect_err(|_| {
                // A half-written lease would pin all history; it is best gone.
                let _ = fs::remove_file(&path);
            })
        });
        let file = match written {
            Ok(file) => file,
            Err(e) if cannot_write_here(&e) => {
                return Ok(UNLEASED);
            }
            Err(e) => return Err(Error::io(format!("writing lease {}", path.display()), e)),
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, file);
        Ok(id)
    }

    /// Moves lease `id` to `at`. If the disk is too full to rewrite it, the lease keeps its
    /// older tid: pack's horizon stays at or below it, which protects `at` as well.
    pub fn renew(&self, id: u64, at: Tid) -> Result<()> {
        if id == UNLEASED {
            return Ok(());
        }
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let file = held
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("lease {id}")))?;
        match write_tid(file, at) {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                Err(Error::io("writing lease", e))
            }
            _ => Ok(()),
        }
    }

    /// Drops lease `id` (ignored if unknown).
    pub fn release(&self, id: u64) {
        let removed = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if removed.is_some() {
            let _ = fs::remove_file(self.path(id));
        }
    }

    /// The oldest tid held by a live lease of any process; removes stale lease files.
    pub fn oldest_live(&self) -> Result<Option<Tid>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        let mut oldest: Option<Tid> = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if !process_alive(pid) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            // An unreadable or half-written lease pins everything: safe.
            let tid = fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .map_or(Tid::ZERO, Tid);
            oldest = Some(oldest.map_or(tid, |o| o.min(tid)));
        }
        Ok(oldest)
    }
}

fn write_tid(file: &File, at: Tid) -> std::io::Result<()> {
    file.write_all_at(format!("{:016x}", at.0).as_bytes(), 0)
}

/// True if process `pid` exists (a reused pid counts as alive: callers are conservative).
pub(super) fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
