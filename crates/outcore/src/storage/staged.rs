//! Block versions written by one process ahead of the commit another process makes: the
//! store-independent half of staging.
//!
//! [`Storage::stage_body`](super::Storage::stage_body) writes a block's new body into the
//! store (where depends on the store) and returns a [`StagedRef`]: a few numbers, sent to the
//! process that commits (a dask worker's result). That process takes a [`StagedHold`]
//! ([`Storage::hold_staged`](super::Storage::hold_staged)) and publishes the body with
//! [`Write::Adopt`](super::Write::Adopt). Until published, nothing reads it; a body never
//! published is reclaimed by pack once nothing holds it:
//!
//! | store | body lies in | held by | reclaimed by pack |
//! |---|---|---|---|
//! | embedded | a staging segment (`local/staging.rs`) | segment markers of live processes | once no live process marks the segment |
//! | PostgreSQL | a row of the body table, listed as staged (`postgres/staging.rs`) | the stager's, then the adopters', staging leases | once no live lease holds it |
//! | object storage | an object under the block's key (`blobs/staging.rs`) | the grace period | once older than the grace |

use std::fmt;

use super::Key;
use crate::{Error, Result};

/// Where a staged body lies; which kind depends on the store that staged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StagedPlace {
    /// The embedded store: `offset` in staging segment `segment`.
    Segment {
        /// The staging segment's id.
        segment: u32,
        /// Byte offset of the version in it.
        offset: u64,
    },
    /// PostgreSQL: the row of the body table with this id.
    Row(i64),
    /// Object storage: the object with this id under the block's key.
    Object(u128),
}

/// A block version staged by one process and published by another (a dask worker and the
/// client that commits): plain numbers, to send anywhere ([`StagedRef::to_bytes`]). Only
/// block `key` can publish it, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StagedRef {
    /// The block the version was staged for.
    pub key: Key,
    /// Where the body lies.
    pub place: StagedPlace,
    /// Length of the version (bytes past it read as zeros).
    pub len: u64,
    /// xxh3-64 of those bytes.
    pub checksum: u64,
}

/// First byte of [`StagedRef::to_bytes`]: the encoding's version.
const ENCODING: u8 = 1;

impl StagedRef {
    /// A fixed encoding (version, key, place, length, checksum), to send between processes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![ENCODING];
        out.extend_from_slice(&self.key.encode());
        match self.place {
            StagedPlace::Segment { segment, offset } => {
                out.push(0);
                out.extend_from_slice(&u128::from(segment).to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
            StagedPlace::Row(id) => {
                out.push(1);
                out.extend_from_slice(&(id as u128).to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes());
            }
            StagedPlace::Object(id) => {
                out.push(2);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Inverse of [`StagedRef::to_bytes`]; bytes that are no reference are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<StagedRef> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{} bytes are no reference to a staged block version (made by \
                 Database.stage_block)",
                bytes.len()
            ))
        };
        const LEN: usize = 1 + Key::ENCODED_LEN + 1 + 16 + 8 + 8 + 8;
        if bytes.len() != LEN || bytes[0] != ENCODING {
            return Err(bad());
        }
        let key = Key::decode(&bytes[1..18]).ok_or_else(bad)?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let id = u128::from_le_bytes(bytes[19..35].try_into().expect("16 bytes"));
        let place = match bytes[18] {
            0 => StagedPlace::Segment {
                segment: u32::try_from(id).map_err(|_| bad())?,
                offset: u64_at(35),
            },
            1 => StagedPlace::Row(i64::try_from(id).map_err(|_| bad())?),
            2 => StagedPlace::Object(id),
            _ => return Err(bad()),
        };
        Ok(StagedRef {
            key,
            place,
            len: u64_at(43),
            checksum: u64_at(51),
        })
    }

    /// The message for a store asked to publish a body another kind of store staged.
    pub(crate) fn foreign(&self, store: &str) -> Error {
        Error::InvalidArgument(format!(
            "{}: {self:?} was not staged by {store}; stage it with this store",
            self.key
        ))
    }
}

impl fmt::Display for StagedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "staged version of {} ({} bytes)", self.key, self.len)
    }
}

/// Keeps a staged body from pack while a transaction may still publish it; what it holds
/// depends on the store (a segment marker, a lease's claim on a row, nothing for objects,
/// which the grace period keeps). Dropping it lets pack reclaim the body unless published.
pub struct StagedHold {
    _keep: Box<dyn fmt::Debug + Send + Sync>,
}

impl StagedHold {
    /// A hold that keeps `what` until dropped (its `Drop` releases the claim).
    pub fn new(what: impl fmt::Debug + Send + Sync + 'static) -> Self {
        StagedHold {
            _keep: Box::new(what),
        }
    }
}

impl fmt::Debug for StagedHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StagedHold({:?})", self._keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Oid;

    #[test]
    fn references_round_trip_and_bad_bytes_are_refused() {
        let key = Key::Block {
            file: Oid(7),
            index: 3,
        };
        for place in [
            StagedPlace::Segment {
                segment: 1 << 31,
                offset: 8192,
            },
            StagedPlace::Row(42),
            StagedPlace::Object(u128::MAX - 5),
        ] {
            let r = StagedRef {
                key,
                place,
                len: 4096,
                checksum: 0xfeed,
            };
            assert_eq!(StagedRef::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        let good = StagedRef {
            key,
            place: StagedPlace::Row(1),
            len: 1,
            checksum: 1,
        }
        .to_bytes();
        for bad in [&good[1..], &[0u8; 59][..], b"x"] {
            let e = StagedRef::from_bytes(bad).unwrap_err().to_string();
            assert!(e.contains("no reference to a staged block version"), "{e}");
        }
        let mut other = good.clone();
        other[18] = 9;
        assert!(StagedRef::from_bytes(&other).is_err());
    }
}
