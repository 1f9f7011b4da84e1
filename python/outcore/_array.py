"""BigArray: a persistent N-d array that behaves like a NumPy array."""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from . import _attrs, _index
from .errors import ReadOnlyError

if TYPE_CHECKING:
    from . import _native
    from ._db import Connection

#: Default block size: 2 MiB.
DEFAULT_BLKSIZE = 2 << 20


def dtype_descriptor(dt: np.dtype[Any]) -> str:
    """The string stored for ``dt``: ``dt.str``, or the repr of NumPy's descr for structured
    dtypes. Refuses dtypes holding Python objects."""
    if dt.hasobject:
        raise TypeError(
            f"dtype {dt} holds Python objects, which cannot live in persistent memory; "
            "use fixed-size types (numbers, bytes 'S', unicode 'U', structured)"
        )
    if dt.subdtype is not None:
        raise TypeError(f"sub-array dtype {dt}: put its shape into the array's shape instead")
    if dt.fields is not None:
        return repr(np.lib.format.dtype_to_descr(dt))
    return dt.str


def dtype_from_descriptor(text: str) -> np.dtype[Any]:
    """Inverse of :func:`dtype_descriptor`."""
    if text.startswith("["):
        return np.lib.format.descr_to_dtype(ast.literal_eval(text))
    return np.dtype(text)


def _shape_tuple(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of integers, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    return dims


#: Bytes of the array a streaming reduction maps at a time.
REDUCE_CHUNK_BYTES = 256 << 20

#: Blocks of the major axis around an element that element access keeps mapped (the chunk
#: view behind ``A[i]``), so neighbouring elements are served without mapping again.
FAST_CHUNK_BLOCKS = 4


def _element_key(index: Any, ndim: int, major: int) -> Any:
    """The major-axis index of ``index`` if it picks one element with plain integers (``i``,
    ``(i, j)``); else ``None``."""
    if type(index) is tuple:
        if len(index) != ndim:
            return None
        for item in index:
            if type(item) is not int and not isinstance(item, np.integer):
                return None
        return index[major]
    if ndim == 1 and (type(index) is int or isinstance(index, np.integer)):
        return index
    return None


def _as_view(x: Any) -> Any:
    """``x`` with BigArrays replaced by views of all their data (no copy)."""
    if isinstance(x, BigArray):
        return x[...]
    if isinstance(x, (list, tuple)):
        return type(x)(_as_view(v) for v in x)
    return x


class BigArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A persistent array stored in an outcore database.

    Create it with a shape and dtype, then store it in a root: ``root["A"] = A``. Indexing
    works exactly as on ``numpy.ndarray``: basic indexing returns live views of the stored
    data (nothing is read until touched; writes are saved by ``transaction.commit()``),
    advanced indexing returns copies, assignment broadcasts.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        dtype: npt.DTypeLike = np.float64,
        order: str = "C",
        blksize: int = DEFAULT_BLKSIZE,
    ) -> None:
        self._shape = _shape_tuple(shape)
        self._dtype = np.dtype(dtype)
        dtype_descriptor(self._dtype)
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        self._order = order
        blksize = operator.index(blksize)
        if blksize <= 0 or blksize % 4096:
            raise ValueError(f"blksize must be a positive multiple of 4096, not {blksize}")
        self._blksize = blksize
        # None until stored (root[name] = A); every use of the connection comes after a
        # check of _native, which is set with it.
        self._conn: Connection = None  # type: ignore[assignment]
        self._native: _native.Array | None = None
        #: Element access's chunk view: (connection generation, lo, hi, length of the major
        #: axis, ndim, major axis, the view of major-axis indices lo..hi, whether that is all).
        self._chunk: tuple[int, int, int, int, int, int, np.ndarray, bool] | None = None
        #: Attributes set before the array is stored (written when it is).
        self._pending_attrs: dict[str, Any] = {}

    @classmethod
    def _bind(cls, conn: Connection, native: _native.Array) -> BigArray:
        self = cls.__new__(cls)
        self._conn = conn
        self._native = native
        self._chunk = None
        self._pending_attrs = {}
        return self

    def _attach(self, conn: Connection, native: _native.Array) -> None:
        self._conn = conn
        self._native = native

    # ------------------------------------------------------------------ metadata

    def _meta(self) -> tuple[str, int, list[int], str, int] | None:
        if self._native is None:
            return None
        self._conn._check_open()
        return self._native.meta()

    @property
    def shape(self) -> tuple[int, ...]:
        meta = self._meta()
        return self._shape if meta is None else tuple(meta[2])

    @property
    def dtype(self) -> np.dtype[Any]:
        meta = self._meta()
        return self._dtype if meta is None else dtype_from_descriptor(meta[0])

    @property
    def order(self) -> str:
        meta = self._meta()
        return self._order if meta is None else meta[3]

    @property
    def blksize(self) -> int:
        meta = self._meta()
        return self._blksize if meta is None else meta[4]

    @property
    def attrs(self) -> _attrs.Attrs:
        """User attributes (units, dims, anything JSON can hold), stored with the array:
        changes join the transaction (``transaction.commit()`` keeps them, abort undoes
        them). ``A.attrs = {...}`` replaces them all."""
        return _attrs.Attrs(self)

    @attrs.setter
    def attrs(self, value: dict[str, Any]) -> None:
        _attrs.Attrs(self)._store(dict(value))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        shape, item = self.shape, self.itemsize
        strides, step = [0] * len(shape), item
        axes = range(len(shape) - 1, -1, -1) if self.order == "C" else range(len(shape))
        for a in axes:
            strides[a] = step
            step *= max(shape[a], 1)
        return tuple(strides)

    def _major(self) -> int:
        return 0 if self.order == "C" else max(self.ndim - 1, 0)

    def __len__(self) -> int:
        shape = self.shape
        if not shape:
            raise TypeError("len() of unsized object")
        return shape[self._major()]

    def __repr__(self) -> str:
        if self._native is not None and self._conn._is_closed():
            return f"<outcore.BigArray in {self._conn._describe()} closed>"
        where = "not stored yet" if self._native is None else f"in {self._conn._describe()}"
        return (
            f"<outcore.BigArray shape={self.shape} dtype={self.dtype} "
            f"order={self.order!r} blksize={self.blksize} {where}>"
        )

    # ------------------------------------------------------------------ data

    def _stored(self, change: bool = False) -> _native.Array:
        """The native array; a ``change`` joins the transaction (reads do not: writes through
        views are found when the transaction completes)."""
        if self._native is None:
            raise ValueError(
                "this BigArray is not stored in a database yet: "
                "store it first, e.g. root['name'] = A"
            )
        if change:
            self._conn._join()
        else:
            self._conn._check_open()
        return self._native

    def _view(self, lo: int, hi: int, change: bool = False) -> np.ndarray:
        native = self._stored(change)
        mapping, strides = native.map(lo, hi, self._conn)
        shape = list(self.shape)
        if shape:
            shape[self._major()] = max(0, min(hi, shape[self._major()]) - lo)
        return np.ndarray(
            tuple(shape), dtype=self.dtype, buffer=cast(Any, mapping), strides=strides
        )

    def _element(self, index: Any) -> tuple[np.ndarray, Any] | None:
        """``(view, index)`` to reach the element ``index`` picks through the cached chunk
        view, or ``None`` when ``index`` is not one element given by integers.

        Element access through a fresh view costs microseconds (metadata, mapping, a new
        ndarray); the chunk view is kept until the connection's generation moves (every
        transaction boundary, savepoint rollback, resize, append and close bump it), so a
        cached view never shows another snapshot or shape than the connection's current one.
        """
        chunk = self._chunk
        conn = self._conn
        if chunk is not None and chunk[0] == conn._generation:
            _, lo, hi, length, ndim, major, view, _ = chunk
        elif self._native is None or conn._is_closed():
            return None  # the slow path says what is wrong
        else:
            shape, ndim, major = self.shape, self.ndim, self._major()
            if ndim == 0:
                return None
            lo = hi = length = shape[major]
            view = None  # the chunk is empty: mapped below
        k = _element_key(index, ndim, major)
        if k is None:
            return None
        k = operator.index(k)
        if k < 0:
            k += length
        if not lo <= k < hi:
            if not 0 <= k < length:
                return None  # out of bounds: the slow path raises NumPy's IndexError
            row = max(self.nbytes // max(length, 1), 1)
            rows = max(FAST_CHUNK_BLOCKS * self.blksize // row, 1)
            lo = k - k % rows
            hi = min(lo + rows, length)
            view = self._view(lo, hi)
            whole = lo == 0 and hi == length
            self._chunk = (conn._generation, lo, hi, length, ndim, major, view, whole)
        assert view is not None
        if ndim == 1:
            return view, k - lo
        index = list(index)
        index[major] = k - lo
        return view, tuple(index)

    def __getitem__(self, index: Any) -> Any:
        # The commonest cases first, inline: A[i] and A[i, j] within the cached chunk.
        chunk = self._chunk
        if chunk is not None and chunk[0] == self._conn._generation:
            if type(index) is int and chunk[4] == 1:
                if chunk[7]:
                    return chunk[6][index]  # NumPy raises IndexError past the ends
                k = index if index >= 0 else index + chunk[3]
                if chunk[1] <= k < chunk[2]:
                    return chunk[6][k - chunk[1]]
            elif type(index) is tuple and len(index) == chunk[4]:
                for item in index:
                    if type(item) is not int:
                        break
                else:
                    if chunk[7]:
                        return chunk[6][index]
                    major = chunk[5]
                    k = index[major]
                    if k < 0:
                        k += chunk[3]
                    if chunk[1] <= k < chunk[2]:
                        rel = list(index)
                        rel[major] = k - chunk[1]
                        return chunk[6][tuple(rel)]
        fast = self._element(index)
        if fast is not None:
            view, rel = fast
            return view[rel]
        lo, hi, rel = _index.split(index, self.shape, self._major())
        return self._view(lo, hi)[rel]

    def __setitem__(self, index: Any, value: Any) -> None:
        fast = self._element(index)
        if fast is not None and fast[0].flags.writeable:
            self._conn._join()
            view, rel = fast
            view[rel] = value
            return
        lo, hi, rel = _index.split(index, self.shape, self._major())
        view = self._view(lo, hi, change=True)
        if not view.flags.writeable:
            raise ReadOnlyError("this array is read-only (read-only or historical database)")
        view[rel] = value

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        view = self[...]
        if dtype is not None and np.dtype(dtype) != view.dtype:
            if copy is False:
                raise ValueError(f"cannot view {view.dtype} data as {dtype} without a copy")
            return view.astype(dtype)
        return view.copy() if copy else view

    # ------------------------------------------------------------------ NumPy protocols

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Ufuncs and operators (``A + 1``, ``A == B``, ``np.sqrt(A)``) act on views of the
        data, like on a ``numpy.memmap``; results are plain in-memory arrays. ``out=A``
        writes into the array."""
        inputs = tuple(_as_view(x) for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = _as_view(kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    @property
    def T(self) -> np.ndarray:
        """The transposed view (``A[...].T``)."""
        return self[...].T

    def copy(self, order: Any = "K") -> np.ndarray:
        """An in-memory copy of the data."""
        return self[...].copy(order=order)

    def astype(self, dtype: npt.DTypeLike, **kwargs: Any) -> np.ndarray:
        """An in-memory copy of the data as ``dtype``."""
        return self[...].astype(dtype, **kwargs)

    def _reduce(self, ufunc: np.ufunc, axis: int | None, dtype: npt.DTypeLike | None = None) -> Any:
        """``ufunc.reduce`` over all elements (``axis=None``) or along the major axis, chunk by
        chunk of the major axis, so an array larger than the address space reduces too."""
        major = self._major()
        if self.ndim == 0 or (axis is not None and axis not in (major, major - self.ndim)):
            return ufunc.reduce(self[...], axis=axis, dtype=dtype)
        if len(self) == 0:
            return ufunc.reduce(self[...], axis=axis, dtype=dtype)
        row = max(self.nbytes // max(len(self), 1), 1)
        step = max(REDUCE_CHUNK_BYTES // row, 1)
        partial = None
        for lo in range(0, len(self), step):
            index = [slice(None)] * self.ndim
            index[major] = slice(lo, lo + step)
            part = ufunc.reduce(self[tuple(index)], axis=axis, dtype=dtype)
            partial = part if partial is None else ufunc(partial, part)
        return partial

    def sum(self, axis: int | None = None, dtype: npt.DTypeLike | None = None) -> Any:
        """Sum of all elements (or along the major axis), streamed chunk by chunk."""
        if dtype is None and self.dtype.kind in "biu":
            dtype = np.result_type(self.dtype, np.int_ if self.dtype.kind != "u" else np.uint)
        return self._reduce(np.add, axis, dtype)

    def min(self, axis: int | None = None) -> Any:
        """Smallest element (or along the major axis), streamed chunk by chunk."""
        return self._reduce(np.minimum, axis)

    def max(self, axis: int | None = None) -> Any:
        """Largest element (or along the major axis), streamed chunk by chunk."""
        return self._reduce(np.maximum, axis)

    def mean(self, axis: int | None = None, dtype: npt.DTypeLike | None = None) -> Any:
        """Arithmetic mean (or along the major axis), streamed chunk by chunk."""
        if dtype is None:
            dtype = np.float64 if self.dtype.kind in "biub" else self.dtype
        total = self.sum(axis=axis, dtype=dtype)
        count = self.size if axis is None else self.shape[axis]
        return total / count

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def append(self, values: npt.ArrayLike) -> None:
        """Appends ``values`` along the major axis (axis 0 for C order, the last for F).

        Costs O(len(values)). Every other axis must match; on error nothing changes.
        """
        native = self._stored(change=True)
        arr = np.asarray(values, dtype=self.dtype)
        if arr.ndim != self.ndim:
            raise ValueError(
                f"cannot append data of shape {arr.shape} to an array of shape {self.shape}: "
                "the number of dimensions differs"
            )
        major = self._major()
        if any(a != b for k, (a, b) in enumerate(zip(arr.shape, self.shape)) if k != major):
            raise ValueError(
                f"cannot append data of shape {arr.shape} to an array of shape {self.shape}: "
                f"all axes but axis {major} must match"
            )
        native.append_bytes(arr.tobytes(order="F" if self.order == "F" else "C"), list(arr.shape))
        self._conn._moved()

    def resize(self, shape: int | tuple[int, ...]) -> None:
        """Changes the shape in O(1); only the major axis may change."""
        shape = _shape_tuple(shape)
        if len(shape) != self.ndim:
            raise ValueError(f"cannot resize a {self.ndim}-d array to shape {shape}")
        self._stored(change=True).resize(list(shape))
        self._conn._moved()

    def _major_range(self, index: Any) -> tuple[int, int]:
        lo, hi, _ = _index.split(index, self.shape, self._major())
        return lo, hi

    def load(self, index: Any = slice(None)) -> None:
        """Reads the data behind ``self[index]`` into memory now; storage errors raise here."""
        lo, hi = self._major_range(index)
        self._stored().load(lo, hi)

    def prefetch(self, index: Any = slice(None)) -> None:
        """Starts reading the data behind ``self[index]`` in the background."""
        lo, hi = self._major_range(index)
        self._stored().prefetch(lo, hi)

    def to_dask(self, chunks: Any = None) -> Any:
        """A lazy dask array of this array as of the connection's snapshot (see
        :func:`outcore.dask.to_dask`; needs ``pip install outcore[dask]``)."""
        from .dask import to_dask

        return to_dask(self, chunks)

    def __reduce__(self) -> Any:
        """Pickles a reference, not the data: store url, array, snapshot tid. Unpickling
        opens the store (once per process) and gives this array read-only as of that
        snapshot; uncommitted changes are not seen. Arrays of ``mem:`` stores refuse."""
        from ._ref import ArrayRef, _open

        if self._native is None:
            raise TypeError(
                "this BigArray is not stored in a database yet: only stored arrays pickle "
                "(as references to them)"
            )
        if self._conn._db._url == "mem:":
            raise TypeError(
                "an array of a mem: store cannot be pickled: a mem: store lives in one "
                "process; use a store on disk or PostgreSQL to share arrays between processes"
            )
        return (_open, (ArrayRef.of(self),))


#: The name wendelin.core users know.
ZBigArray = BigArray
