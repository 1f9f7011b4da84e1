//! Frames: block-sized, 2 MiB-aligned pieces of anonymous memory that fetched blocks are
//! decoded into and then *moved* (`UFFDIO_MOVE`) into an array's memory, page tables and all,
//! instead of copied. Evicted blocks are moved back into a frame, so in steady state no memory
//! is allocated or zeroed: a load is the decode plus a move of one huge page table entry.
//!
//! A frame is owned by whoever took it from the pool until it is given back. Frames are never
//! unmapped; their number is bounded by the loads and evictions in flight plus the spares kept.

use std::collections::HashMap;
use std::sync::Mutex;

/// Huge page size: frames are aligned to it so a whole-frame move is one page table entry.
pub const HUGE: usize = 2 << 20;
/// Frames with pages kept ready per size (each costs its size in RAM, outside the budget).
const SPARES: usize = 8;

/// A frame: its address (the pool knows its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame(pub usize);

#[derive(Default)]
struct Sized {
    /// Frames holding pages (zeroed or an old block's bytes): decoding into them allocates
    /// nothing.
    full: Vec<Frame>,
    /// Frames whose pages were moved out (or never faulted in).
    empty: Vec<Frame>,
}

/// The frames of the process, by size.
#[derive(Default)]
pub struct FramePool {
    sizes: Mutex<HashMap<usize, Sized>>,
}

impl FramePool {
    fn with<T>(&self, size: usize, f: impl FnOnce(&mut Sized) -> T) -> T {
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
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

    /// An empty frame to move an evicted block into, if the spares are not complete yet.
    pub fn take_for_eviction(
        &self,
        size: usize,
        register: impl FnOnce(Frame) -> bool,
    ) -> Option<Frame> {
        let (wanted, empty) = self.with(size, |s| {
            let wanted = s.full.len() < SPARES;
            (wanted, if wanted { s.empty.pop() } else { None })
        });
        if !wanted {
            return None;
        }
        empty.or_else(|| new_frame(size, register))
    }

    /// Gives back a frame whose pages are (at least partly) still there.
    pub fn put_full(&self, size: usize, frame: Frame) {
        let keep = self.with(size, |s| s.full.len() < SPARES);
        if !keep {
            release_pages(frame, size);
            return self.put_empty(size, frame);
        }
        self.with(size, |s| s.full.push(frame));
    }

    /// Gives back a frame whose pages were moved out.
    pub fn put_empty(&self, size: usize, frame: Frame) {
        self.with(size, |s| s.empty.push(frame));
    }
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
