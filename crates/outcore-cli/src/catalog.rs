//! The arrays of a store at one snapshot: names, metadata record oids and metadata.
//!
//! The core's public API names arrays ([`Connection::names`](outcore::db::Connection::names))
//! but does not tell their metadata record oids, which `info` (last change) needs. So the
//! catalog reads the root record (`Key::Meta(Oid(0))`) itself. Its format is the core's
//! (`crates/outcore/src/db/root.rs`): a line `outcore-root 1`, then one `name<TAB>oid` line
//! per array.

use outcore::array::ArrayMeta;
use outcore::storage::{Key, Oid, Storage, Tid};

use crate::error::{CliError, Result};

/// The key of the root record.
pub const ROOT_KEY: Key = Key::Meta(Oid(0));

/// One named array.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its name in the root namespace.
    pub name: String,
    /// The oid of its metadata record.
    pub meta_oid: Oid,
    /// Its metadata.
    pub meta: ArrayMeta,
}

/// The named arrays of a store at one snapshot, sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The arrays.
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// Reads the root and every array's metadata at `at`.
    pub fn load(storage: &dyn Storage, at: Tid) -> Result<Catalog> {
        let mut entries = Vec::new();
        if let Some(root) = storage.load(ROOT_KEY, at)? {
            for (name, meta_oid) in parse_root(&root.data)? {
                let record = storage.load(Key::Meta(meta_oid), at)?.ok_or_else(|| {
                    CliError::runtime(format!(
                        "array {name:?} has no metadata record at tid {at:?}"
                    ))
                })?;
                entries.push(Entry {
                    name,
                    meta_oid,
                    meta: ArrayMeta::decode(&record.data)?,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog { entries })
    }

    /// The array called `name`.
    pub fn get(&self, name: &str, url: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CliError::runtime(format!("no array named {name:?} in {url}")))
    }
}

/// Parses the root record.
fn parse_root(bytes: &[u8]) -> Result<Vec<(String, Oid)>> {
    let bad = || CliError::runtime("unreadable root record (unknown format)");
    let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
    let mut lines = text.lines();
    if lines.next() != Some("outcore-root 1") {
        return Err(bad());
    }
    lines
        .map(|line| {
            let (name, oid) = line.rsplit_once('\t').ok_or_else(bad)?;
            Ok((name.to_string(), Oid(oid.parse().map_err(|_| bad())?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outcore::array::Order;
    use outcore::db::Database;

    #[test]
    fn matches_the_database() {
        let db = Database::open("mem:").unwrap();
        let conn = db.connect().unwrap();
        conn.create::<f64>("b", &[10], Order::C).unwrap();
        conn.create::<i32>("a x", &[2, 3], Order::F).unwrap();
        let tid = conn.commit().unwrap();
        let cat = Catalog::load(&**db.storage(), tid).unwrap();
        let names: Vec<&str> = cat.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, conn.names().unwrap());
        let b = cat.get("b", "mem:").unwrap();
        assert_eq!(b.meta, conn.array("b").unwrap().meta().unwrap());
        assert!(cat.get("c", "mem:").is_err());
        assert!(Catalog::load(&**db.storage(), Tid(0))
            .unwrap()
            .entries
            .is_empty());
        assert!(parse_root(b"garbage").is_err());
    }
}
