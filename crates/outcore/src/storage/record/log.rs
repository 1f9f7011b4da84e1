//! A commit-log entry as the embedded store keeps it: user, description and the keys the
//! commit changed (layout in docs/FORMAT.md, `log`).

use crate::storage::{Key, Oid, Tid, TxnInfo};
use crate::{Error, Result};

/// Serialises a commit-log entry: user, description, then the changed keys.
pub(crate) fn encode_log(user: &str, description: &str, keys: &[Key]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + user.len() + description.len() + 17 * keys.len());
    for s in [user, description] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        out.extend_from_slice(&k.encode());
    }
    out
}

/// Inverse of [`encode_log`].
pub(crate) fn decode_log(bytes: &[u8], tid: Tid) -> Result<TxnInfo> {
    let corrupt = || Error::Corrupt {
        key: Key::Meta(Oid(0)),
        tid,
        reason: "commit-log record is malformed".into(),
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    let mut strings = Vec::with_capacity(2);
    for _ in 0..2 {
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        strings.push(String::from_utf8_lossy(take(n)?).into_owned());
    }
    let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    // A damaged count must not make us allocate more than the record can hold.
    let mut keys = Vec::with_capacity(n.min(bytes.len() / Key::ENCODED_LEN));
    for _ in 0..n {
        keys.push(Key::decode(take(Key::ENCODED_LEN)?).ok_or_else(corrupt)?);
    }
    let description = strings.pop().unwrap_or_default();
    let user = strings.pop().unwrap_or_default();
    Ok(TxnInfo {
        tid,
        user,
        description,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_roundtrip() {
        let keys = vec![
            Key::Meta(Oid(1)),
            Key::Block {
                file: Oid(2),
                index: 5,
            },
        ];
        let info = decode_log(&encode_log("u", "d", &keys), Tid(9)).unwrap();
        assert_eq!((info.user.as_str(), info.description.as_str()), ("u", "d"));
        assert_eq!(info.keys, keys);
        assert!(decode_log(&[1, 0], Tid(9)).is_err());
    }
}
