//! `outcore`: the command line tool of outcore (out-of-core transactional arrays).
//!
//! Subcommands list, inspect, import, export, print, verify and pack stores, and run the demo
//! and a quick benchmark; see `outcore --help` and the crate's README. Errors are one line
//! `outcore: error: ...` on stderr with the exit codes of [`error::exit`].

mod catalog;
mod cli;
mod commands;
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
    std::process::exit(run());
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
