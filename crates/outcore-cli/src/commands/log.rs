//! `outcore log STORE`: transactions, newest first, with the arrays they changed.

use clap::Args;
use outcore::db::ROOT_CHANGED;
use outcore::storage::{Compression, TxnInfo};
use serde::Serialize;

use super::Ctx;
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
    let names = store.db.changed_arrays(&history, head)?;
    let entries: Vec<LogEntry> = history
        .iter()
        .zip(names)
        .map(|(t, n)| describe(t, n))
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

/// The log entry of `txn`, whose changed arrays are `names` ([`outcore::db::Database::changed_arrays`]:
/// by the root at head, else as of the transaction, else just before it).
fn describe(txn: &TxnInfo, names: Vec<String>) -> LogEntry {
    let root_changed = names.iter().any(|n| n == ROOT_CHANGED);
    LogEntry {
        tid: tid_hex(txn.tid),
        time: iso_utc(txn.tid),
        user: txn.user.clone(),
        description: txn.description.clone(),
        arrays: names.into_iter().filter(|n| n != ROOT_CHANGED).collect(),
        root_changed,
        keys: txn.keys.len(),
    }
}
