"""Ordered buckets (pgx_impute.partition) and the chains assembly reads them in."""

from __future__ import annotations

import bisect
import itertools
import random

import pyarrow as pa
import pyarrow.compute as pc
from pgx_impute import partition
from pgx_impute.stage import chains


def test_member_keys_trim_ascii_whitespace_and_in_order_marks_rows_that_need_it() -> None:
    raw = pa.chunked_array([[" 001\t", "001", None], ["", "  ", "1"]])
    assert partition.member_keys(raw).to_pylist() == ["001", "001", "", "", "", "1"]
    assert partition.in_order(raw).to_pylist() == [False, True, False, True, False, True]


def test_cuts_from_weighted_samples_split_rows_evenly() -> None:
    rng = random.Random(5)
    keys = [f"{rng.randrange(10**9):010d}" for _ in range(200_000)]
    ranges = [keys[i : i + 25_000] for i in range(0, len(keys), 25_000)]
    n = 40
    samples = [(partition.sample(pa.array(r), partition.quota(len(r), len(keys), n)), len(r)) for r in ranges]
    cuts = partition.split_points(samples, n)
    assert len(cuts) == n - 1 and cuts == sorted(cuts)
    ordered = pa.array(sorted(keys))
    bounds = partition.bucket_bounds(ordered, cuts)
    sizes = [int(b - a) for a, b in itertools.pairwise(bounds)]
    assert sum(sizes) == len(keys)
    assert max(sizes) <= 1.15 * len(keys) / n and min(sizes) >= 0.85 * len(keys) / n, sizes


def test_bucket_bounds_keep_a_member_in_one_bucket() -> None:
    ordered = pa.array(["a", "b", "b", "b", "c", "d"])
    bounds = partition.bucket_bounds(ordered, ["b", "b", "d"])
    assert bounds == [0, 1, 1, 5, 6]  # every "b" in bucket 2 (bucket 1 is empty)
    assert partition.bucket_bounds(ordered, []) == [0, 6]
    assert partition.split_points([], 4) == [] and partition.split_points([(["x"], 3)], 1) == []


def test_bucket_bounds_agree_with_a_bisect_per_cut() -> None:
    rng = random.Random(11)
    alphabet = ["", "0", "00", "1", "a", "é", "\u00ff", "z", "\U0001f600"]
    for _ in range(200):
        keys = sorted("".join(rng.choices(alphabet, k=rng.randrange(3))) for _ in range(rng.randrange(40)))
        cuts = sorted("".join(rng.choices(alphabet, k=rng.randrange(3))) for _ in range(rng.randrange(8)))
        expected = [0, *(bisect.bisect_left(keys, c) for c in cuts), len(keys)]
        assert partition.bucket_bounds(pa.array(keys, pa.string()), cuts) == expected, (keys, cuts)


def test_few_distinct_keys_leave_later_buckets_empty() -> None:
    cuts = partition.split_points([(["k"] * 10, 1000)], 5)
    assert cuts == ["k"] * 4
    assert partition.bucket_bounds(pa.array(["k"] * 3), cuts) == [0, 0, 0, 0, 0, 3]


def piece(bucket: int, first: str, last: str) -> dict[str, object]:
    return {"bucket": bucket, "first": first, "last": last}


def test_ordered_pieces_form_one_chain_and_overlapping_ones_their_own() -> None:
    ordered = [piece(b, f"{b:03d}a", f"{b:03d}z") for b in range(300)]
    assert len(chains(list(reversed(ordered)))) == 1
    assert [p["bucket"] for p in chains(ordered)[0]] == list(range(300))
    # Padded keys sort before every regular one: pieces of their own, chained when they do not overlap.
    padded = [piece(7, " 007a", " 007b"), piece(9, " 009a", " 009c"), piece(8, " 008", " 010")]
    groups = chains(ordered + padded)
    assert len(groups) == 2
    assert sum(len(g) for g in groups) == 303
    for g in groups:
        assert all(a["last"] < b["first"] for a, b in itertools.pairwise(g))


def test_sample_is_sorted_evenly_spaced_and_complete_when_small() -> None:
    keys = pa.array([f"{i:04d}" for i in range(1000)][::-1])
    picked = partition.sample(keys, 10)
    assert picked == sorted(picked) and len(picked) == 10
    assert picked[0] == "0050" and picked[-1] == "0950"
    assert partition.sample(pa.array(["b", "a"]), 5) == ["a", "b"]
    assert partition.sample(pc.cast(pa.array([], pa.string()), pa.string()), 3) == []
