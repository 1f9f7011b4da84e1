//! Core errors as Python exceptions: the classes of `outcore.errors` (python/outcore/errors.py),
//! which registers them here when it is imported.
//!
//! Every [`outcore::Error`] variant maps to one [`Class`] in [`Class::of`]; the match is
//! exhaustive, so a new variant does not compile until it is given a class there. Messages are
//! [`outcore::Error::message`]: the class already says what kind of error it is.

use outcore::Error as E;
use pyo3::exceptions::{
    PyFileNotFoundError, PyIndexError, PyKeyError, PyMemoryError, PyOSError, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// The classes of `outcore.errors` by name, once the Python package registered them.
static CLASSES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// Registers the exception classes (a dict from class name to class).
#[pyfunction]
pub fn set_error_classes(py: Python<'_>, classes: Bound<'_, PyDict>) -> PyResult<()> {
    let _ = CLASSES.set(py, classes.unbind());
    Ok(())
}

/// The Python class of an error: one of `outcore.errors`, or a builtin for bad arguments
/// (which the Python layer also raises as builtins, like NumPy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `ConflictError(Error, TransientError)`.
    Conflict,
    /// `NotFoundError(Error, KeyError)`.
    NotFound,
    /// `StoreNotFoundError(StorageError, FileNotFoundError)`.
    StoreNotFound,
    /// `ReadOnlyError(Error, ValueError)`.
    ReadOnly,
    /// `ClosedError(Error, ValueError)`.
    Closed,
    /// `SnapshotTooOldError(ConflictError)`: retryable.
    SnapshotTooOld,
    /// `CommitOutcomeUnknownError(StorageError)`.
    CommitOutcomeUnknown,
    /// `DivergentWritesError(Error, ValueError)`.
    DivergentWrites,
    /// `AddressSpaceError(Error, MemoryError)`.
    AddressSpace,
    /// `StorageError(Error, OSError)`.
    Storage,
    /// `StoreFormatError(StorageError)`.
    StoreFormat,
    /// `CorruptionError(StorageError)`.
    Corruption,
    /// The builtin `ValueError` (bad shapes, sizes, urls, options).
    BadValue,
    /// The builtin `IndexError`.
    BadIndex,
}

impl Class {
    /// The class of `e`. New variants go here: pick the class whose builtin base a user would
    /// catch (add one to errors.py, this enum and the README's table if none fits).
    pub fn of(e: &E) -> Class {
        match e {
            // Retryable: redo the transaction (after an abort that catches up).
            E::Conflict { .. } | E::SnapshotStale(_) => Class::Conflict,
            E::NotFound(_) => Class::NotFound,
            E::ReadOnly(_) => Class::ReadOnly,
            E::Closed(_) => Class::Closed,
            E::SnapshotTooOld { .. } => Class::SnapshotTooOld,
            E::CommitOutcomeUnknown { .. } => Class::CommitOutcomeUnknown,
            E::DivergentWrites(_) => Class::DivergentWrites,
            E::AddressSpace(_) => Class::AddressSpace,
            E::Corrupt { .. } => Class::Corruption,
            E::Format { .. } => Class::StoreFormat,
            E::Index(_) | E::Io { .. } | E::Postgres(_) => Class::Storage,
            E::InvalidShape(_) | E::InvalidArgument(_) => Class::BadValue,
            E::IndexOutOfBounds(_) => Class::BadIndex,
            // `Error` is non-exhaustive: a kind added later is an `OSError` subclass until it
            // is given its own class here.
            _ => Class::Storage,
        }
    }

    /// The name in `outcore.errors`; `None` for builtins.
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Class::Conflict => "ConflictError",
            Class::NotFound => "NotFoundError",
            Class::StoreNotFound => "StoreNotFoundError",
            Class::ReadOnly => "ReadOnlyError",
            Class::Closed => "ClosedError",
            Class::SnapshotTooOld => "SnapshotTooOldError",
            Class::CommitOutcomeUnknown => "CommitOutcomeUnknownError",
            Class::DivergentWrites => "DivergentWritesError",
            Class::AddressSpace => "AddressSpaceError",
            Class::Storage => "StorageError",
            Class::StoreFormat => "StoreFormatError",
            Class::Corruption => "CorruptionError",
            Class::BadValue | Class::BadIndex => return None,
        })
    }

    /// The builtin base: raised for builtin classes, and if `outcore.errors` was never
    /// imported (only `outcore._native` was).
    fn builtin(self, msg: String) -> PyErr {
        match self {
            Class::Conflict | Class::SnapshotTooOld => PyRuntimeError::new_err(msg),
            Class::NotFound => PyKeyError::new_err(msg),
            Class::StoreNotFound => PyFileNotFoundError::new_err(msg),
            Class::ReadOnly | Class::Closed | Class::DivergentWrites | Class::BadValue => {
                PyValueError::new_err(msg)
            }
            Class::AddressSpace => PyMemoryError::new_err(msg),
            Class::Storage
            | Class::StoreFormat
            | Class::Corruption
            | Class::CommitOutcomeUnknown => PyOSError::new_err(msg),
            Class::BadIndex => PyIndexError::new_err(msg),
        }
    }

    /// The exception of this class with `msg`.
    pub fn err(self, msg: String) -> PyErr {
        let Some(name) = self.name() else {
            return self.builtin(msg);
        };
        Python::attach(|py| {
            let registered = CLASSES
                .get(py)
                .and_then(|classes| classes.bind(py).get_item(name).ok().flatten())
                .and_then(|cls| cls.cast_into::<PyType>().ok());
            match registered {
                Some(cls) => PyErr::from_type(cls, msg),
                None => self.builtin(msg),
            }
        })
    }
}

/// Converts a core error into its Python exception.
pub fn to_py(e: E) -> PyErr {
    Class::of(&e).err(e.message())
}

/// Converts an error of opening a store: a store that is not there (a read-only open creates
/// none) is a `StoreNotFoundError`, not a missing name.
pub fn open_error(e: E) -> PyErr {
    match e {
        E::NotFound(m) => {
            Class::StoreNotFound.err(format!("{m} (a read-only open does not create one)"))
        }
        e => to_py(e),
    }
}
