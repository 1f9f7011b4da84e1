"""outcore and xarray (``pip install outcore[xarray]``).

``xr.open_dataset(url, engine="outcore")`` presents the root's arrays as a lazy Dataset (dask
arrays read through :func:`outcore.dask.to_dask`); :func:`save` writes a Dataset's variables
as arrays. Each array's ``attrs["dims"]`` names its dimensions (``dim_0``, ``dim_1``, ...
when absent); ``attrs["coordinate"]`` marks a non-index coordinate; every other attribute
becomes the variable's ``attrs``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import transaction
import xarray as xr
from xarray.backends import BackendEntrypoint

from . import _ref
from ._array import BigArray
from ._db import DB, Root, tid
from .dask import default_chunks, to_dask

#: Attribute keys with a meaning to this module (not shown in the variable's attrs).
DIMS, COORDINATE = "dims", "coordinate"


def _dims(name: str, attrs: dict[str, Any], ndim: int) -> tuple[str, ...]:
    dims = attrs.pop(DIMS, None)
    if dims is None:
        return tuple(f"dim_{i}" for i in range(ndim))
    if (
        not isinstance(dims, list)
        or len(dims) != ndim
        or not all(isinstance(d, str) for d in dims)
    ):
        raise ValueError(
            f"array {name!r}: attrs['dims'] must list {ndim} dimension names, not {dims!r}"
        )
    return tuple(dims)


def open_dataset(
    url: str | os.PathLike[str],
    *,
    at: Any = None,
    drop_variables: Iterable[str] | None = None,
    chunks: Any = None,
) -> xr.Dataset:
    """The root's arrays at the newest snapshot (or ``at``, a tid) as a lazy Dataset.

    The store is opened read-only once per process (as references open it); nothing is
    read until computed. ``chunks`` is passed to :meth:`BigArray.to_dask` for every array."""
    url = os.fspath(url)
    db = _ref._store(url)
    dropped = set(drop_variables or ())
    conn = (
        db.open(transaction.TransactionManager())
        if at is None
        else _ref._snapshot(db, url, tid(at))
    )
    try:
        variables, coords = {}, []
        for name in conn.root():
            if name in dropped:
                continue
            array = conn.root()[name]
            attrs = dict(array.attrs)
            dims = _dims(name, attrs, array.ndim)
            if attrs.pop(COORDINATE, False):
                coords.append(name)
            variables[name] = xr.Variable(dims, to_dask(array, chunks), attrs=attrs)
        return xr.Dataset(variables).set_coords(coords)
    finally:
        if at is None:
            conn.close()


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as the Python values JSON holds."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def save(ds: xr.Dataset, db: DB | Root) -> None:
    """Writes every variable of ``ds`` (data variables and coordinates) as an array of the
    root under its name, replacing arrays of the same names, with its attrs plus ``dims``
    (and ``coordinate`` for non-index coordinates). The data are written slab by slab along
    the first axis (dask variables are computed one slab at a time); the changes join the
    current transaction: ``transaction.commit()`` keeps them."""
    root = db.root() if isinstance(db, DB) else db
    for name, var in ds.variables.items():
        if not isinstance(name, str):
            raise TypeError(f"variable names must be strings to name arrays, not {name!r}")
        dims = [str(d) for d in var.dims]
        attrs = _jsonable(dict(var.attrs))
        attrs[DIMS] = dims
        if name in ds.coords and (name,) != tuple(var.dims):
            attrs[COORDINATE] = True
        array = BigArray(var.shape, var.dtype)
        array.attrs = attrs
        root[name] = array
        if var.ndim == 0:
            array[()] = np.asarray(var.values)
            continue
        step = default_chunks(array)[0] or 1
        for lo in range(0, var.shape[0], step):
            array[lo : lo + step] = np.asarray(var[lo : lo + step].values)


class OutcoreBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(url, engine="outcore")``: see :func:`open_dataset`."""

    description = "Open outcore stores (the root's arrays) as lazy Datasets"
    url = "https://github.com/outcore/outcore"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "at")

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: Iterable[str] | None = None,
        at: Any = None,
    ) -> xr.Dataset:
        """The root's arrays as a lazy Dataset (xarray's own ``chunks=`` rechunks them)."""
        return open_dataset(filename_or_obj, at=at, drop_variables=drop_variables)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Only when asked for by name (``engine="outcore"``)."""
        return False
