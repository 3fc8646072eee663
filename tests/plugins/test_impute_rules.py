"""Tests of the global demographic imputation rules.

Unit tests pin each rule; ``reference_impute`` below is a slow, row-by-row pure-Python reading of
the rules, written independently of ``pgx_impute.rules``, and hypothesis checks ``impute_bucket``
against it on random member histories, then checks that any bucket count gives byte-identical
outputs.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgx_apcd.layout import DATA_TYPES, DEMOGRAPHIC_COLUMNS, columns
from pgx_impute import partition, rules

from pgx_core.errors import ConservationError, PgxError

FIELDS = ("age", "gender", "race", "zip", "county", "payer")
SHORT = {"key": "mi_person_key", "date": "incurred_date", **DEMOGRAPHIC_COLUMNS}
LABELS = ("original", "imputed_from_pharmacy", "imputed_from_medical", "unresolved")


# --- building bronze tables ------------------------------------------------------------------------

def bronze(data_type: str, rows: Sequence[Mapping[str, Any]], source_file: str | None = None) -> pa.Table:
    """A bronze table of ``data_type``: unnamed columns are empty strings (as ingest writes them).

    Row keys may be the short names ``key``, ``date``, ``age``, ``gender``, ``race``, ``zip``,
    ``county``, ``payer`` or any bronze column; ``_source_line`` defaults to the row's position.
    """
    names = [*columns(data_type), "_source_file", "_source_line"]
    data: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        full = {SHORT.get(k, k): v for k, v in row.items()}
        for name in names:
            if name == "_source_line":
                data[name].append(full.get(name, i + 2))
            elif name == "_source_file":
                data[name].append(full.get(name, source_file or f"{data_type}_Q12019"))
            else:
                data[name].append(full.get(name, ""))
    return pa.table(data, schema=rules.bronze_schema(data_type))


def run(pharmacy: Sequence[Mapping[str, Any]] = (), medical: Sequence[Mapping[str, Any]] = (),
        years: Sequence[int] = (2016, 2017, 2018, 2019, 2020), lookahead: int = 5) -> rules.BucketResult:
    return rules.impute_bucket(
        {"pharmacy": bronze("pharmacy", pharmacy), "medical": bronze("medical", medical)}, years, lookahead)


def silver_rows(result: rules.BucketResult, data_type: str) -> list[dict[str, Any]]:
    return result.silver[data_type].to_pylist()


def field_of(result: rules.BucketResult, data_type: str, field: str, line: int) -> tuple[Any, str]:
    """(imputed value, source) of one silver row, found by its _source_line."""
    for row in silver_rows(result, data_type):
        if row["_source_line"] == line:
            return row[f"{field}_imputed"], row[f"{field}_source"]
    raise AssertionError(f"no silver row with _source_line {line}")


# --- step 1: keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["", " ", "   ", "\t", "\r\n", "\x0b\x0c", " \t\n\x0b\x0c\r ", None])
def test_empty_member_key_is_quarantined(key: str | None) -> None:
    valid, quarantined = rules.split_keys(bronze("pharmacy", [{"key": key, "date": "20190101"}]))
    assert valid.num_rows == 0
    assert quarantined["reason"].to_pylist() == ["MISSING_MEMBER_KEY"]
    assert quarantined["mi_person_key"].to_pylist() == [key]  # the raw bronze value is kept


def test_member_is_the_key_trimmed_of_ascii_whitespace_only() -> None:
    keys = [" 001\t", "001", "\r\n007 ", "\xa0", "\xa0 12 ", "7\u2003"]
    valid, quarantined = rules.split_keys(bronze("medical", [{"key": k, "date": "20190101"} for k in keys]))
    assert quarantined.num_rows == 0
    # NBSP and EM SPACE are not ASCII whitespace: the trim is pyarrow's ascii_trim_whitespace.
    assert valid["member"].to_pylist() == ["001", "001", "007", "\xa0", "\xa0 12", "7\u2003"]
    assert valid["mi_person_key"].to_pylist() == keys


@pytest.mark.parametrize("date", [
    "20190101", "20191231", "20200229", "20000229", "20240229", "20190131", "20190430", "00010101", "99991231",
])
def test_valid_incurred_dates(date: str) -> None:
    valid, quarantined = rules.split_keys(bronze("pharmacy", [{"key": "1", "date": date}]))
    assert quarantined.num_rows == 0
    assert valid["event_year"].to_pylist() == [int(date[:4])]
    assert valid.schema.field("event_year").type == pa.int16()


@pytest.mark.parametrize("date", [
    "20190230",  # no 30 February
    "20190229",  # 2019 is not a leap year
    "19000229",  # century years are leap only when divisible by 400
    "20190431", "20191301", "20190001", "20190100", "20191232",
    "00000101",  # there is no year 0
    "2019-01-01", "1234567", "201901011", "", "        ", " 20190101", "20190101 ", "2019010a",
    "+2019010", "２０１９０１０１", "2019\n0101", None,
])
def test_invalid_incurred_dates_are_quarantined(date: str | None) -> None:
    valid, quarantined = rules.split_keys(bronze("pharmacy", [{"key": "1", "date": date}]))
    assert valid.num_rows == 0
    assert quarantined["reason"].to_pylist() == ["INVALID_INCURRED_DATE"]


def test_missing_key_wins_over_a_bad_date() -> None:
    _, quarantined = rules.split_keys(bronze("pharmacy", [{"key": " ", "date": "20190230"}]))
    assert quarantined["reason"].to_pylist() == ["MISSING_MEMBER_KEY"]


def test_split_keys_columns_and_order() -> None:
    table = bronze("medical", [
        {"key": "3", "date": "20190101"}, {"key": "", "date": "20190101"},
        {"key": "1", "date": "x"}, {"key": "2", "date": "20180101"},
    ])
    valid, quarantined = rules.split_keys(table)
    assert valid.column_names == [*table.column_names, "member", "event_year"]
    assert quarantined.column_names == [*table.column_names, "reason"]
    assert valid["member"].to_pylist() == ["3", "2"]
    assert quarantined["reason"].to_pylist() == ["MISSING_MEMBER_KEY", "INVALID_INCURRED_DATE"]


# --- step 2: missing values ------------------------------------------------------------------------

def normalized(field: str, values: Sequence[str | None]) -> list[Any]:
    column = DEMOGRAPHIC_COLUMNS[field]
    table = pa.table({c: pa.array(values if c == column else [""] * len(values), pa.string())
                      for c in DEMOGRAPHIC_COLUMNS.values()})
    return rules.normalize_demographics(table)[field].to_pylist()


SENTINEL_SPELLINGS = [
    "NULL", "null", "Null", "nULl", "UNKNOWN", "unknown", "Unknown", "UNK", "unk", "Unk", "N/A", "n/a", "N/a",
    "NA", "na", "nA", "NONE", "none", "None", " N/A ", "\tUnknown\r\n", "\x0bnull\x0c", "", "   ", "\t", None,
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", SENTINEL_SPELLINGS)
def test_sentinels_blank_and_null_are_missing_for_every_field(field: str, value: str | None) -> None:
    assert normalized(field, [value]) == [None]


@pytest.mark.parametrize("value", ["N / A", "NULLS", "UNKNOWN1", "N\\A", "NaN", "\xa0NA", "NA\u2003", "-", "?"])
def test_near_sentinels_are_present(value: str) -> None:
    assert normalized("race", [value]) == [value.strip(" \t\n\x0b\x0c\r")]


def test_gender_u_is_missing_only_for_gender() -> None:
    assert normalized("gender", ["U", "u", " U ", "\tu\n"]) == [None] * 4
    assert normalized("race", ["U", "u"]) == ["U", "u"]
    assert normalized("payer", ["U"]) == ["U"]


def test_present_values_are_trimmed_and_gender_upper_cased() -> None:
    assert normalized("gender", ["m", " f ", "M", "x", "\xa0m", "é"]) == ["M", "F", "M", "X", "\xa0M", "é"]
    assert normalized("race", [" 01 ", "\t02\r\n", "Asian"]) == ["01", "02", "Asian"]
    assert normalized("county", [" 36061 - New York "]) == ["36061 - New York"]
    assert normalized("zip", ["02139 ", "2139"]) == ["02139", "2139"]  # strings: leading zeros kept


@pytest.mark.parametrize(("raw", "age"), [
    ("0", 0), ("5", 5), ("114", 114), ("05", 5), ("000", 0), (" 5 ", 5), ("\t42\r\n", 42),
    ("0000000000000000000000042", 42), ("00114", 114),
    ("115", None), ("999", None), ("-1", None), ("-0", None), ("+5", None), ("5.0", None), ("5.", None),
    ("5e0", None), ("1 5", None), ("1,5", None), ("٥", None), ("５", None), ("99999999999999999999999", None),
    ("Unknown", None), ("", None), (None, None), ("0x1", None), ("forty", None),
])
def test_age_must_be_an_integer_0_to_114(raw: str | None, age: int | None) -> None:
    assert normalized("age", [raw]) == [age]


def test_normalized_types() -> None:
    table = rules.normalize_demographics(bronze("pharmacy", [{"age": "7", "gender": "f"}]))
    assert table.schema.field("age").type == pa.int16()
    for field in FIELDS[1:]:
        assert table.schema.field(field).type == pa.string()
    # bronze values are not touched
    assert table["member_gender"].to_pylist() == ["f"]


# --- step 3: profiles ------------------------------------------------------------------------------

def profile_of(result: rules.BucketResult, key: str, data_type: str, year: int) -> dict[str, Any]:
    for p in result.profiles.to_pylist():
        if (p["mi_person_key"], p["data_type"], p["event_year"]) == (key, data_type, year):
            return p
    raise AssertionError("no such profile")


def test_profile_is_the_most_frequent_present_value() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190105", "race": "02"},
        {"key": "1", "date": "20190101", "race": "01"},
        {"key": "1", "date": "20190102", "race": " 01"},  # same value once trimmed
        {"key": "1", "date": "20190103", "race": "Unknown"},
        {"key": "1", "date": "20190104", "race": ""},
    ])
    profile = profile_of(result, "1", "pharmacy", 2019)
    assert profile["race"] == "01"
    assert profile["rows"] == 5  # every row counts, also those missing the field


def test_profile_tie_goes_to_the_latest_incurred_date() -> None:
    result = run(medical=[
        {"key": "1", "date": "20190101", "zip": "11111"},
        {"key": "1", "date": "20191201", "zip": "11111"},
        {"key": "1", "date": "20190601", "zip": "22222"},
        {"key": "1", "date": "20190701", "zip": "22222"},
        {"key": "1", "date": "20191231", "zip": "33333"},  # latest, but only once
    ])
    assert profile_of(result, "1", "medical", 2019)["zip"] == "11111"


@pytest.mark.parametrize(("field", "values", "expected"), [
    ("age", ["10", "9"], 9),  # numeric: 9 < 10 (as strings "10" < "9")
    ("age", ["100", "99"], 99),
    ("race", ["9", "10"], "10"),  # strings by code point
    ("race", ["a", "B"], "B"),  # 'B' (66) < 'a' (97)
    ("county", ["é", "z"], "z"),  # 'z' (122) < 'é' (233)
    ("gender", ["m", "F"], "F"),
])
def test_profile_full_tie_goes_to_the_smallest_value(field: str, values: list[str], expected: Any) -> None:
    rows = [{"key": "1", "date": "20190301", field: v} for v in values]
    assert profile_of(run(pharmacy=rows), "1", "pharmacy", 2019)[field] == expected


def test_profiles_are_per_member_year_and_type() -> None:
    result = run(
        pharmacy=[{"key": "1", "date": "20190101", "gender": "F"}, {"key": "1", "date": "20180101", "gender": "M"}],
        medical=[{"key": "1", "date": "20190101", "gender": "M"}, {"key": "2", "date": "20190101"}],
    )
    assert result.profiles.to_pylist() == [
        {"mi_person_key": "1", "data_type": "pharmacy", "rows": 1, "age": None, "gender": "M", "race": None,
         "zip": None, "county": None, "payer": None, "event_year": 2018},
        {"mi_person_key": "1", "data_type": "medical", "rows": 1, "age": None, "gender": "M", "race": None,
         "zip": None, "county": None, "payer": None, "event_year": 2019},
        {"mi_person_key": "1", "data_type": "pharmacy", "rows": 1, "age": None, "gender": "F", "race": None,
         "zip": None, "county": None, "payer": None, "event_year": 2019},
        {"mi_person_key": "2", "data_type": "medical", "rows": 1, "age": None, "gender": None, "race": None,
         "zip": None, "county": None, "payer": None, "event_year": 2019},
    ]


def test_profiles_schema_and_run_years_only() -> None:
    result = run(pharmacy=[{"key": " 007 ", "date": "20150101"}, {"key": "007", "date": "20190101", "age": "3"}],
                 years=[2019])
    assert result.profiles.schema == pa.schema([
        ("mi_person_key", pa.string()), ("data_type", pa.string()), ("rows", pa.int64()), ("age", pa.int16()),
        ("gender", pa.string()), ("race", pa.string()), ("zip", pa.string()), ("county", pa.string()),
        ("payer", pa.string()), ("event_year", pa.int16()),
    ])
    assert result.profiles["mi_person_key"].to_pylist() == ["007"]  # trimmed; 2015 not in the run
    assert result.profiles["event_year"].to_pylist() == [2019]


def test_build_profiles_directly() -> None:
    valid, _ = rules.split_keys(bronze("pharmacy", [
        {"key": "b", "date": "20190101", "age": "30"}, {"key": "a", "date": "20190101", "age": "20"},
        {"key": "a", "date": "20200101", "age": "21"}]))
    valid = rules.normalize_demographics(valid.append_column("data_type", pa.repeat(pa.scalar("pharmacy"), 3)))
    profiles = rules.build_profiles(valid)
    assert profiles.column_names == ["member", "event_year", "data_type", "rows", *FIELDS]
    assert profiles.select(["member", "event_year", "age"]).to_pylist() == [
        {"member": "a", "event_year": 2019, "age": 20}, {"member": "a", "event_year": 2020, "age": 21},
        {"member": "b", "event_year": 2019, "age": 30}]


# --- step 4: row values ----------------------------------------------------------------------------

def test_own_present_value_is_kept_as_original() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190101", "gender": "f"},
        {"key": "1", "date": "20190102", "gender": "M"},
        {"key": "1", "date": "20190103", "gender": "M"},
    ])
    assert field_of(result, "pharmacy", "gender", 2) == ("F", "original")  # not the profile's M


def test_own_profile_donates_with_the_rows_own_type_as_source() -> None:
    result = run(medical=[{"key": "1", "date": "20190101", "gender": "F"}, {"key": "1", "date": "20190102"}])
    assert field_of(result, "medical", "gender", 3) == ("F", "imputed_from_medical")


def test_nearest_year_wins() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190101"},
        {"key": "1", "date": "20170101", "race": "far"},
        {"key": "1", "date": "20200101", "race": "near"},
    ])
    assert field_of(result, "pharmacy", "race", 2) == ("near", "imputed_from_pharmacy")


def test_same_year_other_type_beats_other_year_same_type() -> None:
    result = run(pharmacy=[{"key": "1", "date": "20190101"}, {"key": "1", "date": "20180101", "payer": "P"}],
                 medical=[{"key": "1", "date": "20190601", "payer": "M"}])
    assert field_of(result, "pharmacy", "payer", 2) == ("M", "imputed_from_medical")


def test_same_distance_prefers_the_rows_type() -> None:
    result = run(pharmacy=[{"key": "1", "date": "20190101"}, {"key": "1", "date": "20200101", "payer": "P"}],
                 medical=[{"key": "1", "date": "20180601", "payer": "M"}])
    assert field_of(result, "pharmacy", "payer", 2) == ("P", "imputed_from_pharmacy")
    # and from the medical side the same profiles rank the other way round
    result = run(pharmacy=[{"key": "1", "date": "20180101", "payer": "P"}],
                 medical=[{"key": "1", "date": "20190601"}, {"key": "1", "date": "20200601", "payer": "M"}])
    assert field_of(result, "medical", "payer", 2) == ("M", "imputed_from_medical")


def test_same_distance_and_type_prefers_the_earlier_year() -> None:
    result = run(medical=[
        {"key": "1", "date": "20190101"},
        {"key": "1", "date": "20200101", "county": "later"},
        {"key": "1", "date": "20180101", "county": "earlier"},
    ])
    assert field_of(result, "medical", "county", 2) == ("earlier", "imputed_from_medical")
    result = run(medical=[{"key": "1", "date": "20190101"}, {"key": "1", "date": "20200101", "county": "later"}],
                 pharmacy=[{"key": "1", "date": "20180101", "county": "earlier"}])
    assert field_of(result, "medical", "county", 2) == ("later", "imputed_from_medical")  # type before year


@pytest.mark.parametrize(("gap", "lookahead", "found"), [
    (5, 5, True), (6, 5, False), (2, 2, True), (3, 2, False), (1, 0, False), (0, 0, True), (9, 9, True),
])
def test_lookahead_bound(gap: int, lookahead: int, found: bool) -> None:
    years = list(range(2010, 2030))
    # the donor is of the other type so that a gap of 0 is not the row's own profile
    result = run(pharmacy=[{"key": "1", "date": "20200101"}],
                 medical=[{"key": "1", "date": f"{2020 - gap}0101", "race": "R"}], years=years, lookahead=lookahead)
    expected = ("R", "imputed_from_medical") if found else (None, "unresolved")
    assert field_of(result, "pharmacy", "race", 2) == expected
    result = run(pharmacy=[{"key": "1", "date": "20100101"}],
                 medical=[{"key": "1", "date": f"{2010 + gap}0101", "race": "R"}], years=years, lookahead=lookahead)
    assert field_of(result, "pharmacy", "race", 2) == expected


def test_default_lookahead_is_five() -> None:
    tables = {"pharmacy": bronze("pharmacy", [{"key": "1", "date": "20200101"}, {"key": "1", "date": "20140101",
                                                                                 "gender": "F"}])}
    result = rules.impute_bucket(tables, [2020])
    assert result.silver["pharmacy"]["gender_source"].to_pylist() == ["unresolved"]
    tables = {"pharmacy": bronze("pharmacy", [{"key": "1", "date": "20200101"}, {"key": "1", "date": "20150101",
                                                                                 "gender": "F"}])}
    assert rules.impute_bucket(tables, [2020]).silver["pharmacy"]["gender_imputed"].to_pylist() == ["F"]


def test_age_is_shifted_by_the_year_difference_both_ways() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190101"},
        {"key": "1", "date": "20170101", "age": "40"},
        {"key": "2", "date": "20190101"},
        {"key": "2", "date": "20210101", "age": "40"},
        {"key": "3", "date": "20190101"},
    ], medical=[{"key": "3", "date": "20190101", "age": "40"}], years=[2019])
    assert field_of(result, "pharmacy", "age", 2) == (42, "imputed_from_pharmacy")
    assert field_of(result, "pharmacy", "age", 4) == (38, "imputed_from_pharmacy")
    assert field_of(result, "pharmacy", "age", 6) == (40, "imputed_from_medical")  # same year: no shift


def test_shifted_age_out_of_range_falls_back_to_the_next_candidate() -> None:
    result = run(
        pharmacy=[
            {"key": "1", "date": "20160101", "gender": ""},
            {"key": "1", "date": "20170101", "age": "0", "gender": "F"},  # best candidate: 0 - 1 = -1
            {"key": "2", "date": "20200101"},
            {"key": "2", "date": "20190101", "age": "114"},  # best candidate: 114 + 1 = 115
            {"key": "2", "date": "20210101", "age": "100"},  # next (same distance, later year): 99
        ],
        medical=[{"key": "1", "date": "20170101", "age": "5"}],  # next candidate: 5 - 1 = 4
        years=[2016, 2020],
    )
    assert field_of(result, "pharmacy", "age", 2) == (4, "imputed_from_medical")
    # the disqualification is for the age only: the same donor still gives the gender
    assert field_of(result, "pharmacy", "gender", 2) == ("F", "imputed_from_pharmacy")
    assert field_of(result, "pharmacy", "age", 4) == (99, "imputed_from_pharmacy")


def test_no_candidate_leaves_null_and_unresolved() -> None:
    result = run(pharmacy=[{"key": "1", "date": "20190101", "gender": "U"}],
                 medical=[{"key": "2", "date": "20190101", "gender": "F", "age": "30"}])
    row = silver_rows(result, "pharmacy")[0]
    for field in FIELDS:
        assert (row[f"{field}_imputed"], row[f"{field}_source"]) == (None, "unresolved")
    assert row["age_band"] == "unknown"


def test_out_of_scope_rows_still_donate_but_quarantined_rows_do_not() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190101"},
        {"key": "1", "date": "20170101", "race": "03"},  # out of scope for years=[2019]
        {"key": "1", "date": "20190230", "gender": "F"},  # quarantined
    ], years=[2019])
    assert field_of(result, "pharmacy", "race", 2) == ("03", "imputed_from_pharmacy")
    assert field_of(result, "pharmacy", "gender", 2) == (None, "unresolved")
    assert result.out_of_scope == {"pharmacy": 1, "medical": 0}


def test_members_are_matched_on_the_trimmed_key() -> None:
    result = run(pharmacy=[{"key": "\t001 ", "date": "20190101"}, {"key": "001", "date": "20190101", "zip": "1"},
                           {"key": "1", "date": "20190101", "zip": "2"}])
    assert field_of(result, "pharmacy", "zip", 2) == ("1", "imputed_from_pharmacy")


def test_resolve_keeps_row_order_and_rejects_duplicate_profiles() -> None:
    valid, _ = rules.split_keys(bronze("pharmacy", [
        {"key": "b", "date": "20190101", "age": "30"}, {"key": "a", "date": "20190101"},
        {"key": "b", "date": "20200101"}]))
    valid = rules.normalize_demographics(valid.append_column("data_type", pa.repeat(pa.scalar("pharmacy"), 3)))
    profiles = rules.build_profiles(valid)
    resolved = rules.resolve(valid, profiles, 5)
    assert resolved["member"].to_pylist() == ["b", "a", "b"]
    assert resolved["age_imputed"].to_pylist() == [30, None, 31]
    assert resolved["age_source"].to_pylist() == ["original", "unresolved", "imputed_from_pharmacy"]
    with pytest.raises(ValueError, match="one row per"):
        rules.resolve(valid, pa.concat_tables([profiles, profiles]), 5)
    with pytest.raises(ValueError, match="lookahead_years"):
        rules.resolve(valid, profiles, -1)


# --- step 5: age bands -----------------------------------------------------------------------------

@pytest.mark.parametrize(("age", "band"), [
    (0, "0-12"), (12, "0-12"), (13, "13-24"), (24, "13-24"), (25, "25-44"), (44, "25-44"), (45, "45-54"),
    (54, "45-54"), (55, "55-64"), (64, "55-64"), (65, "65-74"), (74, "65-74"), (75, "75-84"), (84, "75-84"),
    (85, "85-94"), (94, "85-94"), (95, "95-114"), (114, "95-114"), (None, "unknown"),
])
def test_age_band(age: int | None, band: str) -> None:
    assert rules.age_band(pa.array([age], pa.int16())).to_pylist() == [band]


def test_age_band_labels_are_the_specs() -> None:
    assert (*rules.AGE_BAND_LABELS, "unknown") == (
        "0-12", "13-24", "25-44", "45-54", "55-64", "65-74", "75-84", "85-94", "95-114", "unknown")


@pytest.mark.parametrize("age", [-1, 115])
def test_age_band_refuses_ages_that_cannot_be_resolved(age: int) -> None:
    with pytest.raises(ValueError, match="0-114"):
        rules.age_band(pa.array([age], pa.int16()))


def test_silver_band_comes_from_the_resolved_age() -> None:
    result = run(medical=[{"key": "1", "date": "20190101", "age": "12"}, {"key": "1", "date": "20200101"}])
    assert [(r["age_imputed"], r["age_band"]) for r in silver_rows(result, "medical")] == [
        (12, "0-12"), (13, "13-24")]


# --- steps 6-7, 9: the bucket's outputs -------------------------------------------------------------

def test_silver_columns_order_and_types() -> None:
    result = run(pharmacy=[{"key": "1", "date": "20190101", "age": "5"}], medical=[{"key": "1", "date": "20190101"}])
    for data_type in DATA_TYPES:
        schema = result.silver[data_type].schema
        assert schema.names == [*columns(data_type), "_source_file", "_source_line",
                                "age_imputed", "gender_imputed", "race_imputed", "zip_imputed", "county_imputed",
                                "payer_imputed", "age_source", "gender_source", "race_source", "zip_source",
                                "county_source", "payer_source", "age_band", "event_year"]
        assert schema.field("age_imputed").type == pa.int16()
        assert schema.field("event_year").type == pa.int16()
        assert schema.field("_source_line").type == pa.int64()
        for name in schema.names:
            if name not in ("age_imputed", "event_year", "_source_line"):
                assert schema.field(name).type == pa.string(), name
        assert result.quarantine[data_type].schema.names == [*columns(data_type), "_source_file", "_source_line",
                                                            "reason"]


def test_bronze_columns_pass_through_unchanged() -> None:
    raw = {"key": " 01 ", "date": "20190101", "age": " 05 ", "gender": "f", "payer": " N/A ", "claim_id": " c1 "}
    row = silver_rows(run(pharmacy=[raw]), "pharmacy")[0]
    assert row["mi_person_key"] == " 01 " and row["member_age_dos"] == " 05 " and row["member_gender"] == "f"
    assert row["payer_type"] == " N/A " and row["claim_id"] == " c1 "
    assert (row["age_imputed"], row["gender_imputed"], row["payer_source"]) == (5, "F", "unresolved")


def test_silver_sort_order_uses_raw_values() -> None:
    rows = [
        {"key": "7", "date": "20190102", "_source_file": "a", "_source_line": 1},
        {"key": "70", "date": "20190101", "_source_file": "a", "_source_line": 2},
        {"key": "007", "date": "20190101", "_source_file": "a", "_source_line": 3},
        {"key": "7", "date": "20190101", "_source_file": "b", "_source_line": 4},
        {"key": "07", "date": "20190101", "_source_file": "a", "_source_line": 5},
        {"key": " 7", "date": "20190101", "_source_file": "a", "_source_line": 6},
        {"key": "7", "date": "20190101", "_source_file": "a", "_source_line": 10},
        {"key": "7", "date": "20190101", "_source_file": "a", "_source_line": 9},
    ]
    result = run(pharmacy=[{**r, "age": "30"} for r in rows], years=[2019])
    assert [(r["mi_person_key"], r["incurred_date"], r["_source_file"], r["_source_line"])
            for r in silver_rows(result, "pharmacy")] == [
        (" 7", "20190101", "a", 6), ("007", "20190101", "a", 3), ("07", "20190101", "a", 5),
        ("7", "20190101", "a", 9), ("7", "20190101", "a", 10), ("7", "20190101", "b", 4),
        ("7", "20190102", "a", 1), ("70", "20190101", "a", 2)]


def test_silver_is_partition_major_and_partitions_slice_it() -> None:
    result = run(medical=[
        {"key": "2", "date": "20200101", "age": "50"},
        {"key": "1", "date": "20190101", "age": "50"},
        {"key": "3", "date": "20190101", "age": "13"},
        {"key": "4", "date": "20190101"},
        {"key": "0", "date": "20190101", "age": "50"},
    ], years=[2019, 2020])
    silver = result.silver["medical"]
    assert [(r["event_year"], r["age_band"], r["mi_person_key"]) for r in silver.to_pylist()] == [
        (2019, "13-24", "3"), (2019, "45-54", "0"), (2019, "45-54", "1"), (2019, "unknown", "4"),
        (2020, "45-54", "2")]
    parts = rules.silver_partitions(silver)
    assert [(band, year, part["mi_person_key"].to_pylist()) for band, year, part in parts] == [
        ("13-24", 2019, ["3"]), ("45-54", 2019, ["0", "1"]), ("unknown", 2019, ["4"]), ("45-54", 2020, ["2"])]
    assert parts[0][2].column_names == silver.column_names[:-2]  # partition keys live in the path
    assert rules.silver_partitions(result.silver["pharmacy"]) == []


def test_out_of_scope_counted_not_returned_and_conservation() -> None:
    result = run(
        pharmacy=[{"key": "1", "date": "20150101"}, {"key": "1", "date": "20190101"}, {"key": "", "date": "20150101"},
                  {"key": "1", "date": "20210101"}, {"key": "1", "date": "2021"}],
        medical=[{"key": "2", "date": "20200101"}],
        years=[2019, 2020])
    assert result.out_of_scope == {"pharmacy": 2, "medical": 0}
    assert [r["incurred_date"] for r in silver_rows(result, "pharmacy")] == ["20190101"]
    # quarantine is sorted by the raw key: "" before "1"
    assert result.quarantine["pharmacy"]["reason"].to_pylist() == ["MISSING_MEMBER_KEY", "INVALID_INCURRED_DATE"]
    for data_type in DATA_TYPES:
        assert result.rows_in[data_type] == (result.rows_out(data_type) + result.rows_quarantined(data_type)
                                             + result.out_of_scope[data_type])
    assert result.rows_in == {"pharmacy": 5, "medical": 1}


def test_stats_names_and_counts() -> None:
    result = run(pharmacy=[
        {"key": "1", "date": "20190101", "gender": "F"},
        {"key": "1", "date": "20190102"},
        {"key": " ", "date": "20190101"},
        {"key": "1", "date": "20190231"},
        {"key": "1", "date": "20100101"},
    ], medical=[{"key": "1", "date": "20190101"}], years=[2019])
    expected_names = {"quarantined.MISSING_MEMBER_KEY", "quarantined.INVALID_INCURRED_DATE", "out_of_scope"} | {
        f"sources.{f}.{label}" for f in FIELDS for label in LABELS}
    for data_type in DATA_TYPES:
        assert set(result.stats[data_type]) == expected_names
        assert all(type(v) is int for v in result.stats[data_type].values())
    pharmacy, medical = result.stats["pharmacy"], result.stats["medical"]
    assert (pharmacy["quarantined.MISSING_MEMBER_KEY"], pharmacy["quarantined.INVALID_INCURRED_DATE"],
            pharmacy["out_of_scope"]) == (1, 1, 1)
    assert (pharmacy["sources.gender.original"], pharmacy["sources.gender.imputed_from_pharmacy"]) == (1, 1)
    assert medical["sources.gender.imputed_from_pharmacy"] == 1
    assert pharmacy["sources.age.unresolved"] == 2
    for data_type in DATA_TYPES:
        for field in FIELDS:
            assert sum(result.stats[data_type][f"sources.{field}.{label}"] for label in LABELS) == \
                result.rows_out(data_type)


def test_missing_data_type_counts_as_empty_and_unknown_is_refused() -> None:
    result = rules.impute_bucket({"medical": bronze("medical", [{"key": "1", "date": "20190101"}])}, [2019], 5)
    assert result.silver["pharmacy"].num_rows == 0
    assert result.silver["pharmacy"].column_names[:51] == list(columns("pharmacy"))
    assert result.rows_in == {"pharmacy": 0, "medical": 1}
    with pytest.raises(ValueError, match="unknown data types dental"):
        rules.impute_bucket({"dental": bronze("medical", [])}, [2019], 5)


def test_errors_name_columns_never_values() -> None:
    table = bronze("pharmacy", [{"key": "123456789", "date": "20190101", "zip": "02139"}]).drop_columns(
        ["member_zip_code_dos", "incurred_date"])
    with pytest.raises(ValueError, match="pharmacy bronze lacks required columns") as caught:
        rules.impute_bucket({"pharmacy": table}, [2019], 5)
    message = str(caught.value)
    assert "incurred_date" in message and "member_zip_code_dos" in message
    assert "123456789" not in message and "02139" not in message


def test_conservation_error_is_a_data_error() -> None:
    # impute_bucket raises it when bronze != silver + quarantined + out of scope: exit 2, no retry.
    assert issubclass(ConservationError, PgxError)
    assert ConservationError.exit_code == 2


# --- step 8: buckets -------------------------------------------------------------------------------

def test_estimate_bucket_count() -> None:
    gib = 2**30
    assert rules.estimate_bucket_count(0, 2048) == 1
    assert rules.estimate_bucket_count(gib // 2, 2048) == 1
    assert rules.estimate_bucket_count(10 * gib, 2048) == 15  # 10 GiB x 3.0 / 2 GiB
    assert rules.estimate_bucket_count(10 * gib, 2048, basis="raw") == 23  # x 4.5
    assert rules.estimate_bucket_count(10 * gib, 1024) == 30
    counts = [rules.estimate_bucket_count(n * gib, 2048) for n in range(1, 50)]
    assert counts == sorted(counts)
    for bad in ((-1, 2048, "arrow"), (1, 0, "arrow"), (1, 2048, "parquet")):
        with pytest.raises(ValueError):
            rules.estimate_bucket_count(bad[0], bad[1], basis=bad[2])


# --- the reference implementation -----------------------------------------------------------------

WS = " \t\n\x0b\x0c\r"
SENTINELS = {"NULL", "UNKNOWN", "UNK", "N/A", "NA", "NONE"}
BANDS = [(0, 12), (13, 24), (25, 44), (45, 54), (55, 64), (65, 74), (75, 84), (85, 94), (95, 114)]


def ascii_upper(text: str) -> str:
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)


def ref_year(date: str | None) -> int | None:
    """Year of an 8-ASCII-digit YYYYMMDD calendar date, else None."""
    if date is None or len(date) != 8 or any(c not in "0123456789" for c in date):
        return None
    try:
        dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError:
        return None
    return int(date[:4])


def ref_value(field: str, raw: str | None) -> Any:
    if raw is None:
        return None
    value = raw.strip(WS)
    upper = ascii_upper(value)
    if value == "" or upper in SENTINELS or (field == "gender" and upper == "U"):
        return None
    if field == "age":
        if any(c not in "0123456789" for c in value):
            return None
        age = int(value)
        return age if 0 <= age <= 114 else None
    return upper if field == "gender" else value


def ref_band(age: int | None) -> str:
    if age is None:
        return "unknown"
    return next(f"{lo}-{hi}" for lo, hi in BANDS if lo <= age <= hi)


def _sortable(value: Any) -> tuple[bool, Any]:
    """Arrow sorts NULLs last."""
    return (value is None, "" if value is None else value)


def reference_impute(bronze_rows: Mapping[str, list[dict[str, Any]]], years: Iterable[int],
                     lookahead: int) -> dict[str, Any]:
    """The imputation rules row by row, in plain Python."""
    in_run = set(years)
    valid: list[dict[str, Any]] = []
    quarantine: dict[str, list[dict[str, Any]]] = {d: [] for d in DATA_TYPES}
    for data_type in DATA_TYPES:
        for row in bronze_rows.get(data_type, []):
            member = (row["mi_person_key"] or "").strip(WS)
            year = ref_year(row["incurred_date"])
            if member == "":
                quarantine[data_type].append({**row, "reason": "MISSING_MEMBER_KEY"})
            elif year is None:
                quarantine[data_type].append({**row, "reason": "INVALID_INCURRED_DATE"})
            else:
                values = {f: ref_value(f, row[c]) for f, c in DEMOGRAPHIC_COLUMNS.items()}
                valid.append({"type": data_type, "row": row, "member": member, "year": year, "values": values})

    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for v in valid:
        groups[(v["member"], v["year"], v["type"])].append(v)
    profiles: dict[tuple[str, int, str], dict[str, Any]] = {}
    for key, members_rows in groups.items():
        profile: dict[str, Any] = {"rows": len(members_rows)}
        for field in FIELDS:
            count: Counter[Any] = Counter()
            latest: dict[Any, str] = {}
            for r in members_rows:
                value = r["values"][field]
                if value is not None:
                    count[value] += 1
                    latest[value] = max(latest.get(value, ""), r["row"]["incurred_date"])
            ranked = sorted(count, key=lambda x: (-count[x], -int(latest[x]), x))
            profile[field] = ranked[0] if ranked else None
        profiles[key] = profile
    by_member: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for (member, year, data_type), profile in profiles.items():
        by_member[member].append((year, data_type, profile))

    silver: dict[str, list[dict[str, Any]]] = {d: [] for d in DATA_TYPES}
    out_of_scope = dict.fromkeys(DATA_TYPES, 0)
    for v in valid:
        if v["year"] not in in_run:
            out_of_scope[v["type"]] += 1
            continue
        imputed: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for field in FIELDS:
            own = v["values"][field]
            if own is not None:
                imputed[field], sources[field] = own, "original"
                continue
            candidates = sorted(
                (abs(year - v["year"]), data_type != v["type"], year, data_type, profile[field])
                for year, data_type, profile in by_member[v["member"]]
                if profile[field] is not None and abs(year - v["year"]) <= lookahead
            )
            imputed[field], sources[field] = None, "unresolved"
            for _, _, year, data_type, donated in candidates:
                value = donated + v["year"] - year if field == "age" else donated
                if field == "age" and not 0 <= value <= 114:
                    continue
                imputed[field], sources[field] = value, f"imputed_from_{data_type}"
                break
        silver[v["type"]].append({
            **v["row"],
            **{f"{f}_imputed": imputed[f] for f in FIELDS},
            **{f"{f}_source": sources[f] for f in FIELDS},
            "age_band": ref_band(imputed["age"]),
            "event_year": v["year"],
        })

    def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(_sortable(r[k]) for k in ("mi_person_key", "incurred_date", "_source_file", "_source_line"))

    stats = {}
    for data_type in DATA_TYPES:
        silver[data_type].sort(key=lambda r: (r["event_year"], r["age_band"], *row_key(r)))
        quarantine[data_type].sort(key=row_key)
        counts = Counter(f"quarantined.{r['reason']}" for r in quarantine[data_type])
        for r in silver[data_type]:
            counts.update(f"sources.{f}.{r[f'{f}_source']}" for f in FIELDS)
        stats[data_type] = {
            "quarantined.MISSING_MEMBER_KEY": counts["quarantined.MISSING_MEMBER_KEY"],
            "quarantined.INVALID_INCURRED_DATE": counts["quarantined.INVALID_INCURRED_DATE"],
            "out_of_scope": out_of_scope[data_type],
            **{f"sources.{f}.{label}": counts[f"sources.{f}.{label}"] for f in FIELDS for label in LABELS},
        }
    demographics = sorted(
        ({"mi_person_key": member, "data_type": data_type, **profile, "event_year": year}
         for (member, year, data_type), profile in profiles.items() if year in in_run),
        key=lambda p: (p["event_year"], p["mi_person_key"], p["data_type"]),
    )
    return {"silver": silver, "quarantine": quarantine, "out_of_scope": out_of_scope, "stats": stats,
            "profiles": [{k: p[k] for k in (*rules.PROFILE_COLUMNS, "event_year")} for p in demographics]}


def test_reference_agrees_on_a_hand_made_history() -> None:
    rows = {
        "pharmacy": bronze("pharmacy", [
            {"key": "1", "date": "20180101", "age": "40", "gender": "f"},
            {"key": "1", "date": "20190101"},
            {"key": " 1", "date": "20200101", "age": "0"},
        ]).to_pylist(),
        "medical": bronze("medical", [{"key": "1", "date": "20190505", "race": "02", "gender": "M"}]).to_pylist(),
    }
    expected = reference_impute(rows, [2019, 2020], 5)
    # 2019: age 40 + 1 from pharmacy 2018; gender from medical 2019 (distance 0 beats the same type
    # at distance 1). 2020 (partition-major: after 2019): own age 0, the rest from medical 2019.
    assert [(r["age_imputed"], r["age_source"], r["gender_imputed"], r["gender_source"], r["race_source"])
            for r in expected["silver"]["pharmacy"]] == [
        (41, "imputed_from_pharmacy", "M", "imputed_from_medical", "imputed_from_medical"),
        (0, "original", "M", "imputed_from_medical", "imputed_from_medical")]
    assert_matches_reference(rows, [2019, 2020], 5)


def assert_matches_reference(rows: Mapping[str, list[dict[str, Any]]], years: Sequence[int],
                             lookahead: int) -> rules.BucketResult:
    tables = {d: pa.Table.from_pylist(r, schema=rules.bronze_schema(d)) for d, r in rows.items()}
    result = rules.impute_bucket(tables, years, lookahead)
    expected = reference_impute(rows, years, lookahead)
    for data_type in DATA_TYPES:
        assert result.silver[data_type].to_pylist() == expected["silver"][data_type]
        assert result.quarantine[data_type].to_pylist() == expected["quarantine"][data_type]
    assert result.out_of_scope == expected["out_of_scope"]
    assert result.stats == expected["stats"]
    assert result.profiles.to_pylist() == expected["profiles"]
    return result


# --- random member histories -----------------------------------------------------------------------

KEYS = ["1", "01", "001", " 001", "001\t", "7", " 7 ", "70", "A9", "\xa0", "", "  ", None]
# Repeats weight the draw: the band edges and 0/114 (whose shifted values leave 0-114) come often.
AGE_VALUES = ["0", "0", "1", "5", "05", " 7 ", "12", "13", "40", "41", "113", "114", "114", "115", "-1", "+5",
              "5.0", "Unknown", "", "", "n/a", "٥", "0000000000000000000042", None]
GENDER_VALUES = ["M", "F", "m", " f ", "U", "u", "X", "Unknown", "NONE", "", "\xa0M", None]
RACE_VALUES = ["01", "02", "1", "10", "9", "B", "a", "Na", "null", " 01", "", None]
OTHER_VALUES = ["A", "B", "b", "é", " A", "UNK", "N/A", "", "z", None]
MONTH_DAYS = ["0101", "0102", "0615", "1231", "0229", "0230", "1301"]  # the last three are not always dates
ODD_DATES = ["19000229", "20000229", "21000229", "2019-01-01", "1234567", "", "        ", " 20190101", None]


def _value(pool: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(pool), st.text(alphabet=" aAuU0159é\t", max_size=3))


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """A few members with dense, overlapping histories in both data types.

    Keys and years come from small per-example pools so that members have many rows, years have
    neighbours at equal distances on both sides and in both types, and values tie often.
    """
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4))
    years = draw(st.lists(st.integers(2014, 2022), min_size=1, max_size=5))
    date = st.one_of(
        st.builds(lambda y, md: f"{y}{md}", st.sampled_from(years), st.sampled_from(MONTH_DAYS)),
        st.dates(dt.date(2010, 1, 1), dt.date(2025, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
        st.sampled_from(ODD_DATES),
    )
    row = st.fixed_dictionaries({
        "mi_person_key": st.sampled_from(keys),
        "incurred_date": date,
        "member_age_dos": _value(AGE_VALUES),
        "member_gender": _value(GENDER_VALUES),
        "member_race": _value(RACE_VALUES),
        "member_zip_code_dos": _value(OTHER_VALUES),
        "member_county_dos": _value(OTHER_VALUES),
        "payer_type": _value(OTHER_VALUES),
        "_source_file": st.sampled_from(["f1", "f2"]),
    })
    out = {}
    for data_type in DATA_TYPES:
        rows = draw(st.lists(row, max_size=16))
        names = [*columns(data_type), "_source_file", "_source_line"]
        # (_source_file, _source_line) is unique within a data type, as ingest guarantees.
        out[data_type] = [{n: {**r, "_source_line": i + 2}.get(n, "") for n in names} for i, r in enumerate(rows)]
    return out


run_years = st.lists(st.integers(2013, 2023), min_size=1, max_size=6, unique=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories(), run_years, st.integers(0, 7))
def test_impute_bucket_matches_the_reference(rows: dict[str, list[dict[str, Any]]], years: list[int],
                                             lookahead: int) -> None:
    result = assert_matches_reference(rows, years, lookahead)
    for data_type in DATA_TYPES:
        assert result.rows_in[data_type] == len(rows[data_type])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def bucketed(tables: Mapping[str, pa.Table], n: int, years: Sequence[int], lookahead: int) -> rules.BucketResult:
    """What a stage does: split the members into ordered buckets, impute each bucket, merge."""
    results = []
    keys = {d: partition.member_keys(t["mi_person_key"]) for d, t in tables.items()}
    everyone = pa.concat_arrays(list(keys.values()))
    cuts = partition.split_points([(partition.sample(everyone, 4 * n), len(everyone))], n)
    lows = ["", *cuts]  # bucket b: lows[b] <= member key < cuts[b] (the last bucket has no upper bound)

    def in_bucket(k: pa.Array, b: int) -> pa.Array:
        above = pc.greater_equal(k, lows[b])
        return pc.and_(above, pc.less(k, cuts[b])) if b < len(cuts) else above

    for bucket in range(len(cuts) + 1):  # no rows at all: no cuts, one bucket
        part = {d: t.filter(in_bucket(keys[d], bucket)) for d, t in tables.items()}
        if bucket == 0 or any(t.num_rows for t in part.values()):  # a stage need not run empty buckets
            results.append(rules.impute_bucket(part, years, lookahead))
    return rules.merge_bucket_results(results)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories(), run_years, st.integers(0, 6))
def test_outputs_are_byte_identical_for_any_bucket_count(rows: dict[str, list[dict[str, Any]]],
                                                         years: list[int], lookahead: int) -> None:
    tables = {d: pa.Table.from_pylist(r, schema=rules.bronze_schema(d)) for d, r in rows.items()}
    one = rules.impute_bucket(tables, years, lookahead)
    for n in (1, 3, 17):
        merged = bucketed(tables, n, years, lookahead)
        for data_type in DATA_TYPES:
            assert parquet_bytes(merged.silver[data_type]) == parquet_bytes(one.silver[data_type])
            assert parquet_bytes(merged.quarantine[data_type]) == parquet_bytes(one.quarantine[data_type])
            assert [(b, y, parquet_bytes(t)) for b, y, t in rules.silver_partitions(merged.silver[data_type])] == \
                [(b, y, parquet_bytes(t)) for b, y, t in rules.silver_partitions(one.silver[data_type])]
        assert parquet_bytes(merged.profiles) == parquet_bytes(one.profiles)
        assert merged.stats == one.stats
        assert merged.out_of_scope == one.out_of_scope
        assert merged.rows_in == one.rows_in


def test_bucket_invariance_on_many_members() -> None:
    """A larger, fixed history: 293 members over 7 years, split in 1, 3 and 17 buckets."""
    rows: dict[str, list[dict[str, Any]]] = {"pharmacy": [], "medical": []}
    for i in range(1800):
        data_type = DATA_TYPES[i % 2]
        rows[data_type].append({
            "key": f"{(i * 37) % 293:05d}" if i % 50 else " ",
            "date": f"{2014 + (i * 31) % 7}{1 + i % 12:02d}{1 + i % 28:02d}",
            "age": str(20 + (i * 13) % 40) if i % 3 else "",
            "gender": "MF"[i % 2] if i % 4 else "U",
            "race": f"0{i % 5}" if i % 5 else "Unknown",
            "zip": f"{i % 11:05d}" if i % 6 else "",
        })
    tables = {d: bronze(d, r) for d, r in rows.items()}
    one = rules.impute_bucket(tables, [2016, 2017, 2018, 2019], 2)
    assert one.stats["medical"]["sources.age.imputed_from_pharmacy"] + \
        one.stats["medical"]["sources.age.imputed_from_medical"] > 0
    for n in (3, 17):
        merged = bucketed(tables, n, [2016, 2017, 2018, 2019], 2)
        for data_type in DATA_TYPES:
            assert parquet_bytes(merged.silver[data_type]) == parquet_bytes(one.silver[data_type])
        assert parquet_bytes(merged.profiles) == parquet_bytes(one.profiles)
        assert merged.stats == one.stats
    as_rows = {d: t.to_pylist() for d, t in tables.items()}
    assert_matches_reference(as_rows, [2016, 2017, 2018, 2019], 2)
