"""Ordered buckets: the members of impute split into ranges of their trimmed ``mi_person_key``.

A member's rows must meet in one bucket, and each bucket must fit the work item's memory budget.
Splitting the members into **ranges** of the member key (rather than by a hash of it) does both and
one thing more: the buckets come in key order, so an output object (sorted by the raw
``mi_person_key`` first) is the concatenation of its buckets' pieces in bucket order — no k-way
merge of thousands of fragments, whatever the bucket count. Only rows whose raw key differs from
the member key (leading or trailing ASCII whitespace, or empty) can sort out of bucket order; they
are kept in pieces of their own and merged in (see :mod:`pgx_impute.stage`).

Split points come from a sample: every sampled range of bronze contributes evenly spaced keys of
its sorted member keys, each weighing the rows it stands for; the driver cuts the weighted sample
into ``n`` equal parts. The outputs do not depend on where the cuts fall (every output is totally
ordered), only the buckets' sizes do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

# Sampled keys per bucket: the cuts then fall within a few per cent of the ideal (the bucket
# estimate's peak factor leaves room for that spread).
SAMPLES_PER_BUCKET = 256


def member_keys(raw: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The member key of each row: ``mi_person_key`` trimmed of ASCII whitespace; NULL → ``""``."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks() if raw.num_chunks else pa.array([], pa.string())
    return pc.fill_null(pc.ascii_trim_whitespace(raw), "")


def in_order(raw: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whether each row's raw key equals its member key, i.e. sorts in bucket order (bool)."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks() if raw.num_chunks else pa.array([], pa.string())
    return pc.fill_null(pc.equal(raw, member_keys(raw)), False)


def sample(keys: pa.Array, quota: int) -> list[str]:
    """``quota`` evenly spaced member keys of ``keys`` in sorted order (all of them when fewer)."""
    n = len(keys)
    if n == 0 or quota <= 0:
        return []
    ordered = pc.take(keys, pc.sort_indices(keys))
    if n <= quota:
        return [str(k) for k in ordered.to_pylist()]
    step = n / quota
    picks = pa.array([min(n - 1, int((i + 0.5) * step)) for i in range(quota)], pa.int64())
    return [str(k) for k in pc.take(ordered, picks).to_pylist()]


def quota(rows: int, total_rows: int, n_buckets: int) -> int:
    """Keys to sample from a range of ``rows`` out of ``total_rows`` for ``n_buckets`` buckets."""
    if n_buckets <= 1 or rows == 0 or total_rows == 0:
        return 0
    return max(1, math.ceil(SAMPLES_PER_BUCKET * n_buckets * rows / total_rows))


def split_points(samples: Sequence[tuple[Sequence[str], int]], n_buckets: int) -> list[str]:
    """The ``n_buckets - 1`` cuts (non-decreasing) of weighted samples ``(keys, rows they stand for)``.

    Bucket ``b`` holds the member keys ``k`` with ``cuts[b-1] <= k < cuts[b]`` (:func:`group_by_bucket`).
    """
    if n_buckets <= 1:
        return []
    weighted = sorted((key, rows / len(keys)) for keys, rows in samples if keys for key in keys)
    if not weighted:
        return []
    total = sum(w for _, w in weighted)
    cuts: list[str] = []
    acc = 0.0
    want = 1
    for key, w in weighted:
        while want < n_buckets and acc >= total * want / n_buckets:
            cuts.append(key)
            want += 1
        acc += w
    cuts.extend([weighted[-1][0]] * (n_buckets - 1 - len(cuts)))  # the last buckets stay empty
    return cuts


def group_by_bucket(keys: pa.Array, cuts: Sequence[str]) -> tuple[pa.Array | None, list[int]]:
    """The row order that groups member keys ``keys`` (in any order) by bucket, rows of one bucket
    keeping their order, and each bucket's row offsets in it: bucket ``b`` is rows
    ``bounds[b]:bounds[b+1]`` of the grouped rows; ``len(bounds) == len(cuts) + 2``. The order is
    ``None`` when there is one bucket (nothing to move).

    A row's bucket is the number of cuts <= its key (a binary search each). Ordering the rows by
    that small number instead of by key moves them ~2.5 x faster: the rows of a bucket are taken in
    their own order (58,592 medical rows, 70 MB: 0.07 s against 0.17-0.21 s with 2-6 buckets)."""
    n = len(keys)
    if not cuts:
        return None, [0, n]
    ids = pc.search_sorted(pa.array(cuts, pa.string()), keys.cast(pa.string()), side="right")
    order = pc.sort_indices(ids)  # stable
    starts = pc.search_sorted(ids.take(order), pa.array(range(len(cuts) + 2), ids.type), side="left")
    return order, starts.to_pylist()
