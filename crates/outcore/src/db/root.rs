//! The root namespace: a persistent mapping from array names to array metadata oids.

use std::collections::BTreeMap;

use crate::array::ArrayMeta;
use crate::storage::{Key, Oid, Storage, Tid};
use crate::{Error, Result};

/// A named array at one snapshot: a name of the root namespace and its array's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedArray {
    /// Its name in the root namespace.
    pub name: String,
    /// The oid of its metadata record (`Key::Meta(meta_oid)`).
    pub meta_oid: Oid,
    /// Its metadata.
    pub meta: ArrayMeta,
}

/// The named arrays of `storage` at snapshot `at`, sorted by name, read from the store
/// directly (no connection; for tools that inspect a store): the root record, then every
/// array's metadata record in one [`Storage::load_many`]. A damaged root or metadata record,
/// or a name without its record, is [`Error::Corrupt`].
pub fn named_arrays(storage: &dyn Storage, at: Tid) -> Result<Vec<NamedArray>> {
    let Some(record) = storage.load(ROOT_KEY, at)? else {
        return Ok(Vec::new());
    };
    let names = decode(&record.data, record.tid)?;
    let keys: Vec<Key> = names.values().map(|&o| Key::Meta(o)).collect();
    let metas = storage.load_many(&keys, at)?;
    names
        .into_iter()
        .zip(metas)
        .map(|((name, meta_oid), version)| {
            let version = version.ok_or_else(|| Error::Corrupt {
                key: Key::Meta(meta_oid),
                tid: at,
                reason: format!("array {name:?} is named in the root but has no metadata record"),
            })?;
            let meta = ArrayMeta::decode_stored(meta_oid, &version)?;
            Ok(NamedArray {
                name,
                meta_oid,
                meta,
            })
        })
        .collect()
}

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
