"""Streaming k-way merge of sorted sources (chains of pieces), read batch by batch.

Used to assemble an impute output (a silver partition, a quarantine object, a year of profiles)
when its pieces form more than one chain (rows whose raw key sorts out of bucket order), with memory
bounded by the batch size whatever the object size.
The order is a composite key encoded as one byte string (components joined with NUL, which the
data cannot contain: ingest rejects C0 control characters), so a single binary comparison decides
it; integers are zero-padded so that byte order is numeric order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

KEY = "__pgx_merge_key"
_PAD = 20


def sort_key(table: pa.Table, columns: Sequence[str]) -> pa.Array:
    """The composite sort key of ``columns`` as one binary array (byte order = tuple order)."""
    parts: list[Any] = []
    for name in columns:
        col = table[name]
        if pa.types.is_integer(col.type):
            col = pc.utf8_lpad(pc.cast(col, pa.string()), _PAD, "0")
        parts.append(pc.fill_null(pc.cast(col, pa.string()), ""))
    joined = pc.binary_join_element_wise(*parts, "\x00")
    return (
        pc.cast(joined, pa.binary()).combine_chunks()
        if isinstance(joined, pa.ChunkedArray)
        else pc.cast(joined, pa.binary())
    )


Source = Callable[[], Iterator[tuple[pa.RecordBatch, bool]]]  # (batch, more batches follow)


def merge_sorted(sources: Sequence[Source], key_columns: Sequence[str], emit: Callable[[pa.Table], None]) -> int:
    """Merge sources (each yields batches sorted by ``key_columns``, keys unique) in key order.

    Each round takes, from every source's current batch, the rows up to a bound: the smallest
    "last key" among the sources that still have batches to come (a source whose current batch is
    its last does not limit it). Every row with a key up to the bound is then in memory, so the
    round can be sorted and emitted; when no source has batches to come, one round takes the rest.
    Memory: one batch per source plus one round. Returns rows emitted.
    """
    iters = [factory() for factory in sources]
    current: list[pa.Table | None] = [None] * len(iters)
    more = [False] * len(iters)

    def load(i: int) -> None:
        for batch, follows in iters[i]:
            more[i] = follows
            if batch.num_rows:
                t = pa.Table.from_batches([batch])
                current[i] = t.append_column(KEY, sort_key(t, key_columns))
                return
        current[i], more[i] = None, False

    for i in range(len(iters)):
        load(i)
    emitted = 0
    while True:
        live = [i for i, t in enumerate(current) if t is not None]
        if not live:
            return emitted
        pending = [i for i in live if more[i]]
        bound = pa.scalar(min(_last_key(current[i]) for i in pending), pa.binary()) if pending else None
        parts = []
        for i in live:
            t = current[i]
            assert t is not None
            n = t.num_rows if bound is None else int(pc.sum(pc.less_equal(t[KEY], bound)).as_py() or 0)
            if n:
                parts.append(t.slice(0, n))
            if n == t.num_rows:
                load(i)
            else:
                current[i] = t.slice(n)
        merged = pa.concat_tables(parts)
        merged = merged.take(pc.sort_indices(merged[KEY])).drop_columns([KEY])
        emit(merged)
        emitted += merged.num_rows


def _last_key(t: pa.Table | None) -> bytes:
    assert t is not None
    value = t[KEY][t.num_rows - 1].as_py()
    assert isinstance(value, bytes)
    return value
