//! The names of stored things: transaction ids ([`Tid`]), object ids ([`Oid`]) and the keys
//! ([`Key`]) versions are stored under.
//!
//! A leaf module (it imports nothing of the crate) so that both the storage layer and the
//! error type can name keys and tids without importing each other: `error.rs` needs them for
//! [`Error::Conflict`](crate::Error::Conflict) and [`Error::Corrupt`](crate::Error::Corrupt),
//! and every storage backend returns [`Error`](crate::Error). The public path of these types
//! is `outcore::storage::{Key, Oid, Tid}`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A transaction id: nanoseconds since the Unix epoch, strictly increasing per store.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tid(pub u64);

impl Tid {
    /// Before every commit: the head of an empty store.
    pub const ZERO: Tid = Tid(0);
    /// After every commit: "the newest version, whatever it is".
    pub const MAX: Tid = Tid(u64::MAX);

    /// The current time as a tid.
    pub fn now() -> Tid {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Tid(u64::try_from(ns).unwrap_or(u64::MAX - 1))
    }

    /// The tid for a commit following `last`: `max(now, last + 1)`.
    pub fn next_after(last: Tid) -> Tid {
        Tid::now().max(Tid(last.0.saturating_add(1)))
    }

    /// The wall-clock time this tid stands for.
    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tid {:016x}", self.0)
    }
}

/// An object id, allocated by [`Storage::new_oids`](crate::storage::Storage::new_oids).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub u64);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oid {}", self.0)
    }
}

/// What a stored version belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A small metadata record (root namespace, array metadata).
    Meta(Oid),
    /// Block `index` of the block file `file`.
    Block {
        /// The block file's object id.
        file: Oid,
        /// The block's position in the file.
        index: u64,
    },
}

impl Key {
    /// Length of [`Key::encode`]'s output.
    pub const ENCODED_LEN: usize = 17;

    /// A fixed-size encoding whose byte order is the key order: tag, oid, index (big-endian).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let (tag, oid, index) = match *self {
            Key::Meta(oid) => (0u8, oid.0, 0u64),
            Key::Block { file, index } => (1u8, file.0, index),
        };
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = tag;
        out[1..9].copy_from_slice(&oid.to_be_bytes());
        out[9..17].copy_from_slice(&index.to_be_bytes());
        out
    }

    /// Inverse of [`Key::encode`]; `None` for bytes no key encodes to.
    pub fn decode(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let oid = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let index = u64::from_be_bytes(bytes[9..17].try_into().ok()?);
        match bytes[0] {
            0 if index == 0 => Some(Key::Meta(Oid(oid))),
            1 => Some(Key::Block {
                file: Oid(oid),
                index,
            }),
            _ => None,
        }
    }

    /// True for [`Key::Block`].
    pub fn is_block(&self) -> bool {
        matches!(self, Key::Block { .. })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Meta(oid) => write!(f, "metadata record {}", oid.0),
            Key::Block { file, index } => write!(f, "block {index} of file {}", file.0),
        }
    }
}
