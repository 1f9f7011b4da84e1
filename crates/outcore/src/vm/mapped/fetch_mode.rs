//! Fetch mode: when a memory's file extents would need more kernel mappings than its
//! budget, every block is fetched on touch instead (a few mappings, slower, never failing).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;
use crate::{Error, Result};

/// A block version in a file extent, read when first touched (fetch mode).
pub(super) struct FileExtent {
    pub(super) file: Arc<File>,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Fetch for FileExtent {
    fn fetch(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.len as usize];
        self.fetch_into(&mut out)?;
        Ok(out)
    }

    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.len as usize;
        let target = out.get_mut(..len).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: larger than a block", self.describe()))
        })?;
        self.file
            .read_exact_at(target, self.offset)
            .map_err(|e| Error::io(format!("reading {}", self.describe()), e))?;
        Ok(len)
    }

    fn describe(&self) -> String {
        format!("{} bytes at offset {} of a segment", self.len, self.offset)
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// A block made of file pieces, read when first touched (fetch mode).
pub(super) struct FilePieces(pub(super) Vec<FilePiece>);

impl Fetch for FilePieces {
    fn fetch(&self) -> Result<Vec<u8>> {
        let len = self.0.last().map_or(0, |p| p.at + p.len);
        let mut out = vec![0u8; len];
        self.fetch_into(&mut out)?;
        Ok(out)
    }

    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        let mut end = 0;
        for p in &self.0 {
            out.get_mut(end..p.at)
                .ok_or_else(|| Error::InvalidArgument(format!("{}: unordered", self.describe())))?
                .fill(0);
            let target = out.get_mut(p.at..p.at + p.len).ok_or_else(|| {
                Error::InvalidArgument(format!("{}: larger than a block", self.describe()))
            })?;
            p.file
                .read_exact_at(target, p.offset)
                .map_err(|e| Error::io(format!("reading {}", self.describe()), e))?;
            end = p.at + p.len;
        }
        Ok(end)
    }

    fn describe(&self) -> String {
        format!("a block of {} pieces of segments", self.0.len())
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// A hole, fetched on touch as zeros (fetch mode: holes then share the mappings of fetched
/// blocks).
pub(super) struct Zeros;

impl Fetch for Zeros {
    fn fetch(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn describe(&self) -> String {
        "a hole".into()
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// Kernel mappings one array memory may use for file extents before it switches to fetching
/// blocks on touch: a quarter of `vm.max_map_count` (65,530 by default), so a few fragmented
/// arrays and the rest of the process (its allocator maps memory too) stay under the limit.
pub(super) fn mapping_budget() -> usize {
    max_map_count() / 4
}

/// The kernel's limit of mappings per process (`vm.max_map_count`), read once.
pub fn max_map_count() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530)
    })
}

impl BlockMemory {
    /// Switches to fetch mode: maps every mapped block, and `more`, again as fetched on
    /// touch. Private pages of mapped blocks are dropped: callers make sure there are none
    /// that matter (nothing uncommitted, or a boundary that re-maps anyway).
    pub(super) fn enter_fetch_mode(
        &self,
        state: &mut State,
        more: Vec<u64>,
        source: &dyn BlockSource,
    ) -> Result<()> {
        tracing::info!(
            "{} switches to fetching blocks on touch: its blocks' file extents would need more \
             than {} kernel mappings",
            self.what,
            mapping_budget()
        );
        state.fetch_mode = true;
        let mut blocks: Vec<u64> = state
            .mapped
            .iter()
            .filter(|(_, m)| **m != Mapped::Fetched)
            .map(|(&b, _)| b)
            .chain(more)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        self.map_blocks(state, blocks, source)
    }

    /// True once this memory fetches every block on touch (see
    /// [`ensure_mapped`](BlockMemory::ensure_mapped)).
    pub fn fetches_everything(&self) -> bool {
        self.lock().fetch_mode
    }

    /// How many separate kernel mappings the mapped blocks need at least (runs of blocks at
    /// consecutive offsets of one file count once). Compare with `vm.max_map_count`.
    pub fn mapping_runs(&self) -> usize {
        self.runs_locked(&self.lock())
    }

    pub(super) fn runs_locked(&self, state: &State) -> usize {
        let mut runs = 0;
        let mut prev: Option<(u64, &Mapped)> = None;
        for (&b, m) in &state.mapped {
            let continues = match (prev, m) {
                (
                    Some((
                        pb,
                        Mapped::File {
                            inode: pi,
                            offset: po,
                        },
                    )),
                    Mapped::File { inode, offset },
                ) => pb + 1 == b && pi == inode && po + self.blksize as u64 == *offset,
                (Some((pb, Mapped::Hole)), Mapped::Hole)
                | (Some((pb, Mapped::Fetched)), Mapped::Fetched) => pb + 1 == b,
                _ => false,
            };
            if let Mapped::Pieces(n) = m {
                runs += n;
            } else if !continues {
                runs += 1;
            }
            prev = Some((b, m));
        }
        runs
    }
}
