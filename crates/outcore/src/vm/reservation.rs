//! An address-space reservation: a 2 MiB-aligned anonymous range that costs no memory until
//! parts of it are mapped.

use std::ptr::NonNull;

use crate::{Error, Result};

/// The alignment of reservations (one PMD on x86-64).
pub const ALIGN: usize = 2 << 20;

/// A reserved range `[base, base + len)`: `PROT_NONE`, `MAP_NORESERVE`, unmapped on drop.
///
/// Sub-ranges are remapped with `MAP_FIXED` by the owner; nothing else may unmap them, so the
/// range stays valid memory (possibly `PROT_NONE`) for as long as this value lives.
pub struct Reservation {
    base: NonNull<u8>,
    len: usize,
    /// Fetch-on-touch blocks in this range, registered with the fault server; it lives as
    /// long as the memory (views included), so a fault is always served.
    remote: std::sync::OnceLock<std::sync::Arc<super::uffd::FetchedRegion>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the reservation is a plain address range; all access goes through raw pointers whose
// synchronisation is the owner's business, and munmap at drop may run on any thread.
unsafe impl Send for Reservation {}
// SAFETY: as above; `&Reservation` exposes only the address and length.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserves `len` bytes (rounded up to [`ALIGN`]) at an [`ALIGN`]-aligned address.
    pub fn new(len: usize) -> Result<Self> {
        let len = len
            .checked_next_multiple_of(ALIGN)
            .filter(|&l| l > 0)
            .ok_or_else(|| Error::InvalidArgument(format!("cannot reserve {len} bytes")))?;
        let over = len
            .checked_add(ALIGN)
            .ok_or_else(|| Error::AddressSpace(format!("{len} bytes exceed any address space")))?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at a kernel-chosen address; it touches
        // no existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMEM) {
                return Err(Error::AddressSpace(format!(
                    "no free range of {len} bytes of address space"
                )));
            }
            return Err(Error::io(
                format!("reserving {len} bytes of address space"),
                e,
            ));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(ALIGN);
        let head = aligned - start;
        let tail = over - head - len;
        // SAFETY: both trims lie inside the mapping just created and nobody else uses them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Reservation {
            base: NonNull::new(aligned as *mut u8).expect("mmap never returns null here"),
            len,
            remote: std::sync::OnceLock::new(),
        })
    }

    /// The first address.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The reserved length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The fetch-on-touch region of this reservation, created (and registered with the fault
    /// server) on first use; an error if userfaultfd is unusable here. `writable`: whether
    /// the memory may be written (read-only memory loads by moving pages in).
    pub(crate) fn remote(
        &self,
        blksize: usize,
        writable: bool,
        what: &str,
    ) -> std::result::Result<
        (
            &'static super::uffd::FaultServer,
            &super::uffd::FetchedRegion,
        ),
        String,
    > {
        let server = super::uffd::server()?;
        let region = self.remote.get_or_init(|| {
            let region = std::sync::Arc::new(super::uffd::FetchedRegion::new(
                self.base.as_ptr() as usize,
                self.len,
                blksize,
                what.to_string(),
                server.can_move(blksize, writable),
            ));
            server.add_region(&region);
            region
        });
        Ok((server, region))
    }

    /// The fetch-on-touch region, if any block was ever registered.
    pub(crate) fn remote_if_any(
        &self,
    ) -> Option<(
        &'static super::uffd::FaultServer,
        &super::uffd::FetchedRegion,
    )> {
        let region = self.remote.get()?;
        super::uffd::server().ok().map(|s| (s, &**region))
    }

    /// Always false: a reservation holds at least one aligned unit.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(region) = self.remote.get() {
            if let Ok(server) = super::uffd::server() {
                server.remove_region(region);
            }
        }
        // SAFETY: the range is ours alone; every view into it holds (through an Arc) the
        // object owning this reservation, so no view outlives it.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}
