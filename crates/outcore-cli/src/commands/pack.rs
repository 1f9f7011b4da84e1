//! `outcore pack STORE (--keep DURATION | --before TID)`: drop old history.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use outcore::db::reader_leases;
use outcore::storage::{Compression, Tid};
use serde::Serialize;

use super::Ctx;
use crate::error::Result;
use crate::output::{human_bytes, Out};
use crate::store::{Access, Store};
use crate::time::{iso_utc, parse_duration, parse_tid, tid_before_now, tid_hex};

/// Arguments of `outcore pack`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("horizon").required(true).args(["keep", "before"])))]
pub struct PackArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// Keep history younger than this: 30s, 10m, 2h, 7d, 2w.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep: Option<Duration>,
    /// Drop history before this tid (hexadecimal, as `outcore log` prints it).
    #[arg(long, value_name = "TID", value_parser = parse_tid)]
    pub before: Option<Tid>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `pack --json` prints.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The horizon used (min of the request, head and the oldest live reader), hex.
    pub horizon: String,
    /// Its time, UTC.
    pub horizon_time: String,
    /// Versions removed.
    pub versions_removed: u64,
    /// Versions kept.
    pub versions_kept: u64,
    /// Bytes of block bodies before.
    pub body_bytes_before: u64,
    /// Bytes of block bodies after.
    pub body_bytes_after: u64,
    /// The horizon asked for (min of the request and head), hex.
    pub requested: String,
    /// True if reader leases held the horizon back from the one asked for.
    pub held_back: bool,
    /// The processes whose leases pinned the horizon (embedded stores; empty if the store
    /// does not tell).
    pub lease_pids: Vec<u32>,
}

/// The processes holding the oldest reader leases of the embedded store `url` at `horizon`
/// (none for in-memory and PostgreSQL stores, which do not tell).
fn holders(url: &str, horizon: Tid) -> Vec<u32> {
    if url == "mem:" || url.starts_with("postgresql://") || url.starts_with("postgres://") {
        return Vec::new();
    }
    let mut pids: Vec<u32> = reader_leases(Path::new(url))
        .into_iter()
        .filter(|l| l.tid.is_none_or(|t| t <= horizon))
        .map(|l| l.pid)
        .collect();
    pids.dedup();
    pids
}

/// Runs `outcore pack`.
pub fn run(args: &PackArgs, ctx: &Ctx) -> Result<()> {
    let upto = match (args.keep, args.before) {
        (Some(age), _) => tid_before_now(age),
        (None, Some(tid)) => tid,
        (None, None) => Tid::ZERO, // clap requires one of them
    };
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let spinner = ctx.progress.spinner("packing");
    let result = store.storage().pack(upto);
    spinner.finish_and_clear();
    let s = result?;
    let requested = upto.min(store.storage().head()?);
    let held_back = s.horizon < requested;
    let lease_pids = if held_back {
        holders(&store.url, s.horizon)
    } else {
        Vec::new()
    };
    let stats = Stats {
        horizon: tid_hex(s.horizon),
        horizon_time: iso_utc(s.horizon),
        versions_removed: s.versions_removed,
        versions_kept: s.versions_kept,
        body_bytes_before: s.body_bytes_before,
        body_bytes_after: s.body_bytes_after,
        requested: tid_hex(requested),
        held_back,
        lease_pids,
    };
    let mut out = Out::new();
    if args.json {
        out.json(&stats)?;
    } else {
        out.line(format!(
            "packed {} up to tid {} ({})",
            store.url, stats.horizon, stats.horizon_time
        ))?;
        if stats.held_back {
            let who = if stats.lease_pids.is_empty() {
                "readers".to_string()
            } else {
                let pids: Vec<String> = stats.lease_pids.iter().map(u32::to_string).collect();
                format!("readers in process {}", pids.join(", "))
            };
            out.line(format!(
                "held back: {who} still use the snapshot at tid {}; tid {} ({}) was asked \
                 for (history they can see stays until they move on or exit)",
                stats.horizon,
                stats.requested,
                iso_utc(requested)
            ))?;
        }
        out.line(format!(
            "versions: {} removed, {} kept",
            stats.versions_removed, stats.versions_kept
        ))?;
        out.line(format!(
            "block bytes: {} before, {} after ({} freed)",
            human_bytes(stats.body_bytes_before),
            human_bytes(stats.body_bytes_after),
            human_bytes(
                stats
                    .body_bytes_before
                    .saturating_sub(stats.body_bytes_after)
            )
        ))?;
    }
    out.flush()
}
