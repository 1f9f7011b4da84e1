//! Opening stores, and what the block index says about an array (blocks, holes, bytes stored,
//! last change).

use indicatif::ProgressBar;
use outcore::db::{Connection, Database, DbOptions};
use outcore::storage::{Compression, Key, Storage, Tid, TxnMeta};

use crate::catalog::Entry;
use crate::error::{CliError, Result};

/// How a command uses its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The store must exist; connections are read-only (`ls`, `cat`, `verify`, `pack`...).
    Existing,
    /// Created if missing; connections may write (`import`, `demo gen`).
    Create,
}

/// An open store.
pub struct Store {
    /// The database.
    pub db: Database,
    /// The url it was opened with, for messages.
    pub url: String,
    /// The store's block compression (`None`: the store does not tell).
    pub compression: Option<Compression>,
}

impl Store {
    /// Opens `url` (a directory, `mem:` or a `postgresql://` url); `compression` applies when
    /// a store is created.
    pub fn open(url: &str, access: Access, compression: Compression) -> Result<Store> {
        Self::open_with(
            url,
            DbOptions {
                readonly: access == Access::Existing,
                compression,
                ..DbOptions::default()
            },
        )
    }

    /// Opens `url` for writing, created if missing with `compression` and, if given, its
    /// block bodies in the object store `blobs` (`s3://bucket/prefix`).
    pub fn create(url: &str, compression: Compression, blobs: Option<String>) -> Result<Store> {
        Self::open_with(
            url,
            DbOptions {
                compression,
                blobs,
                ..DbOptions::default()
            },
        )
    }

    fn open_with(url: &str, options: DbOptions) -> Result<Store> {
        let db = Database::open_with(url, options)?;
        let compression = db.compression();
        Ok(Store {
            db,
            url: url.to_string(),
            compression,
        })
    }

    /// The store's compression as text (`unknown` if the store does not tell).
    pub fn compression_name(&self) -> String {
        self.compression
            .map_or_else(|| "unknown".into(), |c| c.to_string())
    }

    /// The underlying block store.
    pub fn storage(&self) -> &dyn Storage {
        &**self.db.storage()
    }
}

/// The user name recorded in the commit log: `$USER`, else `$LOGNAME`, else `outcore`.
pub fn user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "outcore".into())
}

/// Commits `conn`'s transaction; a conflict is told in the user's terms (the array and its
/// elements, the transaction that won), as Python tells it.
pub fn commit(conn: &Connection, meta: TxnMeta) -> Result<Tid> {
    conn.commit_with(meta)
        .map_err(|e| match conn.describe_conflict(&e) {
            Some(text) => CliError::Conflict(format!(
                "write {} (run the command again)",
                text.strip_suffix("; abort and retry").unwrap_or(&text)
            )),
            None => e.into(),
        })
}

/// What the block index holds for one array at one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Blocks covering the array's bytes.
    pub blocks: u64,
    /// Blocks with no stored version (they read as zeros and take no space).
    pub holes: u64,
    /// Bytes stored for the blocks (compressed where compression helped).
    pub stored_bytes: u64,
    /// The newest tid among the array's blocks and its metadata record.
    pub last_change: Option<Tid>,
}

/// Looks up every block of `entry` at `at`. Blocks that cannot be mapped (compressed and
/// PostgreSQL stores) are read to learn their stored size. `bar` advances once per block.
pub fn block_stats(db: &Database, entry: &Entry, at: Tid, bar: &ProgressBar) -> Result<BlockStats> {
    let storage = &**db.storage();
    let nblocks = entry.meta.nblocks();
    let mut stats = BlockStats {
        blocks: nblocks,
        last_change: storage.locate(Key::Meta(entry.meta_oid), at)?.tid(),
        ..BlockStats::default()
    };
    for index in 0..nblocks {
        let key = Key::Block {
            file: entry.meta.file,
            index,
        };
        stats.last_change = stats.last_change.max(storage.locate(key, at)?.tid());
        match db.stored_len(key, at)? {
            None => stats.holes += 1,
            Some(len) => stats.stored_bytes += len,
        }
        if index % 1024 == 1023 {
            bar.inc(1024);
        }
    }
    bar.inc(nblocks % 1024);
    Ok(stats)
}

/// `stored / logical`, `None` for an empty array.
pub fn ratio(stored: u64, logical: u64) -> Option<f64> {
    (logical > 0).then(|| stored as f64 / logical as f64)
}

/// A ratio as text: three decimals, or three significant digits below 0.01 (data that
/// compresses a thousandfold does not show as 0.000).
pub fn ratio_text(r: f64) -> String {
    if r == 0.0 || r >= 0.01 {
        format!("{r:.3}")
    } else {
        format!("{r:.2e}")
    }
}

/// Shows a block-scan bar only when there are enough blocks for it to matter.
pub fn scan_bar(progress: &crate::progress::Progress, blocks: u64) -> ProgressBar {
    if blocks >= 20_000 {
        progress.count(blocks, "reading block index")
    } else {
        ProgressBar::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use outcore::array::Order;

    #[test]
    fn holes_and_sizes() {
        let store = Store::open("mem:", Access::Create, Compression::None).unwrap();
        let conn = store.db.connect().unwrap();
        let mut a = conn.create::<f64>("a", &[3 << 18], Order::C).unwrap(); // 3 blocks of 2 MiB
        a.slice_mut::<f64, _>(ndarray::s![..1]).unwrap().fill(1.0);
        let tid = conn.commit().unwrap();
        let cat = Catalog::load(store.storage(), tid).unwrap();
        let entry = cat.get("a", "mem:").unwrap();
        let s = block_stats(&store.db, entry, tid, &ProgressBar::hidden()).unwrap();
        assert_eq!(s.blocks, 3);
        assert_eq!(s.holes, 2);
        assert_eq!(
            s.stored_bytes, 4096,
            "stored short: up to its last non-zero page"
        );
        assert_eq!(s.last_change, Some(tid));
    }

    #[test]
    fn ratios_as_text() {
        assert_eq!(ratio_text(1.0), "1.000");
        assert_eq!(ratio_text(0.0123), "0.012");
        assert_eq!(ratio_text(0.000146), "1.46e-4");
        assert_eq!(ratio_text(0.0), "0.000");
    }

    #[test]
    fn conflicts_name_the_array() {
        let store = Store::open("mem:", Access::Create, Compression::None).unwrap();
        let setup = store.db.connect().unwrap();
        setup.create::<f64>("a", &[1024], Order::C).unwrap();
        setup.commit().unwrap();
        let (first, second) = (store.db.connect().unwrap(), store.db.connect().unwrap());
        for conn in [&first, &second] {
            let mut a = conn.array("a").unwrap();
            a.slice_mut::<f64, _>(ndarray::s![..1]).unwrap().fill(1.0);
        }
        commit(&first, TxnMeta::new("ann", "first")).unwrap();
        let err = commit(&second, TxnMeta::new("bob", "second")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CliError::Conflict(_)), "{text}");
        assert!(
            text.starts_with("write conflict: array 'a' (elements 0..")
                && text.contains("user 'ann', \"first\"")
                && text.ends_with("(run the command again)"),
            "{text}"
        );
    }
}
