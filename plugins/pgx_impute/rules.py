"""Pure rules of the global demographic imputation: bronze rows in, silver rows out.

Everything here is Arrow in, Arrow out, built from ``pyarrow.compute`` kernels, group-bys, one join
and sorts (the project's runtime has no numpy, so none is used). Python loops only run over the six
demographic fields or over a few distinct values (reasons, labels, partitions) — never over rows.

Pipeline for one bucket (:func:`impute_bucket`)::

    bronze ─split_keys─▶ valid rows (+ member, event_year)  ─▶ quarantine (reason)
             │
             ├─normalize_demographics─▶ present value or NULL per field (step 2)
             ├─build_profiles─▶ one profile per (member, event_year, data_type) (step 3)
             ├─resolve─▶ *_imputed / *_source per row (step 4)
             └─age_band + scope filter + sort ─▶ silver rows per data type (steps 5-7)

A bucket must hold *all* rows of the members in it (both data types, every year, every bronze
object): imputation is global per member, never per file or per year. Members never span two
buckets, so every result is a function of the member's own rows only; with the total sort orders
used below, concatenating the buckets' outputs and sorting them again gives exactly the 1-bucket
output (see :func:`merge_bucket_results`).

Decisions on points the steps leave open (each also noted where it is implemented):

* A row with an empty member key *and* a bad date is quarantined as ``MISSING_MEMBER_KEY``: the key
  is checked first (step 1 names it first, and without a member the row can inform nobody).
* ``incurred_date`` is checked on its raw bronze value, not trimmed: it must be exactly eight ASCII
  digits (silver keeps it as the 8-character string) forming a proleptic-Gregorian date
  with year 0001-9999 (``00000101`` is not a date).
* Case-insensitive sentinel matching and the gender upper-casing are ASCII-only: the sentinels are
  ASCII, the feed is CP1252, and ASCII case mapping is the same in every engine and locale.
* An age is an integer when its trimmed text is one or more ASCII digits (leading zeros allowed:
  ``05`` is 5). Signs (``+5``, ``-0``), decimals (``5.0``), exponents, inner spaces and non-ASCII
  digits are not integers, so they are missing (and then imputed). A strict lexical rule behaves the
  same in Arrow, DuckDB and Python; a malformed age points at a shifted or foreign-format record.
* Rows of years outside the run's years still inform the profiles (the imputation is global: every
  row informs every other row of the member); they are only left out of silver and counted as
  out_of_scope. Quarantine is decided before scope, so a quarantined row is never also out of scope.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
from pgx_apcd.layout import AGE_BANDS, DATA_TYPES, DEMOGRAPHIC_COLUMNS, columns

from pgx_core.errors import ConservationError

__all__ = [
    "AGE_BAND_LABELS",
    "AGE_MAX",
    "AGE_MIN",
    "FIELDS",
    "IMPUTED_COLUMNS",
    "PEAK_FACTOR",
    "PROFILE_COLUMNS",
    "QUARANTINE_REASONS",
    "SENTINELS",
    "SORT_KEYS",
    "SOURCE_COLUMNS",
    "SOURCE_LABELS",
    "BucketResult",
    "age_band",
    "bronze_schema",
    "build_profiles",
    "estimate_bucket_count",
    "impute_bucket",
    "merge_bucket_results",
    "normalize_demographics",
    "resolve",
    "silver_partition_runs",
    "silver_partitions",
    "sort_profiles",
    "sort_rows",
    "sort_silver",
    "split_keys",
]

# --- constants of the rules ----------------------------------------------------------------------

FIELDS: tuple[str, ...] = tuple(DEMOGRAPHIC_COLUMNS)  # age, gender, race, zip, county, payer
IMPUTED_COLUMNS: tuple[str, ...] = tuple(f"{f}_imputed" for f in FIELDS)
SOURCE_COLUMNS: tuple[str, ...] = tuple(f"{f}_source" for f in FIELDS)

SENTINELS: tuple[str, ...] = ("NULL", "UNKNOWN", "UNK", "N/A", "NA", "NONE")
GENDER_SENTINELS: tuple[str, ...] = (*SENTINELS, "U")
AGE_MIN, AGE_MAX = 0, 114

MISSING_MEMBER_KEY = "MISSING_MEMBER_KEY"
INVALID_INCURRED_DATE = "INVALID_INCURRED_DATE"
QUARANTINE_REASONS: tuple[str, ...] = (MISSING_MEMBER_KEY, INVALID_INCURRED_DATE)

ORIGINAL = "original"
UNRESOLVED = "unresolved"
# Type codes follow the sort order of the names, so integer keys sort like the strings would.
_TYPE_ORDER: tuple[str, ...] = tuple(sorted(DATA_TYPES))  # ("medical", "pharmacy")
_IMPUTED_FROM: tuple[str, ...] = tuple(f"imputed_from_{t}" for t in _TYPE_ORDER)
SOURCE_LABELS: tuple[str, ...] = (ORIGINAL, *(f"imputed_from_{t}" for t in DATA_TYPES), UNRESOLVED)

# The age bands an age can fall in (``unknown`` is for rows without one).
AGE_BAND_LABELS: tuple[str, ...] = tuple(b for b in AGE_BANDS if b != "unknown")
_AGE_BAND_LOWER: tuple[int, ...] = (0, 13, 25, 45, 55, 65, 75, 85, 95)
UNKNOWN_BAND = "unknown"

# Silver (and quarantine) order, on raw bronze values. (_source_file, _source_line)
# identifies a bronze row within a data type, so the order is total and the output deterministic.
SORT_KEYS: tuple[str, ...] = ("mi_person_key", "incurred_date", "_source_file", "_source_line")
PROFILE_COLUMNS: tuple[str, ...] = ("mi_person_key", "data_type", "rows", *FIELDS)

_MEMBER = "member"
_YEAR = "event_year"
_TYPE = "data_type"
_DATE = "incurred_date"
_KEY = "mi_person_key"
_REQUIRED = (_KEY, _DATE, *DEMOGRAPHIC_COLUMNS.values(), "_source_file", "_source_line")

_DAYS_IN_MONTH = pa.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int32())

ArrayLike: TypeAlias = "pa.Array | pa.ChunkedArray"


# --- small Arrow helpers -------------------------------------------------------------------------


def _arr(values: ArrayLike) -> pa.Array:
    """One contiguous array: several kernels (scatter, pairwise_diff, buffers) want no chunks."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values


def _run_starts(sorted_ids: ArrayLike) -> pa.Array:
    """True where a run of equal ids starts in an id array that is already sorted."""
    ids = _arr(sorted_ids)
    if len(ids) == 0:
        return pa.array([], pa.bool_())
    return pc.fill_null(pc.not_equal(pc.pairwise_diff(ids), 0), True)


def _type_codes(data_types: ArrayLike) -> pa.Array:
    codes = pc.index_in(data_types, value_set=pa.array(_TYPE_ORDER))
    if codes.null_count:
        raise ValueError(f"data_type must be one of {', '.join(_TYPE_ORDER)}")
    return _arr(codes).cast(pa.int64())


def _int_range(values: ArrayLike) -> tuple[int, int] | None:
    mm = pc.min_max(values).as_py()
    if mm["min"] is None:
        return None
    return int(mm["min"]), int(mm["max"])


def bronze_schema(data_type: str) -> pa.Schema:
    """Bronze schema of a data type: layout columns (``string``), ``_source_file``, ``_source_line``."""
    fields = [pa.field(c, pa.string()) for c in columns(data_type)]
    return pa.schema([*fields, pa.field("_source_file", pa.string()), pa.field("_source_line", pa.int64())])


def _check_bronze(bronze: pa.Table, data_type: str) -> None:
    # Column names only in the message: never a value (no PHI in messages).
    names = set(bronze.column_names)
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        raise ValueError(f"{data_type} bronze lacks required columns: {', '.join(missing)}")
    clash = [c for c in (*IMPUTED_COLUMNS, *SOURCE_COLUMNS, "age_band", _YEAR) if c in names]
    if clash:
        raise ValueError(f"{data_type} bronze already has output columns: {', '.join(clash)}")


# --- step 1: keys ----------------------------------------------------------------------------------


def _event_years(dates: ArrayLike) -> pa.Array:
    """The year of each valid ``YYYYMMDD`` date as int16, NULL where the raw value is not one.

    Exactly eight ASCII digits (no trimming: silver keeps the 8-character string), month 1-12, day
    within the month with Gregorian leap years, year 0001-9999 (year 0 does not exist in the
    calendar the feed uses, and ``datetime.date`` agrees).
    """
    dates = _arr(dates)
    digits = pc.fill_null(pc.and_(pc.equal(pc.binary_length(dates), 8), pc.ascii_is_decimal(dates)), False)
    n = pc.cast(pc.if_else(digits, dates, "00000000"), pa.int32())
    year = pc.divide(n, 10000)
    month = pc.modulo(pc.divide(n, 100), 100)
    day = pc.modulo(n, 100)
    leap = pc.or_(
        pc.and_(pc.equal(pc.modulo(year, 4), 0), pc.not_equal(pc.modulo(year, 100), 0)),
        pc.equal(pc.modulo(year, 400), 0),
    )
    month_ok = pc.and_(pc.greater_equal(month, 1), pc.less_equal(month, 12))
    days = pc.take(_DAYS_IN_MONTH, pc.if_else(month_ok, month, 0))
    days = pc.add(days, pc.cast(pc.and_(leap, pc.equal(month, 2)), pa.int32()))
    valid = pc.and_(
        pc.and_(digits, pc.greater_equal(year, 1)),
        pc.and_(month_ok, pc.and_(pc.greater_equal(day, 1), pc.less_equal(day, days))),
    )
    return pc.if_else(valid, year, pa.scalar(None, pa.int32())).cast(pa.int16())


def _key_columns(bronze: pa.Table) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(member, event_year, reason)`` for every bronze row; reason is NULL for valid rows."""
    member = _arr(pc.ascii_trim_whitespace(bronze[_KEY]))
    event_year = _event_years(bronze[_DATE])
    no_member = pc.fill_null(pc.equal(pc.binary_length(member), 0), True)
    bad_date = pc.is_null(event_year)
    none = pa.scalar(None, pa.string())
    # Key first: without a member the row can inform nobody, whatever its date.
    reason = pc.if_else(no_member, MISSING_MEMBER_KEY, pc.if_else(bad_date, INVALID_INCURRED_DATE, none))
    return member, event_year, reason


def split_keys(bronze: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Step 1: split bronze rows into valid rows and quarantined rows.

    Returns ``(valid, quarantined)``. ``valid`` keeps every bronze column and adds ``member`` (the
    ``mi_person_key`` trimmed of ASCII whitespace) and ``event_year`` (int16). ``quarantined``
    keeps every bronze column and adds ``reason``: ``MISSING_MEMBER_KEY`` when the trimmed key is
    empty or NULL — this wins when the date is bad too — else ``INVALID_INCURRED_DATE`` when the
    raw ``incurred_date`` is not exactly eight ASCII digits forming a real date. Both keep input order.
    """
    member, event_year, reason = _key_columns(bronze)
    ok = pc.is_null(reason)
    bad = pc.invert(ok)
    valid = bronze.filter(ok).append_column(_MEMBER, pc.filter(member, ok))
    valid = valid.append_column(_YEAR, pc.filter(event_year, ok))
    quarantined = bronze.filter(bad).append_column("reason", pc.filter(reason, bad))
    return valid, quarantined


# --- step 2: missing values ------------------------------------------------------------------------


def _normalize_field(field: str, raw: ArrayLike) -> ArrayLike:
    trimmed = pc.ascii_trim_whitespace(raw)
    upper = pc.ascii_upper(trimmed)
    sentinels = GENDER_SENTINELS if field == "gender" else SENTINELS
    missing = pc.or_(
        pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), True),
        pc.is_in(upper, value_set=pa.array(sentinels)),
    )
    if field == "age":
        # Leading zeros are stripped before the cast so that "000000000000000000005" (still the
        # integer 5) cannot overflow; more than three significant digits is > 114 anyway.
        digits = pc.fill_null(pc.ascii_is_decimal(trimmed), False)
        significant = pc.ascii_ltrim(trimmed, characters="0")
        short = pc.and_(digits, pc.less_equal(pc.binary_length(significant), 3))
        text = pc.if_else(short, pc.if_else(pc.equal(significant, ""), "0", significant), "999")
        value = pc.cast(text, pa.int16())
        ok = pc.and_(pc.and_(short, pc.invert(missing)), pc.less_equal(value, AGE_MAX))
        return pc.if_else(ok, value, pa.scalar(None, pa.int16()))
    present = upper if field == "gender" else trimmed
    return pc.if_else(missing, pa.scalar(None, pa.string()), present)


def normalize_demographics(t: pa.Table) -> pa.Table:
    """Step 2: add one column per field (``age`` … ``payer``) holding the present value or NULL.

    A value is missing when NULL, empty after trimming ASCII whitespace, or — trimmed and compared
    ASCII-case-insensitively — one of ``NULL UNKNOWN UNK N/A NA NONE`` (gender also ``U``); an age is
    also missing when its trimmed text is not one or more ASCII digits (``05`` → 5; ``+5``, ``5.0``,
    ``5e0`` and non-ASCII digits are not integers) or lies outside 0-114. Present values are
    trimmed, gender is ASCII-upper-cased, age is int16. The raw bronze columns are left untouched.
    """
    for field, column in DEMOGRAPHIC_COLUMNS.items():
        t = t.append_column(field, _normalize_field(field, t[column]))
    return t


# --- step 3: profiles ------------------------------------------------------------------------------


def _group_ids(t: pa.Table) -> tuple[pa.Array, pa.Table]:
    """Dense ids of (member, event_year, data_type), numbered in the sort order of the triples.

    Returns ``(id per row, distinct triples sorted by member code point, year, data type)``. Each
    triple is packed into one int64 (member rank * stride + year offset * 2 + type code), which makes
    the per-field group-bys and sorts work on integers instead of strings.
    """
    members = _arr(t[_MEMBER])
    encoded = pc.dictionary_encode(members)
    # Arrow compares UTF-8 bytewise, which is code point order.
    order = pc.array_sort_indices(encoded.dictionary).cast(pa.int64())
    rank = pc.inverse_permutation(order)
    member_rank = pc.take(rank, encoded.indices).cast(pa.int64())
    sorted_members = pc.take(encoded.dictionary, order)
    years = _arr(t[_YEAR]).cast(pa.int64())
    bounds = _int_range(years)
    y0, y1 = bounds if bounds else (0, 0)
    stride = 2 * (y1 - y0 + 1)
    key = pc.add(
        pc.multiply(member_rank, stride),
        pc.add(pc.multiply(pc.subtract(years, y0), 2), _type_codes(t[_TYPE])),
    )
    distinct = pc.unique(key)
    distinct = pc.take(distinct, pc.array_sort_indices(distinct))
    ids = pc.index_in(key, value_set=distinct)
    within = pc.modulo(distinct, stride)
    groups = pa.table(
        {
            _MEMBER: pc.take(sorted_members, pc.divide(distinct, stride)),
            _YEAR: pc.add(pc.divide(within, 2), y0).cast(pa.int16()),
            _TYPE: pc.take(pa.array(_TYPE_ORDER), pc.modulo(within, 2)),
        }
    )
    return ids, groups


def _profile_values(field: str, ids: pa.Array, values: ArrayLike, dates: pa.Array, n_groups: int) -> pa.Array:
    """Mode of the present values per group id; ties → latest incurred_date, then smallest value."""
    present = pc.is_valid(values)
    sub = pa.table({"gid": ids, "v": values, "d": dates}).filter(present)
    counted = sub.group_by(["gid", "v"]).aggregate([([], "count_all"), ("d", "max")])
    # v is unique within a gid, so this order is total: the first row of each gid is the winner.
    # age is int16 here, so "smallest" is numeric for it and code point order for the strings.
    order = pc.sort_indices(
        counted,
        sort_keys=[
            ("gid", "ascending"),
            ("count_all", "descending"),
            ("d_max", "descending"),
            ("v", "ascending"),
        ],
    )
    ranked = counted.take(order)
    winners = ranked.filter(_run_starts(ranked["gid"]))
    out_type = pa.int16() if field == "age" else pa.string()
    if n_groups == 0:
        return pa.array([], out_type)
    return pc.scatter(_arr(winners["v"]).cast(out_type), _arr(winners["gid"]), max_index=n_groups - 1)


def build_profiles(t: pa.Table) -> pa.Table:
    """Step 3: one profile per (member, event_year, data_type) present in ``t``.

    ``t`` holds valid rows of both data types with ``member``, ``event_year``, ``data_type``, the raw
    ``incurred_date`` (8 digits, as checked by :func:`split_keys`) and the normalized fields of
    :func:`normalize_demographics`. Per field the profile value is the most frequent present value;
    ties go to the value whose latest ``incurred_date`` is most recent, then to the smallest value
    (numeric for age, code point for strings); NULL when no row of the group has it. ``rows`` (int64)
    counts every row of the group, including rows where fields are missing.

    Columns ``member, event_year, data_type, rows, age, gender, race, zip, county, payer``; sorted by
    ``(member, event_year, data_type)``.
    """
    ids, groups = _group_ids(t)
    n_groups = groups.num_rows
    # 8 ASCII digits, so the integer orders like the date and is cheaper to aggregate.
    dates = _arr(t[_DATE]).cast(pa.int32())
    counts = pa.table({"gid": ids}).group_by("gid").aggregate([([], "count_all")])
    if n_groups:
        rows = pc.scatter(_arr(counts["count_all"]), _arr(counts["gid"]), max_index=n_groups - 1)
    else:
        rows = pa.array([], pa.int64())
    profile = groups.append_column("rows", rows.cast(pa.int64()))
    for field in FIELDS:
        profile = profile.append_column(field, _profile_values(field, ids, t[field], dates, n_groups))
    return profile


# --- step 4: row values ----------------------------------------------------------------------------


def resolve(t: pa.Table, profiles: pa.Table, lookahead_years: int = 5) -> pa.Table:
    """Step 4: add ``<field>_imputed`` and ``<field>_source`` for every row of ``t``, in input order.

    ``t`` has ``member``, ``event_year``, ``data_type`` and the normalized fields; ``profiles`` is
    :func:`build_profiles` output (all years, both data types). A row's present value is kept
    (``original``). Otherwise the candidates are the member's profiles that define the field with
    ``|year - row year| <= lookahead_years``; the winner has the smallest year distance, then the
    row's data type, then the earlier year. A donor age is shifted by ``row year - donor year`` and a
    shifted age outside 0-114 disqualifies that donor (the next candidate is tried). The source is
    ``imputed_from_<donor data type>``; with no candidate the value is NULL and ``unresolved``.

    The choice depends only on (member, row year, row type, field), so it is made once per distinct
    triple ("target") and then taken back to the rows, in two rounds:

    1. the target's own profile (distance 0, same type — always the best candidate) by one hash
       lookup for all targets; it defines a field whenever any row of the target has it, so it
       settles nearly everything;
    2. the few targets still open are joined with all their member's profiles, ranked by
       ``(distance, other type, year)`` and the first acceptable donor per field wins. (distance,
       type, year) names one profile, so the ranking needs no further tie-break.
    """
    if lookahead_years < 0:
        raise ValueError("lookahead_years must be >= 0")
    n_rows, n_profiles = t.num_rows, profiles.num_rows
    # One dictionary over both tables, so a member has the same integer id in rows and profiles.
    members = [_arr(t[_MEMBER]).cast(pa.string()), _arr(profiles[_MEMBER]).cast(pa.string())]
    member_ids = pc.dictionary_encode(pa.concat_arrays(members)).indices.cast(pa.int64())
    row_ids, profile_ids = member_ids.slice(0, n_rows), member_ids.slice(n_rows)
    row_years = _arr(t[_YEAR]).cast(pa.int64())
    profile_years = _arr(profiles[_YEAR]).cast(pa.int64())
    row_types, profile_types = _type_codes(t[_TYPE]), _type_codes(profiles[_TYPE])
    bounds = _int_range(pa.chunked_array([row_years, profile_years], pa.int64()))
    y0, y1 = bounds if bounds else (0, 0)
    stride = 2 * (y1 - y0 + 1)

    def pack(ids: pa.Array, years: pa.Array, types: pa.Array) -> pa.Array:
        return pc.add(pc.multiply(ids, stride), pc.add(pc.multiply(pc.subtract(years, y0), 2), types))

    profile_keys = pack(profile_ids, profile_years, profile_types)
    if pc.count_distinct(profile_keys).as_py() != n_profiles:
        raise ValueError("profiles must hold one row per (member, event_year, data_type)")
    row_keys = pack(row_ids, row_years, row_types)
    targets = pc.unique(row_keys)
    n_targets = len(targets)
    row_target = pc.index_in(row_keys, value_set=targets)
    all_targets = pc.indices_nonzero(pc.is_valid(targets)).cast(pa.int64())

    # Per field: the targets that still need a donor (ascending ids) and the winners found so far
    # as (target ids, values, donor type codes).
    open_ids: dict[str, pa.Array] = {}
    found: dict[str, list[tuple[pa.Array, pa.Array, pa.Array]]] = {f: [] for f in FIELDS}
    for field in FIELDS:
        # Only targets with at least one row missing the field need a donor at all.
        wanting = pc.unique(pc.filter(row_target, pc.is_null(t[field]))).cast(pa.int64())
        open_ids[field] = pc.filter(all_targets, pc.is_in(all_targets, value_set=wanting))
    donors = {f: _arr(profiles[f]) for f in FIELDS}

    # Round 1: the target's own profile (same member, year and type; no age shift).
    union = _open_union(open_ids)
    if len(union) and n_profiles:
        own = pc.index_in(pc.take(targets, union), value_set=profile_keys)
        own_type = pc.take(pc.modulo(targets, 2), union)
        for field in FIELDS:
            ids = open_ids[field]
            at = pc.index_in(ids, value_set=union)
            value = pc.take(donors[field], pc.take(own, at))
            won = pc.is_valid(value)
            found[field].append((pc.filter(ids, won), pc.filter(value, won), pc.filter(pc.take(own_type, at), won)))
            open_ids[field] = pc.filter(ids, pc.invert(won))

    # Round 2: every other profile of the member within the lookahead, best first.
    union = _open_union(open_ids)
    if len(union) and n_profiles:
        keys = pc.take(targets, union)
        wanted = pa.table(
            {
                "tid": union,
                "mid": pc.divide(keys, stride),
                "year": pc.add(pc.divide(pc.modulo(keys, stride), 2), y0),
                "type": pc.modulo(keys, 2),
            }
        )
        available = pa.table(
            {
                "mid": profile_ids,
                "p_row": pc.indices_nonzero(pc.is_valid(profile_ids)).cast(pa.int64()),
                "p_year": profile_years,
                "p_type": profile_types,
            }
        )
        pairs = wanted.join(available, keys="mid", join_type="inner")
        distance = pc.abs(pc.subtract(pairs["p_year"], pairs["year"]))
        other = pc.not_equal(pairs["p_type"], pairs["type"])
        # The own profile (distance 0, same type) already had its chance in round 1.
        keep = pc.and_(pc.less_equal(distance, lookahead_years), pc.or_(other, pc.not_equal(distance, 0)))
        pairs = pairs.append_column("distance", distance).append_column("other", other).filter(keep)
        pairs = pairs.take(
            pc.sort_indices(
                pairs,
                sort_keys=[
                    ("tid", "ascending"),
                    ("distance", "ascending"),
                    ("other", "ascending"),
                    ("p_year", "ascending"),
                ],
            )
        )
        for field in FIELDS:
            if not len(open_ids[field]):
                continue
            value = pc.take(donors[field], pairs["p_row"])
            if field == "age":
                value = _shift_age(value, pc.subtract(pairs["year"], pairs["p_year"]))
            usable = pc.and_(pc.is_in(pairs["tid"], value_set=open_ids[field]), pc.is_valid(value))
            ranked = pa.table({"tid": pairs["tid"], "v": value, "t": pairs["p_type"]}).filter(usable)
            best = ranked.filter(_run_starts(ranked["tid"]))
            found[field].append((_arr(best["tid"]), _arr(best["v"]), _arr(best["t"])))

    labels = pa.array(_IMPUTED_FROM)
    imputed: list[tuple[str, ArrayLike]] = []
    labelled: list[tuple[str, ArrayLike]] = []
    for field in FIELDS:
        value_type = pa.int16() if field == "age" else pa.string()
        if n_targets and found[field]:
            ids = pa.concat_arrays([w[0] for w in found[field]])
            values = pc.scatter(
                pa.concat_arrays([w[1].cast(value_type) for w in found[field]]), ids, max_index=n_targets - 1
            )
            types = pc.scatter(
                pa.concat_arrays([w[2].cast(pa.int64()) for w in found[field]]), ids, max_index=n_targets - 1
            )
        else:
            values, types = pa.nulls(n_targets, value_type), pa.nulls(n_targets, pa.int64())
        own_value = t[field]
        donor_value = pc.take(values, row_target)
        donor_source = pc.fill_null(pc.take(labels, pc.take(types, row_target)), UNRESOLVED)
        imputed.append((f"{field}_imputed", pc.coalesce(own_value, donor_value)))
        labelled.append((f"{field}_source", pc.if_else(pc.is_valid(own_value), ORIGINAL, donor_source)))
    for name, column in (*imputed, *labelled):
        t = t.append_column(name, column)
    return t


def _shift_age(ages: ArrayLike, shift: ArrayLike) -> ArrayLike:
    """Donor ages moved by ``row year - donor year``; NULL where that leaves 0-114 (disqualified)."""
    shifted = pc.add(pc.cast(ages, pa.int64()), shift)
    ok = pc.and_(pc.greater_equal(shifted, AGE_MIN), pc.less_equal(shifted, AGE_MAX))
    return pc.if_else(ok, shifted, pa.scalar(None, pa.int64())).cast(pa.int16())


def _open_union(open_ids: Mapping[str, pa.Array]) -> pa.Array:
    """Sorted union of the open target ids of every field."""
    union = pc.unique(pa.chunked_array(list(open_ids.values()), pa.int64()))
    return pc.take(union, pc.array_sort_indices(union))


# --- step 5: age bands -----------------------------------------------------------------------------


def age_band(ages: ArrayLike) -> ArrayLike:
    """Band label of each resolved age; NULL → ``unknown``.

    Resolved ages are always 0-114, so anything else is a bug upstream and raises ValueError.
    """
    bounds = _int_range(ages)
    if bounds and (bounds[0] < AGE_MIN or bounds[1] > AGE_MAX):
        raise ValueError(f"ages must lie within {AGE_MIN}-{AGE_MAX}")
    lower = pa.array(_AGE_BAND_LOWER, pa.int64())
    index = pc.subtract(pc.search_sorted(lower, pc.cast(ages, pa.int64()), side="right"), 1)
    return pc.fill_null(pc.take(pa.array(AGE_BAND_LABELS), index), UNKNOWN_BAND)


# --- steps 6-7: one bucket -------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketResult:
    """Everything one bucket produces. Tables are single-chunk so equal inputs give equal bytes.

    ``silver[data_type]``: bronze columns unchanged, then ``age_imputed … payer_imputed``, then
    ``age_source … payer_source``, then the partition keys ``age_band`` (string) and ``event_year``
    (int16). The caller writes one object per (age_band, event_year) and drops these two columns
    (Hive partition values are not stored in the files). Rows are partition-major —
    ``(event_year, age_band)`` then :data:`SORT_KEYS` — so every partition is one contiguous,
    already-sorted slice (:func:`silver_partitions` cuts them without copying).

    ``quarantine[data_type]``: bronze columns + ``reason``, sorted by :data:`SORT_KEYS`.

    ``profiles``: the run's years only, columns :data:`PROFILE_COLUMNS` then the partition key
    ``event_year`` (int16), sorted by ``(event_year, mi_person_key, data_type)`` so every year's
    slice is already in profile order, ``(mi_person_key, data_type)``.

    ``stats[data_type]``: flat counters named as in the run summary (``quarantined.<REASON>``,
    ``out_of_scope``, ``sources.<field>.<label>``), every name present even when 0.
    """

    silver: dict[str, pa.Table]
    quarantine: dict[str, pa.Table]
    out_of_scope: dict[str, int]
    rows_in: dict[str, int]
    profiles: pa.Table
    stats: dict[str, dict[str, int]]

    def rows_out(self, data_type: str) -> int:
        return int(self.silver[data_type].num_rows)

    def rows_quarantined(self, data_type: str) -> int:
        return int(self.quarantine[data_type].num_rows)


def _sort_keys(partitioned: bool) -> list[tuple[str, str]]:
    keys = [(_YEAR, "ascending"), ("age_band", "ascending")] if partitioned else []
    return keys + [(k, "ascending") for k in SORT_KEYS]


def sort_rows(t: pa.Table) -> pa.Table:
    """Quarantine order: ``(mi_person_key, incurred_date, _source_file, _source_line)``, raw values."""
    return t.take(pc.sort_indices(t, sort_keys=_sort_keys(False))).combine_chunks()


def sort_silver(t: pa.Table) -> pa.Table:
    """Silver order: partition-major ``(event_year, age_band)``, then :data:`SORT_KEYS` on raw values.

    Band labels sort as strings, which is also their numeric order (``0-12`` < ``13-24`` < … <
    ``95-114`` < ``unknown``).
    """
    return t.take(pc.sort_indices(t, sort_keys=_sort_keys(True))).combine_chunks()


def sort_profiles(t: pa.Table) -> pa.Table:
    """Demographics order: ``(event_year, mi_person_key, data_type)``."""
    keys = [(_YEAR, "ascending"), (_KEY, "ascending"), (_TYPE, "ascending")]
    return t.take(pc.sort_indices(t, sort_keys=keys)).combine_chunks()


def silver_partitions(silver: pa.Table) -> list[tuple[str, int, pa.Table]]:
    """``(age_band, event_year, rows)`` per partition of a :func:`sort_silver`-ordered table.

    Zero-copy slices, partition keys dropped (they live in the Hive path), each slice
    already in silver row order (:data:`SORT_KEYS`).
    """
    body, runs = silver_partition_runs(silver)
    return [(band, year, body.slice(offset, n)) for band, year, offset, n in runs]


def silver_partition_runs(silver: pa.Table) -> tuple[pa.Table, list[tuple[str, int, int, int]]]:
    """The table without its partition keys, and ``(age_band, event_year, offset, rows)`` of each
    partition's run of rows in it (a :func:`sort_silver`-ordered table holds each partition as one run)."""
    body = silver.drop_columns([_YEAR, "age_band"])
    if silver.num_rows == 0:
        return body, []
    counts = silver.select([_YEAR, "age_band"]).group_by([_YEAR, "age_band"]).aggregate([([], "count_all")])
    counts = counts.take(pc.sort_indices(counts, sort_keys=[(_YEAR, "ascending"), ("age_band", "ascending")]))
    runs: list[tuple[str, int, int, int]] = []
    offset = 0
    for entry in counts.to_pylist():  # one entry per partition: at most 10 bands x the years
        n = int(entry["count_all"])
        runs.append((str(entry["age_band"]), int(entry[_YEAR]), offset, n))
        offset += n
    return body, runs


def _stats(reasons: pa.Array, out_of_scope: int, sources: Mapping[str, ArrayLike]) -> dict[str, int]:
    stats = {f"quarantined.{r}": 0 for r in QUARANTINE_REASONS}
    for entry in pc.value_counts(reasons).to_pylist():  # at most two distinct reasons
        stats[f"quarantined.{entry['values']}"] = int(entry["counts"])
    stats["out_of_scope"] = out_of_scope
    for field in FIELDS:
        counts = dict.fromkeys(SOURCE_LABELS, 0)
        for entry in pc.value_counts(sources[field]).to_pylist():  # at most four labels
            counts[entry["values"]] = int(entry["counts"])
        stats.update({f"sources.{field}.{label}": n for label, n in counts.items()})
    return stats


def impute_bucket(
    bronze_by_type: Mapping[str, pa.Table], years: Sequence[int], lookahead_years: int = 5
) -> BucketResult:
    """Steps 1-7 for one bucket: ALL rows of its members, both data types, every year.

    ``bronze_by_type`` maps ``pharmacy``/``medical`` to the concatenated bronze rows of that type (a
    missing type counts as no rows). ``years`` are the run's event years: rows of other years are
    counted as ``out_of_scope`` and not returned, yet still inform the profiles. Raises
    :class:`~pgx_core.errors.ConservationError` if bronze rows != silver + quarantined + out of scope
    for a data type (cannot happen unless this module is broken; checked because every stage must
    conserve rows).
    """
    unknown = sorted(set(bronze_by_type) - set(DATA_TYPES))
    if unknown:
        raise ValueError(f"unknown data types {', '.join(unknown)}; expected {', '.join(DATA_TYPES)}")
    if any(not 1 <= int(y) <= 9999 for y in years):
        raise ValueError("years must lie within 1-9999")
    in_years = pa.array(sorted({int(y) for y in years}), pa.int16())

    bronze: dict[str, pa.Table] = {}
    reasons: dict[str, pa.Array] = {}
    narrow_parts: list[pa.Table] = []
    for dt in DATA_TYPES:
        table = bronze_by_type.get(dt)
        table = bronze_schema(dt).empty_table() if table is None else table
        _check_bronze(table, dt)
        bronze[dt] = table
        member, event_year, reasons[dt] = _key_columns(table)
        valid = pc.is_null(reasons[dt])
        # Only the columns the rules read travel through the group-bys and lookups.
        narrow = pa.table(
            {
                _MEMBER: member,
                _YEAR: event_year,
                _TYPE: pa.repeat(pa.scalar(dt), table.num_rows),
                _DATE: table[_DATE].cast(pa.string()),
                **{c: table[c].cast(pa.string()) for c in DEMOGRAPHIC_COLUMNS.values()},
            }
        ).filter(valid)
        narrow = normalize_demographics(narrow).drop_columns(list(DEMOGRAPHIC_COLUMNS.values()))
        narrow_parts.append(narrow.append_column("_row", pc.indices_nonzero(valid)))

    profiles = build_profiles(pa.concat_tables(narrow_parts))

    silver: dict[str, pa.Table] = {}
    quarantine: dict[str, pa.Table] = {}
    out_of_scope: dict[str, int] = {}
    rows_in: dict[str, int] = {}
    stats: dict[str, dict[str, int]] = {}
    scoped_rows: list[int] = []
    for i, dt in enumerate(DATA_TYPES):
        narrow = narrow_parts[i]
        narrow_parts[i] = narrow.filter(pc.is_in(narrow[_YEAR], value_set=in_years))
        out_of_scope[dt] = narrow.num_rows - narrow_parts[i].num_rows
        scoped_rows.append(narrow_parts[i].num_rows)
    del narrow
    # Both data types in one call: a row's values depend only on its (member, year, type), so this
    # is what two calls give, at half the fixed cost per bucket (~100 kernel calls).
    resolved_both = resolve(pa.concat_tables(narrow_parts), profiles, lookahead_years)
    del narrow_parts  # peak memory: only what the silver rows still need stays alive
    resolved_both = resolved_both.append_column("age_band", age_band(resolved_both["age_imputed"]))
    resolved_both = resolved_both.select(["_row", *IMPUTED_COLUMNS, *SOURCE_COLUMNS, "age_band", _YEAR])
    offset = 0
    for dt, n in zip(DATA_TYPES, scoped_rows, strict=True):
        table, reason = bronze[dt], reasons[dt]
        resolved = resolved_both.slice(offset, n)
        offset += n
        # Order the narrow keys first, then gather the wide bronze rows once: that gather is the
        # most expensive step of the bucket (random access over every column), so it runs once.
        keys = table.select(list(SORT_KEYS)).take(resolved["_row"])
        keys = keys.append_column(_YEAR, resolved[_YEAR]).append_column("age_band", resolved["age_band"])
        order = pc.sort_indices(keys, sort_keys=_sort_keys(True))
        del keys
        resolved = resolved.take(order)
        out = table.take(resolved["_row"])
        for name in (*IMPUTED_COLUMNS, *SOURCE_COLUMNS, "age_band", _YEAR):
            out = out.append_column(name, resolved[name])
        silver[dt] = out.combine_chunks()

        bad = pc.indices_nonzero(pc.is_valid(reason))
        quarantine[dt] = sort_rows(table.take(bad).append_column("reason", pc.take(reason, bad)))

        rows_in[dt] = table.num_rows
        if rows_in[dt] != silver[dt].num_rows + quarantine[dt].num_rows + out_of_scope[dt]:
            raise ConservationError(
                f"impute {dt}: bronze rows {rows_in[dt]} != silver {silver[dt].num_rows} + quarantined "
                f"{quarantine[dt].num_rows} + out of scope {out_of_scope[dt]}"
            )
        sources = {f: resolved[f"{f}_source"] for f in FIELDS}
        stats[dt] = _stats(pc.take(reason, bad), out_of_scope[dt], sources)

    in_run = profiles.filter(pc.is_in(profiles[_YEAR], value_set=in_years))
    demographics = in_run.rename_columns([_KEY if c == _MEMBER else c for c in in_run.column_names])
    demographics = sort_profiles(demographics.select([*PROFILE_COLUMNS, _YEAR]))
    return BucketResult(silver, quarantine, out_of_scope, rows_in, demographics, stats)


def merge_bucket_results(results: Sequence[BucketResult]) -> BucketResult:
    """Combine the results of disjoint buckets into what one bucket over all their rows gives.

    Concatenation plus the same total sorts; counters add up. The stage can assemble partitions
    from several buckets this way, and the tests use it to prove bucket-count invariance.
    """
    if not results:
        raise ValueError("no bucket results to merge")

    def concat(tables: Iterable[pa.Table]) -> pa.Table:
        return pa.concat_tables(list(tables))

    silver = {dt: sort_silver(concat(r.silver[dt] for r in results)) for dt in DATA_TYPES}
    quarantine = {dt: sort_rows(concat(r.quarantine[dt] for r in results)) for dt in DATA_TYPES}
    out_of_scope = {dt: sum(r.out_of_scope[dt] for r in results) for dt in DATA_TYPES}
    rows_in = {dt: sum(r.rows_in[dt] for r in results) for dt in DATA_TYPES}
    stats = {dt: {name: sum(r.stats[dt][name] for r in results) for name in results[0].stats[dt]} for dt in DATA_TYPES}
    profiles = sort_profiles(concat(r.profiles for r in results))
    return BucketResult(silver, quarantine, out_of_scope, rows_in, profiles, stats)


# --- step 8: buckets -------------------------------------------------------------------------------


# Peak memory of impute_bucket() per byte of its input, measured with
# benchmarks/bench_impute_rules.py (1 M rows, 40 % pharmacy / 60 % medical, ~20 rows per member):
#
#   input measure                         pgx_apcd.sample data     simple generator
#   Arrow bytes of the bronze tables      1019 MiB                 866 MiB
#   raw text bytes (CP1252 extracts)      714 MiB                  -
#   Parquet (snappy) bytes                53 MiB                   72 MiB
#   Arrow pool peak                       2264 MiB = 2.22x Arrow   2033 MiB = 2.35x Arrow
#   peak RSS                              2699 MiB = 2.65x Arrow   2419 MiB = 2.79x Arrow
#
# The peak holds the input, its sorted wide copy (silver, +13 columns) and the narrow
# intermediates (keys, normalized fields, per-target winners). Relative to Parquet the ratio swings
# with the data's compressibility (42x vs 28x above, and real extracts differ again), so Parquet
# size is no basis for sizing; Arrow bytes (rows x bytes per row sampled from one row group) or the
# raw text size (Arrow is ~1.43x raw: 4-byte offsets per cell instead of a 1-byte delimiter) are.
# Factors: RSS/Arrow 2.65-2.79 rounded up to 3.0 for hash spread between buckets and allocator
# retention; raw = 3.0 x 1.43 rounded up to 4.5.
PEAK_FACTOR: dict[str, float] = {"arrow": 3.0, "raw": 4.5}


def estimate_bucket_count(total_bytes: int, memory_budget_mb: int, *, basis: str = "arrow") -> int:
    """Buckets needed so that one bucket's :func:`impute_bucket` peak stays within the budget.

    ``total_bytes`` is the size of ALL bronze rows of both data types, measured as ``basis``:
    ``arrow`` (in-memory Arrow bytes, e.g. total rows x bytes per row of a sampled row group) or
    ``raw`` (bytes of the raw text extracts). Each bucket gets ~1/n of the members and hence ~1/n of
    the bytes; its peak is ~``PEAK_FACTOR[basis]`` x its share (measured, see above). The budget is
    the work item's ``memoryBudgetMb``; the interpreter's fixed overhead (~70 MiB) is
    not counted against it.
    """
    if basis not in PEAK_FACTOR:
        raise ValueError(f"basis must be one of {', '.join(PEAK_FACTOR)}, got {basis!r}")
    if total_bytes < 0:
        raise ValueError("total_bytes must be >= 0")
    if memory_budget_mb <= 0:
        raise ValueError("memory_budget_mb must be > 0")
    return max(1, math.ceil(total_bytes * PEAK_FACTOR[basis] / (memory_budget_mb * 1024 * 1024)))
