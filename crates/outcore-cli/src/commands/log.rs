//! `outcore log STORE`: transactions, newest first, with the arrays they changed.

use std::collections::BTreeSet;

use clap::Args;
use outcore::storage::{Compression, Key, Storage, TxnInfo};
use serde::Serialize;

use super::Ctx;
use crate::catalog::{Catalog, ROOT_KEY};
use crate::error::Result;
use crate::output::{Out, Table};
use crate::store::{Access, Store};
use crate::time::{iso_utc, tid_hex};

/// Arguments of `outcore log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// Show at most this many transactions (0: all).
    #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Print JSON (a list of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One transaction as `log --json` prints it.
#[derive(Debug, Serialize)]
pub struct LogEntry {
    /// The tid, 16 hexadecimal digits.
    pub tid: String,
    /// The commit time, UTC, ISO-8601.
    pub time: String,
    /// Who committed.
    pub user: String,
    /// Why.
    pub description: String,
    /// Names of the arrays whose data or metadata changed (`oid N` when no name is known).
    pub arrays: Vec<String>,
    /// True if the root namespace (the names) changed.
    pub root_changed: bool,
    /// How many keys (blocks and records) the transaction wrote.
    pub keys: usize,
}

/// Runs `outcore log`.
pub fn run(args: &LogArgs, _ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let storage = store.storage();
    let head = storage.head()?;
    let limit = if args.limit == 0 {
        usize::MAX
    } else {
        args.limit
    };
    let history = store.db.history(limit)?;
    let at_head = Catalog::load(storage, head)?;
    let entries: Vec<LogEntry> = history
        .iter()
        .map(|txn| describe(storage, &at_head, txn))
        .collect();
    let mut out = Out::new();
    if args.json {
        out.json(&entries)?;
        return out.flush();
    }
    let mut table = Table::new(&["TID", "TIME (UTC)", "USER", "DESCRIPTION", "CHANGED"]);
    for e in &entries {
        let mut changed = e.arrays.clone();
        if e.root_changed {
            changed.insert(0, "(names)".into());
        }
        table.row(vec![
            e.tid.clone(),
            e.time.clone(),
            e.user.clone(),
            e.description.replace(['\n', '\r', '\t'], " "),
            changed.join(", "),
        ]);
    }
    table.write(&mut out)?;
    out.flush()
}

/// The log entry of `txn`, naming the arrays it changed by the root at head, or else by the
/// root as of the transaction (arrays removed or replaced since).
fn describe(storage: &dyn Storage, at_head: &Catalog, txn: &TxnInfo) -> LogEntry {
    let name_in = |cat: &Catalog, key: &Key| match *key {
        Key::Meta(oid) => cat.by_meta(oid).map(str::to_string),
        Key::Block { file, .. } => cat.by_file(file).map(str::to_string),
    };
    let mut then: Option<Option<Catalog>> = None;
    let mut arrays = BTreeSet::new();
    let mut root_changed = false;
    for key in &txn.keys {
        if *key == ROOT_KEY {
            root_changed = true;
            continue;
        }
        let name = name_in(at_head, key).or_else(|| {
            then.get_or_insert_with(|| Catalog::load(storage, txn.tid).ok())
                .as_ref()
                .and_then(|cat| name_in(cat, key))
        });
        arrays.insert(name.unwrap_or_else(|| match *key {
            Key::Meta(oid) | Key::Block { file: oid, .. } => format!("oid {}", oid.0),
        }));
    }
    LogEntry {
        tid: tid_hex(txn.tid),
        time: iso_utc(txn.tid),
        user: txn.user.clone(),
        description: txn.description.clone(),
        arrays: arrays.into_iter().collect(),
        root_changed,
        keys: txn.keys.len(),
    }
}
