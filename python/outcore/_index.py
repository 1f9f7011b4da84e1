"""Index arithmetic: which part of the major axis an index touches.

Only the blocks under that part are mapped; the view handed to NumPy covers exactly those
major-axis indices, so the user's index is rewritten relative to its start.
"""

import operator
from typing import Any

import numpy as np


def _is_advanced(item: Any) -> bool:
    if isinstance(item, (slice, type(None), type(Ellipsis))):
        return False
    if isinstance(item, (bool, np.bool_)):
        return True
    try:
        operator.index(item)
        return False
    except TypeError:
        return True


def split(index: Any, shape: tuple[int, ...], major: int) -> tuple[int, int, Any]:
    """Return ``(lo, hi, rewritten)`` for ``array[index]``.

    ``lo..hi`` is the range of the major axis the index touches and ``rewritten`` the index to
    apply to a view whose major axis starts at ``lo``. Advanced indexing (arrays, lists,
    booleans) touches the whole axis and is passed through unchanged; NumPy validates it.
    """
    ndim = len(shape)
    items = index if isinstance(index, tuple) else (index,)
    if ndim == 0:
        return 0, 1, index
    if any(_is_advanced(i) for i in items):
        return 0, shape[major], index
    ellipses = sum(1 for i in items if i is Ellipsis)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if used > ndim:
        raise IndexError(
            f"too many indices for array: array is {ndim}-dimensional, but {used} were indexed"
        )
    expanded = []
    for i in items:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (ndim - used))
        else:
            expanded.append(i)
    if not ellipses:
        expanded.extend([slice(None)] * (ndim - used))
    positions = [k for k, i in enumerate(expanded) if i is not None]
    at = positions[major]
    item = expanded[at]
    length = shape[major]
    if isinstance(item, slice):
        start, stop, step = item.indices(length)
        picked = range(start, stop, step)
        if len(picked) == 0:
            lo = hi = min(start, length) if step > 0 else min(stop + 1, length)
            lo = max(lo, 0)
            hi = lo
            expanded[at] = slice(0, 0)
        else:
            lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
            rel_stop = stop - lo
            expanded[at] = slice(start - lo, rel_stop if rel_stop >= 0 else None, step)
    else:
        i = operator.index(item)
        if not -length <= i < length:
            raise IndexError(
                f"index {i} is out of bounds for axis {major} with size {length}"
            )
        i %= length
        lo, hi = i, i + 1
        expanded[at] = 0
    return lo, hi, tuple(expanded)
