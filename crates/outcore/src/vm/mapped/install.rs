//! Mapping one block's backing into the reservation: file extents, pieces, staged space,
//! zeros, fetched memory, decoded bytes.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;
use crate::vm::fork_gate::ForkGuard;
use crate::{Error, Result};

pub(super) fn memfd() -> Result<File> {
    // SAFETY: memfd_create reads only the NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"outcore-decoded".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Frees `len` bytes at `offset` of `file` (they read as zeros), keeping its size: decoded
/// copies in our memfd, discarded writes in staged space.
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<()> {
    // SAFETY: fallocate on a descriptor we hold; it frees the pages of that range.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "freeing pages of a file",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(super) fn inode_of(file: &File) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file
        .metadata()
        .map_err(|e| Error::io("reading segment metadata", e))?;
    Ok((m.dev(), m.ino()))
}

impl BlockMemory {
    /// Maps `backing` at block `block`, replacing whatever was there (private pages included).
    pub fn install(&self, block: u64, backing: Backing) -> Result<()> {
        self.check_range(&(block..block + 1))?;
        let mut state = self.lock();
        self.install_locked(&mut state, block, backing)
    }

    pub(super) fn install_locked(
        &self,
        state: &mut State,
        block: u64,
        backing: Backing,
    ) -> Result<()> {
        // A fork in the middle would give the child a fetched block whose pages and recorded
        // version disagree (vm/fork_gate.rs).
        let _fork = ForkGuard::enter();
        let was_remote = state.mapped.get(&block) == Some(&Mapped::Fetched);
        if was_remote {
            // Before the memory changes: no fetch of the old registration may land in it.
            if let Some((server, region)) = self.reservation.remote_if_any() {
                server.retire(region, self.rel(block));
            }
        }
        let mapped = match backing {
            Backing::Hole => {
                self.map_anonymous(block, 0, self.blksize)?;
                Mapped::Hole
            }
            Backing::File { file, offset, len } => {
                let len = (len as usize).min(self.blksize);
                let file_part = len.div_ceil(PAGE) * PAGE;
                if file_part > 0 {
                    self.map_file(block, 1, &file, offset, file_part)?;
                }
                if file_part < self.blksize {
                    self.map_anonymous(block, file_part, self.blksize - file_part)?;
                }
                Mapped::File {
                    inode: inode_of(&file)?,
                    offset,
                }
            }
            Backing::Pieces(pieces) => {
                // Zeros under the pieces; each piece then replaces its part (one kernel
                // mapping per piece and per gap between them).
                self.map_anonymous(block, 0, self.blksize)?;
                let mut mappings = 1;
                for p in &pieces {
                    if p.at + p.len > self.blksize {
                        return Err(Error::InvalidArgument(format!(
                            "a piece at byte {} of {} bytes exceeds the {}-byte block {block}",
                            p.at, p.len, self.blksize
                        )));
                    }
                    let len = p.len.div_ceil(PAGE) * PAGE;
                    self.map_file_at(block, p.at, &p.file, p.offset, len)?;
                    mappings += 2;
                }
                Mapped::Pieces(mappings)
            }
            Backing::Staged(staging) => {
                if !self.writable {
                    return Err(Error::InvalidArgument(format!(
                        "block {block}: staged space is for writable memory only"
                    )));
                }
                self.map_shared(block, staging.file(), staging.offset())?;
                state.staged.insert(block, staging);
                Mapped::Staged
            }
            Backing::Fetch(fetch) => {
                match self
                    .reservation
                    .remote(self.blksize, self.writable, &self.what)
                {
                    Ok((server, region)) => {
                        // A fetched block keeps its registered mapping (`register` drops its
                        // pages): a new mapping would show zeros until registered.
                        if !was_remote {
                            self.map_fetched(block, region.moves())?;
                            // Forked children register inherited fetched memory themselves
                            // and this process serves their faults (uffd/inherit.rs); with
                            // that turned off they would read zeros where blocks are not
                            // fetched yet: give them no mapping.
                            if !server.serves_forks() {
                                let start = block as usize * self.blksize;
                                self.advise(
                                    start..start + self.blksize,
                                    libc::MADV_DONTFORK,
                                    "marking fetched memory",
                                )?;
                            }
                        }
                        server.register(region, self.rel(block), fetch)?;
                        Mapped::Fetched
                    }
                    Err(why) => {
                        tracing::debug!("fetching block {block} at once: {why}");
                        return self.install_locked(state, block, Backing::Bytes(fetch.fetch()?));
                    }
                }
            }
            Backing::Bytes(bytes) => {
                let len = bytes.len().min(self.blksize);
                let at = self.rel(block) * self.blksize as u64;
                if state.decoded.is_none() {
                    state.decoded = Some(memfd()?);
                }
                let decoded = state.decoded.as_ref().expect("created above");
                // Drop any older decoded copy, then store this one.
                punch_hole(decoded, at, self.blksize as u64)?;
                decoded
                    .write_all_at(&bytes[..len], at)
                    .map_err(|e| Error::io("writing decoded block", e))?;
                let decoded = Arc::new(
                    decoded
                        .try_clone()
                        .map_err(|e| Error::io("duplicating descriptor", e))?,
                );
                self.map_file(block, 1, &decoded, at, self.blksize)?;
                Mapped::Decoded
            }
        };
        if mapped != Mapped::Staged {
            // Replaced: the owner gives unpublished space back when the last holder drops it.
            state.staged.remove(&block);
        }
        state.spilled.remove(&block);
        match state.mapped.insert(block, mapped.clone()) {
            Some(Mapped::Decoded) if mapped != Mapped::Decoded => {
                if let Some(d) = &state.decoded {
                    punch_hole(
                        d,
                        self.rel(block) * self.blksize as u64,
                        self.blksize as u64,
                    )?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn prot(&self) -> libc::c_int {
        if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    pub(super) fn map_file(
        &self,
        block: u64,
        nblocks: usize,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        debug_assert!(len <= nblocks * self.blksize);
        self.map_file_at(block, 0, file, offset, len)
    }

    /// Maps `len` bytes at `offset` of `file` over the bytes `from..from + len` of `block`
    /// and those after it (page-aligned; callers check the range lies in the reservation).
    pub(super) fn map_file_at(
        &self,
        block: u64,
        from: usize,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(from);
        // SAFETY: `addr..addr+len` lies inside our reservation (callers checked the block
        // range), which only this object maps into; MAP_FIXED replaces exactly that range.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                self.prot(),
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!(
                    "mapping {len} bytes of block {block} (from byte {from}) from a segment at \
                     offset {offset}"
                ),
                std::io::Error::last_os_error(),
            ));
        }
        readahead::advise_file_mapping(addr, len);
        Ok(())
    }

    /// Maps `block` shared and writable onto `file` at `offset`: writes go to the file's
    /// page cache directly (staged space).
    pub(super) fn map_shared(&self, block: u64, file: &File, offset: u64) -> Result<()> {
        let addr = self.block_ptr(block);
        // SAFETY: inside our reservation, as in `map_file`; the file holds at least a block
        // at `offset` (staged space is allocated that long), so no access faults past its end.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                self.blksize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!("mapping staged space for block {block} at offset {offset}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub(super) fn map_anonymous(&self, block: u64, from: usize, len: usize) -> Result<()> {
        self.map_zeros(block, from, len, self.prot(), libc::MADV_NOHUGEPAGE)
    }

    /// Maps the memory of a block fetched on touch. Where blocks load by moving pages in, the
    /// memory is read-write like the frames they come from (a move needs equal protections;
    /// the views handed out stay read-only) and takes huge pages.
    pub(super) fn map_fetched(&self, block: u64, moves: bool) -> Result<()> {
        if moves {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            self.map_zeros(block, 0, self.blksize, rw, libc::MADV_HUGEPAGE)
        } else {
            self.map_anonymous(block, 0, self.blksize)
        }
    }

    /// Maps zeros at `from..from + len` of `block` with `prot`, then applies `huge` (advice
    /// on huge pages).
    pub(super) fn map_zeros(
        &self,
        block: u64,
        from: usize,
        len: usize,
        prot: libc::c_int,
        huge: libc::c_int,
    ) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(from);
        // SAFETY: inside our reservation, as in `map_file`.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!("mapping zeros for block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        // Holes take 4 KiB pages (a small write then dirties one page, not a whole 2 MiB).
        // SAFETY: advice on our own mapping; it cannot change its contents.
        unsafe { libc::madvise(addr.cast(), len, huge) };
        Ok(())
    }
}
