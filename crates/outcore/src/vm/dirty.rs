//! Finding written pages: which 4 KiB pages of a range hold private (written) memory.
//!
//! A page of a `MAP_PRIVATE` file mapping that was only read maps the page cache (a *file*
//! page); a page read from an anonymous hole maps the shared zero page. A write replaces either
//! with a private anonymous page. So the written pages are exactly those that are present (or
//! swapped out) and neither file-backed nor the zero page. The `PAGEMAP_SCAN` ioctl (Linux
//! ≥ 6.7) returns them as ranges in one call; older kernels fall back to reading
//! `/proc/self/pagemap`, which cannot tell the zero page apart for unprivileged users, so
//! there a read-only page of a hole counts as written (harmless: its bytes are zeros).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use crate::{Error, Result};

/// Page size assumed by the scanner.
pub const PAGE: usize = 4096;

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// How written pages are found on this kernel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScanMethod {
    /// The `PAGEMAP_SCAN` ioctl (Linux ≥ 6.7).
    Ioctl,
    /// Reading `/proc/self/pagemap` entries.
    PagemapRead,
}

fn pagemap() -> Result<&'static File> {
    static PAGEMAP: OnceLock<std::io::Result<File>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| File::open("/proc/self/pagemap"))
        .as_ref()
        .map_err(|e| Error::io("opening /proc/self/pagemap", std::io::Error::from(e.kind())))
}

/// The method this process uses (the ioctl if the kernel has it).
pub fn method() -> ScanMethod {
    static METHOD: OnceLock<ScanMethod> = OnceLock::new();
    *METHOD.get_or_init(|| {
        if std::env::var_os("OUTCORE_NO_PAGEMAP_SCAN").is_some() {
            return ScanMethod::PagemapRead;
        }
        // Probe with an empty range: kernels without the ioctl answer ENOTTY or EINVAL.
        match scan_ioctl(0..0) {
            Ok(_) => ScanMethod::Ioctl,
            Err(_) => ScanMethod::PagemapRead,
        }
    })
}

/// The written pages in the address range `range` (page-aligned), as sorted, disjoint
/// address ranges.
pub fn written_pages(range: Range<usize>) -> Result<Vec<Range<usize>>> {
    match method() {
        ScanMethod::Ioctl => scan_ioctl(range),
        ScanMethod::PagemapRead => scan_pagemap(range),
    }
}

fn scan_ioctl(range: Range<usize>) -> Result<Vec<Range<usize>>> {
    // Not file-backed and not the zero page, in memory or in swap.
    scan(
        range,
        PAGE_IS_FILE | PAGE_IS_PFNZERO,
        PAGE_IS_FILE | PAGE_IS_PFNZERO,
    )
}

/// One PAGEMAP_SCAN over `range`: pages whose categories, after flipping `inverted`, include
/// all of `mask` and are present or swapped.
fn scan(range: Range<usize>, mask: u64, inverted: u64) -> Result<Vec<Range<usize>>> {
    let fd = pagemap()?.as_raw_fd();
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut regions = vec![PageRegion::default(); 512];
    let mut start = range.start as u64;
    let end = range.end as u64;
    loop {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_inverted: inverted,
            category_mask: mask,
            // Always require a populated page: holes must never count (nor get markers).
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..PmScanArg::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions.len()` writable
        // page_region entries that outlive the call; the kernel only reads page tables.
        let n = unsafe { libc::ioctl(fd, PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        if n < 0 {
            return Err(Error::io(
                "PAGEMAP_SCAN ioctl",
                std::io::Error::last_os_error(),
            ));
        }
        for r in &regions[..n as usize] {
            let r = r.start as usize..r.end as usize;
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        if arg.walk_end >= end || (n as usize) < regions.len() {
            return Ok(out);
        }
        start = arg.walk_end;
    }
}

fn scan_pagemap(range: Range<usize>) -> Result<Vec<Range<usize>>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    let file = pagemap()?;
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut buf = vec![0u8; 8 * 4096];
    let mut addr = range.start;
    while addr < range.end {
        let pages = ((range.end - addr) / PAGE).min(buf.len() / 8);
        let bytes = &mut buf[..pages * 8];
        file.read_exact_at(bytes, (addr / PAGE * 8) as u64)
            .map_err(|e| Error::io("reading /proc/self/pagemap", e))?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            if e & (PRESENT | SWAPPED) != 0 && e & FILE_OR_SHARED == 0 {
                let p = addr + i * PAGE;
                match out.last_mut() {
                    Some(last) if last.end == p => last.end = p + PAGE,
                    _ => out.push(p..p + PAGE),
                }
            }
        }
        addr += pages * PAGE;
    }
    Ok(out)
}
