//! `outcore`: the command line tool of outcore (out-of-core transactional arrays).
//!
//! Subcommands list, inspect, import, export, print, verify and pack stores, and run the demo
//! and a quick benchmark; see `outcore --help` and the crate's README. Errors are one line
//! `outcore: error: ...` on stderr with the exit codes of [`error::exit`]. Warnings of the core
//! (`tracing` events) go to stderr too, filtered by `OUTCORE_LOG` (default `warn`).

mod catalog;
mod cli;
mod commands;
mod convert;
mod error;
mod memory;
mod output;
mod progress;
mod rawio;
mod rawmap;
mod slice;
mod store;
mod time;

use outcore_cli::{dtype, npy};

use std::io::Write;

use clap::Parser;

use crate::error::{exit, CliError};

fn main() {
    init_logging();
    std::process::exit(run());
}

/// Prints the core's `tracing` events to stderr: those `OUTCORE_LOG` selects (`warn`, `info`,
/// `outcore::vm=debug,warn`, ...), warnings and errors by default.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;

    let configured = std::env::var("OUTCORE_LOG")
        .ok()
        .map(|spec| spec.parse::<Targets>().map_err(|e| (spec, e)));
    let filter = match &configured {
        Some(Ok(filter)) => filter.clone(),
        _ => Targets::new().with_default(LevelFilter::WARN),
    };
    let printer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time();
    let subscriber = tracing_subscriber::registry().with(filter).with(printer);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        if let Some(Err((spec, e))) = configured {
            tracing::warn!("ignoring OUTCORE_LOG={spec:?}: {e}");
        }
    }
}

/// Parses the command line, runs the command, reports any error; returns the exit code.
fn run() -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    match commands::run(&cli) {
        Ok(()) | Err(CliError::BrokenPipe) => exit::OK,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "outcore: error: {e}");
            e.code()
        }
    }
}

/// Help and version go to stdout (exit 0); `outcore` alone prints the help (exit 2); any other
/// usage error is one line (exit 2).
fn clap_exit(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            exit::OK
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            exit::USAGE
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "outcore: error: {}",
                cli::clap_error_line(e, &std::env::args().skip(1).collect::<Vec<_>>())
            );
            exit::USAGE
        }
    }
}
