//! Reader leases of a local store: one small file per lease in `leases/`, named
//! `<pid>-<n>` and holding the leased tid in hex.
//!
//! Files, not index records, because a lease changes at every transaction boundary and must
//! not cost an fsync. A lease whose process is gone (checked with `kill(pid, 0)`) is stale and
//! removed by pack; a reused pid only makes pack more conservative, never unsafe.

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

impl LeaseDir {
    /// Uses (creating if needed) `dir` for leases.
    pub fn open(dir: PathBuf) -> Result<Self> {
        super::create_private_dir(&dir)?;
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

    /// Registers a lease at `at` and returns its id.
    pub fn acquire(&self, at: Tid) -> Result<u64> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & u64::from(u32::MAX);
        let id = (u64::from(std::process::id()) << 32) | n;
        let path = self.path(id);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating lease {}", path.display()), e))?;
        write_tid(&file, at)?;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, file);
        Ok(id)
    }

    /// Moves lease `id` to `at`.
    pub fn renew(&self, id: u64, at: Tid) -> Result<()> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let file = held
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("lease {id}")))?;
        write_tid(file, at)
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

fn write_tid(file: &File, at: Tid) -> Result<()> {
    file.write_all_at(format!("{:016x}", at.0).as_bytes(), 0)
        .map_err(|e| Error::io("writing lease", e))
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
