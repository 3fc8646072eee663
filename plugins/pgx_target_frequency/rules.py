"""Pure rules of the target-frequency report.

Design: counting is a *partial aggregate*. :func:`partition_partial` counts one gold medical
table (a partition, or any slice of one — a row group, a batch) into a :class:`FrequencyPartial`
holding two tables with the final report schemas and exact counts; :func:`merge_partials` (or
:meth:`FrequencyPartial.merge`) adds partials with the same key together. Counting is a sum, so
``merge(count(a), count(b)) == count(a + b)`` whatever the split, and the order partials are merged
in does not matter. Suppression is applied once, to the merged report: suppressing partials
would lose counts that only reach the threshold together.

Decisions on points the report's definition leaves open (each is tested in
``tests/plugins/test_target_frequency_rules.py``):

* **What is counted**: the gold value exactly as stored (after clean, and after update-codes if it
  ran); NULL codes are not counted (a missing diagnosis is not a code). One row contributes one
  count per non-NULL position, so the same code in two positions counts once in each.
* **position** labels: ``primary``, ``two`` … ``ten`` (the column-name prefixes).
* **Types**: ``event_year`` int32 (what a hive ``event_year=2019`` partition reads as),
  ``age_band`` / ``position`` / ``code`` string, ``frequency`` int64.
* **Order** (deterministic, diffable): ``event_year``, ``age_band`` in age band order
  (``0-12`` … ``95-114``, ``unknown``), ``position`` in ordinal order (``primary``, ``two`` …
  ``ten``), then ``code`` in binary (code point) order. Not by frequency: equal keys stay on the
  same line from run to run.
* **Suppression** (:func:`suppress_small_counts`): a count below the threshold (default 11) becomes
  NULL; the row is kept, so the report still says which codes were seen.
* **Suggested mappings** (:func:`suggested_icd_mappings`): every distinct observed non-NULL code
  whose pass-2 normalization (:func:`pgx_update_codes.rules.normalize_icd` with the target map)
  differs from itself → that normalization; unrecognized codes are left out (they map to
  themselves). ``codes_of_interest`` restricts the result to suggestions whose *target* is one of
  those codes (compared in flat form: upper-cased, ``.`` and spaces removed) — the research
  team's list names canonical codes, and the useful question is which variants feed them.
  Sorted by observed code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pgx_apcd.layout import AGE_BANDS, ICD_DIAGNOSIS_COLUMNS
from pgx_update_codes.rules import CodeMap, flatten_icd, normalize_icd

from pgx_core.errors import DataError

__all__ = [
    "ICD_FREQUENCY_SCHEMA",
    "POSITIONS",
    "PROCEDURE_FREQUENCY_SCHEMA",
    "SUPPRESSION_THRESHOLD",
    "FrequencyPartial",
    "icd_frequency_by_position",
    "merge_frequencies",
    "merge_partials",
    "observed_icd_codes",
    "partition_partial",
    "procedure_code_frequency",
    "suggested_icd_mappings",
    "suppress_small_counts",
]

ArrayLike = Any  # pyarrow ships no type information

SUPPRESSION_THRESHOLD = 11
# "primary", "two", … "ten": the prefix of each ICD diagnosis column, in ordinal order.
POSITIONS: tuple[str, ...] = tuple(c.removesuffix("_icd_diagnosis_code") for c in ICD_DIAGNOSIS_COLUMNS)
_PROCEDURE_COLUMN = "procedure_code"

ICD_FREQUENCY_SCHEMA = pa.schema(
    [
        pa.field("event_year", pa.int32()),
        pa.field("age_band", pa.string()),
        pa.field("position", pa.string()),
        pa.field("code", pa.string()),
        pa.field("frequency", pa.int64()),
    ]
)
PROCEDURE_FREQUENCY_SCHEMA = pa.schema(
    [
        pa.field("event_year", pa.int32()),
        pa.field("age_band", pa.string()),
        pa.field("code", pa.string()),
        pa.field("frequency", pa.int64()),
    ]
)
_RANKS = {"age_band": pa.array(AGE_BANDS, pa.string()), "position": pa.array(POSITIONS, pa.string())}


def _check_partition(event_year: int, age_band: str) -> None:
    if age_band not in AGE_BANDS:
        raise ValueError(f"age_band must be one of {', '.join(AGE_BANDS)}, got {age_band!r}")
    if not isinstance(event_year, int) or isinstance(event_year, bool):
        raise ValueError(f"event_year must be an int, got {type(event_year).__name__}")


def _column(table: pa.Table | pa.RecordBatch, name: str) -> Any:
    if table.schema.get_field_index(name) < 0:
        raise DataError(f"gold medical has no column {name} (or has it more than once)")
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col if col.type == pa.string() else col.cast(pa.string())


def _repeat(value: object, type_: pa.DataType, n: int) -> Any:
    return pa.repeat(pa.scalar(value, type_), n)


def _value_counts(col: ArrayLike) -> tuple[Any, Any]:
    """(distinct non-NULL values, their counts as int64)."""
    counts = pc.value_counts(col)
    values, freq = counts.field("values"), counts.field("counts")
    present = pc.is_valid(values)
    return pc.filter(values, present), pc.cast(pc.filter(freq, present), pa.int64())


def _sorted(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Sort by ``keys``, ranking ``age_band`` and ``position`` by their declared order, not by text."""
    sort_cols: dict[str, Any] = {}
    for key in keys:
        col = table[key]
        if key in _RANKS:
            # Unknown labels (not produced here) rank last rather than failing.
            col = pc.fill_null(pc.index_in(col, value_set=_RANKS[key]), len(_RANKS[key]))
        sort_cols[key] = col
    order = pc.sort_indices(pa.table(sort_cols), sort_keys=[(k, "ascending") for k in keys])
    return table.take(order)


def _group_sum(table: pa.Table, keys: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    if table.num_rows == 0:
        return schema.empty_table()
    grouped = table.group_by(list(keys), use_threads=False).aggregate([("frequency", "sum")])
    arrays = [grouped[k] for k in keys] + [grouped["frequency_sum"]]
    return _sorted(pa.Table.from_arrays(arrays, names=[*keys, "frequency"]).cast(schema), keys)


_ICD_KEYS: tuple[str, ...] = ("event_year", "age_band", "position", "code")
_PROCEDURE_KEYS: tuple[str, ...] = ("event_year", "age_band", "code")


def icd_frequency_by_position(table: pa.Table | pa.RecordBatch, event_year: int, age_band: str) -> pa.Table:
    """Count each non-NULL ICD diagnosis code per position in one gold medical table (exact counts).

    Schema :data:`ICD_FREQUENCY_SCHEMA`; sorted by year, band, position ordinal, code. The
    partition values are arguments because gold files do not store them.
    """
    _check_partition(event_year, age_band)
    parts = []
    for position, name in zip(POSITIONS, ICD_DIAGNOSIS_COLUMNS, strict=True):
        values, freq = _value_counts(_column(table, name))
        n = len(values)
        parts.append(
            pa.Table.from_arrays(
                [_repeat(event_year, pa.int32(), n), _repeat(age_band, pa.string(), n),
                 _repeat(position, pa.string(), n), values, freq],
                schema=ICD_FREQUENCY_SCHEMA,
            )
        )
    return _sorted(pa.concat_tables(parts), _ICD_KEYS)


def procedure_code_frequency(table: pa.Table | pa.RecordBatch, event_year: int, age_band: str) -> pa.Table:
    """Count each non-NULL ``procedure_code`` in one gold medical table (exact counts).

    Schema :data:`PROCEDURE_FREQUENCY_SCHEMA`; sorted by year, band, code. CPT modifiers are not
    procedure codes and are not counted: the report is for ``procedure_code`` only.
    """
    _check_partition(event_year, age_band)
    values, freq = _value_counts(_column(table, _PROCEDURE_COLUMN))
    n = len(values)
    out = pa.Table.from_arrays(
        [_repeat(event_year, pa.int32(), n), _repeat(age_band, pa.string(), n), values, freq],
        schema=PROCEDURE_FREQUENCY_SCHEMA,
    )
    return _sorted(out, _PROCEDURE_KEYS)


def merge_frequencies(tables: Iterable[pa.Table]) -> pa.Table:
    """Sum the frequencies of equal keys across frequency tables of one kind (ICD or procedure).

    Inputs must be unsuppressed (a NULL frequency is rejected: it would make the sum meaningless).
    The result has the same schema and the deterministic order.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("merge_frequencies needs at least one table")
    schema = tables[0].schema
    keys: tuple[str, ...]
    if schema.equals(ICD_FREQUENCY_SCHEMA):
        keys = _ICD_KEYS
    elif schema.equals(PROCEDURE_FREQUENCY_SCHEMA):
        keys = _PROCEDURE_KEYS
    else:
        raise ValueError("merge_frequencies: not an ICD or procedure frequency table")
    if any(not t.schema.equals(schema) for t in tables):
        raise ValueError("merge_frequencies: tables of different kinds")
    combined = pa.concat_tables(tables)
    if combined["frequency"].null_count:
        raise ValueError("merge_frequencies: suppressed (NULL) frequencies cannot be merged")
    return _group_sum(combined, keys, schema)


@dataclass(frozen=True)
class FrequencyPartial:
    """Exact (unsuppressed) counts of some gold medical rows: both report tables."""

    icd: pa.Table
    procedure: pa.Table

    def merge(self, other: FrequencyPartial) -> FrequencyPartial:
        """The counts of both partials' rows together."""
        return merge_partials([self, other])

    @classmethod
    def empty(cls) -> FrequencyPartial:
        """The identity of :meth:`merge`."""
        return cls(ICD_FREQUENCY_SCHEMA.empty_table(), PROCEDURE_FREQUENCY_SCHEMA.empty_table())


def partition_partial(table: pa.Table | pa.RecordBatch, event_year: int, age_band: str) -> FrequencyPartial:
    """Count one gold medical table (partition, row group or batch) of ``(event_year, age_band)``."""
    return FrequencyPartial(
        icd_frequency_by_position(table, event_year, age_band),
        procedure_code_frequency(table, event_year, age_band),
    )


def merge_partials(partials: Iterable[FrequencyPartial]) -> FrequencyPartial:
    """Merge any number of partials (any order, any grouping: the result is the same)."""
    partials = list(partials)
    if not partials:
        return FrequencyPartial.empty()
    return FrequencyPartial(
        merge_frequencies([p.icd for p in partials]),
        merge_frequencies([p.procedure for p in partials]),
    )


def suppress_small_counts(
    table: pa.Table, threshold: int = SUPPRESSION_THRESHOLD, column: str = "frequency"
) -> pa.Table:
    """Counts below ``threshold`` (default 11) → NULL, for reports that leave the lake.

    Rows are kept and nothing else changes. Apply it to merged totals, never to partials.
    """
    i = table.schema.get_field_index(column)
    if i < 0:
        raise ValueError(f"no column {column!r} to suppress")
    counts = table[column]
    small = pc.less(counts, threshold)
    suppressed = pc.if_else(small, pa.scalar(None, counts.type), counts)
    return table.set_column(i, table.schema.field(i), suppressed)


def observed_icd_codes(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """Distinct non-NULL codes across the ten ICD diagnosis columns, sorted (binary order)."""
    cols = [_column(table, name) for name in ICD_DIAGNOSIS_COLUMNS]
    distinct = pc.unique(pa.chunked_array(cols, pa.string()))
    distinct = pc.drop_null(distinct)
    return pc.take(distinct, pc.sort_indices(distinct))


def suggested_icd_mappings(
    codes: ArrayLike | Iterable[str | None],
    target_map: CodeMap | None = None,
    codes_of_interest: Iterable[str] | None = None,
) -> dict[str, str]:
    """``{observed code: its pass-2 normalization}`` for every code the normalization changes.

    ``codes`` may be an Arrow array (e.g. the ``code`` column of a merged ICD frequency table or
    :func:`observed_icd_codes`) or any iterable of strings; NULLs and repeats are ignored.
    ``codes_of_interest`` keeps only suggestions whose target is one of those codes (flat form).
    """
    if isinstance(codes, pa.ChunkedArray | pa.Array):
        arr = codes.cast(pa.string()) if codes.type != pa.string() else codes
    else:
        arr = pa.array(list(codes), pa.string())
    distinct = pc.drop_null(pc.unique(arr))
    if isinstance(distinct, pa.ChunkedArray):
        distinct = distinct.combine_chunks()
    normalized, _, _ = normalize_icd(distinct, target_map)
    differs = pc.not_equal(normalized, distinct)
    if codes_of_interest is not None:
        wanted = flatten_icd(pa.array(list(codes_of_interest), pa.string()))
        differs = pc.and_(differs, pc.is_in(normalized, value_set=pc.drop_null(wanted)))
    keys = pc.filter(distinct, differs)
    values = pc.filter(normalized, differs)
    order = pc.sort_indices(keys)
    return dict(zip(pc.take(keys, order).to_pylist(), pc.take(values, order).to_pylist(), strict=True))
