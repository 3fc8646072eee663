"""Small Arrow helpers shared by the domain rules (clean, update-codes)."""

from __future__ import annotations

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
