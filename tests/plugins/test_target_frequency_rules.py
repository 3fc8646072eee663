"""Rules of the target-frequency report."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS
from pgx_clean.rules import gold_schema
from pgx_target_frequency.rules import (
    ICD_FREQUENCY_SCHEMA,
    POSITIONS,
    PROCEDURE_FREQUENCY_SCHEMA,
    FrequencyPartial,
    icd_frequency_by_position,
    merge_frequencies,
    merge_partials,
    observed_icd_codes,
    partition_partial,
    procedure_code_frequency,
    suggested_icd_mappings,
    suppress_small_counts,
)
from pgx_update_codes.rules import load_code_map

from pgx_core.errors import DataError


def gold(rows: list[dict[str, Any]]) -> pa.Table:
    schema = gold_schema("medical")
    data = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table(data, schema=schema)


def as_dict(table: pa.Table) -> dict[tuple[Any, ...], Any]:
    rows = table.to_pylist()
    return {tuple(v for k, v in r.items() if k != "frequency"): r["frequency"] for r in rows}


ROWS = [
    {"primary_icd_diagnosis_code": "F1120", "two_icd_diagnosis_code": "I10", "procedure_code": "99213",
     "cpt_mod_1_code": "LT"},
    {"primary_icd_diagnosis_code": "F1120", "two_icd_diagnosis_code": "F1120", "procedure_code": "99213"},
    {"primary_icd_diagnosis_code": "f11.20", "ten_icd_diagnosis_code": "Z00", "procedure_code": None},
    {"primary_icd_diagnosis_code": None, "procedure_code": "J1100"},
]


def test_positions_are_the_spec_labels() -> None:
    assert POSITIONS == ("primary", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def test_icd_frequency_by_position_counts() -> None:
    out = icd_frequency_by_position(gold(ROWS), 2019, "25-44")
    assert out.schema.equals(ICD_FREQUENCY_SCHEMA)
    assert out.column_names == ["event_year", "age_band", "position", "code", "frequency"]
    assert out.to_pylist() == [
        {"event_year": 2019, "age_band": "25-44", "position": "primary", "code": "F1120", "frequency": 2},
        {"event_year": 2019, "age_band": "25-44", "position": "primary", "code": "f11.20", "frequency": 1},
        {"event_year": 2019, "age_band": "25-44", "position": "two", "code": "F1120", "frequency": 1},
        {"event_year": 2019, "age_band": "25-44", "position": "two", "code": "I10", "frequency": 1},
        {"event_year": 2019, "age_band": "25-44", "position": "ten", "code": "Z00", "frequency": 1},
    ]


def test_procedure_code_frequency_counts_only_procedure_code() -> None:
    out = procedure_code_frequency(gold(ROWS), 2019, "unknown")
    assert out.schema.equals(PROCEDURE_FREQUENCY_SCHEMA)
    assert out.to_pylist() == [
        {"event_year": 2019, "age_band": "unknown", "code": "99213", "frequency": 2},
        {"event_year": 2019, "age_band": "unknown", "code": "J1100", "frequency": 1},
    ]


def test_empty_partition_gives_empty_reports_with_schema() -> None:
    partial = partition_partial(gold([]), 2016, "0-12")
    assert partial.icd.num_rows == 0 and partial.icd.schema.equals(ICD_FREQUENCY_SCHEMA)
    assert partial.procedure.num_rows == 0 and partial.procedure.schema.equals(PROCEDURE_FREQUENCY_SCHEMA)
    assert merge_partials([partial, FrequencyPartial.empty()]).icd.num_rows == 0
    assert merge_partials([]).icd.schema.equals(ICD_FREQUENCY_SCHEMA)


def test_order_is_year_band_order_position_ordinal_then_code() -> None:
    partials = [
        partition_partial(gold([{"ten_icd_diagnosis_code": "B", "two_icd_diagnosis_code": "A",
                                 "three_icd_diagnosis_code": "C", "procedure_code": "P"}]), year, band)
        for year, band in [(2020, "0-12"), (2019, "95-114"), (2019, "unknown"), (2019, "13-24"), (2019, "0-12")]
    ]
    merged = merge_partials(reversed(partials))
    keys = [(r["event_year"], r["age_band"], r["position"]) for r in merged.icd.to_pylist()]
    bands = ["0-12", "13-24", "95-114", "unknown"]
    expected = [(2019, b, p) for b in bands for p in ("two", "three", "ten")] + [
        (2020, "0-12", p) for p in ("two", "three", "ten")
    ]
    assert keys == expected
    assert [r["age_band"] for r in merged.procedure.to_pylist()] == [*bands, "0-12"]


def test_suppression() -> None:
    table = pa.table({"event_year": pa.array([2019] * 4, pa.int32()), "age_band": ["0-12"] * 4,
                      "code": ["a", "b", "c", "d"], "frequency": pa.array([1, 10, 11, 500], pa.int64())},
                     schema=PROCEDURE_FREQUENCY_SCHEMA)
    out = suppress_small_counts(table)
    assert out["frequency"].to_pylist() == [None, None, 11, 500]
    assert out["code"].to_pylist() == ["a", "b", "c", "d"] and out.schema.equals(table.schema)
    assert suppress_small_counts(table, threshold=2)["frequency"].to_pylist() == [None, 10, 11, 500]
    with pytest.raises(ValueError, match="suppressed"):
        merge_frequencies([out])


def test_merge_of_partials_equals_whole() -> None:
    rng = random.Random(5)
    codes = ["F1120", "I10", "Z00", "J690", None]
    rows = [{c: rng.choice(codes) for c in ICD_DIAGNOSIS_COLUMNS} | {"procedure_code": rng.choice(["1", "2", None])}
            for _ in range(300)]
    table = gold(rows)
    whole = partition_partial(table, 2019, "45-54")
    pieces = [partition_partial(pa.Table.from_batches([b]), 2019, "45-54")
              for b in table.to_batches(max_chunksize=37)]
    merged = merge_partials(pieces)
    assert merged.icd.equals(whole.icd) and merged.procedure.equals(whole.procedure)
    # pairwise merging in any order is the same
    folded = FrequencyPartial.empty()
    for piece in reversed(pieces):
        folded = folded.merge(piece)
    assert folded.icd.equals(whole.icd)
    # and the totals are the plain counts
    expected = Counter((p, r[c]) for r in rows for p, c in zip(POSITIONS, ICD_DIAGNOSIS_COLUMNS, strict=True)
                       if r[c] is not None)
    got = {(k[2], k[3]): v for k, v in as_dict(whole.icd).items()}
    assert got == dict(expected)


@given(st.lists(st.sampled_from(["A01", "B02", None, "c03"]), max_size=60), st.integers(1, 7))
@settings(max_examples=50, deadline=None)
def test_merge_is_exact_for_any_split(codes: list[str | None], size: int) -> None:
    table = gold([{"primary_icd_diagnosis_code": c, "procedure_code": c} for c in codes])
    whole = partition_partial(table, 2018, "65-74")
    parts = [partition_partial(table.slice(i, size), 2018, "65-74") for i in range(0, len(codes), size)]
    merged = merge_partials(parts)
    assert merged.icd.equals(whole.icd) and merged.procedure.equals(whole.procedure)


def test_merge_rejects_mixed_or_foreign_tables() -> None:
    icd = icd_frequency_by_position(gold(ROWS), 2019, "0-12")
    proc = procedure_code_frequency(gold(ROWS), 2019, "0-12")
    with pytest.raises(ValueError):
        merge_frequencies([icd, proc])
    with pytest.raises(ValueError):
        merge_frequencies([pa.table({"x": [1]})])
    with pytest.raises(ValueError):
        merge_frequencies([])


def test_bad_partition_and_missing_column() -> None:
    with pytest.raises(ValueError, match="age_band"):
        partition_partial(gold(ROWS), 2019, "20-30")
    with pytest.raises(ValueError, match="event_year"):
        partition_partial(gold(ROWS), "2019", "0-12")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="procedure_code"):
        procedure_code_frequency(gold(ROWS).drop_columns(["procedure_code"]), 2019, "0-12")


def test_suggested_icd_mappings() -> None:
    observed = ["F11.20", "YF1120", "J690 - PNEUMONITIS", "Unknown", "F1120", "I5032", None, "F11.20", "x1"]
    assert suggested_icd_mappings(observed) == {
        "F11.20": "F1120", "J690 - PNEUMONITIS": "J690", "YF1120": "F1120",
    }
    tm = load_code_map({"I5032": "I509", "X1": "R69"})
    assert suggested_icd_mappings(pa.array(observed), tm) == {
        "F11.20": "F1120", "I5032": "I509", "J690 - PNEUMONITIS": "J690", "YF1120": "F1120", "x1": "R69",
    }
    assert suggested_icd_mappings(observed, tm, codes_of_interest=["f11.20", "R69"]) == {
        "F11.20": "F1120", "YF1120": "F1120", "x1": "R69",
    }
    assert suggested_icd_mappings([], tm) == {}


def test_suggestions_from_a_partition_and_from_a_report() -> None:
    table = gold(ROWS)
    assert observed_icd_codes(table).to_pylist() == ["F1120", "I10", "Z00", "f11.20"]
    report = icd_frequency_by_position(table, 2019, "0-12")
    assert suggested_icd_mappings(report["code"]) == suggested_icd_mappings(observed_icd_codes(table)) == {
        "f11.20": "F1120"
    }
