//! `outcore verify STORE`: read every stored version and check its checksum.

use clap::Args;
use outcore::storage::Compression;
use serde::Serialize;

use super::Ctx;
use crate::error::{CliError, Result};
use crate::output::{human_bytes, Out};
use crate::store::{Access, Store};

/// Arguments of `outcore verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// Print JSON instead of text (the exit code still tells about damage).
    #[arg(long)]
    pub json: bool,
}

/// What `verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Versions read.
    pub versions_checked: u64,
    /// Payload bytes read.
    pub bytes_checked: u64,
    /// One message per damaged version.
    pub problems: Vec<String>,
    /// True if nothing is damaged.
    pub ok: bool,
}

/// Runs `outcore verify`; damage is the error [`CliError::Damage`] (exit code 3).
pub fn run(args: &VerifyArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let spinner = ctx.progress.spinner("verifying");
    let result = store.storage().verify();
    spinner.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e @ outcore::Error::Corrupt { .. }) => {
            return Err(CliError::Damage(format!("{}: {e}", store.url)))
        }
        Err(e) => return Err(e.into()),
    };
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let mut out = Out::new();
    if args.json {
        out.json(&Report {
            versions_checked: report.versions_checked,
            bytes_checked: report.bytes_checked,
            problems: problems.clone(),
            ok: problems.is_empty(),
        })?;
    } else {
        out.line(format!(
            "checked {} versions, {} ({} bytes)",
            report.versions_checked,
            human_bytes(report.bytes_checked),
            report.bytes_checked
        ))?;
        for p in &problems {
            out.line(format!("damaged: {}", p.replace('\n', " ")))?;
        }
        if problems.is_empty() {
            out.line(format!("{}: no damage found", store.url))?;
        }
    }
    out.flush()?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Damage(format!(
            "{} damaged version{} in {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            store.url
        )))
    }
}
