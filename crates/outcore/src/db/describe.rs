//! Conflicts in the user's terms. [`Error::Conflict`] names a storage key ("block 1 of file
//! 2"), which users never see otherwise: this module names the array (or the root), the
//! elements the block holds, and the transaction that won.

use super::root::{self, ROOT_KEY};
use super::Connection;
use crate::array::ArrayMeta;
use crate::storage::{Key, Storage, Tid};
use crate::Error;

impl Connection {
    /// Describes `e`, an [`Error::Conflict`] of this connection's failed commit: the array
    /// (or the root) and element range behind the conflicting key, and the transaction that
    /// won (tid, user, description). `None` for other errors. Call it before the transaction
    /// ends: the names are those of the snapshot the transaction started from.
    pub fn describe_conflict(&self, e: &Error) -> Option<String> {
        let Error::Conflict {
            key,
            base,
            committed,
        } = e
        else {
            return None;
        };
        let what = self
            .describe_key(*key, *base)
            .unwrap_or_else(|| key.to_string());
        let winner = describe_transaction(&*self.shared.storage, *committed);
        Some(format!(
            "conflict: {what} was changed by {winner} after this transaction's snapshot \
             ({base}); abort and retry"
        ))
    }

    /// The array (or the root) behind `key` at snapshot `at`; `None` if it cannot be found
    /// (the error is then described by the key itself).
    fn describe_key(&self, key: Key, at: Tid) -> Option<String> {
        if key == ROOT_KEY {
            return Some("the root (the names of the arrays)".into());
        }
        let storage = &self.shared.storage;
        let root = storage.load(ROOT_KEY, at).ok()??;
        let names = root::decode(&root.data, root.tid).ok()?;
        match key {
            Key::Meta(oid) => names
                .iter()
                .find(|(_, o)| **o == oid)
                .map(|(name, _)| format!("array '{name}' (its shape or other metadata)")),
            Key::Block { file, index } => {
                let keys: Vec<Key> = names.values().map(|&o| Key::Meta(o)).collect();
                let metas = storage.load_many(&keys, at).ok()?;
                let (name, base_meta) = names.keys().zip(metas).find_map(|(name, v)| {
                    let meta = ArrayMeta::decode(&v?.data).ok()?;
                    (meta.file == file).then_some((name, meta))
                })?;
                // This transaction may have grown the array: its own shape covers the block.
                let meta = self
                    .array(name)
                    .and_then(|a| a.meta())
                    .ok()
                    .filter(|m| m.file == file)
                    .unwrap_or(base_meta);
                Some(format!("array '{name}' ({})", block_range(&meta, index)))
            }
        }
    }
}

/// The elements block `index` of an array holds: a range of elements for 0-d and 1-d
/// arrays, of indices along the major axis otherwise (a block may hold rows in part, so the
/// range is the rows it touches).
fn block_range(meta: &ArrayMeta, index: u64) -> String {
    let blksize = meta.blksize as u64;
    let start = index.saturating_mul(blksize);
    let nbytes = meta.nbytes();
    let end = if start < nbytes {
        start.saturating_add(blksize).min(nbytes)
    } else {
        start.saturating_add(blksize)
    };
    let row = meta.major_stride_bytes();
    if meta.shape.len() <= 1 || row == 0 {
        let item = meta.itemsize as u64;
        format!("elements {}..{}", start / item, end.div_ceil(item))
    } else {
        format!(
            "indices {}..{} of axis {}",
            start / row,
            end.div_ceil(row),
            meta.major_axis()
        )
    }
}

/// `transaction tid ... (user 'name', "description")`, as far as the log tells.
fn describe_transaction(storage: &dyn Storage, tid: Tid) -> String {
    let info = storage
        .log(Tid(tid.0.saturating_sub(1)), tid)
        .ok()
        .and_then(|log| log.into_iter().find(|t| t.tid == tid));
    let mut details = Vec::new();
    if let Some(info) = info {
        if !info.user.is_empty() {
            details.push(format!("user '{}'", info.user));
        }
        if !info.description.is_empty() {
            details.push(format!("{:?}", info.description));
        }
    }
    if details.is_empty() {
        format!("transaction {tid}")
    } else {
        format!("transaction {tid} ({})", details.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Order;
    use crate::storage::Oid;

    #[test]
    fn block_ranges() {
        let meta = |shape: &[u64], itemsize, order| {
            ArrayMeta::new("x", itemsize, shape, order, 4096, Oid(1)).unwrap()
        };
        let a = meta(&[2048], 8, Order::C);
        assert_eq!(block_range(&a, 1), "elements 512..1024");
        assert_eq!(block_range(&a, 9), "elements 4608..5120"); // appended beyond the shape
        let short = meta(&[600], 8, Order::C);
        assert_eq!(block_range(&short, 1), "elements 512..600");
        let c = meta(&[1000, 3], 4, Order::C);
        assert_eq!(block_range(&c, 1), "indices 341..683 of axis 0");
        let f = meta(&[3, 1000], 4, Order::F);
        assert_eq!(block_range(&f, 0), "indices 0..342 of axis 1");
    }
}
