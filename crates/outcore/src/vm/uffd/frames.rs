//! Frames: block-sized, 2 MiB-aligned pieces of anonymous memory that fetched blocks are
//! decoded into and then *moved* (`UFFDIO_MOVE`) into an array's memory, page tables and all,
//! instead of copied. Evicted blocks are moved back into a frame, so in steady state no memory
//! is allocated or zeroed: a load is the decode plus a move of one huge page table entry.
//!
//! A frame is owned by whoever took it from the pool until it is given back. Frames are never
//! unmapped; their number is bounded by the loads and evictions in flight plus the spares kept.
//! Spare frames (with pages) are kept within a byte limit the caller gives: the part of the RAM
//! budget that loaded blocks do not use, but at least [`MIN_SPARES`] frames.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;

/// Huge page size: frames are aligned to it so a whole-frame move is one page table entry.
pub const HUGE: usize = 2 << 20;
/// Frames with pages always allowed per size, even with the budget used up by loaded blocks
/// (each costs its size in RAM on top of the budget).
pub const MIN_SPARES: usize = 8;

/// A frame: its address (the pool knows its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame(pub usize);

/// The frames of one size.
#[derive(Default)]
struct SizeClass {
    /// Frames holding pages (zeroed or an old block's bytes): decoding into them allocates
    /// nothing.
    full: Vec<Frame>,
    /// Frames whose pages were moved out, freed or never faulted in: they hold no pages, so
    /// an evicted block can be moved into them (a move onto present pages fails).
    empty: Vec<Frame>,
}

/// The frames of the process, by size.
#[derive(Default)]
pub struct FramePool {
    sizes: Mutex<HashMap<usize, SizeClass>>,
}

impl FramePool {
    fn with<T>(&self, size: usize, f: impl FnOnce(&mut SizeClass) -> T) -> T {
        let mut sizes = lock(&self.sizes);
        f(sizes.entry(size).or_default())
    }

    /// A frame to decode a block into: one with pages if there is one. `register` makes a new
    /// frame a valid move destination (registration with the userfaultfd).
    pub fn take(&self, size: usize, register: impl FnOnce(Frame) -> bool) -> Option<Frame> {
        if let Some(f) = self.with(size, |s| s.full.pop().or_else(|| s.empty.pop())) {
            return Some(f);
        }
        new_frame(size, register)
    }

    /// An empty frame to move an evicted block into, if another spare fits in `limit` bytes
    /// of spares.
    pub fn take_for_eviction(
        &self,
        size: usize,
        limit: usize,
        register: impl FnOnce(Frame) -> bool,
    ) -> Option<Frame> {
        let (wanted, empty) = self.with(size, |s| {
            let wanted = fits(s, size, limit);
            (wanted, if wanted { s.empty.pop() } else { None })
        });
        if !wanted {
            return None;
        }
        empty.or_else(|| new_frame(size, register))
    }

    /// Faults in the pages of one more spare frame of `size` if there are fewer than
    /// [`MIN_SPARES`], so that a later load finds one ready (no page allocation or zeroing on
    /// its path); false if there was nothing to do or it failed.
    pub fn refill(&self, size: usize, register: impl FnOnce(Frame) -> bool) -> bool {
        let empty = self.with(size, |s| {
            (s.full.len() < MIN_SPARES)
                .then(|| s.empty.pop())
                .map(|e| e.ok_or(()))
        });
        let frame = match empty {
            None => return false,
            Some(Ok(f)) => f,
            Some(Err(())) => match new_frame(size, register) {
                Some(f) => f,
                None => return false,
            },
        };
        // SAFETY: our own frame; populating only faults in its (zeroed) pages.
        let rc = unsafe {
            libc::madvise(
                frame.0 as *mut libc::c_void,
                size,
                libc::MADV_POPULATE_WRITE,
            )
        };
        let kept = self.with(size, |s| {
            let keep = rc == 0 && s.full.len() < MIN_SPARES;
            if keep {
                s.full.push(frame);
            }
            keep
        });
        if !kept {
            // Another thread refilled meanwhile (or populating failed part way): an empty
            // frame must hold no pages, or a move into it fails.
            release_pages(frame, size);
            self.put_empty(size, frame);
        }
        kept
    }

    /// Gives back a frame whose pages are (at least partly) still there: kept as a spare if
    /// it fits in `limit` bytes of spares, else its pages are freed.
    pub fn put_full(&self, size: usize, frame: Frame, limit: usize) {
        let kept = self.with(size, |s| {
            let keep = fits(s, size, limit);
            if keep {
                s.full.push(frame);
            }
            keep
        });
        if !kept {
            release_pages(frame, size);
            self.put_empty(size, frame);
        }
    }

    /// Frees the pages of spares beyond `limit()` bytes (per size).
    pub fn trim(&self, limit: impl FnOnce() -> usize) {
        let mut sizes = lock(&self.sizes);
        // Read under the pool's lock: a limit read before it could be stale by the time the
        // lock is taken (a region removed meanwhile freed budget and filled the pool), and
        // would free the spares just made.
        let limit = limit();
        for (&size, s) in sizes.iter_mut() {
            let keep = (limit / size).max(MIN_SPARES);
            let n = s.full.len().saturating_sub(keep);
            let extra: Vec<Frame> = s.full.drain(..n).collect();
            for f in extra {
                release_pages(f, size);
                s.empty.push(f);
            }
        }
    }

    /// Bytes held by spare frames (all sizes).
    pub fn spare_bytes(&self) -> usize {
        let sizes = lock(&self.sizes);
        sizes.iter().map(|(size, s)| size * s.full.len()).sum()
    }

    /// Gives back a frame whose pages were moved out.
    pub fn put_empty(&self, size: usize, frame: Frame) {
        self.with(size, |s| s.empty.push(frame));
    }
}

/// Whether one more spare of `size` fits in `limit` bytes (or the minimum).
fn fits(s: &SizeClass, size: usize, limit: usize) -> bool {
    s.full.len() < MIN_SPARES || (s.full.len() + 1) * size <= limit
}

/// The bytes of `frame`.
///
/// # Safety
/// The caller owns `frame` (took it from the pool and has not given it back) and `size` is
/// its size.
pub unsafe fn bytes_mut<'a>(frame: Frame, size: usize) -> &'a mut [u8] {
    // SAFETY: per the contract, a live private mapping of `size` bytes nobody else uses.
    unsafe { std::slice::from_raw_parts_mut(frame.0 as *mut u8, size) }
}

/// Frees the pages of a frame (it stays mapped, empty).
fn release_pages(frame: Frame, size: usize) {
    // SAFETY: a frame is private anonymous memory owned by the caller; dropping its pages
    // changes nothing anyone else sees.
    unsafe { libc::madvise(frame.0 as *mut libc::c_void, size, libc::MADV_DONTNEED) };
}

/// Maps a new frame: `size` bytes, 2 MiB-aligned, huge pages where the kernel gives them, not
/// inherited by children (a moved page must not be shared).
fn new_frame(size: usize, register: impl FnOnce(Frame) -> bool) -> Option<Frame> {
    let len = size + HUGE;
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(HUGE);
    // SAFETY: trims the unaligned head and the tail of the mapping just made; nothing uses
    // them.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        let tail = raw + len - (start + size);
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
        // Advice only: without huge pages a move is 512 page entries instead of one.
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_DONTFORK);
    }
    let frame = Frame(start);
    if register(frame) {
        Some(frame)
    } else {
        // SAFETY: our own mapping, never handed out.
        unsafe { libc::munmap(start as *mut libc::c_void, size) };
        None
    }
}
