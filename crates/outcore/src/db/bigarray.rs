//! [`BigArray`]: a persistent N-d array whose views point straight into managed memory.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ndarray::{ArrayView, ArrayViewD, ArrayViewMut, IxDyn, ShapeBuilder, SliceArg};

use super::handle::ArrayHandle;
use super::shared::ConnShared;
use super::views::{Hold, Scope, View, ViewMut};
use crate::array::slicing::touched_ranges;
use crate::array::{ArrayMeta, Element, Order};
use crate::storage::StagedRef;
use crate::vm::{BlockMemory, Reservation};
use crate::{Error, Result};

/// A persistent array in a connection. Cheap to clone (clones share the array).
///
/// Views ([`view`](BigArray::view), [`slice`](BigArray::slice) and their `_mut` forms) are
/// guards ([`View`], [`ViewMut`]) that dereference to ndarray's [`ArrayRef`](ndarray::ArrayRef)
/// over the array's memory: no copy, blocks load when touched, writes are plain stores that
/// the next [`Connection::commit`](super::Connection::commit) saves.
///
/// # Soundness
///
/// Safe code never sees memory change under a live view, nor two views of which one is
/// mutable over the same bytes:
///
/// * Borrowing: a view borrows its handle (`view_mut`/`slice_mut` mutably), so one handle
///   cannot give a mutable view next to any other view, and no view outlives its handle.
/// * The connection's view book, for clones of a handle and for the connection: each guard
///   holds its array (shared, or exclusive for mutable views) until dropped. A mutable view
///   waits while any other view of the array exists in another thread; a view waits while a
///   mutable one does. Commit, abort, begin, discard, rollback and close (which remap or drop
///   memory) wait until no view of the connection's arrays is alive, savepoints (which read
///   written pages) until no mutable one is, resize and append until their array has none.
///   When the conflicting view belongs to the calling thread, waiting would never end: these
///   calls return [`Error::InvalidArgument`] ("... is alive in this thread: drop it first").
/// * The guards let nothing with the view's lifetime out: `ArrayRef` cannot be cloned,
///   copied or swapped, and views taken from it (`v.view()`) borrow the guard. Guards are not
///   `Send` (the book knows holds by thread); share `&View`, or `v.view()`, with scoped
///   threads instead.
///
/// Waiting threads can deadlock like threads taking two locks in opposite orders (a thread
/// holding a view of `A` and waiting for `B` while another holds `B` and waits for `A`; a
/// thread joining a scoped thread that commits while the first holds a view). A guard leaked
/// with `std::mem::forget` holds its array forever. [`raw_view`](BigArray::raw_view) is
/// outside all this: raw pointers for other languages (the Python layer), unguarded, whose
/// users keep these rules themselves.
///
/// Two mutable views through one handle do not compile:
///
/// ```compile_fail,E0499
/// # use outcore::{array::Order, db::Database};
/// let db = Database::open("mem:")?;
/// let conn = db.connect()?;
/// let mut a = conn.create::<f64>("a", &[10], Order::C)?;
/// let mut first = a.view_mut::<f64>()?;
/// let second = a.view_mut::<f64>()?; // error: `a` is already borrowed mutably
/// first[0] = second[0];
/// # Ok::<(), outcore::Error>(())
/// ```
///
/// nor does a view that outlives its handle:
///
/// ```compile_fail,E0597
/// # use outcore::{array::Order, db::Database};
/// let db = Database::open("mem:")?;
/// let conn = db.connect()?;
/// let view = {
///     let a = conn.create::<f64>("a", &[10], Order::C)?;
///     a.view::<f64>()?  // error: `a` does not live long enough
/// };
/// assert_eq!(view.sum(), 0.0);
/// # Ok::<(), outcore::Error>(())
/// ```
///
/// Through clones the book decides at run time:
///
/// ```
/// # use outcore::{array::Order, db::Database};
/// let db = Database::open("mem:")?;
/// let conn = db.connect()?;
/// let mut a = conn.create::<f64>("a", &[10], Order::C)?;
/// let mut b = a.clone();
/// let mut first = a.view_mut::<f64>()?;
/// assert!(b.view_mut::<f64>().is_err()); // this thread holds `first`
/// assert!(conn.commit().is_err());        // likewise
/// first[0] = 1.0;
/// drop(first);
/// assert_eq!(b.view_mut::<f64>()?[0], 1.0);
/// conn.commit()?;
/// # Ok::<(), outcore::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BigArray {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) handle: Arc<ArrayHandle>,
}

/// A raw description of mapped array memory, for building views in other languages: the
/// sub-array of the major-axis indices asked for.
#[derive(Clone, Debug)]
pub struct RawView {
    /// Address of the first element of the sub-array (major-axis index `lo`).
    pub ptr: *mut u8,
    /// Bytes from `ptr` to the end of the sub-array's last element.
    pub len: usize,
    /// Shape of the sub-array: the array's shape with the major axis cut to the indices asked
    /// for.
    pub shape: Vec<usize>,
    /// Byte strides.
    pub strides: Vec<isize>,
    /// False if writes are not allowed (read-only or historical connection).
    pub writable: bool,
    /// Keeps the memory mapped while held.
    pub keepalive: Arc<Reservation>,
}

// SAFETY: `ptr` points into the reservation kept alive by `keepalive`; the struct carries no
// thread-bound state.
unsafe impl Send for RawView {}
// SAFETY: as above; shared access only reads the fields.
unsafe impl Sync for RawView {}

impl BigArray {
    /// The array's identity: the oid of its metadata record, the same in every connection
    /// and snapshot.
    pub fn oid(&self) -> crate::storage::Oid {
        self.handle.oid
    }

    /// The current metadata (shape, dtype, order, block size).
    pub fn meta(&self) -> Result<ArrayMeta> {
        self.handle.meta()
    }

    /// The current shape.
    pub fn shape(&self) -> Result<Vec<u64>> {
        Ok(self.meta()?.shape)
    }

    /// Length of the major axis (0 for a 0-d array).
    pub fn len(&self) -> Result<u64> {
        let m = self.meta()?;
        Ok(m.shape.get(m.major_axis()).copied().unwrap_or(0))
    }

    /// True if the array holds no element.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.meta()?.nbytes() == 0)
    }

    fn typed_meta<T: Element>(&self) -> Result<ArrayMeta> {
        let m = self.meta()?;
        if m.dtype != T::dtype() || m.itemsize != std::mem::size_of::<T>() {
            return Err(Error::InvalidArgument(format!(
                "the array holds {} ({} bytes), not {} ({} bytes)",
                m.dtype,
                m.itemsize,
                T::dtype(),
                std::mem::size_of::<T>()
            )));
        }
        Ok(m)
    }

    /// Maps the blocks under major-axis indices `major` (clamped to the array) and returns
    /// the raw view of that sub-array. Address space is reserved in proportion to what is
    /// viewed: a view too large for the free address space fails with
    /// [`Error::AddressSpace`].
    pub fn raw_view(&self, major: Range<u64>) -> Result<RawView> {
        let m = self.meta()?;
        let (bytes, shape) = sub_array(&m, major)?;
        let memory = self.map(bytes.clone())?;
        memory.read_view_ahead(bytes.start as usize..bytes.end as usize);
        let origin = memory.blocks().start * m.blksize as u64;
        // The sub-array lies in the window: `map_bytes` returned one holding its blocks.
        let ptr = memory
            .reservation()
            .base()
            .wrapping_add((bytes.start - origin) as usize);
        Ok(RawView {
            ptr,
            len: (bytes.end - bytes.start) as usize,
            shape,
            strides: m.strides_bytes(),
            writable: self.conn.writable,
            keepalive: memory.reservation().clone(),
        })
    }

    /// The mapped window and the bytes (offsets in the array) of major-axis indices `major`.
    fn mapped_bytes(&self, major: Range<u64>) -> Result<(Arc<BlockMemory>, Range<usize>)> {
        let m = self.meta()?;
        let (bytes, _) = sub_array(&m, major)?;
        let memory = self.map(bytes.clone())?;
        Ok((memory, bytes.start as usize..bytes.end as usize))
    }

    /// Maps the blocks holding `bytes` and returns their window. Idle windows of the
    /// connection's arrays are released when the process holds many, and when mapping runs
    /// out of kernel mappings or address space (then the mapping is tried once more).
    fn map(&self, bytes: Range<u64>) -> Result<Arc<BlockMemory>> {
        if crate::vm::live_memories() > next_idle_sweep().load(Ordering::Relaxed) {
            self.conn.release_idle_windows()?;
            // Sweep again only after as many new windows again as the threshold's half: a
            // transaction holding many written (unreleasable) windows does not sweep at every
            // view.
            let threshold = idle_sweep_threshold();
            let next = (crate::vm::live_memories() + threshold / 2).max(threshold);
            next_idle_sweep().store(next, Ordering::Relaxed);
        }
        let at = self.conn.snapshot()?;
        match self.handle.map_bytes(&self.conn.storage, at, bytes.clone()) {
            Err(Error::AddressSpace(why)) => {
                if self.conn.release_idle_windows()? == 0 {
                    return Err(Error::AddressSpace(why));
                }
                self.handle.map_bytes(&self.conn.storage, at, bytes)
            }
            other => other,
        }
    }

    /// Reads the data under major-axis indices `major` into memory now (errors are returned
    /// here instead of surfacing at first touch).
    pub fn load(&self, major: Range<u64>) -> Result<()> {
        let (memory, bytes) = self.mapped_bytes(major)?;
        memory.populate(bytes)
    }

    /// Starts reading the data under major-axis indices `major` in the background.
    pub fn prefetch(&self, major: Range<u64>) -> Result<()> {
        let (memory, bytes) = self.mapped_bytes(major)?;
        memory.prefetch(bytes)
    }

    /// The major-axis range `elems` touches, after checking every index against the shape.
    fn major_range(&self, m: &ArrayMeta, elems: &[ndarray::SliceInfoElem]) -> Result<Range<u64>> {
        let ranges = touched_ranges(&m.shape, elems)?;
        Ok(ranges.get(m.major_axis()).cloned().unwrap_or(0..1))
    }

    /// Checks `T`, maps the blocks under the major-axis indices `elems` selects (all of them
    /// if `None`, after checking every index) and returns the shape with element strides and
    /// the address of that sub-array, `elems` rewritten relative to it, and the reservation
    /// to keep while a view of it lives.
    #[allow(clippy::type_complexity)]
    fn sub_view<T: Element>(
        &self,
        elems: Option<&[ndarray::SliceInfoElem]>,
    ) -> Result<(
        ndarray::StrideShape<IxDyn>,
        *mut T,
        Vec<ndarray::SliceInfoElem>,
        Arc<Reservation>,
    )> {
        let m = self.typed_meta::<T>()?;
        let (major, rebased) = match elems {
            None => (0..u64::MAX, Vec::new()),
            Some(elems) => {
                let major = self.major_range(&m, elems)?;
                let rebased = rebase_major(&m, elems, major.start);
                (major, rebased)
            }
        };
        let raw = self.raw_view(major)?;
        let strides: Vec<usize> = raw
            .strides
            .iter()
            .map(|&s| s as usize / m.itemsize)
            .collect();
        Ok((
            IxDyn(&raw.shape).strides(IxDyn(&strides)),
            raw.ptr.cast::<T>(),
            rebased,
            raw.keepalive,
        ))
    }

    /// Registers a hold on this array in the connection's view book (see [`BigArray`]).
    fn hold(&self, exclusive: bool, what: &str) -> Result<Hold<'_>> {
        let oid = self.handle.oid;
        self.conn.views.hold(Scope::Array(oid), exclusive, || {
            format!("{what} array {oid}")
        })
    }

    /// A view of the whole array. Waits while a mutable view of the array exists in another
    /// thread; an error if one exists in this thread.
    pub fn view<T: Element>(&self) -> Result<View<'_, T, IxDyn>> {
        let hold = self.hold(false, "take a view of")?;
        let (shape, ptr, _, memory) = self.sub_view::<T>(None)?;
        // SAFETY: the array's bytes lie in mapped memory of the window `sub_view` returned,
        // which the guard keeps reserved (`memory`) for the view's lifetime; strides describe
        // the array's layout (non-negative, in elements); T is plain bytes of the array's
        // element size. The hold keeps mutable views and memory changes away while the guard
        // lives, and the guard lets no part of the view outlive it.
        let view = unsafe { ArrayView::from_shape_ptr(shape, ptr.cast_const()) };
        Ok(View::new(view, hold, memory))
    }

    /// A view of `info` (an `ndarray::s![...]` slice). Only the blocks under the selected
    /// part of the major axis are mapped. Out-of-range indices are an error, not a panic.
    /// Waits and fails like [`view`](BigArray::view).
    pub fn slice<T: Element, I: SliceArg<IxDyn>>(&self, info: I) -> Result<View<'_, T, I::OutDim>> {
        let hold = self.hold(false, "take a view of")?;
        let (shape, ptr, rebased, memory) = self.sub_view::<T>(Some(info.as_ref()))?;
        // SAFETY: as in `view`, for the sub-array of the selected major-axis indices.
        let sub: ArrayViewD<'_, T> = unsafe { ArrayView::from_shape_ptr(shape, ptr.cast_const()) };
        Ok(View::new(
            sub.slice_move(same_slice::<I>(rebased)?),
            hold,
            memory,
        ))
    }

    /// A writable view of the whole array. Waits while another view of the array exists in
    /// another thread (through a clone of this handle); an error if one exists in this thread.
    pub fn view_mut<T: Element>(&mut self) -> Result<ViewMut<'_, T, IxDyn>> {
        self.conn.check_writable()?;
        let hold = self.hold(true, "take a mutable view of")?;
        let (shape, ptr, _, memory) = self.sub_view::<T>(None)?;
        // SAFETY: as in `view`; the memory is mapped writable (writable connection), `&mut
        // self` makes this the only view derived from this handle and the exclusive hold
        // the only view of the array in the connection.
        let view = unsafe { ArrayViewMut::from_shape_ptr(shape, ptr) };
        Ok(ViewMut::new(view, hold, memory))
    }

    /// A writable view of `info`; see [`slice`](BigArray::slice) and
    /// [`view_mut`](BigArray::view_mut).
    pub fn slice_mut<T: Element, I: SliceArg<IxDyn>>(
        &mut self,
        info: I,
    ) -> Result<ViewMut<'_, T, I::OutDim>> {
        self.conn.check_writable()?;
        let hold = self.hold(true, "take a mutable view of")?;
        let (shape, ptr, rebased, memory) = self.sub_view::<T>(Some(info.as_ref()))?;
        // SAFETY: as in `slice` and `view_mut`.
        let sub: ndarray::ArrayViewMutD<'_, T> =
            unsafe { ArrayViewMut::from_shape_ptr(shape, ptr) };
        Ok(ViewMut::new(
            sub.slice_move(same_slice::<I>(rebased)?),
            hold,
            memory,
        ))
    }

    /// Changes the shape in O(1); only the major axis (0 for C order, the last for F) may
    /// change. Shrinking then growing shows zeros in the regrown part.
    pub fn resize(&self, shape: &[u64]) -> Result<()> {
        self.conn.check_writable()?;
        let _hold = self.hold(true, "resize")?;
        let at = self.conn.snapshot()?;
        self.handle.resize(&self.conn.storage, at, shape)
    }

    /// Makes `version` — block `block`'s new contents, staged by another process with
    /// [`Database::stage_block`](super::Database::stage_block) — part of this transaction:
    /// the commit publishes it without a copy, atomically with everything else (a
    /// conflicting commit of that block fails it as usual); abort drops it. Views of this
    /// connection show it after the commit. The embedded store, PostgreSQL and object
    /// storage (not `mem:`).
    pub fn adopt(&self, block: u64, version: StagedRef) -> Result<()> {
        self.conn.check_writable()?;
        let hold = self.conn.storage.hold_staged(&version)?;
        self.handle.adopt(block, version, hold)
    }

    /// Replaces the user attributes (one line of text, opaque to the core; `None` removes
    /// them). Transactional: written at commit, undone by abort.
    pub fn set_attrs(&self, attrs: Option<String>) -> Result<()> {
        self.conn.check_writable()?;
        self.handle.set_attrs(attrs)
    }

    /// Appends `data` along the major axis: O(len(data)) in data and metadata written.
    /// `data` must match the array's shape on every other axis; on error nothing changes.
    pub fn append<T: Element>(&self, data: ndarray::ArrayViewD<'_, T>) -> Result<()> {
        let m = self.typed_meta::<T>()?;
        // Bytes in the array's memory order: F order is C order of the reversed axes.
        let ordered = match m.order {
            Order::C => data.as_standard_layout().into_owned(),
            Order::F => data.reversed_axes().as_standard_layout().into_owned(),
        };
        let shape: Vec<u64> = match m.order {
            Order::C => ordered.shape().iter().map(|&d| d as u64).collect(),
            Order::F => ordered.shape().iter().rev().map(|&d| d as u64).collect(),
        };
        let bytes: &[u8] = bytemuck::cast_slice(
            ordered
                .as_slice()
                .ok_or_else(|| Error::InvalidArgument("data is not contiguous".into()))?,
        );
        self.append_bytes(bytes, &shape)
    }

    /// Appends raw bytes laid out in the array's order, of shape `shape` (the Python layer's
    /// entry point); see [`append`](BigArray::append).
    pub fn append_bytes(&self, bytes: &[u8], shape: &[u64]) -> Result<()> {
        self.conn.check_writable()?;
        let _hold = self.hold(true, "append to")?;
        let m = self.meta()?;
        let major = m.major_axis();
        if shape.len() != m.shape.len()
            || (0..shape.len()).any(|a| a != major && shape[a] != m.shape[a])
        {
            return Err(Error::InvalidShape(format!(
                "cannot append data of shape {shape:?} to an array of shape {:?} ({} order): \
                 all axes but the major one must match",
                m.shape, m.order
            )));
        }
        let expected = shape.iter().product::<u64>() * m.itemsize as u64;
        if bytes.len() as u64 != expected {
            return Err(Error::InvalidShape(format!(
                "{} bytes given for shape {shape:?}, {expected} expected",
                bytes.len()
            )));
        }
        if m.shape.is_empty() {
            return Err(Error::InvalidShape("cannot append to a 0-d array".into()));
        }
        let mut new_shape = m.shape.clone();
        new_shape[major] += shape[major];
        let at = self.conn.snapshot()?;
        let storage = &self.conn.storage;
        self.handle.resize(storage, at, &new_shape)?;
        if let Err(e) = self.handle.write_bytes(storage, at, m.nbytes(), bytes) {
            // Leave the array as it was.
            self.handle.resize(storage, at, &m.shape)?;
            return Err(e);
        }
        Ok(())
    }
}

/// The bytes (offsets in the array) and shape of the sub-array of major-axis indices `major`
/// (clamped to the array).
fn sub_array(m: &ArrayMeta, major: Range<u64>) -> Result<(Range<u64>, Vec<usize>)> {
    let to_usize = |d: u64| {
        usize::try_from(d).map_err(|_| Error::InvalidShape(format!("dimension {d} too large")))
    };
    let mut shape: Vec<usize> = m
        .shape
        .iter()
        .map(|&d| to_usize(d))
        .collect::<Result<_>>()?;
    if m.shape.is_empty() {
        return Ok((0..m.nbytes(), shape));
    }
    let axis = m.major_axis();
    let len = m.shape[axis];
    let (lo, hi) = (
        major.start.min(len),
        major.end.min(len).max(major.start.min(len)),
    );
    let stride = m.major_stride_bytes();
    shape[axis] = to_usize(hi - lo)?;
    Ok((lo * stride..hi * stride, shape))
}

/// `elems` with the major axis's index or slice made relative to major-axis index `lo` (the
/// start of the sub-array a view is built from). `elems` were checked against the shape.
fn rebase_major(
    m: &ArrayMeta,
    elems: &[ndarray::SliceInfoElem],
    lo: u64,
) -> Vec<ndarray::SliceInfoElem> {
    use ndarray::SliceInfoElem as E;
    let major = m.major_axis();
    let len = m.shape.get(major).copied().unwrap_or(0);
    let absolute = |i: isize| {
        if i < 0 {
            len - i.unsigned_abs() as u64
        } else {
            i as u64
        }
    };
    let rel = |i: isize| (absolute(i) - lo) as isize;
    let mut axis = 0;
    elems
        .iter()
        .map(|&e| {
            let out = match e {
                E::NewAxis => return e,
                _ if axis != major => e,
                E::Index(i) => E::Index(rel(i)),
                E::Slice { start, end, step } => {
                    let s = absolute(start);
                    let e = end.map_or(len, absolute).max(s);
                    E::Slice {
                        start: (s - lo) as isize,
                        end: Some((e - lo) as isize),
                        step,
                    }
                }
            };
            axis += 1;
            out
        })
        .collect()
}

/// `elems` (a rebased copy of the slice `I`) as a slice argument with `I`'s output dimension.
fn same_slice<I: SliceArg<IxDyn>>(
    elems: Vec<ndarray::SliceInfoElem>,
) -> Result<ndarray::SliceInfo<Vec<ndarray::SliceInfoElem>, IxDyn, I::OutDim>> {
    // SAFETY: a Vec's `as_ref` returns the same elements every time (the only requirement);
    // the dimensions are checked by `new` (they match `I`'s: same kinds of elements).
    unsafe { ndarray::SliceInfo::new(elems) }
        .map_err(|e| Error::InvalidArgument(format!("slice does not fit the array: {e}")))
}

/// Array memories (windows) in the process above which a new view first releases the idle
/// windows of its connection: an eighth of `vm.max_map_count` (each takes about two kernel
/// mappings, and the rest of the process needs some too).
fn idle_sweep_threshold() -> usize {
    crate::vm::max_map_count() / 8
}

/// The live-window count at which the next view releases idle windows first.
fn next_idle_sweep() -> &'static AtomicUsize {
    static NEXT: std::sync::OnceLock<AtomicUsize> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| AtomicUsize::new(idle_sweep_threshold()))
}
