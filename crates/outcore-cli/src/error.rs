//! The command's error type and its exit codes.
//!
//! Every failure ends as one line `outcore: error: ...` on stderr and one of the [`exit`]
//! codes; nothing panics on bad input. Usage errors (exit 2) are found by clap, including
//! the value parsers of slices, durations, tids and sizes, before a store is opened — except
//! options that do not fit the format of an import's or export's file, found by its name.

use std::fmt;

/// The exit codes of `outcore` (documented in the crate README and `outcore --help`).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A runtime or storage error (missing store or array, I/O error, bad file...).
    pub const RUNTIME: i32 = 1;
    /// A usage error: bad command line (clap's default code for usage errors).
    pub const USAGE: i32 = 2;
    /// `verify` found damaged data.
    pub const DAMAGE: i32 = 3;
    /// A write conflict: another writer committed to the same data first; retry.
    pub const CONFLICT: i32 = 4;
}

/// A failure of a command, classified by exit code.
#[derive(Debug)]
pub enum CliError {
    /// Anything going wrong at run time.
    Runtime(String),
    /// A bad command line found after parsing (options that do not fit the file's format).
    Usage(String),
    /// Damaged data found by `verify`.
    Damage(String),
    /// Another transaction won a write conflict.
    Conflict(String),
    /// Standard output was closed by its reader (for example `| head`): stop quietly.
    BrokenPipe,
}

impl CliError {
    /// A runtime error with `message`.
    pub fn runtime(message: impl Into<String>) -> Self {
        CliError::Runtime(message.into())
    }

    /// The exit code for this error.
    pub fn code(&self) -> i32 {
        match self {
            CliError::Runtime(_) => exit::RUNTIME,
            CliError::Usage(_) => exit::USAGE,
            CliError::Damage(_) => exit::DAMAGE,
            CliError::Conflict(_) => exit::CONFLICT,
            CliError::BrokenPipe => exit::OK,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CliError::Runtime(m) | CliError::Usage(m) | CliError::Damage(m) => m.as_str(),
            CliError::Conflict(m) => m.as_str(),
            CliError::BrokenPipe => "broken pipe",
        };
        // Always one line, whatever the message holds.
        f.write_str(&text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl From<outcore::Error> for CliError {
    fn from(e: outcore::Error) -> Self {
        match e {
            outcore::Error::Conflict { .. } => CliError::Conflict(format!(
                "write conflict: {e} (another writer changed the same data; run the command again)"
            )),
            other => CliError::Runtime(other.to_string()),
        }
    }
}

/// Adds "what we were doing" to I/O errors.
pub trait IoContext<T> {
    /// Converts an I/O error into a [`CliError`] prefixed with `what`; a broken pipe becomes
    /// [`CliError::BrokenPipe`].
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::BrokenPipe
            } else {
                CliError::Runtime(format!("{}: {e}", what()))
            }
        })
    }
}

/// Shorthand for results of commands.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_codes() {
        let e = CliError::runtime("a\nb   c");
        assert_eq!(e.to_string(), "a b c");
        assert_eq!(e.code(), exit::RUNTIME);
        let conflict = outcore::Error::Conflict {
            key: outcore::storage::Key::Meta(outcore::storage::Oid(1)),
            base: outcore::storage::Tid(1),
            committed: outcore::storage::Tid(2),
        };
        assert_eq!(CliError::from(conflict).code(), exit::CONFLICT);
        let pipe: std::io::Result<()> = Err(std::io::ErrorKind::BrokenPipe.into());
        assert!(matches!(
            pipe.context(|| "x".into()),
            Err(CliError::BrokenPipe)
        ));
    }
}
