"""Rules of update-codes (pass 2)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS, PROCEDURE_COLUMNS
from pgx_clean.rules import gold_schema, load_drug_map
from pgx_update_codes.rules import (
    CodeMapError,
    add_stats,
    load_code_map,
    normalize_icd,
    normalize_procedure,
    update_codes_table,
)

from pgx_core.errors import DataError, PgxError

ICD_PROCEDURE_COLUMNS = tuple(f"{o}_icd_procedure_code" for o in
                              ("primary", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))


def gold(dataset: str, rows: list[dict[str, Any]]) -> pa.Table:
    """A gold table (exact gold schema) from partial rows."""
    schema = gold_schema(dataset)
    defaults = {"incurred_date": "20190115", "mi_person_key": "000000001", "claim_id": "C1",
                "_source_file": "f1", "event_date": dt.date(2019, 1, 15), "member_age_dos": 40}
    data = {f.name: [r.get(f.name, defaults.get(f.name)) for r in rows] for f in schema}
    data["_source_line"] = [i + 2 for i in range(len(rows))]
    return pa.table(data, schema=schema)


def icd(values: list[str | None], target_map: Any = None) -> list[str | None]:
    return normalize_icd(pa.array(values, pa.string()), target_map)[0].to_pylist()


# --------------------------------------------------------------------------------------------
# normalize_icd


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("F11.20", "F1120"),
        ("f11.20", "F1120"),
        ("F 11.20", "F1120"),
        ("I5032", "I5032"),
        ("YF1120", "F1120"),  # the token path: Y is not followed by a digit
        ("J690 - PNEUMONITIS", "J690"),
        ("DX: R69", "R69"),
        ("A0", "A0"),  # too short for either pattern; no token → unchanged
        ("Z0000000", "Z000000"),  # too long for the full pattern; the token is capped at 7
        ("A1", "A1"),  # the full pattern needs 3 characters
        ("A12", "A12"),
        ("1234", "1234"),
    ],
)
def test_icd_examples(raw: str, expected: str) -> None:
    assert icd([raw]) == [expected]


def test_unrecognized_values_are_left_exactly_as_they_were_and_counted() -> None:
    out, changed, unrecognized = normalize_icd(pa.array(["Unknown", "unknown ", ".", "A0", "F11.20", None]))
    assert out.to_pylist() == ["Unknown", "unknown ", ".", "A0", "F1120", None]
    assert (changed, unrecognized) == (1, 4)


def test_null_stays_null_and_is_not_counted() -> None:
    out, changed, unrecognized = normalize_icd(pa.array([None, None], pa.string()))
    assert out.to_pylist() == [None, None] and changed == unrecognized == 0


def test_counts_are_per_row() -> None:
    _, changed, unrecognized = normalize_icd(pa.array(["f1120", "f1120", "F1120", "Unknown", "Unknown"]))
    assert (changed, unrecognized) == (2, 2)


def test_target_map_lookup_on_flat_value() -> None:
    tm = load_code_map({"YF1120": "F1120", "f11.9": "F11.90", "R 69": "R69"})
    assert dict(tm.entries) == {"F119": "F1190", "R69": "R69", "YF1120": "F1120"}
    assert icd(["YF1120", "yf11.20", "F11.9", "r69"], tm) == ["F1120", "F1120", "F1190", "R69"]


def test_map_wins_over_the_full_pattern() -> None:
    tm = load_code_map({"F1120": "F1121"})
    assert icd(["F11.20", "F1121"], tm) == ["F1121", "F1121"]


def test_token_is_not_looked_up_in_the_map_literal_spec() -> None:
    # The rule consults the map for ``flat`` only. With a map that re-targets a well-formed code,
    # a token found inside junk is returned as is on pass 1 and mapped on a later pass.
    tm = load_code_map({"F1120": "F1121"})
    assert icd(["XYF1120"], tm) == ["F1120"]
    assert icd(icd(["XYF1120"], tm), tm) == ["F1121"]


def test_changed_means_output_differs_from_input() -> None:
    tm = load_code_map({"F1120": "F1120"})
    _, changed, unrecognized = normalize_icd(pa.array(["F1120", "F11.20"]), tm)
    assert (changed, unrecognized) == (1, 0)


@given(st.lists(st.one_of(st.none(), st.text(alphabet="AFJYZafy0123456789. -:xX", max_size=12)), max_size=30))
@settings(max_examples=300)
def test_icd_never_empty_and_idempotent(values: list[str | None]) -> None:
    tm = load_code_map({"YF1120": "F1120", "XX": "R69", "0": "Z00"})  # no token-shaped key
    for code_map in (None, tm):
        once, _, _ = normalize_icd(pa.array(values, pa.string()), code_map)
        for raw, out in zip(values, once.to_pylist(), strict=True):
            assert (out is None) == (raw is None)
            if raw:
                assert out != ""
        twice, changed, _ = normalize_icd(once, code_map)
        assert twice.equals(once) and changed == 0


# --------------------------------------------------------------------------------------------
# code maps


def test_code_map_rejects_conflicts_chains_and_non_canonical_targets_naming_codes() -> None:
    with pytest.raises(CodeMapError) as err:
        load_code_map({"F11.20": "F1120", "f1120": "F1121"})
    assert "'F11.20'" in str(err.value) and "'f1120'" in str(err.value)
    with pytest.raises(CodeMapError, match=r"'A10'.*'B20'.*'C30'"):
        load_code_map({"A10": "B20", "B20": "C30"})
    with pytest.raises(CodeMapError, match="YF1120"):
        load_code_map({"A10": "YF1120"})
    with pytest.raises(CodeMapError) as err:
        load_code_map({" ": "A10", "B20": ". ", "C30": 5})  # type: ignore[dict-item]
    assert isinstance(err.value, ValueError) and isinstance(err.value, PgxError) and err.value.exit_code == 64


def test_code_map_reports_every_problem() -> None:
    with pytest.raises(CodeMapError) as err:
        load_code_map({".": "A10", "B20": " ", "C30": "D40", "D40": "E50"})
    assert len(err.value.problems) == 3


def test_code_map_agreeing_duplicates_merge_and_fingerprint_ignores_spelling() -> None:
    a = load_code_map({"F11.20": "F1120", "f1120": "F11.20"})
    b = load_code_map({"F1120": "F1120"})
    assert dict(a.entries) == {"F1120": "F1120"}
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != load_code_map({"F1120": "F1121"}).fingerprint
    assert a.fingerprint != load_code_map({"F1120": "F1120"}, "procedure").fingerprint
    assert a.fingerprint.startswith("sha256:")


def test_map_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="procedure"):
        normalize_procedure(pa.array(["x"]), load_code_map({"A10": "A10"}))
    with pytest.raises(ValueError, match="icd"):
        normalize_icd(pa.array(["x"]), load_code_map({"A": "B"}, "procedure"))
    with pytest.raises(ValueError):
        load_code_map({}, "drg")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# normalize_procedure


def test_procedure_upper_cased_spaces_removed_then_map() -> None:
    pm = load_code_map({"99 213": "99214", "j1100": "J1100", "g.0008": "G0009"}, "procedure")
    assert dict(pm.entries) == {"99213": "99214", "G.0008": "G0009", "J1100": "J1100"}
    out, changed = normalize_procedure(pa.array(["9 9213", "99213", "j1100", "lt", "g.0008", "g0008", None]), pm)
    assert out.to_pylist() == ["99214", "99214", "J1100", "LT", "G0009", "G0008", None]
    assert changed == 6


def test_procedure_without_map_and_never_empty() -> None:
    out, changed = normalize_procedure(pa.array(["a b", "AB", " ", None]))
    assert out.to_pylist() == ["AB", "AB", " ", None]
    assert changed == 1


def test_procedure_chain_rejected() -> None:
    with pytest.raises(CodeMapError):
        load_code_map({"A": "B", "b": "C"}, "procedure")


# --------------------------------------------------------------------------------------------
# update_codes_table


def medical_rows() -> list[dict[str, Any]]:
    return [
        {"primary_icd_diagnosis_code": "F11.20", "two_icd_diagnosis_code": "YF1120",
         "ten_icd_diagnosis_code": "Unknown", "procedure_code": "j 1100", "cpt_mod_1_code": "lt",
         "primary_icd_procedure_code": "0dt.j4zz", "primary_icd_diagnosis_desc": "f11.20 text",
         "total_paid": Decimal("1.5")},
        {"primary_icd_diagnosis_code": "J690 - PNEUMONITIS", "three_icd_diagnosis_code": None,
         "procedure_code": "99213", "cpt_mod_2_code": "59", "two_icd_procedure_code": "b1 2"},
        {"primary_icd_diagnosis_code": "I5032"},
    ]


def test_update_medical_table() -> None:
    table = gold("medical", medical_rows())
    tm = load_code_map({"I5032": "I509"})
    pm = load_code_map({"J1100": "J1200"}, "procedure")
    out, stats = update_codes_table(table, "medical", tm, pm)
    assert out.schema.equals(table.schema, check_metadata=True)
    assert out["primary_icd_diagnosis_code"].to_pylist() == ["F1120", "J690", "I509"]
    assert out["two_icd_diagnosis_code"].to_pylist() == ["F1120", None, None]
    assert out["ten_icd_diagnosis_code"].to_pylist() == ["Unknown", None, None]
    assert out["procedure_code"].to_pylist() == ["J1200", "99213", None]
    assert out["cpt_mod_1_code"].to_pylist() == ["LT", None, None]
    # untouched: ICD procedure codes, descriptions, every other column
    touched = set(ICD_DIAGNOSIS_COLUMNS) | set(PROCEDURE_COLUMNS)
    for name in table.column_names:
        if name not in touched:
            assert out[name].equals(table[name]), name
    assert out["primary_icd_procedure_code"].to_pylist() == ["0dt.j4zz", None, None]
    assert stats["changed.primary_icd_diagnosis_code"] == 3
    assert stats["changed.two_icd_diagnosis_code"] == 1
    assert stats["unrecognized.ten_icd_diagnosis_code"] == 1
    assert stats["unrecognized.primary_icd_diagnosis_code"] == 0
    assert stats["changed.procedure_code"] == 1 and stats["changed.cpt_mod_1_code"] == 1
    assert stats["rows_in"] == stats["rows_out"] == 3
    expected_keys = {"rows_in", "rows_out"} | {f"changed.{c}" for c in (*ICD_DIAGNOSIS_COLUMNS, *PROCEDURE_COLUMNS)}
    expected_keys |= {f"unrecognized.{c}" for c in ICD_DIAGNOSIS_COLUMNS}
    assert set(stats) == expected_keys


def test_column_order_types_and_metadata_preserved() -> None:
    table = gold("medical", medical_rows()).replace_schema_metadata({b"pgx": b"gold"})
    out, _ = update_codes_table(table, "medical")
    assert out.column_names == table.column_names
    assert out.schema.equals(table.schema, check_metadata=True)
    # a dictionary-encoded code column keeps its type
    i = table.schema.get_field_index("primary_icd_diagnosis_code")
    encoded = table.set_column(i, pa.field("primary_icd_diagnosis_code", pa.dictionary(pa.int32(), pa.string())),
                               table["primary_icd_diagnosis_code"].dictionary_encode())
    out2, _ = update_codes_table(encoded, "medical")
    assert out2.schema.equals(encoded.schema)
    assert out2["primary_icd_diagnosis_code"].to_pylist() == ["F1120", "J690", "I5032"]


def test_update_is_idempotent() -> None:
    table = gold("medical", medical_rows())
    tm = load_code_map({"I5032": "I509", "YF1120": "F1120"})
    pm = load_code_map({"J1100": "J1200"}, "procedure")
    once, _ = update_codes_table(table, "medical", tm, pm)
    twice, stats = update_codes_table(once, "medical", tm, pm)
    assert twice.equals(once)
    assert all(v == 0 for k, v in stats.items() if k.startswith("changed."))
    assert stats["unrecognized.ten_icd_diagnosis_code"] == 1  # still unrecognized, still counted


def test_batchwise_equals_whole_table() -> None:
    rows = medical_rows() * 7 + [{"primary_icd_diagnosis_code": f"e{i}.1"} for i in range(10, 40)]
    table = gold("medical", rows)
    tm = load_code_map({"E101": "E1010"})
    whole, whole_stats = update_codes_table(table, "medical", tm)
    parts, total = [], {}
    for batch in table.to_batches(max_chunksize=4):
        out, stats = update_codes_table(batch, "medical", tm)
        assert isinstance(out, pa.RecordBatch) and out.schema.equals(batch.schema)
        parts.append(out)
        add_stats(total, stats)
    assert pa.Table.from_batches(parts).equals(whole)
    assert total == whole_stats
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=5))
    assert update_codes_table(chunked, "medical", tm)[0].equals(whole)


def test_pharmacy_drug_map_rederives_standardized_name() -> None:
    rows = [{"drug_name": "TYLENOL", "standardized_drug_name": "tylenol"},
            {"drug_name": "Advil", "standardized_drug_name": "advil"},
            {"drug_name": None, "standardized_drug_name": None}]
    table = gold("pharmacy", rows)
    dm = load_drug_map({"Tylenol": "acetaminophen"})
    out, stats = update_codes_table(table, "pharmacy", drug_map=dm)
    assert out["standardized_drug_name"].to_pylist() == ["acetaminophen", "advil", None]
    assert stats == {"rows_in": 3, "rows_out": 3, "changed.standardized_drug_name": 1}
    for name in table.column_names:
        if name != "standardized_drug_name":
            assert out[name].equals(table[name])
    same, stats = update_codes_table(table, "pharmacy")
    assert same.equals(table) and stats == {"rows_in": 3, "rows_out": 3}
    again, stats = update_codes_table(out, "pharmacy", drug_map=dm)
    assert again.equals(out) and stats["changed.standardized_drug_name"] == 0


def test_missing_column_is_a_data_error() -> None:
    table = gold("medical", medical_rows()).drop_columns(["cpt_mod_2_code"])
    with pytest.raises(DataError, match="cpt_mod_2_code"):
        update_codes_table(table, "medical")
    with pytest.raises(ValueError, match="dataset"):
        update_codes_table(table, "dental")  # type: ignore[arg-type]
