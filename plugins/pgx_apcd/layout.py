"""Column layouts of the APCD extracts.

The exact header lines ship in ``layouts/<data_type>_header.txt``; the snake_case names used in
bronze, silver and gold are derived from them by :func:`snake_case`.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

DATA_TYPES: tuple[str, ...] = ("pharmacy", "medical")

_ORDINALS = {
    "2nd": "two",
    "3rd": "three",
    "4th": "four",
    "5th": "five",
    "6th": "six",
    "7th": "seven",
    "8th": "eight",
    "9th": "nine",
    "10th": "ten",
}
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def snake_case(column: str) -> str:
    """``2nd ICD Diagnosis Code`` → ``two_icd_diagnosis_code``; ``Member State ENROLL`` → ``member_state_enroll``."""
    name = column.strip().lower()
    first, sep, rest = name.partition(" ")
    if first in _ORDINALS:
        name = _ORDINALS[first] + sep + rest
    return _NON_ALNUM.sub("_", name).strip("_")


def _check_data_type(data_type: str) -> None:
    if data_type not in DATA_TYPES:
        raise ValueError(f"data type must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")


@cache
def header_line(data_type: str) -> str:
    """The exact header line (no line ending) of a data type's extracts."""
    _check_data_type(data_type)
    text = resources.files("pgx_apcd").joinpath("layouts", f"{data_type}_header.txt").read_text("ascii")
    return text.strip("\r\n")


@cache
def raw_columns(data_type: str) -> tuple[str, ...]:
    """The header's column names in layout order (51 pharmacy, 113 medical)."""
    return tuple(header_line(data_type).split("|"))


@cache
def columns(data_type: str) -> tuple[str, ...]:
    """The snake_case column names in layout order."""
    return tuple(snake_case(c) for c in raw_columns(data_type))


# Demographic fields of the imputation: field → bronze column.
DEMOGRAPHIC_COLUMNS: dict[str, str] = {
    "age": "member_age_dos",
    "gender": "member_gender",
    "race": "member_race",
    "zip": "member_zip_code_dos",
    "county": "member_county_dos",
    "payer": "payer_type",
}

AGE_BANDS: tuple[str, ...] = (
    "0-12",
    "13-24",
    "25-44",
    "45-54",
    "55-64",
    "65-74",
    "75-84",
    "85-94",
    "95-114",
    "unknown",
)
DEFAULT_YEARS: tuple[int, ...] = (2016, 2017, 2018, 2019, 2020)

ICD_DIAGNOSIS_COLUMNS: tuple[str, ...] = (
    "primary_icd_diagnosis_code",
    *(f"{o}_icd_diagnosis_code" for o in ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")),
)
PROCEDURE_COLUMNS: tuple[str, ...] = ("procedure_code", "cpt_mod_1_code", "cpt_mod_2_code")
