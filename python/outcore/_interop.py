"""zarr and HDF5 in and out: ``from_zarr``, ``to_zarr``, ``from_hdf5``, ``to_hdf5``.

zarr-python (``pip install outcore[zarr]``) and h5py (``outcore[hdf5]``) do the format work;
they are imported only when called. Data are copied slab by slab along the major axis (never
the whole array in memory), preserving dtype, shape, order and attributes:

* zarr v2 stores the order (``order`` in its metadata); zarr v3 and HDF5 store C-order data of
  the same logical array and remember an F-order array in the attribute ``outcore_order``.
* zarr v3 gets big-endian data little-endian (zarr-python 3 does not read big-endian back
  faithfully); the array's own dtype is kept in the attribute ``outcore_dtype``.
* HDF5 attributes hold what h5py can (strings, numbers, lists of numbers); the full JSON
  attributes are kept in the attribute ``outcore_attrs`` so that a round trip is exact.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._array import BigArray, dtype_descriptor, dtype_from_descriptor
from ._db import DB, Root

#: Bytes copied at a time (rounded to whole blocks of the outcore array and whole chunks of
#: the other side along the major axis).
SLAB_BYTES = 64 << 20
#: Attribute remembering an F-order array where the format has no order of its own.
ORDER_ATTR = "outcore_order"
#: zarr v3 attribute with the dtype of an array with big-endian parts: they are written
#: little-endian (zarr-python 3 reads big-endian data back as native, and structured ones
#: wrongly).
DTYPE_ATTR = "outcore_dtype"
#: HDF5 attribute with the exact JSON attributes of the array.
ATTRS_ATTR = "outcore_attrs"


def _root(root: DB | Root) -> Root:
    if isinstance(root, DB):
        return root.root()
    if not isinstance(root, Root):
        raise TypeError(f"root must be an outcore DB or Root, not {type(root).__name__}")
    return root


def _row_bytes(shape: tuple[int, ...], major: int, itemsize: int) -> int:
    """Bytes of one index of the major axis."""
    return max(itemsize * math.prod(d for a, d in enumerate(shape) if a != major), 1)


def _slabs(
    shape: tuple[int, ...], major: int, itemsize: int, blksize: int, chunk: int
) -> Iterator[tuple[Any, ...]]:
    """Index tuples covering the array slab by slab along axis ``major``: about
    :data:`SLAB_BYTES` each, whole outcore blocks where rows fit them, and a multiple of the
    other side's chunk length ``chunk`` along the major axis."""
    if not shape:
        yield ()
        return
    length = shape[major]
    row = _row_bytes(shape, major, itemsize)
    rows = max(max(SLAB_BYTES, blksize) // blksize * blksize // row, 1)
    chunk = max(chunk, 1)
    rows = max(rows // chunk, 1) * chunk
    for lo in range(0, length, rows):
        index = [slice(None)] * len(shape)
        index[major] = slice(lo, min(lo + rows, length))
        yield tuple(index)


def _check_dtype(dtype: np.dtype[Any], what: str) -> None:
    if dtype.hasobject or dtype.kind in "OT":
        raise TypeError(
            f"{what} has dtype {dtype}, which holds Python objects (variable-length "
            "strings?); outcore stores fixed-size types only"
        )


#: ``progress(bytes_done, bytes_total)``, called after every slab.
Progress = Callable[[int, int], None]


def _stream(
    src: Any, dst: Any, shape: tuple[int, ...], major: int, itemsize: int, blksize: int,
    chunk: int, progress: Progress | None, convert: Callable[[Any], Any] = np.asarray,
) -> None:
    """Copies ``src`` into ``dst`` slab by slab (see :func:`_slabs`), reporting progress."""
    total = itemsize * math.prod(shape)
    done = 0
    for index in _slabs(shape, major, itemsize, blksize, chunk):
        part = convert(src[index])
        dst[index] = part
        done += itemsize * int(np.size(part))
        if progress is not None:
            progress(done, total)


def _without_metadata(dt: np.dtype[Any]) -> np.dtype[Any]:
    """``dt`` without the metadata h5py attaches (it cannot be stored; NumPy warns)."""
    if dt.subdtype is not None:
        return np.dtype((_without_metadata(dt.subdtype[0]), dt.subdtype[1]))
    if dt.names is None:
        return np.dtype(dt.str)
    fields = dt.fields
    assert fields is not None
    return np.dtype(
        {
            "names": list(dt.names),
            "formats": [_without_metadata(fields[n][0]) for n in dt.names],
            "offsets": [fields[n][1] for n in dt.names],
            "itemsize": dt.itemsize,
        }
    )


def _copy_in(src: Any, root: DB | Root, name: str, order: str, attrs: dict[str, Any],
             chunk: int, blksize: int, progress: Progress | None,
             dtype: np.dtype[Any] | None = None) -> BigArray:
    dtype = _without_metadata(np.dtype(src.dtype)) if dtype is None else dtype
    array = BigArray(tuple(src.shape), dtype, order=order, blksize=blksize)
    array.attrs = attrs
    _root(root)[name] = array
    _stream(src, array, array.shape, array._major(), dtype.itemsize, blksize, chunk, progress)
    return array


def _stored_attrs(array: BigArray) -> dict[str, Any]:
    attrs = dict(array.attrs)
    if array.order == "F":
        attrs[ORDER_ATTR] = "F"
    return attrs


def from_zarr(
    src: Any, root: DB | Root, name: str, *, blksize: int | None = None,
    progress: Progress | None = None,
) -> BigArray:
    """Copies the zarr array ``src`` (a ``zarr.Array``, or a path or url zarr can open) into
    a new array ``root[name]`` (replacing one of that name), in the current transaction:
    ``transaction.commit()`` keeps it. Dtype, shape, order and attributes are preserved;
    ``progress(bytes_done, bytes_total)`` is called after every slab."""
    import zarr

    from ._array import DEFAULT_BLKSIZE

    if isinstance(src, (str, os.PathLike)):
        where = os.fspath(src)
        try:
            src = zarr.open(where, mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"no zarr array at {where!r}") from None
    if isinstance(src, zarr.Group):
        raise TypeError(
            f"{src.store_path} is a zarr group, not an array: pass one of its arrays "
            f"({', '.join(sorted(src.array_keys())) or 'it has none'})"
        )
    if not isinstance(src, zarr.Array):
        raise TypeError(f"src must be a zarr array or a path, not {type(src).__name__}")
    _check_dtype(np.dtype(src.dtype), f"zarr array {src.store_path}")
    attrs: dict[str, Any] = dict(src.attrs)
    # v2 stores the order; v3 data are C order (an F array remembered in the attribute).
    order = str(attrs.pop(ORDER_ATTR, "C"))
    if src.metadata.zarr_format == 2:
        order = src.metadata.order
    dtype = attrs.pop(DTYPE_ATTR, None)
    major = 0 if order == "C" else max(src.ndim - 1, 0)
    chunk = src.chunks[major] if src.ndim else 1
    return _copy_in(
        src, root, name, order, attrs, chunk, blksize or DEFAULT_BLKSIZE, progress,
        None if dtype is None else dtype_from_descriptor(dtype),
    )


def to_zarr(
    array: BigArray,
    store: Any,
    *,
    chunks: tuple[int, ...] | None = None,
    zarr_format: int = 3,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Any:
    """Writes ``array`` to a new zarr array at ``store`` (a path, url or zarr store) and
    returns it. ``chunks`` defaults to the outcore blocks along the major axis (whole other
    axes). zarr v2 keeps F order as its ``order``; v3 stores C-order data of the same
    logical array (with attribute ``outcore_order``)."""
    import zarr

    if not isinstance(array, BigArray):
        raise TypeError(f"array must be an outcore BigArray, not {type(array).__name__}")
    attrs = dict(array.attrs)
    kwargs: dict[str, Any] = {}
    dtype = array.dtype
    if zarr_format == 2:
        kwargs["order"] = array.order
    else:
        if array.order == "F":
            attrs[ORDER_ATTR] = "F"
        if dtype != dtype.newbyteorder("<"):
            attrs[DTYPE_ATTR] = dtype_descriptor(dtype)
            dtype = dtype.newbyteorder("<")
    if chunks is None:
        chunks = _block_chunks(array)
    out = zarr.create_array(
        store=store,
        shape=array.shape,
        dtype=dtype,
        chunks=chunks,
        attributes=attrs,
        zarr_format=zarr_format,  # type: ignore[arg-type]
        overwrite=overwrite,
        **kwargs,
    )
    major = array._major()
    chunk = out.chunks[major] if array.ndim else 1
    _stream(
        array, out, array.shape, major, array.itemsize, array.blksize, chunk, progress,
        lambda part: np.asarray(part).astype(dtype, copy=False),
    )
    return out


def _block_chunks(array: BigArray) -> tuple[int, ...]:
    """One outcore block's rows along the major axis (at least one), other axes whole."""
    shape, major = array.shape, array._major()
    chunks = [max(d, 1) for d in shape]
    if shape:
        rows = array.blksize // _row_bytes(shape, major, array.itemsize)
        chunks[major] = max(min(rows, shape[major]), 1)
    return tuple(chunks)


def from_hdf5(
    dataset: Any, root: DB | Root, name: str, *, path: str | None = None,
    blksize: int | None = None, progress: Progress | None = None,
) -> BigArray:
    """Copies the HDF5 dataset ``dataset`` (an ``h5py.Dataset``, or an HDF5 file name with
    ``path`` naming the dataset in it) into a new array ``root[name]``, in the current
    transaction. Dtype, shape, order and attributes are preserved."""
    import h5py

    from ._array import DEFAULT_BLKSIZE

    if isinstance(dataset, (str, os.PathLike)):
        if path is None:
            raise TypeError("give path= (the dataset inside the HDF5 file)")
        where = os.fspath(dataset)
        if not os.path.exists(where):
            raise FileNotFoundError(f"no HDF5 file at {where!r}")
        with h5py.File(where, "r") as f:
            if path not in f:
                raise KeyError(f"no dataset {path!r} in HDF5 file {where!r}")
            return from_hdf5(f[path], root, name, blksize=blksize, progress=progress)
    if isinstance(dataset, h5py.Group):
        raise TypeError(
            f"{dataset.name} is an HDF5 group, not a dataset: pass one of its datasets "
            f"({', '.join(sorted(dataset)) or 'it has none'})"
        )
    if not isinstance(dataset, h5py.Dataset):
        raise TypeError(f"dataset must be an h5py Dataset or a file name, not {type(dataset).__name__}")
    _check_dtype(dataset.dtype, f"HDF5 dataset {dataset.name}")
    if ATTRS_ATTR in dataset.attrs:
        attrs = json.loads(dataset.attrs[ATTRS_ATTR])
    else:
        attrs = {k: _plain(v) for k, v in dataset.attrs.items()}
    order = str(attrs.pop(ORDER_ATTR, "C"))
    major = 0 if order == "C" else max(dataset.ndim - 1, 0)
    chunk = dataset.chunks[major] if dataset.chunks and dataset.ndim else 1
    return _copy_in(
        dataset, root, name, order, attrs, chunk, blksize or DEFAULT_BLKSIZE, progress
    )


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as JSON holds it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.generic, np.ndarray)):
        return _plain(value.tolist()) if not isinstance(value, np.bytes_) else value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_hdf5(
    array: BigArray, h5file: Any, name: str, *, chunks: Any = None,
    progress: Progress | None = None,
) -> Any:
    """Writes ``array`` as a new dataset ``name`` of ``h5file`` (an ``h5py.File`` or group,
    or a file name: opened for appending) and returns it (for a file name: its name).
    HDF5 stores C-order data; an F-order array is the same logical array, remembered in
    attribute ``outcore_order``."""
    import h5py

    if not isinstance(array, BigArray):
        raise TypeError(f"array must be an outcore BigArray, not {type(array).__name__}")
    if isinstance(h5file, (str, os.PathLike)):
        with h5py.File(os.fspath(h5file), "a") as f:
            return to_hdf5(array, f, name, chunks=chunks, progress=progress).name
    if not isinstance(h5file, h5py.Group):
        raise TypeError(f"h5file must be an h5py File or Group or a file name, not {type(h5file).__name__}")
    attrs = _stored_attrs(array)
    ds = h5file.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=chunks)
    for key, value in attrs.items():
        if isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
        ):
            ds.attrs[key] = value
    ds.attrs[ATTRS_ATTR] = json.dumps(attrs)
    major = array._major()
    chunk = ds.chunks[major] if ds.chunks and array.ndim else 1
    _stream(array, ds, array.shape, major, array.itemsize, array.blksize, chunk, progress)
    return ds
