"""pgx_core.errors: the exception tree as drawn, and PHI scrubbing that keeps what helps."""

from __future__ import annotations

import re

import pytest

from pgx_core import errors
from pgx_core.errors import PgxError, StageError, scrub
from pgx_core.exitcodes import ExitCode

# Values that stand for PHI: none of them may survive scrub().
CANARIES = [
    "0048151623420",  # member key
    "20190101",
    "1970-01-01",  # dates
    "12345",
    "6789",  # ZIP, ZIP+4
    "JOHN",
    "SMITH",  # a name inside a quoted string or a raw line
]

# (error text, scrubbed text)
KEEP = [
    ("S3 read failed for s3://b/x after retries: SlowDown (HTTP 503)",) * 2,
    ("AWS Error UNKNOWN (HTTP status 503) during GetObject operation",) * 2,
    ("run 20261126T101500Z-3f9c2a7e failed",) * 2,
    ("expected 113 columns, got 112", "expected 113 columns, got <n>"),
    ("object holds 1000 rows, state says 999", "object holds 1000 rows, state says <n>"),
    ("backup incomplete: 900 of 1000 objects",) * 2,
    ("read 4096 bytes of 65536 lines in 120 seconds",) * 2,
    ("s3://b/silver/imputed/medical/age_band=65-74/event_year=2019/medical_data.parquet: bad footer",) * 2,
    ("file:///tmp/x/bronze/pharmacy/Q12016.parquet is not Parquet",) * 2,
    ("cannot reach http://127.0.0.1:35313 (EndpointConnectionError)",) * 2,
    ("invalid footer in s3://b/_staging/20261126T101500Z-3f9c2a7e/gold/p.parquet",) * 2,
]
DROP = [
    ("invalid key 0048151623420 in row 7", "invalid key <n> in row 7"),
    ("date of birth 20190101 out of range", "date of birth <n> out of range"),
    ("date of birth 1970-01-01 out of range", "date of birth <n>-01-01 out of range"),
    ("zip 12345 or 12345-6789", "zip <n> or <n>-<n>"),
    ("could not convert 'JOHN SMITH' to int64", "could not convert <value> to int64"),
    ('unexpected value "0048151623420"', "unexpected value <value>"),
    ("cannot decode b'\\xffJOHN 12345'", "cannot decode <bytes>"),
    (
        "CSV parse error: Expected 113 columns, got 3: 0048151623420|JOHN SMITH|20190101",
        "CSV parse error: Expected 113 columns, got 3: <line>",
    ),
    ("JOHN SMITH|0048151623420|12345", "<line>"),
    ("bad record on line 2:\nJOHN|SMITH|1970-01-01\nstopped", "bad record on line 2:\n<line>\nstopped"),
    ("0048151623420 rows", "<n> rows"),  # no count has 13 digits
    ("file:///tmp/x/in.txt:0048151623420", "file:///tmp/x/in.txt:<n>"),
    ("No such file: '/tmp/x/JOHN_0048151623420.txt'", "No such file: <value>"),
    ("see 's3://b/JOHN_12345.parquet' here", "see <value> here"),
]


@pytest.mark.parametrize(("text", "expected"), KEEP + DROP, ids=[t for t, _ in KEEP + DROP])
def test_scrub_keeps_locations_and_counts_and_drops_values(text: str, expected: str) -> None:
    got = scrub(text)
    assert got == expected
    for canary in CANARIES:
        if canary not in expected:
            assert canary not in got


def test_scrub_truncates_long_text() -> None:
    got = scrub("x" * 1000 + " 0048151623420")
    assert len(got) == 301 and got.endswith("…")
    assert scrub(("JOHN|" * 1000) + "\n" + "z" * 50) == "<line>\n" + "z" * 50


def test_stage_error_message_keeps_the_object_and_drops_the_value() -> None:
    cause = ValueError("s3://b/bronze/pharmacy/Q12016.parquet: expected 113 columns, got 'JOHN' 0048151623420")
    msg = str(StageError("ingest", "1.2", "pharmacy__Q12016", cause))
    assert msg == (
        "Stage ingest (version 1.2) failed on entity pharmacy__Q12016: ValueError: "
        "s3://b/bronze/pharmacy/Q12016.parquet: expected 113 columns, got <value> <n>"
    )


def _drawn_tree() -> dict[str, int]:
    doc = errors.__doc__ or ""
    return {m[1]: int(m[2]) for m in re.finditer(r"[├└]── (\w+) +(\d+)", doc)}


def test_tree_drawing_matches_every_class_and_exit_code() -> None:
    classes = {
        name: obj
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, PgxError) and obj is not PgxError
    }
    drawn = _drawn_tree()
    assert set(drawn) == set(classes)
    assert {name: int(cls.exit_code) for name, cls in classes.items()} == drawn


def test_store_errors_retrying_cannot_fix_exit_64() -> None:
    assert errors.StoreAccessError.exit_code == ExitCode.USAGE
    assert errors.BucketNotFound.exit_code == ExitCode.USAGE
    assert errors.UnsupportedCondition.exit_code == ExitCode.USAGE
    # Still storage errors: code that tidies up after any StorageError keeps doing so.
    assert issubclass(errors.StoreAccessError, errors.StorageError)
    assert not issubclass(errors.BucketNotFound, errors.ObjectNotFound)  # never "missing, so new"
