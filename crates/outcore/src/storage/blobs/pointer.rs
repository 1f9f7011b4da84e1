//! The block record the index store keeps for a body that lives in the object store: which
//! object, how long, its checksum. The index treats it as an opaque (short) block body.

/// Ends every pointer: recognises one, and, being non-zero, keeps the index store's
/// trimming of trailing zero bytes of short blocks from touching the fields before it.
const MAGIC: &[u8; 15] = b"outcore-blob-1\n";

/// Length of [`Pointer::encode`]'s output: id, length, checksum, magic.
pub(crate) const ENCODED_LEN: usize = 16 + 8 + 8 + MAGIC.len();

/// Where a block version's body lies: object `id` under the block's key (see
/// `Objects::path`), `len` bytes whose xxh3-64 checksum is `checksum`. `id` 0 (with `len` 0)
/// is an empty body, which has no object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// The object's random 128-bit name (non-zero when there is an object).
    pub id: u128,
    /// The body's length in bytes.
    pub len: u64,
    /// The xxh3-64 checksum of the body.
    pub checksum: u64,
}

impl Pointer {
    /// The record stored in the index: id, length, checksum (little-endian), magic.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(MAGIC);
        out
    }

    /// Inverse of [`Pointer::encode`]; `None` for bytes that are no pointer.
    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        if bytes.len() != ENCODED_LEN || !bytes.ends_with(MAGIC) {
            return None;
        }
        let pointer = Pointer {
            id: u128::from_le_bytes(bytes[0..16].try_into().ok()?),
            len: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            checksum: u64::from_le_bytes(bytes[24..32].try_into().ok()?),
        };
        // An object-less pointer is only ever written for an empty body.
        (pointer.id != 0 || pointer.len == 0).then_some(pointer)
    }

    /// True if the body has an object (it is not empty).
    pub fn has_object(&self) -> bool {
        self.id != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_bytes() {
        let p = Pointer {
            id: 0x0102_0000_0000_0000_0000_0000_0000_0000,
            len: 4096,
            checksum: 0,
        };
        let bytes = p.encode();
        assert_eq!(bytes.len(), ENCODED_LEN);
        assert_ne!(*bytes.last().unwrap(), 0, "never trimmed as trailing zeros");
        assert_eq!(Pointer::decode(&bytes), Some(p));
        assert_eq!(Pointer::decode(&bytes[1..]), None);
        let mut other = bytes.clone();
        other[ENCODED_LEN - 2] ^= 1;
        assert_eq!(Pointer::decode(&other), None);
        let empty = Pointer {
            id: 0,
            len: 0,
            checksum: 0,
        };
        assert_eq!(Pointer::decode(&empty.encode()), Some(empty));
        let bodiless = Pointer { len: 5, ..empty };
        assert_eq!(Pointer::decode(&bodiless.encode()), None);
    }
}
