//! Views of arrays as guards ([`View`], [`ViewMut`]), and the book of a connection that keeps
//! them apart from each other and from changes of the memory they show.
//!
//! Every guard registers a *hold* in its connection's [`ViewBook`]: shared for read-only
//! views, exclusive for mutable ones. Operations that change memory under views take a hold
//! themselves for as long as they run: transaction boundaries an exclusive hold on the whole
//! connection, resize and append an exclusive hold on their array, savepoints (which read
//! written pages) a shared one on the connection. A hold waits until the holds it conflicts
//! with are gone, except that a conflicting hold of the calling thread is an error at once
//! (waiting for itself would never end).
//!
//! The guards dereference to [`ArrayRef`], ndarray's unsized array reference type: every
//! ndarray method works through them, while nothing with the view's lifetime can be taken
//! out (`ArrayRef` cannot be cloned, copied or swapped, and the views it hands out borrow the
//! guard), so no view of the memory outlives its hold.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Dimension};

use crate::storage::Oid;
use crate::vm::Reservation;
use crate::{Error, Result};

/// What a hold covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One array of the connection.
    Array(Oid),
    /// Every array of the connection.
    Connection,
}

impl Scope {
    fn overlaps(self, other: Scope) -> bool {
        match (self, other) {
            (Scope::Array(a), Scope::Array(b)) => a == b,
            _ => true,
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: u64,
    thread: ThreadId,
    scope: Scope,
    exclusive: bool,
}

/// The holds of one connection: who sees or changes which memory now.
#[derive(Debug, Default)]
pub(crate) struct ViewBook {
    state: Mutex<BookState>,
    /// Signalled whenever a hold is released.
    released: Condvar,
}

#[derive(Debug, Default)]
struct BookState {
    next_id: u64,
    holds: Vec<Entry>,
}

impl ViewBook {
    fn lock(&self) -> MutexGuard<'_, BookState> {
        // A panic while the lock was held cannot leave the list half-changed (each change is
        // one push or one removal).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a hold on `scope`, waiting until no other thread holds a conflicting one (any
    /// overlapping hold if `exclusive`, else overlapping exclusive ones). If the calling
    /// thread holds a conflicting one, fails at once with an error saying that `what`
    /// ("commit", "take a mutable view of array oid 5", ...) needs it dropped.
    pub fn hold(
        &self,
        scope: Scope,
        exclusive: bool,
        what: impl FnOnce() -> String,
    ) -> Result<Hold<'_>> {
        let me = std::thread::current().id();
        let mut state = self.lock();
        loop {
            let conflicts = |e: &&Entry| e.scope.overlaps(scope) && (exclusive || e.exclusive);
            if let Some(mine) = state
                .holds
                .iter()
                .filter(conflicts)
                .find(|e| e.thread == me)
            {
                let held = match mine.scope {
                    Scope::Array(oid) => format!("a view of array {oid}"),
                    Scope::Connection => "a transaction boundary".to_string(),
                };
                return Err(Error::InvalidArgument(format!(
                    "cannot {} while {held} is alive in this thread: drop it first",
                    what()
                )));
            }
            if !state.holds.iter().any(|e| conflicts(&e)) {
                break;
            }
            state = self.released.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let id = state.next_id;
        state.next_id += 1;
        state.holds.push(Entry {
            id,
            thread: me,
            scope,
            exclusive,
        });
        Ok(Hold {
            book: self,
            id,
            _not_send: PhantomData,
        })
    }

    fn release(&self, id: u64) {
        let mut state = self.lock();
        state.holds.retain(|e| e.id != id);
        drop(state);
        self.released.notify_all();
    }
}

/// One registered hold; released when dropped. Not `Send`: the book knows it by the thread
/// that took it.
pub(crate) struct Hold<'b> {
    book: &'b ViewBook,
    id: u64,
    _not_send: PhantomData<MutexGuard<'static, ()>>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.book.release(self.id);
    }
}

impl fmt::Debug for Hold<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold").field("id", &self.id).finish()
    }
}

/// A read-only view of a [`BigArray`](super::BigArray)'s memory, from
/// [`view`](super::BigArray::view) or [`slice`](super::BigArray::slice).
///
/// Dereferences to [`ArrayRef`], so every ndarray method works on it (`v.sum()`, `v[3]`,
/// `v.iter()`, `v.to_owned()`, and `v.view()` for an `ArrayView` borrowed from the guard).
/// While it lives, no mutable view of the same array exists and no transaction boundary of
/// the connection changes the memory (they wait, or fail in this thread). Not `Send`: it
/// stays in the thread that made it (share `&View` or `v.view()` with scoped threads).
///
/// ```compile_fail,E0277
/// # use outcore::{array::Order, db::Database};
/// # let db = Database::open("mem:")?;
/// # let conn = db.connect()?;
/// let a = conn.create::<f64>("a", &[10], Order::C)?;
/// let v = a.view::<f64>()?;
/// std::thread::scope(|s| {
///     s.spawn(move || v.sum()); // error: the guard is not `Send`
/// });
/// # Ok::<(), outcore::Error>(())
/// ```
#[derive(Debug)]
pub struct View<'a, T, D: Dimension> {
    view: ArrayView<'a, T, D>,
    _hold: Hold<'a>,
    /// The window the view points into: kept reserved (its array may release idle windows)
    /// while the view lives.
    _memory: Arc<Reservation>,
}

impl<'a, T, D: Dimension> View<'a, T, D> {
    pub(crate) fn new(view: ArrayView<'a, T, D>, hold: Hold<'a>, memory: Arc<Reservation>) -> Self {
        View {
            view,
            _hold: hold,
            _memory: memory,
        }
    }
}

impl<T, D: Dimension> Deref for View<'_, T, D> {
    type Target = ArrayRef<T, D>;
    fn deref(&self) -> &ArrayRef<T, D> {
        &self.view
    }
}

/// A writable view of a [`BigArray`](super::BigArray)'s memory, from
/// [`view_mut`](super::BigArray::view_mut) or [`slice_mut`](super::BigArray::slice_mut).
///
/// Dereferences (mutably) to [`ArrayRef`] like [`View`]. While it lives it is the only view
/// of its array in the connection, and no transaction boundary changes the memory. The view
/// cannot be moved out of its guard (`ArrayRef` is unsized):
///
/// ```compile_fail,E0277
/// # use outcore::{array::Order, db::Database};
/// # let db = Database::open("mem:")?;
/// # let conn = db.connect()?;
/// let (mut a, mut b) = (
///     conn.create::<f64>("a", &[10], Order::C)?,
///     conn.create::<f64>("b", &[10], Order::C)?,
/// );
/// let (mut va, mut vb) = (a.view_mut::<f64>()?, b.view_mut::<f64>()?);
/// std::mem::swap(&mut *va, &mut *vb); // error: the size of `ArrayRef` is not known
/// # Ok::<(), outcore::Error>(())
/// ```
#[derive(Debug)]
pub struct ViewMut<'a, T, D: Dimension> {
    view: ArrayViewMut<'a, T, D>,
    _hold: Hold<'a>,
    /// The window the view points into: kept reserved (its array may release idle windows)
    /// while the view lives.
    _memory: Arc<Reservation>,
}

impl<'a, T, D: Dimension> ViewMut<'a, T, D> {
    pub(crate) fn new(
        view: ArrayViewMut<'a, T, D>,
        hold: Hold<'a>,
        memory: Arc<Reservation>,
    ) -> Self {
        ViewMut {
            view,
            _hold: hold,
            _memory: memory,
        }
    }
}

impl<T, D: Dimension> Deref for ViewMut<'_, T, D> {
    type Target = ArrayRef<T, D>;
    fn deref(&self) -> &ArrayRef<T, D> {
        &self.view
    }
}

impl<T, D: Dimension> DerefMut for ViewMut<'_, T, D> {
    fn deref_mut(&mut self) -> &mut ArrayRef<T, D> {
        &mut self.view
    }
}
