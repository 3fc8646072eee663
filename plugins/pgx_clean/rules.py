"""Pure rules of the clean stages: one silver partition in, one gold table out.

Everything here is Arrow in, Arrow out, vectorized with :mod:`pyarrow.compute`. Python loops run
over columns, over the distinct values of a column (dictionary entries) or over drug-map entries,
never over rows. Nothing here does I/O or imports Ray, boto3 or pluggy.

Decisions on points the rules leave open (each is tested in ``tests/plugins/test_clean_rules.py``):

* **Normalization** (:func:`normalize_strings`): trim = ``ascii_trim_whitespace`` (exactly space,
  TAB, LF, VT, FF, CR); then ``''``, ``N/A`` and ``NULL`` in any letter case → NULL.
  Other sentinels (``Unknown``, ``NA``) are values in gold; only impute treats them as missing.
  It applies to every layout string column, including the imputed demographics that replace the
  raw ones (a no-op on conforming silver). ``_source_file`` and the ``*_source`` labels are
  pipeline metadata written by pgx itself and are copied verbatim.
* **Amounts** (:func:`parse_amount`): the value is normalized first (a padded ``' 12.50'`` is the
  amount 12.50, not an error). Accepted, exactly: ``-?`` then digits with an optional ``.`` and
  1 to 4 decimals, or ``.`` and 1 to 4 decimals (``12``, ``12.5``, ``.00``, ``-12.00``, ``-.5``).
  Rejected (NULL and counted ``invalid_amount``): a leading ``+``, a trailing ``.`` (``12.``),
  thousands separators, exponents, more than 4 decimals (the gold type has scale 4; rounding
  money silently is worse than flagging it) and more than 14 significant integer digits (it would
  not fit ``decimal128(18, 4)``). A missing amount (NULL, empty, ``N/A``, ``NULL``) is NULL and
  **not** counted: it is absent, not malformed, and counting it would bury real format problems
  under the feed's routinely empty money fields.
* **NDC** (:func:`ndc11`): from the normalized ``drug_code`` (not the ``ndc`` column: the rule
  names ``drug_code``). A missing ``drug_code`` is NULL and not counted as ``ndc_invalid``, for
  the same reason as amounts. Digits are ASCII ``0-9`` only.
* **Drug names** (:func:`canonicalize_drug_name`): "whitespace" is the ASCII trim set plus Unicode
  separators (``\\p{Z}``, e.g. the CP1252 no-break space 0xA0, which separates words visually
  and must not glue them together). Lower-casing is Unicode (``utf8_lower``) and happens first,
  as listed. A name that canonicalizes to nothing (``'***'``, ``'é'``) becomes NULL, never ``''``.
* **Drug maps** (:func:`load_drug_map`): keys *and* values are canonicalized (the looked-up name
  must be in the same vocabulary as names that are not in the map, and chains are only
  detectable on canonical forms). *Any* two raw keys with the same canonical form are a
  collision, even if they agree on the target: the collision itself is the error,
  and a map with redundant spellings is a map nobody has reviewed. A chain is a key whose value
  is itself a key mapped to something else (``a→b, b→c``, including cycles); a key mapped to
  itself is allowed and harmless. Every problem is reported at once, naming the raw keys (drug
  names are reference data, not PHI). The fingerprint is ``sha256:`` + hex digest of the
  canonical entries as compact, key-sorted JSON.
* **Duplicates**: compared on the layout columns of silver after normalization only — the
  raw demographics, raw (not upper-cased) codes and amount *strings* (``12.5`` and ``12.50`` are
  different rows). Two NULLs are equal. The survivor is the row with the smallest
  ``(_source_file, _source_line)``.
* **Order**: ``(mi_person_key, incurred_date, claim_id, _source_file, _source_line)`` on the gold
  values, binary (code point) order, NULLs last (DuckDB's default ``ASC NULLS LAST``).
* **Medical codes** upper-cased (``utf8_upper``) after normalization: the ten ICD diagnosis codes,
  the ten ICD procedure codes, ``procedure_code``, ``cpt_mod_1_code`` and ``cpt_mod_2_code``. DRG,
  revenue, rollup, CCS and description columns are not "ICD or procedure code columns" and are
  only normalized.
* **Counters** ``invalid_amount`` and ``ndc_invalid`` count cells of the gold rows (after
  duplicate removal): they describe what gold holds as NULL for a format reason.
* **event_date**: silver guarantees a valid ``YYYYMMDD`` ``incurred_date`` (impute quarantines the
  rest), so a violation is a broken input contract → :class:`~pgx_core.errors.DataError` with a
  count only (no value: PHI).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pgx_apcd.arrowutil import StringLookup
from pgx_apcd.arrowutil import as_string as _as_string
from pgx_apcd.arrowutil import contiguous as _contiguous
from pgx_apcd.arrowutil import count_true as _count_true
from pgx_apcd.layout import DEMOGRAPHIC_COLUMNS, ICD_DIAGNOSIS_COLUMNS, PROCEDURE_COLUMNS, columns

from pgx_core.errors import ConservationError, DataError, PgxError
from pgx_core.exitcodes import ExitCode

__all__ = [
    "AMOUNT_TYPE",
    "DATASETS",
    "CleanResult",
    "Dataset",
    "DrugMap",
    "DrugMapError",
    "amount_columns",
    "canonicalize_drug_name",
    "clean_partition",
    "gold_schema",
    "load_drug_map",
    "medical_code_columns",
    "ndc11",
    "normalize_strings",
    "parse_amount",
    "parse_drug_map_json",
    "silver_schema",
    "sort_indices_nulls_last",
    "standardize_drug_names",
    "stats_keys",
]

Dataset = Literal["pharmacy", "medical"]
DATASETS: tuple[Dataset, ...] = ("pharmacy", "medical")

# pyarrow ships no type information: arrays, chunked arrays and tables are ``Any`` to mypy.
ArrayLike = Any

AMOUNT_TYPE = pa.decimal128(18, 4)
_STRING = pa.string()
_NULL_STRING = pa.scalar(None, _STRING)

# Demographic field → (raw layout column, imputed silver column, source silver column).
_FIELDS: tuple[str, ...] = tuple(DEMOGRAPHIC_COLUMNS)
_IMPUTED: dict[str, str] = {DEMOGRAPHIC_COLUMNS[f]: f"{f}_imputed" for f in _FIELDS}
_SOURCE_COLUMNS: tuple[str, ...] = tuple(f"{f}_source" for f in _FIELDS)
_AGE_COLUMN = DEMOGRAPHIC_COLUMNS["age"]
_SORT_KEYS: tuple[str, ...] = ("mi_person_key", "incurred_date", "claim_id")
# Columns a hive-partitioned dataset read adds; they are derived, never stored in the files.
_PARTITION_COLUMNS = frozenset({"age_band", "event_year"})


def _case_variants(word: str) -> list[str]:
    """Every upper/lower spelling of ``word`` (``N/A`` → ``N/A``, ``N/a``, ``n/A``, ``n/a``)."""
    choices = [(ch.lower(), ch.upper()) if ch.isalpha() else (ch,) for ch in word]
    return ["".join(p) for p in itertools.product(*choices)]


# Matching the 21 spellings with a hash lookup is much cheaper than upper-casing every value.
_NULL_TOKENS = pa.array(sorted({"", *_case_variants("N/A"), *_case_variants("NULL")}), _STRING)

# Amount grammar (see module docstring). ``0*`` lets leading zeros through without counting them
# against the 14 integer digits that fit decimal128(18, 4), so the cast below can never overflow.
_AMOUNT_PATTERN = r"^-?(?:0*[0-9]{1,14}(?:\.[0-9]{1,4})?|\.[0-9]{1,4})$"

# NDC forms → 11 digits. Each rewrite applies only to its own form (they are mutually exclusive:
# group lengths differ), so applying them in sequence is safe. RE2 back-references are one digit,
# so ``\10`` is group 1 followed by a literal ``0``.
_NDC_FORMS: tuple[tuple[str, str], ...] = (
    (r"^([0-9]{5})-([0-9]{4})-([0-9]{2})$", r"\1\2\3"),  # 5-4-2
    (r"^([0-9]{4})-([0-9]{4})-([0-9]{2})$", r"0\1\2\3"),  # 4-4-2: pad the labeler
    (r"^([0-9]{5})-([0-9]{3})-([0-9]{2})$", r"\10\2\3"),  # 5-3-2: pad the product
    (r"^([0-9]{5})-([0-9]{4})-([0-9])$", r"\1\20\3"),  # 5-4-1: pad the package
)
_NDC11_PATTERN = r"^[0-9]{11}$"

# Drug-name canonicalization: ASCII whitespace (TAB..CR, space) plus Unicode separators.
_WS = r"\x09-\x0d \p{Z}"
_DRUG_DISALLOWED = rf"[^a-z0-9.%_{_WS}-]"
_DRUG_SEPARATOR_RUN = rf"[{_WS}_]+"

_DATE_PATTERN = r"^[0-9]{8}$"

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------
# small Arrow helpers


def _eq_null_safe(a: ArrayLike, b: ArrayLike) -> Any:
    """Element-wise equality where NULL equals NULL (``IS NOT DISTINCT FROM``); never NULL."""
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.fill_null(pc.equal(a, b), both_null)


def _dictionary_parts(arr: ArrayLike) -> tuple[Any, Any]:
    """(distinct non-null values, per-row indices into them; NULL rows have NULL indices)."""
    enc = pc.dictionary_encode(_contiguous(arr))
    return enc.dictionary, enc.indices


# pyarrow 25 moved null placement into each sort key; older releases only take the global option.
_PER_KEY_NULL_PLACEMENT = int(pa.__version__.split(".")[0]) >= 25


def sort_indices_nulls_last(table: pa.Table, names: Sequence[str]) -> Any:
    """Indices sorting ``table`` ascending by ``names``, NULLs last (stable; binary string order)."""
    if _PER_KEY_NULL_PLACEMENT:
        return pc.sort_indices(table, sort_keys=[(n, "ascending", "at_end") for n in names])
    return pc.sort_indices(table, sort_keys=[(n, "ascending") for n in names], null_placement="at_end")


def _mark(positions: ArrayLike, length: int) -> Any:
    """A ``length``-long boolean array, true exactly at ``positions`` (int64)."""
    if hasattr(pc, "scatter"):  # Arrow >= 21
        return pc.fill_null(pc.scatter(pc.is_valid(positions), positions, max_index=length - 1), False)
    everything = pc.cumulative_sum(pa.repeat(1, length).cast(pa.int64()))  # 1..length
    return pc.is_in(pc.subtract(everything, 1), value_set=positions)


def _pmap(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``map`` over columns on Arrow's CPU count of threads (compute kernels release the GIL)."""
    workers = min(len(items), pa.cpu_count())
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pgx-clean") as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------------------------
# value rules


def normalize_strings(arr: ArrayLike) -> Any:
    """Trim ASCII whitespace (space, TAB, LF, VT, FF, CR), then ``''``/``N/A``/``NULL`` (any case) → NULL.

    Returns a ``string`` :class:`pyarrow.Array`. Idempotent. Internal whitespace and every other
    sentinel (``Unknown``, ``NA``) are kept: gold is not the place for value judgements.
    """
    trimmed = pc.ascii_trim_whitespace(_as_string(arr))
    # A null token is 0, 3 or 4 bytes long. Lengths are nearly free and a lookup-table gather
    # picks those lengths in one pass, so the hash lookup only runs on the few short values.
    length = pc.binary_length(trimmed)
    longest = pc.max(length).as_py()
    if longest is None:  # all NULL
        return trimmed
    positions = pc.indices_nonzero(pc.take(_short_length_table(longest), length))
    if not len(positions):
        return trimmed
    hits = pc.is_in(pc.take(trimmed, positions), value_set=_NULL_TOKENS)
    if not pc.any(hits).as_py():
        return trimmed
    token = _mark(pc.cast(pc.filter(positions, hits), pa.int64()), len(trimmed))
    return _with_nulls(trimmed, token)


@lru_cache(maxsize=256)
def _short_length_table(longest: int) -> Any:
    """Boolean lookup table: is a value of byte length ``i`` as long as some null token?"""
    lengths = {len(t.as_py()) for t in _NULL_TOKENS}
    return pa.array([i in lengths for i in range(longest + 1)], pa.bool_())


def _with_nulls(arr: Any, mask: Any) -> Any:
    """``arr`` with the positions of ``mask`` (boolean, no NULLs) set to NULL.

    Rebuilds only the validity bitmap and shares the offsets and character data (``if_else``
    would copy every string); the bytes under the new NULL slots are simply ignored.
    """
    if arr.offset != 0 or mask.offset != 0:
        return pc.if_else(mask, pa.scalar(None, arr.type), arr)
    validity = pc.and_not(pc.is_valid(arr), mask)
    buffers = arr.buffers()
    return pa.Array.from_buffers(arr.type, len(arr), [validity.buffers()[1], *buffers[1:]])


def _parse_normalized_amount(norm: ArrayLike) -> tuple[Any, int]:
    valid = pc.match_substring_regex(norm, pattern=_AMOUNT_PATTERN)
    invalid = _count_true(pc.invert(valid))  # NULL (missing) inputs give NULL here: not counted
    kept = pc.if_else(valid, norm, _NULL_STRING)
    return pc.cast(kept, AMOUNT_TYPE), invalid


def parse_amount(arr: ArrayLike) -> tuple[Any, int]:
    """Parse money/quantity strings to ``decimal128(18, 4)``: ``(values, invalid_count)``.

    The input is normalized first (trim; ``''``/``N/A``/``NULL`` → NULL). Accepted forms, exactly:
    ``12``, ``12.5``, ``.00``, ``-12.00`` — an optional ``-``, then digits with an optional
    fraction of 1 to 4 digits, or a bare fraction of 1 to 4 digits; at most 14 significant integer
    digits. Everything else (``+12``, ``12.``, ``1,234.00``, ``1e5``, ``1.23456``, ``Unknown``)
    is NULL and counted in ``invalid_count``. Missing values are NULL and not counted.
    """
    return _parse_normalized_amount(normalize_strings(arr))


def _ndc11_normalized(norm: ArrayLike) -> tuple[Any, int]:
    # NDCs repeat heavily: rewrite the distinct values once and map them back by index.
    values, indices = _dictionary_parts(norm)
    rewritten = values
    for pattern, replacement in _NDC_FORMS:
        rewritten = pc.replace_substring_regex(rewritten, pattern=pattern, replacement=replacement)
    ok = pc.match_substring_regex(rewritten, pattern=_NDC11_PATTERN)
    result = pc.if_else(ok, rewritten, _NULL_STRING)
    invalid = _count_true(pc.take(pc.invert(ok), indices))
    return pc.take(result, indices), invalid


def ndc11(arr: ArrayLike) -> tuple[Any, int]:
    """NDC as 11 digits: ``(ndc11, invalid_count)``.

    After normalization: 11 digits as is; hyphenated 5-4-2 with the hyphens removed; 4-4-2,
    5-3-2 and 5-4-1 zero-padded on the left of the short group to 5-4-2, hyphens removed.
    Anything else is NULL and counted; a missing code is NULL and not counted.
    """
    return _ndc11_normalized(normalize_strings(arr))


def canonicalize_drug_name(arr: ArrayLike) -> Any:
    """Canonical drug name, element-wise; NULL stays NULL.

    Lower-case; ``+`` and ``/`` → space; characters other than ``a-z 0-9 . % - _`` and
    whitespace removed; whitespace runs → ``_``; ``_`` runs collapsed; leading/trailing ``_``
    stripped; an empty result → NULL. ``HYDRALAZINE HYDROCHLORIDE`` →
    ``hydralazine_hydrochloride``, ``ACETAMINOPHEN/CODEINE`` → ``acetaminophen_codeine``.
    Idempotent. Apply it to distinct values (it is regex work) — :func:`standardize_drug_names`
    does.
    """
    s = pc.utf8_lower(_as_string(arr))
    s = pc.replace_substring_regex(s, pattern=r"[+/]", replacement=" ")
    s = pc.replace_substring_regex(s, pattern=_DRUG_DISALLOWED, replacement="")
    # One pass does "whitespace runs → _" and "_ runs collapsed": a mixed run becomes one "_".
    s = pc.replace_substring_regex(s, pattern=_DRUG_SEPARATOR_RUN, replacement="_")
    s = pc.utf8_trim(s, characters="_")
    return pc.if_else(pc.equal(s, ""), _NULL_STRING, s)


# --------------------------------------------------------------------------------------------
# drug map


class DrugMapError(PgxError, ValueError):
    """An invalid drug map (a spec error, exit 64). ``problems`` lists every problem found."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        n = len(self.problems)
        plural = "s" if n != 1 else ""
        super().__init__(f"invalid drug map ({n} problem{plural}): " + "; ".join(self.problems))


def _json_fingerprint(entries: Mapping[str, str]) -> str:
    text = json.dumps(dict(entries), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class DrugMap(StringLookup):
    """A validated drug map: canonical variant → canonical name. Build it with :func:`load_drug_map`."""

    __slots__ = ()

    def __init__(self, entries: Mapping[str, str]) -> None:
        """Validate and canonicalize ``entries`` (a raw ``{variant: canonical}`` map).

        Raises :class:`DrugMapError` listing every problem (see :func:`load_drug_map`). The
        fingerprint is ``sha256:<hex>`` of the canonical entries as compact, key-sorted JSON.
        """
        canonical = _canonical_drug_entries(entries)
        super().__init__(canonical, _json_fingerprint(canonical))

    def __repr__(self) -> str:
        return f"DrugMap({len(self)} entries, {self.fingerprint})"

    def lookup(self, canonical: ArrayLike) -> Any:
        """Map already-canonical names; names not in the map are returned unchanged."""
        canonical = _as_string(canonical)
        return pc.coalesce(self.mapped(canonical), canonical)


def _canonical_drug_entries(mapping: Mapping[Any, Any]) -> dict[str, str]:
    problems: list[str] = []
    raw_keys = list(mapping.keys())
    raw_values = list(mapping.values())
    for raw_key, raw_value in zip(raw_keys, raw_values, strict=True):
        if not isinstance(raw_key, str) or not isinstance(raw_value, str):
            problems.append(f"entry {raw_key!r}: keys and values must be strings")
    if problems:
        raise DrugMapError(problems)
    keys = canonicalize_drug_name(pa.array(raw_keys, _STRING)).to_pylist()
    values = canonicalize_drug_name(pa.array(raw_values, _STRING)).to_pylist()

    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            problems.append(f"key {raw_keys[i]!r} canonicalizes to an empty name")
        else:
            by_key.setdefault(key, []).append(i)
    for i, value in enumerate(values):
        if value is None:
            problems.append(f"value {raw_values[i]!r} of key {raw_keys[i]!r} canonicalizes to an empty name")
    entries: dict[str, str] = {}
    origin: dict[str, str] = {}  # canonical key → raw key, to name it in messages
    for key, positions in by_key.items():
        if len(positions) > 1:
            named = ", ".join(repr(raw_keys[i]) for i in positions)
            problems.append(f"keys {named} collide: all canonicalize to {key!r}")
            continue
        value = values[positions[0]]
        if value is not None:
            entries[key] = value
            origin[key] = raw_keys[positions[0]]
    for key, value in entries.items():
        onward = entries.get(value)
        if value != key and onward is not None and onward != value:
            problems.append(
                f"chain: key {origin[key]!r} maps to {value!r}, which is itself the key "
                f"{origin[value]!r} mapped to {onward!r} (map every variant to the final name)"
            )
    if problems:
        raise DrugMapError(problems)
    return entries


def load_drug_map(mapping: Mapping[str, str]) -> DrugMap:
    """Validate a ``{variant: canonical}`` drug map and canonicalize its keys and values.

    Raises :class:`DrugMapError` (a ``ValueError``; exit 64) naming the raw keys involved, for:
    non-string entries; keys or values that canonicalize to nothing; a collision (two raw keys
    with the same canonical form, whatever their targets); a chain ``a→b, b→c`` (or a cycle).
    """
    return DrugMap(mapping)


def parse_drug_map_json(data: bytes) -> DrugMap:
    """A :class:`DrugMap` from the bytes of a JSON ``{variant: canonical}`` document.

    Raises :class:`DrugMapError` when the bytes are not UTF-8 JSON, the document is not an object,
    or a raw key appears more than once (``json.loads`` would silently keep the last one: that is
    a collision too), and for every problem :func:`load_drug_map` finds. Messages name keys and
    positions only (drug names are reference data; the JSON parser's own message quotes nothing).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DrugMapError([f"not UTF-8 text (invalid byte at offset {exc.start})"]) from None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen[key] = value
        return seen

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise DrugMapError([f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from None
    if not isinstance(doc, dict):
        raise DrugMapError([f"must be a JSON object {{variant: canonical}}, got a JSON {type(doc).__name__}"])
    problems = [f"key {key!r} appears more than once" for key in repeated]
    try:
        drug_map = load_drug_map(doc)
    except DrugMapError as exc:
        problems.extend(exc.problems)
    if problems:
        raise DrugMapError(problems)
    return drug_map


def standardize_drug_names(arr: ArrayLike, drug_map: DrugMap | None) -> Any:
    """``standardized_drug_name``: normalize, canonicalize, then look up; not found → canonical name.

    Works on the distinct values (drug names repeat heavily) and maps back by index. The input is
    normalized first so ``N/A``/``NULL``/blank names give NULL rather than ``n_a``.
    """
    values, indices = _dictionary_parts(normalize_strings(arr))
    canonical = canonicalize_drug_name(values)
    if drug_map is not None:
        canonical = drug_map.lookup(canonical)
    return pc.take(canonical, indices)


# --------------------------------------------------------------------------------------------
# schemas


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


@cache
def amount_columns(dataset: Dataset) -> tuple[str, ...]:
    """The money and quantity columns (``total_*``) of a dataset, in layout order."""
    _check_dataset(dataset)
    return tuple(c for c in columns(dataset) if c.startswith("total_"))


@cache
def medical_code_columns() -> tuple[str, ...]:
    """Medical columns clean upper-cases: ICD diagnosis, ICD procedure, procedure and CPT modifier codes."""
    icd_procedure = tuple(c for c in columns("medical") if c.endswith("_icd_procedure_code"))
    return (*ICD_DIAGNOSIS_COLUMNS, *icd_procedure, *PROCEDURE_COLUMNS)


@cache
def silver_schema(dataset: Dataset) -> pa.Schema:
    """The silver schema clean expects (what impute writes)."""
    _check_dataset(dataset)
    fields = [pa.field(c, _STRING) for c in columns(dataset)]
    fields += [pa.field("_source_file", _STRING), pa.field("_source_line", pa.int64())]
    fields += [pa.field("age_imputed", pa.int16())]
    fields += [pa.field(f"{f}_imputed", _STRING) for f in _FIELDS if f != "age"]
    fields += [pa.field(c, _STRING) for c in _SOURCE_COLUMNS]
    return pa.schema(fields)


@cache
def gold_schema(dataset: Dataset) -> pa.Schema:
    """The exact gold schema of a dataset: names, order and types."""
    _check_dataset(dataset)
    amounts = set(amount_columns(dataset))
    fields = []
    for c in columns(dataset):
        if c == _AGE_COLUMN:
            fields.append(pa.field(c, pa.int16()))
        elif c in amounts:
            fields.append(pa.field(c, AMOUNT_TYPE))
        else:
            fields.append(pa.field(c, _STRING))
    fields += [pa.field("_source_file", _STRING), pa.field("_source_line", pa.int64())]
    fields += [pa.field(c, _STRING) for c in _SOURCE_COLUMNS]
    fields.append(pa.field("event_date", pa.date32()))
    if dataset == "pharmacy":
        fields += [pa.field("ndc11", _STRING), pa.field("standardized_drug_name", _STRING)]
    return pa.schema(fields)


def _conform_silver(silver: pa.Table | pa.RecordBatch, dataset: Dataset) -> pa.Table:
    """Select the silver columns by name and cast them to the silver types, or raise DataError."""
    if isinstance(silver, pa.RecordBatch):
        silver = pa.Table.from_batches([silver])
    expected = silver_schema(dataset)
    names = silver.column_names
    missing = [n for n in expected.names if n not in names]
    unexpected = [n for n in names if n not in expected.names and n not in _PARTITION_COLUMNS]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if missing or unexpected or repeated:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unexpected:
            parts.append(f"unexpected columns {unexpected}")
        if repeated:
            parts.append(f"repeated columns {repeated}")
        raise DataError(f"silver {dataset} schema mismatch: " + "; ".join(parts))
    arrays = []
    for f in expected:
        col = silver[f.name]
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # The message would quote the offending value (PHI): name the column and types only.
                raise DataError(f"silver {dataset} column {f.name} has type {col.type}, expected {f.type}") from None
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=expected)


# --------------------------------------------------------------------------------------------
# duplicates


def _class_sizes(classes: ArrayLike) -> Any:
    """For each element, how many elements share its class id."""
    counts = pc.value_counts(classes)
    return pc.take(counts.field("counts"), pc.index_in(classes, value_set=counts.field("values")))


# Columns that usually differ between the lines of one claim (same member, date and claim id).
# Refining on them first empties the candidate set fastest; the order changes speed, not results.
_LINE_LEVEL_HINTS: tuple[str, ...] = (
    "procedure_code",
    "revenue_code",
    "cpt_mod_1_code",
    "cpt_mod_2_code",
    "place_of_service",
    "hcg_detail",
    "hcg_line",
    "hcg_setting",
    "drug_code",
    "ndc",
    "drug_name",
)


def _refinement_order(layout: Sequence[str]) -> list[str]:
    """The non-sort-key layout columns, likely discriminating ones (amounts, line codes) first."""
    rest = [c for c in layout if c not in _SORT_KEYS]
    first = [c for c in rest if c.startswith("total_")] + [c for c in _LINE_LEVEL_HINTS if c in rest]
    return first + [c for c in rest if c not in first]


def _duplicate_positions(silver: pa.Table, layout: Sequence[str], order: Any, keys: Mapping[str, Any]) -> Any:
    """Positions (into ``order``) of the rows that duplicate an earlier row of ``order``.

    ``order`` sorts the rows by the gold sort keys, so rows with equal layout values sit in
    the same run of equal ``(mi_person_key, incurred_date, claim_id)``, ordered by
    ``(_source_file, _source_line)``: the first of each class is the one to keep. Only rows in
    runs of two or more can be duplicates; their classes are refined column by column (dense ids
    of ``(class, value)`` pairs) and rows left alone in their class are dropped as soon as a column
    splits them off, so the work shrinks to the real duplicates quickly.
    """
    n = len(order)
    empty = pa.array([], pa.int64())
    if n < 2:
        return empty
    sorted_keys = [pc.take(keys[c], order) for c in _SORT_KEYS]
    same = None
    for arr in sorted_keys:
        eq = _eq_null_safe(arr.slice(1), arr.slice(0, n - 1))
        same = eq if same is None else pc.and_(same, eq)
    if not pc.any(same).as_py():
        return empty
    false = pa.array([False])
    same_as_prev = pa.concat_arrays([false, same])
    same_as_next = pa.concat_arrays([same, false])
    run_id = pc.cumulative_sum(pc.cast(pc.invert(same_as_prev), pa.int64()))
    positions = pc.cast(pc.indices_nonzero(pc.or_(same_as_prev, same_as_next)), pa.int64())
    classes = pc.take(run_id, positions)
    n_classes = len(pc.unique(classes))
    rows = pc.take(order, positions)

    for name in _refinement_order(layout):
        values = normalize_strings(pc.take(silver[name], rows))
        codes = pc.dictionary_encode(values, null_encoding="encode")
        cardinality = len(codes.dictionary)
        if cardinality <= 1:
            continue  # one value (or all NULL) among the candidates: splits nothing
        # Class ids <= the row count and cardinality <= len(rows), both < 2**31 for any table
        # that fits in memory, so the product fits in int64.
        combined = pc.add(pc.multiply(classes, cardinality), pc.cast(codes.indices, pa.int64()))
        dense = pc.dictionary_encode(combined)
        classes = pc.cast(dense.indices, pa.int64())
        if len(dense.dictionary) == n_classes:
            continue  # nothing split: nobody became a singleton
        n_classes = len(dense.dictionary)
        shared = pc.greater(_class_sizes(classes), 1)
        if not pc.any(shared).as_py():
            return empty
        # Every dropped row was alone in its class, so one class goes with each.
        n_classes -= len(shared) - _count_true(shared)
        positions = pc.filter(positions, shared)
        rows = pc.filter(rows, shared)
        classes = pc.filter(classes, shared)

    # Dictionary ids are assigned in order of first appearance and ``positions`` ascends, so a row
    # is the first of its class iff its id exceeds every id seen before it.
    ids = pc.cast(pc.dictionary_encode(classes).indices, pa.int64())
    seen_max = pc.cumulative_max(ids)
    first = pc.greater(ids.slice(1), seen_max.slice(0, len(ids) - 1))
    duplicate = pa.concat_arrays([false, pc.invert(first)])
    return pc.filter(positions, duplicate)


# --------------------------------------------------------------------------------------------
# clean


@dataclass(frozen=True)
class CleanResult:
    """Gold table of one partition and its integer counters (run summary names)."""

    table: pa.Table
    stats: dict[str, int] = field(default_factory=dict)
    drug_map_fingerprint: str | None = None


def _event_date(incurred_date: ArrayLike, dataset: str) -> Any:
    values, indices = _dictionary_parts(incurred_date)
    parsed = pc.cast(pc.strptime(values, format="%Y%m%d", unit="s", error_is_null=True), pa.date32())
    # strptime alone is lenient (20190230 → 2019-03-02, 7 digits accepted): require 8 digits that
    # survive the round trip.
    exact = pc.and_(
        pc.match_substring_regex(values, pattern=_DATE_PATTERN),
        pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y%m%d"), values), False),
    )
    bad = _count_true(pc.take(pc.invert(exact), indices)) + incurred_date.null_count
    if bad:
        raise DataError(
            f"silver {dataset}: {bad} row(s) have an incurred_date that is not a valid YYYYMMDD date "
            "(impute should have quarantined them)"
        )
    return pc.take(parsed, indices)


def clean_partition(
    silver: pa.Table | pa.RecordBatch, dataset: Dataset, drug_map: DrugMap | None = None
) -> CleanResult:
    """Clean one silver partition into gold.

    Returns the gold table (schema exactly :func:`gold_schema`, rows sorted by
    ``(mi_person_key, incurred_date, claim_id, _source_file, _source_line)``, NULLs last) and
    ``stats``: ``rows_in``, ``rows_out``, ``duplicates_removed``, ``invalid_amount`` and, for
    pharmacy, ``ndc_invalid``. ``drug_map`` is used for pharmacy only; its fingerprint is returned
    in the result. Raises :class:`~pgx_core.errors.DataError` for a silver object that breaks the
    silver contract and :class:`~pgx_core.errors.ConservationError` if rows are not conserved.

    The table must fit in memory. Duplicates share the normalized ``mi_person_key`` and it leads
    the sort, so a stage may clean a large partition in chunks that each hold *all* rows of a
    range of normalized member keys, and concatenate the outputs in key order (silver is sorted on
    the raw key, so a key with stray whitespace may sit elsewhere in silver: cut on normalized
    keys, e.g. by hash buckets of the trimmed key followed by a k-way merge).
    """
    _check_dataset(dataset)
    table = _conform_silver(silver, dataset)
    layout = columns(dataset)
    rows_in = table.num_rows

    keys = dict(zip(_SORT_KEYS, _pmap(lambda c: normalize_strings(table[c]), _SORT_KEYS), strict=True))
    sort_table = pa.table({**keys, "_source_file": table["_source_file"], "_source_line": table["_source_line"]})
    order = sort_indices_nulls_last(sort_table, sort_table.column_names)
    dup_positions = _duplicate_positions(table, layout, order, keys)
    keep = pc.filter(order, pc.invert(_mark(dup_positions, len(order)))) if len(dup_positions) else order
    duplicates = len(dup_positions)
    rows_out = len(keep)

    amounts = set(amount_columns(dataset))
    upper = set(medical_code_columns()) if dataset == "medical" else set()

    def gold_column(name: str) -> tuple[Any, int]:
        if name == _AGE_COLUMN:
            return pc.take(table[_IMPUTED[name]], keep), 0
        if name in _IMPUTED:
            return normalize_strings(pc.take(table[_IMPUTED[name]], keep)), 0
        if name in keys:
            return pc.take(keys[name], keep), 0
        norm = normalize_strings(pc.take(table[name], keep))
        if name in amounts:
            return _parse_normalized_amount(norm)
        if name in upper:
            return pc.utf8_upper(norm), 0
        return norm, 0

    built = _pmap(gold_column, layout)
    gold: dict[str, Any] = {name: arr for name, (arr, _) in zip(layout, built, strict=True)}
    invalid_amount = sum(bad for _, bad in built)
    gold["_source_file"] = pc.take(table["_source_file"], keep)
    gold["_source_line"] = pc.take(table["_source_line"], keep)
    for name in _SOURCE_COLUMNS:
        gold[name] = pc.take(table[name], keep)
    gold["event_date"] = _event_date(gold["incurred_date"], dataset)

    stats = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "duplicates_removed": duplicates,
        "invalid_amount": invalid_amount,
    }
    fingerprint = None
    if dataset == "pharmacy":
        gold["ndc11"], stats["ndc_invalid"] = _ndc11_normalized(gold["drug_code"])
        gold["standardized_drug_name"] = standardize_drug_names(gold["drug_name"], drug_map)
        fingerprint = drug_map.fingerprint if drug_map is not None else None

    if rows_in != rows_out + duplicates:
        raise ConservationError(
            f"clean {dataset}: silver rows {rows_in} != gold rows {rows_out} + duplicates_removed {duplicates}"
        )
    schema = gold_schema(dataset)
    out = pa.Table.from_arrays([_contiguous(gold[f.name]) for f in schema], schema=schema)
    return CleanResult(table=out, stats=stats, drug_map_fingerprint=fingerprint)


def stats_keys(dataset: Dataset) -> tuple[str, ...]:
    """The counter names :func:`clean_partition` reports for a dataset (a stable summary shape)."""
    _check_dataset(dataset)
    base = ("rows_in", "rows_out", "duplicates_removed", "invalid_amount")
    return (*base, "ndc_invalid") if dataset == "pharmacy" else base
