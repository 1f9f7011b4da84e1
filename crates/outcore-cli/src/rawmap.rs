//! A plain `mmap` of a file (`MAP_PRIVATE`), the baseline `outcore bench` compares with.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{CliError, Result};

/// A private mapping of the first `len` bytes of a file; unmapped on drop.
pub struct RawMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl RawMap {
    /// Maps `len` bytes (a positive multiple of 8) of `file`, read-only or copy-on-write.
    pub fn new(file: &File, len: usize, writable: bool) -> Result<Self> {
        if len == 0 || len % 8 != 0 {
            return Err(CliError::runtime(
                "mapping length must be a positive multiple of 8",
            ));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (no address given), of a file we hold
        // open; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(CliError::runtime(format!(
                "mmap: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(RawMap { ptr, len })
    }

    /// The mapping as float64 values.
    pub fn f64s(&self) -> &[f64] {
        // SAFETY: `ptr` is a live, page-aligned mapping of `len` bytes (a multiple of 8) that
        // only this struct hands out; every bit pattern is a valid f64.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<f64>(), self.len / 8) }
    }

    /// The mapping as writable float64 values (private copy-on-write pages; mapped writable).
    pub fn f64s_mut(&mut self) -> &mut [f64] {
        // SAFETY: as in `f64s`; `&mut self` makes this the only slice, and callers only ask on
        // mappings created writable (a write to a read-only one would fault, not corrupt).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<f64>(), self.len / 8) }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no slice outlives `self`.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}
