//! An array's windows: reserving address space for views, and releasing idle windows.

use std::ops::Range;
use std::sync::Arc;

use super::{ArrayHandle, ArrayTxn};
use crate::db::source::StoreSpill;
use crate::storage::{Storage, Tid};
use crate::vm::BlockMemory;
use crate::{Error, Result};

/// Smallest and largest default reservation of a window (address space only: it costs no
/// memory until blocks are mapped, and 100,000 small arrays fit in the 128 TiB of a process).
const MIN_WINDOW: u64 = 64 << 20;
const MAX_WINDOW: u64 = 1 << 40;

/// Address space to reserve for a window that must hold `need` bytes: room to grow without
/// moving views. `configured` (from [`DbOptions::reserve_bytes`](super::DbOptions) or
/// `OUTCORE_RESERVE_BYTES`) replaces the default clamp(16 × need, 64 MiB, 1 TiB), at least
/// twice `need`; either way at least `need`.
fn window_bytes(need: u64, configured: Option<u64>) -> u64 {
    // Address-space-limited environments (ulimit -v, valgrind) can ask for less.
    let from_env = || {
        std::env::var("OUTCORE_RESERVE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
    };
    match configured.or_else(from_env) {
        Some(bytes) => bytes,
        None => need
            .saturating_mul(16)
            .clamp(MIN_WINDOW, MAX_WINDOW)
            .max(need.saturating_mul(2)),
    }
    .max(need)
}

/// True if nothing but its array holds `window` (no view, no commit in progress) and it holds
/// no uncommitted write: releasing it loses nothing.
fn is_idle(window: &Arc<BlockMemory>) -> Result<bool> {
    Ok(Arc::strong_count(window) == 1
        && Arc::strong_count(window.reservation()) == 1
        && window.dirty_blocks()?.is_empty())
}

impl ArrayHandle {
    /// Releases the windows no view uses and that hold no uncommitted write; returns how
    /// many were released. Their blocks are mapped again when next viewed.
    pub fn release_idle_windows(&self) -> Result<usize> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let before = windows.len();
        let mut kept = Vec::with_capacity(before);
        for w in windows.drain(..) {
            if !is_idle(&w)? {
                kept.push(w);
            }
        }
        *windows = kept;
        Ok(before - windows.len())
    }

    /// Every window of the array, newest first.
    pub(super) fn all_memory(&self) -> Vec<Arc<BlockMemory>> {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().rev().cloned().collect()
    }

    /// The newest window holding `blocks` (the block containing byte 0 of an empty range),
    /// reserving one if none does, with those blocks mapped as of snapshot `at`.
    pub(super) fn window_for(
        &self,
        g: &ArrayTxn,
        blocks: Range<u64>,
        storage: &Arc<dyn Storage>,
        at: Tid,
    ) -> Result<Arc<BlockMemory>> {
        let source = self.source(storage, g, at, g.cut);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = windows.iter().rev().find(|w| w.covers(&blocks)) {
            let w = w.clone();
            drop(windows);
            w.ensure_mapped(blocks, &source)?;
            return Ok(w);
        }
        let blk = g.meta.blksize as u64;
        // Arrays up to the largest default window get one window from block 0 (every view
        // aliases); larger ones a window starting at the view.
        let end = blocks.end.max(g.meta.nblocks());
        let first = if end.saturating_mul(blk) <= MAX_WINDOW {
            0
        } else {
            blocks.start
        };
        let need = (blocks.end.max(first + 1) - first).saturating_mul(blk);
        let window = self.reserve_window(g, first, need)?;
        if self.writable {
            // Above the process's dirty budget, written blocks move to staged space.
            window.spill_to(Arc::new(StoreSpill {
                storage: storage.clone(),
                file: g.meta.file,
                blksize: g.meta.blksize,
                mapped_at: self.mapped_at.clone(),
            }));
        }
        // Windows no view uses and that hold no writes are released first (they would only
        // take address space).
        let mut kept = Vec::with_capacity(windows.len() + 1);
        for w in windows.drain(..) {
            if !is_idle(&w)? {
                kept.push(w);
            }
        }
        // Uncommitted writes of older windows show in the new one (oldest first, so the
        // newest write of a page wins).
        for old in &kept {
            for (block, ranges) in old.written_pages()? {
                if !window.covers(&(block..block + 1)) {
                    continue;
                }
                window.ensure_mapped(block..block + 1, &source)?;
                for range in ranges {
                    let mut bytes = vec![0u8; range.end - range.start];
                    old.read_into(block, range.start, &mut bytes);
                    window.write_into(block, range.start, &bytes)?;
                }
            }
        }
        if let Some(old) = kept
            .iter()
            .find(|w| !w.dirty_blocks().unwrap_or_default().is_empty())
        {
            tracing::warn!(
                "array {} outgrew its address-space window of blocks {:?} while views of it \
                 held uncommitted writes; new views use another window. Writes through views \
                 taken before show through newer views only after commit (they are merged \
                 then; the same bytes changed differently through both fail the commit)",
                self.oid,
                old.blocks()
            );
        }
        kept.push(window.clone());
        *windows = kept;
        drop(windows);
        window.ensure_mapped(blocks, &source)?;
        Ok(window)
    }

    /// Reserves a window for blocks from `first`, room for at least `need` bytes: the
    /// configured or default size, or just `need` if that much address space is not free.
    pub(super) fn reserve_window(
        &self,
        g: &ArrayTxn,
        first: u64,
        need: u64,
    ) -> Result<Arc<BlockMemory>> {
        let blk = g.meta.blksize as u64;
        let max_blocks = u64::MAX / blk - first;
        let mut sizes = vec![window_bytes(need, self.reserve).div_ceil(blk)];
        sizes.push(need.div_ceil(blk));
        let mut last_error = None;
        for capacity in sizes.into_iter().map(|c| c.clamp(1, max_blocks)) {
            match BlockMemory::window(g.meta.blksize, first, capacity, self.writable) {
                Ok(m) => return Ok(Arc::new(m.describe_as(format!("array {}", self.oid)))),
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(Error::AddressSpace(_)) | None => Error::AddressSpace(format!(
                "a view of {need} bytes of array {} does not fit in this process's free \
                 address space: view a smaller part",
                self.oid
            )),
            Some(e) => e,
        })
    }
}
