"""Pure rules of update-codes: normalize target codes in a gold table.

Arrow in, Arrow out, vectorized. Each rule works on the distinct values of a column (codes repeat
heavily) and maps the result back by dictionary index, so the cost per row is one gather. The
rules are per value, so applying them to a whole table or batch by batch gives the same result.

Decisions on points the rules leave open (each is tested in ``tests/plugins/test_update_codes_rules.py``):

* **Map keys and values** are normalized: for a target (ICD) map upper-cased with ``.`` and spaces
  removed, for a procedure map upper-cased with spaces removed (its keys are
  normalized the same way as the procedure values, which keep their dots). Values are
  normalized too, so mapped codes come out in the same flat form as every other output and a
  second pass leaves them alone. "Spaces" means U+0020 only: gold values are already trimmed.
* **Map validation** (:class:`CodeMapError`, exit 64, every problem at once, naming the codes —
  reference codes are not PHI): non-string entries; keys or values that normalize to ``''``; two
  raw keys with the same normalized key and *different* targets (same target: harmless, merged);
  a value that is not a fixed point of the rule it feeds — a chain ``a→b, b→c`` or, for ICD, a
  value the rule itself would rewrite (e.g. ``YF1120``, whose token is ``F1120``). That keeps the
  map path idempotent.
* **Literal rule order**: the map is consulted for ``flat`` only, not for a token extracted from it
  (the token step comes after the map lookup, see :func:`normalize_icd`). Consequence: with a map
  entry ``F1120 → X``, ``YF1120`` becomes ``F1120`` on the first pass and ``X`` on a second — the
  one case where pass 2 is not idempotent. A known limit of the rule as stated; not "fixed"
  silently here.
* **Counters**: ``changed.<column>`` = non-NULL values whose output differs from the input (so
  ``f1120`` → ``F1120`` counts; a value mapped to itself does not); ``unrecognized.<column>`` =
  ICD values left unchanged because nothing matched (counted on every pass: they stay
  unrecognized). Every processed column gets both keys (ICD) or ``changed`` (procedure codes,
  ``standardized_drug_name``), zeros included, so summaries have a stable shape; ``rows_in`` /
  ``rows_out`` are the row counts.
* A procedure value that would flatten to ``''`` is left unchanged (never turned into an empty
  string, as for ICD codes); gold never holds one because clean turned blanks into NULL.
* **Pharmacy**: with a drug map, ``standardized_drug_name`` is re-derived from ``drug_name`` with the
  clean rules (:func:`pgx_clean.rules.standardize_drug_names`); without one, nothing changes.
  Pharmacy has no ICD or procedure columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pgx_apcd.arrowutil import StringLookup
from pgx_apcd.arrowutil import as_string as _as_string
from pgx_apcd.arrowutil import contiguous as _contiguous
from pgx_apcd.arrowutil import count_true as _count_true
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS, PROCEDURE_COLUMNS
from pgx_clean.rules import DrugMap, standardize_drug_names

from pgx_core.errors import DataError, PgxError
from pgx_core.exitcodes import ExitCode

__all__ = [
    "ICD_FULL_PATTERN",
    "ICD_TOKEN_PATTERN",
    "CodeKind",
    "CodeMap",
    "CodeMapError",
    "add_stats",
    "flatten_icd",
    "flatten_procedure",
    "load_code_map",
    "normalize_icd",
    "normalize_procedure",
    "update_codes_table",
]

ArrayLike = Any  # pyarrow ships no type information
CodeKind = Literal["icd", "procedure"]

ICD_FULL_PATTERN = r"^[A-Z][0-9][0-9A-Z]{1,5}$"
ICD_TOKEN_PATTERN = r"[A-Z][0-9]{2}[0-9A-Z]{0,4}"  # noqa: S105 (a regex, not a password)
# extract_regex needs a named group; RE2 finds the leftmost match, and the greedy {0,4} makes it
# the longest one starting there — "its first occurrence".
_TOKEN_EXTRACT = f"(?P<code>{ICD_TOKEN_PATTERN})"
_STRING = pa.string()
_NULL_STRING = pa.scalar(None, _STRING)


# --------------------------------------------------------------------------------------------
# helpers


def _distinct(arr: ArrayLike) -> tuple[Any, Any]:
    """(distinct non-null values, per-row indices into them; NULL rows have NULL indices)."""
    enc = pc.dictionary_encode(_as_string(arr))
    return enc.dictionary, enc.indices


def flatten_icd(arr: ArrayLike) -> Any:
    """``flat`` of the ICD rule: upper-cased, ``.`` and spaces removed. NULL stays NULL."""
    upper = pc.utf8_upper(_as_string(arr))
    return pc.replace_substring(pc.replace_substring(upper, pattern=".", replacement=""), pattern=" ", replacement="")


def flatten_procedure(arr: ArrayLike) -> Any:
    """Procedure normalization before the map: upper-cased, spaces removed. NULL stays NULL."""
    return pc.replace_substring(pc.utf8_upper(_as_string(arr)), pattern=" ", replacement="")


_FLATTEN = {"icd": flatten_icd, "procedure": flatten_procedure}


# --------------------------------------------------------------------------------------------
# code maps


class CodeMapError(PgxError, ValueError):
    """An invalid target or procedure map (a spec error, exit 64); ``problems`` lists them all."""

    exit_code = ExitCode.USAGE

    def __init__(self, kind: str, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        n = len(self.problems)
        plural = "s" if n != 1 else ""
        super().__init__(f"invalid {kind} code map ({n} problem{plural}): " + "; ".join(self.problems))


class CodeMap(StringLookup):
    """A validated code map: normalized variant → normalized code. Build it with :func:`load_code_map`."""

    __slots__ = ("_kind",)

    def __init__(self, mapping: Mapping[str, str], kind: CodeKind = "icd") -> None:
        """Validate and normalize a raw ``{variant: code}`` map; raises :class:`CodeMapError`.

        The fingerprint is ``sha256:<hex>`` of ``{"kind", "entries"}`` as compact, key-sorted JSON.
        """
        if kind not in _FLATTEN:
            raise ValueError(f"code map kind must be 'icd' or 'procedure', got {kind!r}")
        self._kind: CodeKind = kind
        entries = dict(sorted(_normalized_entries(mapping, kind).items()))
        text = json.dumps({"kind": kind, "entries": entries}, sort_keys=True, separators=(",", ":"))
        super().__init__(entries, "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())

    @property
    def kind(self) -> CodeKind:
        """``icd`` (target map) or ``procedure``: decides how keys are normalized."""
        return self._kind

    def __repr__(self) -> str:
        return f"CodeMap({self._kind}, {len(self)} entries, {self.fingerprint})"

    def lookup(self, flat: ArrayLike) -> Any:
        """The mapped code for each already-normalized value; NULL where the map has no entry."""
        return self.mapped(flat)


def _normalized_entries(mapping: Mapping[Any, Any], kind: CodeKind) -> dict[str, str]:
    problems: list[str] = []
    raw = list(mapping.items())
    for key, value in raw:
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"entry {key!r}: keys and values must be strings")
    if problems:
        raise CodeMapError(kind, problems)
    flatten = _FLATTEN[kind]
    keys = flatten(pa.array([k for k, _ in raw], _STRING)).to_pylist()
    values = flatten(pa.array([v for _, v in raw], _STRING)).to_pylist()

    entries: dict[str, str] = {}
    origin: dict[str, str] = {}
    for (raw_key, raw_value), key, value in zip(raw, keys, values, strict=True):
        if not key:
            problems.append(f"key {raw_key!r} normalizes to an empty code")
            continue
        if not value:
            problems.append(f"value {raw_value!r} of key {raw_key!r} normalizes to an empty code")
            continue
        if key in entries and entries[key] != value:
            problems.append(
                f"keys {origin[key]!r} and {raw_key!r} both normalize to {key!r} "
                f"but map to {entries[key]!r} and {value!r}"
            )
            continue
        entries.setdefault(key, value)
        origin.setdefault(key, raw_key)
    if entries:
        # Every target must come out of the rule unchanged, or a second pass would move it again.
        targets = pa.array(sorted(set(entries.values())), _STRING)
        mapped = pc.take(
            pa.array(list(entries.values()), _STRING),
            pc.index_in(targets, value_set=pa.array(list(entries), _STRING)),
        )
        if kind == "icd":
            again, _, _ = _icd_rule(targets, mapped)
        else:
            again = pc.coalesce(mapped, targets)
        for target, result in zip(targets.to_pylist(), again.to_pylist(), strict=True):
            if result != target:
                sources = sorted(origin[k] for k, v in entries.items() if v == target)
                problems.append(
                    f"{', '.join(repr(s) for s in sources)} map(s) to {target!r}, which the rule "
                    f"itself rewrites to {result!r} (a chain or a non-canonical target)"
                )
    if problems:
        raise CodeMapError(kind, problems)
    return entries


def load_code_map(mapping: Mapping[str, str], kind: CodeKind = "icd") -> CodeMap:
    """Validate a JSON ``{variant: code}`` map (``targetMap``: ``kind="icd"``; ``procedureMap``: ``"procedure"``).

    Keys and values are normalized (see the module docstring). Raises :class:`CodeMapError`
    listing every problem: non-string entries, empty codes, conflicting duplicate keys, chains and
    targets the rule would rewrite.
    """
    return CodeMap(mapping, kind)


def _check_map(code_map: CodeMap | None, kind: CodeKind, role: str) -> None:
    if code_map is not None and code_map.kind != kind:
        raise ValueError(f"{role} must be a {kind!r} code map, got a {code_map.kind!r} one")


# --------------------------------------------------------------------------------------------
# rules


def _icd_rule(values: ArrayLike, mapped: ArrayLike | None) -> tuple[Any, Any, Any]:
    """:func:`normalize_icd`'s cascade on distinct non-NULL ``values``; ``mapped`` = map lookup of their ``flat``.

    Returns (output, changed flags, unrecognized flags).
    """
    flat = flatten_icd(values)
    if mapped is None:
        mapped = pa.nulls(len(values), _STRING)
    full = pc.if_else(pc.match_substring_regex(flat, pattern=ICD_FULL_PATTERN), flat, _NULL_STRING)
    token = pc.struct_field(pc.extract_regex(flat, pattern=_TOKEN_EXTRACT), [0])
    recognized = pc.coalesce(mapped, full, token)
    output = pc.coalesce(recognized, values)  # unrecognized: the value exactly as it was
    return output, pc.not_equal(output, values), pc.is_null(recognized)


def normalize_icd(arr: ArrayLike, target_map: CodeMap | None = None) -> tuple[Any, int, int]:
    """Normalize ICD diagnosis codes: ``(codes, changed_count, unrecognized_count)``.

    NULL stays NULL. ``flat`` = upper-cased with ``.`` and spaces removed; ``flat`` in the target
    map → the mapped code; else ``flat`` matching ``^[A-Z][0-9][0-9A-Z]{1,5}$`` → ``flat``; else
    the first token ``[A-Z][0-9]{2}[0-9A-Z]{0,4}`` in ``flat``; else the value unchanged (never
    ``''``) and counted unrecognized. ``F11.20`` → ``F1120``; ``YF1120`` → ``F1120``;
    ``J690 - PNEUMONITIS`` → ``J690``; ``Unknown`` → ``Unknown`` (unrecognized).
    """
    _check_map(target_map, "icd", "target_map")
    values, indices = _distinct(arr)
    mapped = target_map.lookup(flatten_icd(values)) if target_map is not None else None
    output, changed, unrecognized = _icd_rule(values, mapped)
    return (
        pc.take(output, indices),
        _count_true(pc.take(changed, indices)),
        _count_true(pc.take(unrecognized, indices)),
    )


def normalize_procedure(arr: ArrayLike, procedure_map: CodeMap | None = None) -> tuple[Any, int]:
    """Normalize procedure codes: ``(codes, changed_count)``.

    Upper-cased, spaces removed, then ``procedure_map`` (keys normalized the same way). NULL
    stays NULL; a value that would become ``''`` is left as it was.
    """
    _check_map(procedure_map, "procedure", "procedure_map")
    values, indices = _distinct(arr)
    flat = flatten_procedure(values)
    flat = pc.if_else(pc.equal(flat, ""), values, flat)
    output = pc.coalesce(procedure_map.lookup(flat), flat) if procedure_map is not None else flat
    return pc.take(output, indices), _count_true(pc.take(pc.not_equal(output, values), indices))


def add_stats(total: dict[str, int], part: Mapping[str, int]) -> dict[str, int]:
    """Add one batch's counters into ``total`` (in place) and return it."""
    for key, value in part.items():
        total[key] = total.get(key, 0) + value
    return total


def update_codes_table(
    table: pa.Table | pa.RecordBatch,
    dataset: Literal["pharmacy", "medical"],
    target_map: CodeMap | None = None,
    procedure_map: CodeMap | None = None,
    drug_map: DrugMap | None = None,
) -> tuple[Any, dict[str, int]]:
    """Apply pass 2 to a gold table or record batch; returns the same kind of object and its counters.

    Medical: the ten ICD diagnosis columns (:func:`normalize_icd`) and ``procedure_code``,
    ``cpt_mod_1_code``, ``cpt_mod_2_code`` (:func:`normalize_procedure`). Pharmacy with a drug map:
    ``standardized_drug_name`` re-derived from ``drug_name``. Every other column — ICD procedure
    codes included — and the schema (names, order, types, metadata) are passed through untouched.
    Counters: ``rows_in``, ``rows_out``, ``changed.<column>``, ``unrecognized.<column>`` (ICD).
    """
    if dataset not in ("pharmacy", "medical"):
        raise ValueError(f"dataset must be one of pharmacy, medical, got {dataset!r}")
    _check_map(target_map, "icd", "target_map")
    _check_map(procedure_map, "procedure", "procedure_map")
    schema = table.schema
    arrays: list[Any] = list(table.columns)
    stats: dict[str, int] = {"rows_in": table.num_rows, "rows_out": table.num_rows}

    def index_of(name: str) -> int:
        i: int = schema.get_field_index(name)
        if i < 0:
            raise DataError(f"gold {dataset} has no column {name} (or has it more than once)")
        return i

    def replace(i: int, values: Any) -> None:
        arrays[i] = values if values.type == schema.field(i).type else values.cast(schema.field(i).type)

    if dataset == "medical":
        for name in ICD_DIAGNOSIS_COLUMNS:
            i = index_of(name)
            values, changed, unrecognized = normalize_icd(arrays[i], target_map)
            replace(i, values)
            stats[f"changed.{name}"] = changed
            stats[f"unrecognized.{name}"] = unrecognized
        for name in PROCEDURE_COLUMNS:
            i = index_of(name)
            values, changed = normalize_procedure(arrays[i], procedure_map)
            replace(i, values)
            stats[f"changed.{name}"] = changed
    elif drug_map is not None:
        i = index_of("standardized_drug_name")
        derived = standardize_drug_names(arrays[index_of("drug_name")], drug_map)
        old = _as_string(arrays[i])
        same = pc.fill_null(pc.equal(derived, old), pc.and_(pc.is_null(derived), pc.is_null(old)))
        replace(i, derived)
        stats["changed.standardized_drug_name"] = _count_true(pc.invert(same))

    if isinstance(table, pa.RecordBatch):
        return pa.RecordBatch.from_arrays([_contiguous(a) for a in arrays], schema=schema), stats
    return pa.Table.from_arrays(arrays, schema=schema), stats
