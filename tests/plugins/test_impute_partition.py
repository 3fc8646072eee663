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
    _order, bounds = partition.group_by_bucket(pa.array(keys), cuts)
    sizes = [int(b - a) for a, b in itertools.pairwise(bounds)]
    assert sum(sizes) == len(keys)
    assert max(sizes) <= 1.15 * len(keys) / n and min(sizes) >= 0.85 * len(keys) / n, sizes


def grouped(keys: list[str], cuts: list[str]) -> tuple[list[str], list[int]]:
    order, bounds = partition.group_by_bucket(pa.array(keys, pa.string()), cuts)
    return (keys if order is None else [keys[i] for i in order.to_pylist()]), bounds


def test_buckets_keep_a_member_in_one_bucket() -> None:
    rows, bounds = grouped(["d", "b", "a", "b", "c", "b"], ["b", "b", "d"])
    assert rows == ["a", "b", "b", "c", "b", "d"] and bounds == [0, 1, 1, 5, 6]  # every "b" in bucket 2
    assert grouped(["b", "a"], []) == (["b", "a"], [0, 2])
    assert partition.split_points([], 4) == [] and partition.split_points([(["x"], 3)], 1) == []


def test_a_key_goes_to_the_bucket_a_bisect_of_the_cuts_names_and_keeps_its_order_there() -> None:
    rng = random.Random(11)
    alphabet = ["", "0", "00", "1", "a", "é", "\u00ff", "z", "\U0001f600"]
    for _ in range(200):
        keys = ["".join(rng.choices(alphabet, k=rng.randrange(3))) for _ in range(rng.randrange(40))]
        cuts = sorted("".join(rng.choices(alphabet, k=rng.randrange(3))) for _ in range(rng.randrange(8)))
        bucket = [bisect.bisect_right(cuts, k) for k in keys]
        expected = [k for b in range(len(cuts) + 1) for k, kb in zip(keys, bucket, strict=True) if kb == b]
        counts = [bucket.count(b) for b in range(len(cuts) + 1)]
        assert grouped(keys, cuts) == (expected, [0, *itertools.accumulate(counts)]), (keys, cuts)


def test_few_distinct_keys_leave_later_buckets_empty() -> None:
    cuts = partition.split_points([(["k"] * 10, 1000)], 5)
    assert cuts == ["k"] * 4
    assert grouped(["k"] * 3, cuts)[1] == [0, 0, 0, 0, 0, 3]


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
