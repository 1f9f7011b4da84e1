//! How LMDB's errors become [`Error::Index`], and the index errors the embedded store explains:
//! a full disk or index ("no space left on device", [`explain_full`]) and the errors after
//! which a read-only open may still work ([`cannot_write`]).

use std::path::Path;

use heed::MdbError;

use super::files::nearly_full;
use crate::error::IndexError;
use crate::Error;

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Self {
        let map_full = matches!(e, heed::Error::Mdb(MdbError::MapFull));
        let os_error = match &e {
            heed::Error::Io(io) => Some(io.kind()),
            _ => None,
        };
        Error::Index(IndexError::new(map_full, os_error, Box::new(e)))
    }
}

/// LMDB's own error behind `e`, if `e` is an index error.
fn lmdb(e: &Error) -> Option<&heed::Error> {
    match e {
        Error::Index(ie) => ie.original::<heed::Error>(),
        _ => None,
    }
}

/// True for errors that say this process cannot write the store's files (read-only media,
/// permissions, a full disk), after which a read-only open may still work.
pub(super) fn cannot_write(e: &Error) -> bool {
    let io = match (e, lmdb(e)) {
        (_, Some(heed::Error::Io(io))) | (Error::Io { source: io, .. }, _) => io,
        _ => return false,
    };
    use std::io::ErrorKind as K;
    matches!(
        io.kind(),
        K::ReadOnlyFilesystem | K::PermissionDenied | K::StorageFull | K::QuotaExceeded
    )
}

/// Says "no space left on device" for the errors of the index at `index` that a full disk
/// causes: ENOSPC or EDQUOT, and EIO — LMDB's report of a write cut short — when the disk is
/// indeed full; and "the index is full" when LMDB's map size is reached. Other errors pass
/// unchanged.
pub(super) fn explain_full(e: Error, index: &Path) -> Error {
    let no_space = |what: &str| Error::Io {
        context: format!("{what}: the disk holding {} is full", index.display()),
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    };
    match lmdb(&e) {
        Some(heed::Error::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || (io.raw_os_error() == Some(libc::EIO) && nearly_full(index)) =>
        {
            no_space("writing the index")
        }
        Some(heed::Error::Mdb(MdbError::Panic)) if nearly_full(index) => no_space(
            "an earlier index write failed (close every handle of the store and open it again)",
        ),
        Some(heed::Error::Mdb(MdbError::MapFull)) => Error::Io {
            context: format!(
                "the index {} is full: its map size is reached (open it with a larger \
                 LocalOptions::map_size or OUTCORE_LMDB_MAP_BYTES)",
                index.display()
            ),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left in the index",
            ),
        },
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_errors_keep_what_callers_act_on() {
        let full = Error::from(heed::Error::Mdb(MdbError::MapFull));
        let Error::Index(ie) = &full else {
            panic!("{full:?}")
        };
        assert!(ie.is_map_full() && ie.os_error_kind().is_none());
        // The original stays reachable as the source, and the text is LMDB's.
        let source = std::error::Error::source(ie).expect("a source");
        assert!(source.downcast_ref::<heed::Error>().is_some());
        assert_eq!(full.to_string(), format!("index error: {source}"));

        let disk = Error::from(heed::Error::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
        let Error::Index(ie) = &disk else {
            panic!("{disk:?}")
        };
        assert!(!ie.is_map_full());
        assert_eq!(ie.os_error_kind(), Some(std::io::ErrorKind::StorageFull));
        assert!(cannot_write(&disk));

        // Explained: both name the index and say StorageFull.
        let index = Path::new("/nowhere/index");
        for e in [full, disk] {
            match explain_full(e, index) {
                Error::Io { context, source } => {
                    assert!(context.contains("/nowhere/index"), "{context}");
                    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
