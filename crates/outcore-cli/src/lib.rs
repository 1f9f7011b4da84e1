//! The parts of the `outcore` command line tool that read untrusted input, as a library so the
//! fuzz targets (`fuzz/`) can reach them: the `.npy` header parser and what it builds on.
//! Everything else lives in the binary (`src/main.rs`).

pub mod dtype;
pub mod npy;
pub mod pyliteral;
