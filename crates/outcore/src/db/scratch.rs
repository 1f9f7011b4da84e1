//! Scratch space for spilled blocks of stores that cannot stage versions in their own files
//! (compressed embedded stores, `mem:`, PostgreSQL): one unnamed temporary file per process
//! (`O_TMPFILE` in `OUTCORE_SPILL_DIR`, else the system's temporary directory), handed out
//! a block at a time. Such a block is written to the store like any other at commit (read
//! from the shared mapping, compressed or sent as the store does); its space is given back
//! (a hole punched, the offset reused) when the memory drops it. The file vanishes with the
//! process, crash included.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, OnceLock};

use crate::vm::Staging;
use crate::{Error, Result};

/// The process's scratch file and its free extents, per block size.
struct Scratch {
    file: Arc<File>,
    /// End of the space handed out so far.
    end: u64,
    /// Offsets given back, by extent length.
    free: std::collections::BTreeMap<u64, Vec<u64>>,
}

fn scratch() -> Result<&'static Mutex<Scratch>> {
    static SCRATCH: OnceLock<std::result::Result<Mutex<Scratch>, String>> = OnceLock::new();
    SCRATCH
        .get_or_init(|| {
            let dir = std::env::var_os("OUTCORE_SPILL_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .open(&dir)
                .map(|file| {
                    Mutex::new(Scratch {
                        file: Arc::new(file),
                        end: 0,
                        free: Default::default(),
                    })
                })
                .map_err(|e| format!("creating a scratch file in {}: {e}", dir.display()))
        })
        .as_ref()
        .map_err(|e| Error::io(e.clone(), std::io::Error::other(e.clone())))
}

/// `len` bytes of the scratch file for one spilled block.
#[derive(Debug)]
pub(crate) struct ScratchExtent {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl ScratchExtent {
    /// Space for `len` bytes (a multiple of 4096).
    pub(crate) fn new(len: u64) -> Result<ScratchExtent> {
        let mut s = scratch()?.lock().unwrap_or_else(|p| p.into_inner());
        let offset = match s.free.get_mut(&len).and_then(Vec::pop) {
            Some(offset) => offset,
            None => {
                let offset = s.end;
                s.end += len;
                s.file
                    .set_len(s.end)
                    .map_err(|e| Error::io("growing the scratch file", e))?;
                offset
            }
        };
        Ok(ScratchExtent {
            file: s.file.clone(),
            offset,
            len,
        })
    }
}

impl Staging for ScratchExtent {
    fn file(&self) -> &File {
        &self.file
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for ScratchExtent {
    fn drop(&mut self) {
        // SAFETY: fallocate on a descriptor we hold; it frees that range's pages.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.offset as libc::off_t,
                self.len as libc::off_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "giving back scratch space: {}",
                std::io::Error::last_os_error()
            );
        }
        if let Ok(s) = scratch() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.free.entry(self.len).or_default().push(self.offset);
        }
    }
}
