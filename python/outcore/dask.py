"""outcore arrays in Dask (``pip install outcore[dask]``).

Reading: :func:`to_dask` (also ``A.to_dask()``) makes a lazy dask array of a stored array as
of its connection's snapshot; its tasks carry a small picklable reference (store url, array
oid, snapshot tid), so they run on threads, processes and dask.distributed workers alike.
Writing: :func:`store` computes a dask array into a BigArray inside one transaction of its
connection (atomic: every chunk or none at commit); on the embedded store the workers stage
whole blocks into the store themselves and only references travel (see ``_dask_store``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._dask_store import store
from ._ref import ArrayRef

if TYPE_CHECKING:
    from ._array import BigArray


class _Source:
    """What ``dask.array.from_array`` slices: the referenced array, opened in the process
    running the task. Each task reads its slab through a view of the mapped snapshot."""

    def __init__(self, ref: ArrayRef) -> None:
        self.ref = ref
        self.shape = ref.shape
        self.ndim = ref.ndim
        self.dtype = ref.np_dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        # A view where the scheduler keeps results in this process (threads); processes and
        # distributed workers pickle (copy) it.
        return np.asarray(self.ref.open()[index])


def default_chunks(array: BigArray) -> tuple[int, ...]:
    """Chunks along the major axis only (every other axis whole), each holding whole blocks
    where rows fit blocks: as many blocks as fit dask's ``array.chunk-size`` (128 MiB by
    default), at least one block's worth of rows (and at least one row)."""
    import dask

    shape = array.shape
    if not shape:
        return ()
    major = array._major()
    length = shape[major]
    row = max(array.itemsize * math.prod(d for a, d in enumerate(shape) if a != major), 1)
    target = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    blocks = max(target // array.blksize, 1)
    rows = max(blocks * array.blksize // row, 1)
    chunks = list(shape)
    chunks[major] = max(min(rows, length), 1) if length else 0
    return tuple(chunks)


def to_dask(array: BigArray, chunks: Any = None) -> Any:
    """A lazy dask array of ``array`` as of its connection's snapshot (uncommitted changes
    are not seen; the array must have been committed).

    ``chunks`` defaults to :func:`default_chunks`; anything ``dask.array.from_array``
    accepts overrides it. Task names are deterministic: the same array, snapshot and chunks
    give the same graph keys (so dask can share results between graphs)."""
    import dask.array as da
    from dask.base import tokenize

    ref = ArrayRef.of(array)
    if chunks is None:
        chunks = default_chunks(array)
    source = _Source(ref)
    # mem: stores share their url: the database object tells them apart.
    store = ref.url if ref.url != "mem:" else f"mem:{id(ref.db):x}"
    name = "outcore-" + tokenize(store, ref.oid, ref.tid, chunks)
    meta = np.empty((0,) * ref.ndim, dtype=source.dtype)
    return da.from_array(source, chunks=chunks, name=name, lock=False, asarray=False, meta=meta)

__all__ = ["default_chunks", "store", "to_dask"]
