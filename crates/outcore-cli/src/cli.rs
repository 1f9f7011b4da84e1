//! The command line: clap definitions of `outcore` and its subcommands, and how clap's usage
//! errors become one line.

use clap::{Parser, Subcommand};

use crate::commands::{bench, cat, demo, export, import, info, log, ls, pack, verify};

const AFTER_HELP: &str = "\
STORE is a store directory, a postgresql://user@host/db url, or mem: for a fresh in-memory
store.

Exit codes: 0 ok, 1 runtime or storage error, 2 usage error, 3 damage found by verify,
4 write conflict (another writer changed the same data first; run the command again).";

/// outcore: out-of-core transactional arrays, from the command line.
#[derive(Debug, Parser)]
#[command(name = "outcore", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Hide progress bars (they are also hidden when stderr is not a terminal).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the arrays of a store: name, shape, dtype, order, size, bytes stored.
    Ls(ls::LsArgs),
    /// Show one array's metadata, blocks, holes, bytes stored and last change.
    Info(info::InfoArgs),
    /// List transactions, newest first: tid, time, user, description, changed arrays.
    Log(log::LogArgs),
    /// Import a NumPy .npy file (one commit per 64 MiB part), a .zarr array or an HDF5 dataset
    /// (one commit; through Python) as an array, streamed.
    Import(import::ImportArgs),
    /// Export an array to a NumPy .npy file, a .zarr array or an HDF5 dataset (streamed, from
    /// one snapshot).
    Export(export::ExportArgs),
    /// Print (part of) a numeric array, selected with NumPy slice syntax: NAME[2:10, ::2].
    Cat(cat::CatArgs),
    /// Check every stored version against its checksum; exit code 3 if damage is found.
    Verify(verify::VerifyArgs),
    /// Remove old history and rewrite the live data contiguously.
    Pack(pack::PackArgs),
    /// The seed demo: generate a big sine signal, or read it back, printing memory use.
    Demo(demo::DemoArgs),
    /// A quick self-benchmark: array scans through outcore vs a raw mmap, first-write faults.
    Bench(bench::BenchArgs),
}

/// The one-line message for a clap error: its first paragraph, and where to get help.
/// `args` is the command line (without the program name), to name the subcommand's help.
pub fn clap_error_line(e: &clap::Error, args: &[String]) -> String {
    use clap::CommandFactory;
    let text = e.to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = first.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let command = Cli::command();
    let sub = args.iter().find(|a| {
        command
            .get_subcommands()
            .any(|c| c.get_name() == a.as_str())
    });
    match sub {
        Some(sub) => format!("{message} (see 'outcore {sub} --help')"),
        None => format!("{message} (see 'outcore --help')"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_are_one_line() {
        let e = Cli::try_parse_from(["outcore", "frobnicate"]).unwrap_err();
        let line = clap_error_line(&e, &["frobnicate".into()]);
        assert!(
            line.starts_with("unrecognized subcommand 'frobnicate'"),
            "{line}"
        );
        assert!(line.ends_with("(see 'outcore --help')"), "{line}");
        let e = Cli::try_parse_from(["outcore", "cat", "x"]).unwrap_err();
        let line = clap_error_line(&e, &["cat".into(), "x".into()]);
        assert!(line.contains("<TARGET>"), "{line}");
        assert!(line.ends_with("(see 'outcore cat --help')"), "{line}");
        assert!(!line.contains('\n'));
    }
}
