"""Repairs of rejected lines: override encoding, pad, join surplus fields."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from pgx_apcd import layout
from pgx_ingest.parse import REJECTS_SCHEMA, bronze_schema, ingest_stream
from pgx_ingest.repair import repair_rejects

RX = "pharmacy"
HEADER = layout.header_line(RX).encode()
COLS = layout.columns(RX)


def row(i: int, **over: bytes) -> bytes:
    vals = {c: f"{c[:3]}{i}".encode() for c in COLS}
    vals.update(over)
    return b"|".join(vals[c] for c in COLS)


def rejects_of(lines: list[bytes]) -> pa.Table:
    batches: list[pa.RecordBatch] = []
    ingest_stream(io.BytesIO(HEADER + b"\n" + b"\n".join(lines) + b"\n"), data_type=RX, source_stem="s",
                  on_rows=lambda b: None, on_rejects=batches.append)
    return pa.Table.from_batches(batches, schema=REJECTS_SCHEMA)


LINES = [
    row(1, drug_name=b"CAF\x81"),  # INVALID_ENCODING → latin-1 recovers it
    row(2)[: row(2).rfind(b"|")],  # TOO_FEW_FIELDS → padding recovers it
    row(3, service_provider_name=b"SMITH | JONES | PC"),  # TOO_MANY_FIELDS → join recovers it
    row(4, drug_name=b"\x00"),  # CONTROL_CHARACTER: never
    HEADER,  # DUPLICATE_HEADER: never
    row(6, incurred_date=b"\x90")[:50],  # INVALID_ENCODING and too few fields
]


def test_all_repairs_recover_and_keep_source_lines() -> None:
    rejects = rejects_of(LINES)
    assert rejects.num_rows == 6
    got, still = repair_rejects(rejects, data_type=RX, encoding="latin-1", pad_missing_fields=True,
                                join_extra_fields_into="service_provider_name")
    assert got.schema == bronze_schema(RX) and still.schema == REJECTS_SCHEMA
    assert got.column("_source_line").to_pylist() == [2, 3, 4, 7]
    rows = got.to_pylist()
    assert rows[0]["drug_name"] == "CAF\x81"
    assert rows[1]["total_rx_days_supply"] == ""
    assert rows[2]["service_provider_name"] == "SMITH | JONES | PC"
    assert rows[2]["service_provider_npi"] == "ser3"
    assert rows[3]["incurred_date"] == "\x90" and rows[3]["drug_name"] == ""
    assert [(r["_source_line"], r["reason"]) for r in still.to_pylist()] == [
        (5, "CONTROL_CHARACTER"), (6, "DUPLICATE_HEADER")]
    assert still.column("raw_line").to_pylist() == [LINES[3], LINES[4]]
    assert got.num_rows + still.num_rows == rejects.num_rows


def test_without_repairs_nothing_is_recovered_and_reasons_are_recomputed() -> None:
    rejects = rejects_of(LINES)
    got, still = repair_rejects(rejects, data_type=RX, encoding=None, pad_missing_fields=False,
                                join_extra_fields_into=None)
    assert got.num_rows == 0
    assert still.column("reason").to_pylist() == rejects.column("reason").to_pylist()


def test_encoding_fixed_but_fields_still_missing_changes_the_reason() -> None:
    rejects = rejects_of([LINES[5]])
    got, still = repair_rejects(rejects, data_type=RX, encoding="latin-1", pad_missing_fields=False,
                                join_extra_fields_into=None)
    assert got.num_rows == 0
    assert still.column("reason").to_pylist() == ["TOO_FEW_FIELDS"]


def test_unknown_join_column_is_an_error_naming_the_column() -> None:
    with pytest.raises(ValueError, match="no_such_column"):
        repair_rejects(rejects_of(LINES), data_type=RX, encoding=None, pad_missing_fields=False,
                       join_extra_fields_into="no_such_column")


def test_recovered_rows_reparse_identically_to_a_good_line() -> None:
    good = row(9, service_provider_name=b"A | B")
    rejects = rejects_of([good])
    got, _ = repair_rejects(rejects, data_type=RX, encoding=None, pad_missing_fields=False,
                            join_extra_fields_into="service_provider_name")
    assert "|".join(got.to_pylist()[0][c] for c in COLS).encode() == good
