//! One module per subcommand: its clap arguments and its `run`.

pub mod bench;
pub mod cat;
pub mod demo;
pub mod export;
pub mod import;
pub mod info;
pub mod log;
pub mod ls;
pub mod pack;
pub mod verify;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::progress::Progress;

/// What every command gets besides its arguments.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Makes progress bars (hidden with `--quiet` or when stderr is not a terminal).
    pub progress: Progress,
}

/// Runs the command `cli` names.
pub fn run(cli: &Cli) -> Result<()> {
    let ctx = Ctx {
        progress: Progress::new(cli.quiet),
    };
    match &cli.command {
        Command::Ls(a) => ls::run(a, &ctx),
        Command::Info(a) => info::run(a, &ctx),
        Command::Log(a) => log::run(a, &ctx),
        Command::Import(a) => import::run(a, &ctx),
        Command::Export(a) => export::run(a, &ctx),
        Command::Cat(a) => cat::run(a, &ctx),
        Command::Verify(a) => verify::run(a, &ctx),
        Command::Pack(a) => pack::run(a, &ctx),
        Command::Demo(a) => demo::run(a, &ctx),
        Command::Bench(a) => bench::run(a, &ctx),
    }
}
