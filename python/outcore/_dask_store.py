"""Computing a dask array into a BigArray inside one transaction (``outcore.dask.store``).

The chunks are computed wherever dask runs them — threads, processes, or the workers of a
``dask.distributed`` cluster — and become part of the transaction of the array's connection:
nothing is visible to other connections until ``transaction.commit()``, which publishes every
chunk at once (or raises ``ConflictError`` if another transaction changed an overlapping block
first); ``transaction.abort()`` discards them.

Two ways, chosen by the store:

* **Stores that stage** — the embedded store (uncompressed), PostgreSQL, and object storage
  (``blobs=``): each task writes its blocks into the store itself as unpublished versions
  (``Database.stage_block``: into staged space of the embedded store, rows of PostgreSQL's
  staging table, objects in the bucket) and returns only references (a few dozen bytes per
  block); this process adopts them into its transaction (``Array.adopt``) and the commit
  publishes them without a copy. The data never travels to this process. Chunks are
  realigned to whole blocks along the major axis. Bodies staged by tasks whose results are
  never committed are reclaimed by ``pack`` once nothing holds them (embedded: this process
  and the workers are gone; PostgreSQL: their leases expired or the transaction ended;
  object storage: after the grace period).
* **Other stores** (compressed embedded, ``mem:``): the computed chunks travel to this
  process and are written into the array as they arrive; at most ``in_flight`` are computed
  ahead of the writes.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

import numpy as np

#: Per process (a dask worker): the stores tasks stage into, by url.
_STAGING_DBS: dict[str, Any] = {}


def _chunk_slices(chunks: tuple[tuple[int, ...], ...]) -> list[list[slice]]:
    """Per axis, the slice of each chunk."""
    out = []
    for sizes in chunks:
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        out.append([slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])])
    return out


def store(x: Any, A: Any, *, in_flight: int | None = None, scheduler: Any = None) -> None:
    """Computes the dask array ``x`` into the BigArray ``A`` (same shape), inside the current
    transaction of ``A``'s connection. Commit with ``transaction.commit()`` (atomic: every
    chunk or none), or discard with ``transaction.abort()``; a task that fails raises here
    and leaves the rest of the transaction to the caller (abort it).

    ``in_flight`` bounds the chunks computed ahead of the writes (default: twice the
    workers of a distributed client, else 8). ``scheduler`` is passed to ``dask.compute``
    when no distributed client is current."""
    import dask

    if tuple(x.shape) != tuple(A.shape):
        raise ValueError(f"cannot store an array of shape {x.shape} into one of shape {A.shape}")
    if np.dtype(x.dtype) != A.dtype and not np.can_cast(x.dtype, A.dtype, casting="same_kind"):
        raise TypeError(f"cannot store {x.dtype} data into an array of {A.dtype}")
    staged = _staging_layout(A)
    if staged is not None:
        _store_staged(x, A, *staged, in_flight=in_flight, scheduler=scheduler)
        return
    slices = _chunk_slices(x.chunks)
    blocks = x.to_delayed()
    index = list(itertools.product(*(range(len(s)) for s in slices)))

    def region(i: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slices[axis][k] for axis, k in enumerate(i))

    client = _distributed_client()
    if client is not None:
        from distributed import as_completed

        window = in_flight or 2 * max(1, len(client.scheduler_info().get("workers", {})))
        pending = iter(index)
        futures = {}
        for i in itertools.islice(pending, window):
            futures[client.compute(blocks[i])] = i
        done = as_completed(list(futures))
        for future in done:
            i = futures.pop(future)
            A[region(i)] = future.result()
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                f = client.compute(blocks[nxt])
                futures[f] = nxt
                done.add(f)
        return
    window = in_flight or 8
    for start in range(0, len(index), window):
        batch = index[start : start + window]
        results = dask.compute(*(blocks[i] for i in batch), scheduler=scheduler)
        for i, chunk in zip(batch, results):
            A[region(i)] = chunk


def _staging_layout(A: Any) -> tuple[str, int, int, str, int] | None:
    """(url, block file, block size, order, bytes per major-axis index) when tasks can
    stage blocks into A's store themselves (``Database.stages_blocks``)."""
    db = A._conn._db
    if not db._native.stages_blocks():
        return None
    url = db._url
    if not url.startswith(("postgres://", "postgresql://")):
        url = os.path.abspath(url)  # the embedded store, wherever the workers run
    native = A._stored()
    _dtype, itemsize, shape, order, blksize = native.meta()
    major = 0 if order == "C" else len(shape) - 1
    row = itemsize * math.prod(d for axis, d in enumerate(shape) if axis != major)
    return url, native.file(), blksize, order, row


def _store_staged(
    x: Any,
    A: Any,
    url: str,
    file: int,
    blksize: int,
    order: str,
    row: int,
    *,
    in_flight: Any,
    scheduler: Any,
) -> None:
    """Tasks stage whole blocks into the store and return references; they are adopted here."""
    import dask

    major = 0 if order == "C" else x.ndim - 1
    n = x.shape[major]
    if n == 0 or row == 0:
        return
    # Chunks along the major axis start at block boundaries: a multiple of `unit` indices.
    unit = math.lcm(row, blksize) // row
    target = max(unit, (max(x.chunks[major]) // unit) * unit)
    chunks = tuple(
        (target,) * (n // target) + ((n % target,) if n % target else ()) if axis == major else -1
        for axis in range(x.ndim)
    )
    x = x.rechunk(chunks)
    starts = np.concatenate([[0], np.cumsum(x.chunks[major])[:-1]])
    tasks = []
    for k, blocks in enumerate(x.to_delayed().ravel()):
        first_block = int(starts[k]) * row // blksize
        tasks.append(dask.delayed(_stage_chunk)(blocks, url, file, first_block, blksize, order))
    client = _distributed_client()
    native = A._stored(change=True)
    if client is not None:
        from distributed import as_completed

        for future in as_completed(client.compute(tasks)):
            for block, ref in future.result():
                native.adopt(block, ref)
        return
    window = in_flight or 8
    for start in range(0, len(tasks), window):
        for refs in dask.compute(*tasks[start : start + window], scheduler=scheduler):
            for block, ref in refs:
                native.adopt(block, ref)


def _stage_chunk(
    chunk: Any, url: str, file: int, first_block: int, blksize: int, order: str
) -> list[tuple[int, bytes]]:
    """In a worker: stages the blocks of `chunk` (whole blocks of block file `file` from
    `first_block` on, the last one possibly short) and returns their references."""
    from . import _native

    db = _STAGING_DBS.get(url)
    if db is None:
        db = _STAGING_DBS[url] = _native.Database(url)
    raw = np.asarray(chunk).tobytes(order="C" if order == "C" else "F")
    refs = []
    for i, off in enumerate(range(0, len(raw), blksize)):
        ref = db.stage_block(file, first_block + i, raw[off : off + blksize])
        if ref is None:
            raise OSError(
                f"{url} cannot stage blocks: it leaves 1 GiB of its disk free; nothing was "
                "committed"
            )
        refs.append((first_block + i, ref))
    return refs


def _distributed_client() -> Any:
    """The current dask.distributed client, if one is active."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None
