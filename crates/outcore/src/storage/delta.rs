//! Page-granular block versions (format v2): what a commit stores of a block, and how a
//! version stored as changed pages is read back.
//!
//! A block version is stored either **whole** — its bytes up to the last non-zero 4 KiB page
//! (a *short* block: the rest reads as zeros) — or as a **delta**: only the 4 KiB pages the
//! commit changed, over the key's previous version (its *base*, implicitly the version just
//! before it). A delta's base may itself be a delta; the chain ends at a whole version.
//!
//! [`plan`] decides, from the new contents, the changed pages and the chain the previous
//! version ends (its [`Tip`]): a delta when it is smaller than the whole version and the chain
//! stays short, the whole version otherwise. That bounds both what a reader composes and
//! what commits write:
//!
//! * a chain holds at most [`MAX_DEPTH`] deltas, so a read composes at most that many;
//! * the deltas of a chain hold at most [`CHAIN_FACTOR`] × the whole version's size, so the
//!   whole version that ends a chain costs at most half of what the deltas before it cost
//!   (the bytes a store adds per commit stay within 1.5× the changed pages, amortised).
//!
//! Readers compose: the whole version's bytes, then each delta's pages oldest first
//! ([`apply`]); for mapping, [`pieces`] works out which file extent each page comes from.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use super::{Key, Tid, Write};
use crate::{Error, Result};

/// The page size deltas are made of.
pub(crate) const PAGE: usize = 4096;

/// The most deltas a chain may hold before a commit stores the whole version again.
pub(crate) const MAX_DEPTH: u32 = 64;

/// The deltas of a chain may hold at most this many times the bytes of the whole version.
pub(crate) const CHAIN_FACTOR: u64 = 2;

/// What a delta version changes, and the chain it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delta {
    /// The changed pages (page indices within the block), ascending and disjoint; the
    /// payload holds their bytes in this order.
    pub runs: Vec<Range<u32>>,
    /// Deltas from the chain's whole version up to this one, this one included (≥ 1).
    pub depth: u32,
    /// Payload bytes of those deltas.
    pub chain_bytes: u64,
    /// Length of the composed version (bytes past it read as zeros).
    pub block_len: u64,
}

/// The largest block a delta may describe (the largest block size arrays may have).
pub(crate) const MAX_BLOCK_LEN: u64 = 1 << 30;

impl Delta {
    /// Checks what a decoded record claims: a depth within the format's bound, a block
    /// length within the largest block, ascending disjoint non-empty runs inside it.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(format!(
                "delta depth {} outside 1..={MAX_DEPTH}",
                self.depth
            ));
        }
        if self.block_len > MAX_BLOCK_LEN {
            return Err(format!("delta block length {} too large", self.block_len));
        }
        let mut previous_end = 0u32;
        for r in &self.runs {
            if r.start >= r.end
                || r.start < previous_end
                || u64::from(r.end) * PAGE as u64 > self.block_len.next_multiple_of(PAGE as u64)
            {
                return Err(format!(
                    "delta pages {r:?} are not ascending pages of the block"
                ));
            }
            previous_end = r.end;
        }
        Ok(())
    }

    /// Bytes of the payload: the changed pages.
    pub fn payload_len(&self) -> u64 {
        self.runs
            .iter()
            .map(|r| u64::from(r.end - r.start) * PAGE as u64)
            .sum()
    }
}

/// The end of a key's current chain, as far as planning the next version needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tip {
    /// Deltas in the chain (0 for a whole version).
    pub depth: u32,
    /// Their payload bytes.
    pub chain_bytes: u64,
    /// Length of the composed version.
    pub block_len: u64,
}

/// How a new version of a block is stored.
pub(crate) enum Plan<'a> {
    /// The whole contents, trailing zero pages dropped.
    Whole(&'a [u8]),
    /// Only the changed pages.
    Delta {
        /// The changed pages' bytes, in run order.
        payload: Vec<u8>,
        /// What they change.
        delta: Delta,
    },
}

/// The length of `bytes` without its trailing all-zero pages (a short block).
pub(crate) fn used_len(bytes: &[u8]) -> usize {
    match bytes.iter().rposition(|&b| b != 0) {
        Some(last) => (last + 1).next_multiple_of(PAGE).min(bytes.len()),
        None => 0,
    }
}

/// How to store `write` of block `key`, whose current version ends chain `tip` (`None`: no
/// version, or a deletion). `None` for a deletion.
pub(crate) fn plan(key: Key, write: &Write, tip: Option<Tip>) -> Result<Option<Plan<'_>>> {
    let Some(bytes) = write.bytes() else {
        return Ok(None);
    };
    let whole = &bytes[..used_len(bytes)];
    let (Write::Pages { pages, .. }, Some(tip)) = (write, tip) else {
        return Ok(Some(Plan::Whole(whole)));
    };
    check_runs(key, pages, bytes.len())?;
    let delta_bytes: u64 = pages
        .iter()
        .map(|r| u64::from(r.end - r.start) * PAGE as u64)
        .sum();
    let whole_bytes = whole.len() as u64;
    let worth_it = tip.depth < MAX_DEPTH
        && delta_bytes < whole_bytes
        && tip.chain_bytes + delta_bytes <= CHAIN_FACTOR * whole_bytes;
    if !worth_it {
        return Ok(Some(Plan::Whole(whole)));
    }
    let mut payload = Vec::with_capacity(delta_bytes as usize);
    for r in pages {
        payload.extend_from_slice(&bytes[r.start as usize * PAGE..r.end as usize * PAGE]);
    }
    let end = pages.last().map_or(0, |r| u64::from(r.end) * PAGE as u64);
    Ok(Some(Plan::Delta {
        payload,
        delta: Delta {
            runs: pages.clone(),
            depth: tip.depth + 1,
            chain_bytes: tip.chain_bytes + delta_bytes,
            block_len: tip.block_len.max(end),
        },
    }))
}

/// Checks that `runs` are ascending, disjoint, non-empty page ranges inside `len` bytes.
pub(crate) fn check_runs(key: Key, runs: &[Range<u32>], len: usize) -> Result<()> {
    let mut previous_end = 0u32;
    for (i, r) in runs.iter().enumerate() {
        if r.start >= r.end || (i > 0 && r.start < previous_end) || r.end as usize * PAGE > len {
            return Err(Error::InvalidArgument(format!(
                "changed pages {r:?} of {key} are not ascending, disjoint pages of its {len} bytes"
            )));
        }
        previous_end = r.end;
    }
    Ok(())
}

/// The front of `out` that the version composed from a chain ending in `newest` fills:
/// `newest.block_len` bytes. [`Error::Corrupt`] (of `key` at `tid`, the version read) when
/// `out` is shorter; every backend's `load_into` of a delta starts here.
pub(crate) fn composed_front<'a>(
    newest: &Delta,
    out: &'a mut [u8],
    key: Key,
    tid: Tid,
) -> Result<&'a mut [u8]> {
    let len = newest.block_len as usize;
    let room = out.len();
    out.get_mut(..len).ok_or_else(|| Error::Corrupt {
        key,
        tid,
        reason: format!("composed length {len} exceeds the {room} bytes it must fit in"),
    })
}

/// Copies a delta's `payload` over `out`, the composed bytes of its base (at least
/// `delta.block_len` long, zeros past the base's length).
pub(crate) fn apply(
    delta: &Delta,
    payload: &[u8],
    out: &mut [u8],
    key: Key,
    tid: Tid,
) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt { key, tid, reason };
    if payload.len() as u64 != delta.payload_len() {
        return Err(corrupt(format!(
            "delta payload of {} bytes for {} changed bytes",
            payload.len(),
            delta.payload_len()
        )));
    }
    let mut at = 0usize;
    let room = out.len();
    for r in &delta.runs {
        let (start, end) = (r.start as usize * PAGE, r.end as usize * PAGE);
        let target = out.get_mut(start..end).ok_or_else(|| {
            corrupt(format!(
                "delta pages {r:?} lie outside the {room} bytes of the block"
            ))
        })?;
        target.copy_from_slice(&payload[at..at + (end - start)]);
        at += end - start;
    }
    Ok(())
}

/// Part of a composed version that lies in a file: `len` bytes at `offset` of `file` are the
/// block's bytes from `at` on. Gaps between pieces read as zeros.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Byte offset within the block (a multiple of 4096).
    pub at: u64,
    /// The file (a segment), open for reading.
    pub file: Arc<File>,
    /// Byte offset in the file (a multiple of 4096).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The pieces of a composed version: `base` (a whole version's extent: file, offset, length)
/// under `deltas` (each a payload's file and offset, and the delta), oldest first. Pages a
/// later delta changes come from it; consecutive pages at consecutive offsets of one file
/// form one piece.
pub(crate) fn pieces(
    base: Option<(Arc<File>, u64, u64)>,
    deltas: &[(Arc<File>, u64, &Delta)],
    block_len: u64,
) -> Vec<Piece> {
    let pages = (block_len as usize).div_ceil(PAGE);
    // Per page: which file (index into `files`) and offset, if any.
    let mut files: Vec<Arc<File>> = Vec::new();
    let mut source: Vec<Option<(usize, u64)>> = vec![None; pages];
    if let Some((file, offset, len)) = base {
        files.push(file);
        let base_pages = (len as usize).div_ceil(PAGE).min(pages);
        for (p, s) in source.iter_mut().enumerate().take(base_pages) {
            *s = Some((0, offset + (p * PAGE) as u64));
        }
    }
    for (file, offset, delta) in deltas {
        files.push(file.clone());
        let f = files.len() - 1;
        let mut at = *offset;
        for r in &delta.runs {
            for p in r.start as usize..r.end as usize {
                if let Some(s) = source.get_mut(p) {
                    *s = Some((f, at));
                }
                at += PAGE as u64;
            }
        }
    }
    let mut out: Vec<Piece> = Vec::new();
    for (p, s) in source.into_iter().enumerate() {
        let Some((f, offset)) = s else { continue };
        let at = (p * PAGE) as u64;
        if let Some(last) = out.last_mut() {
            if last.at + last.len == at
                && Arc::ptr_eq(&last.file, &files[f])
                && last.offset + last.len == offset
            {
                last.len += PAGE as u64;
                continue;
            }
        }
        out.push(Piece {
            at,
            file: files[f].clone(),
            offset,
            len: PAGE as u64,
        });
    }
    out
}

#[cfg(test)]
// Lists of one page range are what these tests mean.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::storage::{Oid, Payload};

    const KEY: Key = Key::Block {
        file: Oid(2),
        index: 0,
    };

    struct Bytes(Vec<u8>);
    impl Payload for Bytes {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    fn pages_write(bytes: Vec<u8>, pages: Vec<Range<u32>>) -> Write {
        Write::Pages {
            pages,
            from: Arc::new(Bytes(bytes)),
        }
    }

    #[test]
    fn short_blocks_drop_trailing_zero_pages() {
        let mut b = vec![0u8; 16 * PAGE];
        assert_eq!(used_len(&b), 0);
        b[5] = 1;
        assert_eq!(used_len(&b), PAGE);
        b[3 * PAGE] = 1;
        assert_eq!(used_len(&b), 4 * PAGE);
        b[16 * PAGE - 1] = 1;
        assert_eq!(used_len(&b), 16 * PAGE);
    }

    #[test]
    fn a_small_change_becomes_a_delta_until_the_chain_is_long() {
        let mut b = vec![7u8; 64 * PAGE];
        b[63 * PAGE..].fill(0);
        let w = pages_write(b, vec![3..4]);
        let mut tip = Tip {
            depth: 0,
            chain_bytes: 0,
            block_len: 63 * PAGE as u64,
        };
        for depth in 1..=MAX_DEPTH {
            let Some(Plan::Delta { payload, delta }) = plan(KEY, &w, Some(tip)).unwrap() else {
                panic!("expected a delta at depth {depth}");
            };
            assert_eq!(payload.len(), PAGE);
            assert_eq!(delta.depth, depth);
            tip = Tip {
                depth: delta.depth,
                chain_bytes: delta.chain_bytes,
                block_len: delta.block_len,
            };
        }
        let Some(Plan::Whole(whole)) = plan(KEY, &w, Some(tip)).unwrap() else {
            panic!("a chain of MAX_DEPTH deltas must end");
        };
        assert_eq!(whole.len(), 63 * PAGE, "stored short");
        // No previous version: whole.
        assert!(matches!(plan(KEY, &w, None).unwrap(), Some(Plan::Whole(_))));
    }

    #[test]
    fn deltas_stop_when_they_outweigh_the_whole_version() {
        let b = vec![1u8; 4 * PAGE];
        let w = pages_write(b, vec![0..1]);
        let tip = Tip {
            depth: 1,
            chain_bytes: 8 * PAGE as u64,
            block_len: 4 * PAGE as u64,
        };
        assert!(matches!(
            plan(KEY, &w, Some(tip)).unwrap(),
            Some(Plan::Whole(_))
        ));
    }

    #[test]
    fn bad_runs_are_refused() {
        for runs in [
            vec![Range { start: 2, end: 1 }],
            vec![0..2, 1..3],
            vec![0..5],
        ] {
            let w = pages_write(vec![1u8; 4 * PAGE], runs);
            let tip = Tip {
                depth: 0,
                chain_bytes: 0,
                block_len: 4 * PAGE as u64,
            };
            assert!(plan(KEY, &w, Some(tip)).is_err());
        }
    }

    #[test]
    fn pieces_take_each_page_from_its_newest_version() {
        let f = Arc::new(File::open("/dev/null").unwrap());
        let g = Arc::new(File::open("/dev/null").unwrap());
        let d1 = Delta {
            runs: vec![1..3],
            depth: 1,
            chain_bytes: 2 * PAGE as u64,
            block_len: 4 * PAGE as u64,
        };
        let d2 = Delta {
            runs: vec![2..3, 5..6],
            depth: 2,
            chain_bytes: 4 * PAGE as u64,
            block_len: 6 * PAGE as u64,
        };
        let p = pieces(
            Some((f.clone(), 0, 4 * PAGE as u64)),
            &[
                (g.clone(), 40 * PAGE as u64, &d1),
                (g.clone(), 42 * PAGE as u64, &d2),
            ],
            6 * PAGE as u64,
        );
        let got: Vec<(u64, bool, u64, u64)> = p
            .iter()
            .map(|p| {
                (
                    p.at / PAGE as u64,
                    Arc::ptr_eq(&p.file, &f),
                    p.offset / PAGE as u64,
                    p.len / PAGE as u64,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, true, 0, 1),
                (1, false, 40, 1),
                (2, false, 42, 1),
                (3, true, 3, 1),
                (5, false, 43, 1)
            ]
        );
    }

    #[test]
    fn apply_composes_and_checks_lengths() {
        let delta = Delta {
            runs: vec![1..2, 3..4],
            depth: 1,
            chain_bytes: 2 * PAGE as u64,
            block_len: 4 * PAGE as u64,
        };
        let mut out = vec![0u8; 4 * PAGE];
        let mut payload = vec![1u8; PAGE];
        payload.extend(vec![3u8; PAGE]);
        apply(&delta, &payload, &mut out, KEY, Tid(1)).unwrap();
        assert_eq!(out[PAGE], 1);
        assert_eq!(out[3 * PAGE], 3);
        assert_eq!(out[0], 0);
        assert!(apply(&delta, &payload[..PAGE], &mut out, KEY, Tid(1)).is_err());
        assert!(apply(&delta, &payload, &mut out[..2 * PAGE], KEY, Tid(1)).is_err());
    }

    #[test]
    fn the_composed_front_is_block_len_long_or_corrupt() {
        let delta = Delta {
            runs: vec![1..2],
            depth: 1,
            chain_bytes: PAGE as u64,
            block_len: 3 * PAGE as u64,
        };
        let mut out = vec![0u8; 4 * PAGE];
        assert_eq!(
            composed_front(&delta, &mut out, KEY, Tid(7)).unwrap().len(),
            3 * PAGE
        );
        match composed_front(&delta, &mut out[..2 * PAGE], KEY, Tid(7)) {
            Err(Error::Corrupt { key, tid, reason }) => {
                assert_eq!((key, tid), (KEY, Tid(7)));
                assert!(reason.contains("exceeds the 8192 bytes"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
