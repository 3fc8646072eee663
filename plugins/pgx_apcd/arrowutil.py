"""Small Arrow helpers shared by the domain rules (clean, update-codes)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ArrayLike = Any  # pyarrow ships no type information
_STRING = pa.string()


def contiguous(arr: ArrayLike) -> Any:
    """A single :class:`pyarrow.Array` (dictionary encoding needs one dictionary per column)."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def as_string(arr: ArrayLike) -> Any:
    """The array as ``string`` (large_string, dictionary or all-null inputs are accepted)."""
    arr = contiguous(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr if arr.type == _STRING else arr.cast(_STRING)


def count_true(mask: ArrayLike) -> int:
    """Number of true values (NULLs do not count)."""
    total = pc.sum(mask).as_py()
    return int(total) if total is not None else 0


class StringLookup:
    """An immutable ``str → str`` table, sorted by key, looked up a whole Arrow array at a time.

    The base of the drug map (clean) and the code maps (update-codes): each validates and
    normalizes its own entries and computes its own fingerprint (their stored formats differ),
    then hands both here.
    """

    __slots__ = ("_entries", "_fingerprint", "_keys", "_values")

    def __init__(self, entries: Mapping[str, str], fingerprint: str) -> None:
        ordered = dict(sorted(entries.items()))
        self._entries: Mapping[str, str] = MappingProxyType(ordered)
        self._keys = pa.array(list(ordered), _STRING)
        self._values = pa.array(list(ordered.values()), _STRING)
        self._fingerprint = fingerprint

    @property
    def entries(self) -> Mapping[str, str]:
        """The entries, sorted by key (read-only)."""
        return self._entries

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the entries in the subclass's canonical form."""
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._entries)

    def mapped(self, keys: ArrayLike) -> Any:
        """The value of each key of the (string) array; NULL where the table has no entry."""
        return pc.take(self._values, pc.index_in(as_string(keys), value_set=self._keys))
