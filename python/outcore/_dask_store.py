"""Computing a dask array into a BigArray inside one transaction (``outcore.dask.store``).

The chunks are computed wherever dask runs them — threads, processes, or the workers of a
``dask.distributed`` cluster — and written into the array by this process as they arrive, in
the transaction of the array's connection: nothing is visible to other connections until
``transaction.commit()``, which publishes every chunk at once (or raises ``ConflictError`` if
another transaction changed an overlapping block first); ``transaction.abort()`` discards them.
At most ``in_flight`` chunks are computed ahead of the writes, so memory stays bounded on this
side; on the embedded store, new data goes into staged space of the store (page cache the
kernel can write back), so the array may be larger than RAM.

Known limit: the computed chunks travel from the workers to this process (the scheduler's
transfer). Workers writing block versions into the store themselves and handing the client
only references is not built yet.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


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
