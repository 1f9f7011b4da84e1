"""``BigArray.attrs``: user attributes stored with the array, transactionally."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._array import BigArray


def encode(attrs: dict[str, Any]) -> str:
    """The JSON text stored for ``attrs`` (one line); refuses what JSON cannot hold."""
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict, not {type(attrs).__name__}")
    for key in attrs:
        if not isinstance(key, str):
            raise TypeError(f"attribute names are strings, not {key!r}")
    try:
        return json.dumps(attrs, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"array attributes must be JSON-serialisable (str, int, float, bool, None, lists "
            f"and dicts of them; no NaN or infinity): {e}"
        ) from None


class Attrs(MutableMapping[str, Any]):
    """The attributes of one array: a dict-like view of the JSON object stored in its
    metadata record. Every change rewrites the record within the current transaction
    (commit keeps it, abort undoes it); values are copies (change them by assigning)."""

    def __init__(self, array: BigArray) -> None:
        self._array = array

    def _load(self) -> dict[str, Any]:
        array = self._array
        if array._native is None:
            return dict(array._pending_attrs)
        array._conn._check_open()
        text = array._native.attrs()
        return {} if not text else dict(json.loads(text))

    def _store(self, attrs: dict[str, Any]) -> None:
        text = encode(attrs)
        array = self._array
        if array._native is None:
            array._pending_attrs = json.loads(text)
            return
        native = array._stored(change=True)
        native.set_attrs(text if attrs else None)

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        attrs = self._load()
        attrs[key] = value
        self._store(attrs)

    def __delitem__(self, key: str) -> None:
        attrs = self._load()
        del attrs[key]
        self._store(attrs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Changes several attributes with one metadata write."""
        attrs = self._load()
        attrs.update(*args, **kwargs)
        self._store(attrs)

    def clear(self) -> None:
        """Removes every attribute."""
        self._store({})

    def __eq__(self, other: object) -> bool:
        return self._load() == (dict(other) if isinstance(other, Attrs) else other)

    def __repr__(self) -> str:
        return repr(self._load())
