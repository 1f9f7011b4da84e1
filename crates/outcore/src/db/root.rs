//! The root namespace: a persistent mapping from array names to array metadata oids.

use std::collections::BTreeMap;

use crate::storage::{Key, Oid, Tid};
use crate::{Error, Result};

/// The key of the root record (oid 0 is never handed out by `new_oids`).
pub(crate) const ROOT_KEY: Key = Key::Meta(Oid(0));

/// Encodes the mapping: one `name\toid` line per entry.
pub(crate) fn encode(names: &BTreeMap<String, Oid>) -> Vec<u8> {
    let mut out = String::from("outcore-root 1\n");
    for (name, oid) in names {
        out.push_str(&format!("{name}\t{}\n", oid.0));
    }
    out.into_bytes()
}

/// Parses [`encode`]'s output: the root record version `tid`. Bytes it cannot parse are
/// damaged data ([`Error::Corrupt`]), not a caller's mistake.
pub(crate) fn decode(bytes: &[u8], tid: Tid) -> Result<BTreeMap<String, Oid>> {
    let bad = || Error::Corrupt {
        key: ROOT_KEY,
        tid,
        reason: "unreadable root record (not `outcore-root 1` lines of name<TAB>oid)".into(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
    let mut lines = text.lines();
    if lines.next() != Some("outcore-root 1") {
        return Err(bad());
    }
    lines
        .map(|l| {
            let (name, oid) = l.rsplit_once('\t').ok_or_else(bad)?;
            Ok((name.to_string(), Oid(oid.parse().map_err(|_| bad())?)))
        })
        .collect()
}

/// Checks that `name` can be stored.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['\t', '\n', '\r']) {
        return Err(Error::InvalidArgument(format!(
            "array name {name:?} must be non-empty without tabs or newlines"
        )));
    }
    Ok(())
}
