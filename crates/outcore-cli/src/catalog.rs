//! The arrays of a store at one snapshot: names, metadata record oids (which `info` needs for
//! the last change) and metadata, as the core reads them
//! ([`outcore::db::named_arrays`]).

use outcore::storage::{Storage, Tid};

use crate::error::{CliError, Result};

/// One named array.
pub type Entry = outcore::db::NamedArray;

/// The named arrays of a store at one snapshot, sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The arrays.
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// Reads the root and every array's metadata at `at`.
    pub fn load(storage: &dyn Storage, at: Tid) -> Result<Catalog> {
        let entries = outcore::db::named_arrays(storage, at)?;
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
    }
}
