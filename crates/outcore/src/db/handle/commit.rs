//! What a commit takes from an array: its written blocks (read from memory without a copy,
//! or merged across windows), deletions past a shrink, and its metadata; and the state after.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use super::{ArrayHandle, ArrayTxn};
use crate::db::source::StagedBlock;
use crate::storage::{Key, Payload, Storage, Tid, Write};
use crate::vm::BlockMemory;
use crate::{Error, Result};

/// A written block handed to the store without a copy: the store reads it from the array's
/// memory while the commit runs.
struct MappedBlock {
    memory: Arc<BlockMemory>,
    block: u64,
}

impl Payload for MappedBlock {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the block is mapped (it has written pages) and stays so while `memory`
        // lives; commits run under the connection lock and writing into views during a
        // commit is documented as not allowed (`Connection`).
        unsafe { self.memory.block_bytes(self.block) }
    }
}

/// The 4 KiB pages covering byte `ranges` of a block, as ascending, disjoint page-index runs.
fn page_runs(ranges: &[Range<usize>]) -> Vec<Range<u32>> {
    let page = crate::vm::PAGE;
    let mut pages: Vec<Range<u32>> = ranges
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| (r.start / page) as u32..r.end.div_ceil(page) as u32)
        .collect();
    pages.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u32>> = Vec::with_capacity(pages.len());
    for r in pages {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// True if `bytes` are all zero (checked 4 KiB at a time, in a vectorisable loop).
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Folds `older` (a page as an older window wrote it) into `newer` (the same page as newer
/// windows left it), byte by byte against `base` (the committed page): a byte changed on one
/// side only takes that change. Returns the offset of the first byte both sides changed
/// differently, leaving `newer` partly merged (the caller then fails the commit).
fn merge_page(newer: &mut [u8], older: &[u8], base: &[u8]) -> std::result::Result<(), usize> {
    for (i, ((n, &o), &b)) in newer.iter_mut().zip(older).zip(base).enumerate() {
        if *n == o || o == b {
            continue;
        }
        if *n == b {
            *n = o;
        } else {
            return Err(i);
        }
    }
    Ok(())
}

impl ArrayHandle {
    /// Adds this array's changes to a commit: written blocks (all-zero ones as holes),
    /// blocks dropped by a shrink, and the metadata if it changed. True if anything changed.
    pub fn collect_writes(
        &self,
        storage: &Arc<dyn Storage>,
        at: Tid,
        writes: &mut Vec<(Key, Write)>,
    ) -> Result<bool> {
        let g = self.lock()?;
        let before = writes.len();
        let nblocks = g.meta.nblocks();
        let mut blocks = self.written_blocks(&g, storage, at, nblocks)?;
        for (&b, adopted) in g.adopted.range(..nblocks) {
            if blocks.contains_key(&b) {
                return Err(Error::InvalidArgument(format!(
                    "block {b} of array {} was both written through views and given a version \
                     staged by another process in this transaction; nothing was committed",
                    self.oid
                )));
            }
            blocks.insert(b, Write::Adopt(adopted.version));
        }
        let written: Vec<u64> = blocks.keys().copied().collect();
        // Blocks from here on had no version at the snapshot (past the committed end, or
        // past the last stored block when that is known).
        let committed_end = g.committed.as_ref().map_or(0, |m| m.nblocks());
        let unstored_from = match *self.stored_end.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((tid, end)) if tid == at => end.min(committed_end),
            _ => committed_end,
        };
        for (b, write) in blocks {
            let key = Key::Block {
                file: g.meta.file,
                index: b,
            };
            if write.bytes().is_some_and(all_zero) {
                // Zeros over a block with nothing stored at the snapshot change nothing: no
                // write, no tombstone, no conflict with its writers.
                if b < unstored_from {
                    writes.push((key, Write::Delete));
                }
            } else {
                writes.push((key, write));
            }
        }
        if let Some(cut) = g.cut {
            // Only blocks that exist get a deletion: a shrink costs what is stored, not the
            // logical size (an array of 2**60 bytes holding one block deletes one).
            let stored = match g.committed {
                Some(_) => storage.block_indices(g.meta.file, at)?,
                None => Vec::new(),
            };
            let written: BTreeSet<u64> = written.into_iter().collect();
            for b in stored
                .into_iter()
                .filter(|&b| b >= cut && (!written.contains(&b) || b >= nblocks))
            {
                let key = Key::Block {
                    file: g.meta.file,
                    index: b,
                };
                writes.push((key, Write::Delete));
            }
        }
        if g.committed.as_ref() != Some(&g.meta) {
            writes.push((Key::Meta(self.oid), Write::Store(g.meta.encode())));
        }
        Ok(writes.len() > before)
    }

    /// The new version of every written block below `nblocks`: read straight from the
    /// window that wrote it during the commit, or, where several windows wrote one block,
    /// their writes merged into a copy (see [`merge_page`]).
    pub(super) fn written_blocks(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        nblocks: u64,
    ) -> Result<BTreeMap<u64, Write>> {
        let windows = self.all_memory();
        let written: Vec<BTreeMap<u64, Vec<Range<usize>>>> = windows
            .iter()
            .map(|w| w.written_pages())
            .collect::<Result<_>>()?;
        let all: BTreeSet<u64> = written
            .iter()
            .flat_map(|pages| pages.keys().copied())
            .filter(|&b| b < nblocks)
            .collect();
        let mut blocks = BTreeMap::new();
        for b in all {
            // Windows that wrote block b, newest first.
            let writers: Vec<usize> = (0..windows.len())
                .filter(|&i| written[i].contains_key(&b))
                .collect();
            if let [only] = writers[..] {
                let staged = windows[only].staged(b).and_then(|s| {
                    s.as_any()
                        .downcast_ref::<StagedBlock>()
                        .map(|s| s.0.clone())
                });
                let from = Arc::new(MappedBlock {
                    memory: windows[only].clone(),
                    block: b,
                });
                let write = if let Some(extent) = staged {
                    // Written into staged space: the store publishes it as it is.
                    Write::Staged { extent, from }
                } else if g.cut.is_some_and(|c| b >= c) {
                    // The memory reads zeros past the cut where the store still holds the old
                    // version: the whole block is new.
                    Write::StoreFrom(from)
                } else {
                    // Pages not written are those of the version the transaction read.
                    Write::Pages {
                        pages: page_runs(&written[only][&b]),
                        from,
                    }
                };
                blocks.insert(b, write);
                continue;
            }
            let mut bytes = windows[writers[0]].read_block(b);
            let mut base: Option<Vec<u8>> = None;
            let mut page = vec![0u8; crate::vm::PAGE];
            for &i in &writers[1..] {
                for r in &written[i][&b] {
                    for at_page in (r.start..r.end).step_by(crate::vm::PAGE) {
                        let end = at_page + crate::vm::PAGE;
                        windows[i].read_into(b, at_page, &mut page);
                        if page[..] == bytes[at_page..end] {
                            continue;
                        }
                        if base.is_none() {
                            base = Some(self.committed_block(g, storage, at, b)?);
                        }
                        let base = base.as_deref().expect("loaded above");
                        merge_page(&mut bytes[at_page..end], &page, &base[at_page..end]).map_err(
                            |offset| {
                                Error::DivergentWrites(format!(
                                    "byte {} of array {} (block {b}) was changed differently \
                                     through a view made before the array outgrew its \
                                     address-space window and through one made after; nothing \
                                     was committed: abort, and take views again after growing \
                                     the array",
                                    b * g.meta.blksize as u64 + (at_page + offset) as u64,
                                    self.oid
                                ))
                            },
                        )?;
                    }
                }
            }
            blocks.insert(b, Write::Store(bytes));
        }
        Ok(blocks)
    }

    /// The bytes of `block` at snapshot `at` as this transaction started from (zeros past a
    /// shrink's cut), `blksize` long.
    pub(super) fn committed_block(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        block: u64,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; g.meta.blksize];
        if g.cut.is_some_and(|c| block >= c) {
            return Ok(out);
        }
        let key = Key::Block {
            file: g.meta.file,
            index: block,
        };
        if let Some(v) = storage.load(key, at)? {
            let n = v.data.len().min(out.len());
            out[..n].copy_from_slice(&v.data[..n]);
        }
        Ok(out)
    }

    /// After a successful commit: the current state is the committed one. Written pages of
    /// blocks past the end are dropped (the committed blocks are re-mapped by the
    /// invalidation that follows).
    pub fn committed(&self) -> Result<()> {
        let mut g = self.lock()?;
        g.committed = Some(g.meta.clone());
        g.cut = None;
        g.adopted.clear();
        let nblocks = g.meta.nblocks();
        for m in self.all_memory() {
            let beyond: Vec<u64> = m
                .dirty_blocks()?
                .into_iter()
                .filter(|&b| b >= nblocks)
                .collect();
            m.discard(&beyond)?;
        }
        Ok(())
    }
}
