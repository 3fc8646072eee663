"""Parameters of the update-codes stage and the loading of its code maps.

The maps are JSON objects ``{variant: canonical}`` named by URI (``file:///…`` or ``s3://…``).
They are loaded and checked at spec validation (``Stage.validate_params``), again on the driver
when planning (their fingerprints are part of each entity's configuration) and on the worker that
applies them (which checks that the map it read is the one that was planned).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pgx_apcd.layout import AGE_BANDS
from pgx_clean.rules import DrugMap, DrugMapError, load_drug_map
from pydantic import Field, field_validator

from pgx_core.errors import ObjectNotFound, PgxError, scrub
from pgx_core.exitcodes import ExitCode
from pgx_core.lake.storage import StoreConfig, open_store
from pgx_core.spec.runspec import StageParams
from pgx_update_codes.rules import CodeKind, CodeMap, CodeMapError, load_code_map

Dataset = Literal["pharmacy", "medical"]


def _check_map_uri(value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith("s3://") and len(value) > 5 and value[5] != "/":
        return value
    if value.startswith("file:///"):
        return value
    raise ValueError(f"must be a JSON object's URI, s3://BUCKET/KEY or file:///ABS/PATH, got {value!r}")


class UpdateCodesParams(StageParams):
    target_map: str | None = Field(
        default=None, description="URI of the JSON {variant: canonical} ICD map; required when datasets has medical"
    )
    procedure_map: str | None = Field(default=None, description="URI of the JSON procedure-code map (optional)")
    drug_map: str | None = Field(
        default=None, description="URI of the JSON drug map: re-derives pharmacy standardized_drug_name"
    )
    datasets: list[Dataset] = Field(default_factory=lambda: list[Dataset](["medical"]), min_length=1)
    years: list[int] | None = Field(default=None, description="event years to process; default the run's")
    age_bands: list[str] | None = Field(default=None, description="age bands to process; default the run's")
    dry_run: bool = Field(default=False, description="count what would change; write no data object")
    chunk_rows: int | None = Field(
        default=None, ge=1, description="rows per batch read and rewritten; default sized from memoryBudgetMb"
    )

    _uris = field_validator("target_map", "procedure_map", "drug_map")(_check_map_uri)

    @field_validator("datasets")
    @classmethod
    def _unique(cls, v: list[Dataset]) -> list[Dataset]:
        # Canonical order, so that [pharmacy, medical] and [medical, pharmacy] are one configuration.
        return [d for d in ("medical", "pharmacy") if d in v]

    @field_validator("years")
    @classmethod
    def _years(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        bad = [y for y in v if not 1900 <= y <= 2100]
        if bad or not v:
            raise ValueError(f"must be a non-empty list of years in 1900-2100, got {v}")
        return sorted(set(v))

    @field_validator("age_bands")
    @classmethod
    def _bands(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        bad = [b for b in v if b not in AGE_BANDS]
        if bad or not v:
            raise ValueError(f"must be a non-empty list of {', '.join(AGE_BANDS)}; got {bad or v}")
        return [b for b in AGE_BANDS if b in v]


class MapLoadError(PgxError, ValueError):
    """A map URI that cannot be read or is not a JSON object (a spec error, exit 64)."""

    exit_code = ExitCode.USAGE


def read_json_object(uri: str, config: StoreConfig) -> dict[str, Any]:
    """Read a JSON object from ``uri``; :class:`MapLoadError` (no content in the message) otherwise."""
    try:
        raw = open_store(uri, config).read_bytes(uri)
    except ObjectNotFound:
        raise MapLoadError(f"names no object: {uri} does not exist") from None
    except PgxError as exc:
        raise MapLoadError(f"cannot be read from {uri}: {type(exc).__name__}: {scrub(str(exc))}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise MapLoadError(f"{uri} is not valid JSON{where}") from None
    if not isinstance(doc, dict):
        raise MapLoadError(f"{uri} must hold a JSON object {{variant: canonical}}, got a {type(doc).__name__}")
    return doc


def load_code_map_uri(uri: str, kind: CodeKind, config: StoreConfig) -> CodeMap:
    """Read and validate a target (``icd``) or procedure map; raises MapLoadError or CodeMapError."""
    return load_code_map(read_json_object(uri, config), kind)


def load_drug_map_uri(uri: str, config: StoreConfig) -> DrugMap:
    """Read and validate a drug map; raises MapLoadError or DrugMapError."""
    return load_drug_map(read_json_object(uri, config))


def validate(params: UpdateCodesParams, config: StoreConfig) -> list[tuple[str, str]]:
    """Every problem with the parameters that needs I/O or several keys: ``(withKey, message)``.

    Maps are read and validated here so a bad map is a spec error (exit 64) before anything runs.
    Map problems name reference codes and drug names (not PHI), never data rows.
    """
    problems: list[tuple[str, str]] = []
    medical, pharmacy = "medical" in params.datasets, "pharmacy" in params.datasets
    if medical and params.target_map is None:
        problems.append(("targetMap", "is required when datasets includes medical"))
    if params.procedure_map is not None and not medical:
        problems.append(("procedureMap", "applies to medical only, but datasets does not include medical"))
    if pharmacy and params.drug_map is None:
        problems.append(
            ("drugMap", "is required when datasets includes pharmacy (pass 2 changes nothing else in pharmacy)")
        )
    if params.drug_map is not None and not pharmacy:
        problems.append(("drugMap", "applies to pharmacy only, but datasets does not include pharmacy"))
    loaders: list[tuple[str, str | None, Any]] = [
        ("targetMap", params.target_map, lambda u: load_code_map_uri(u, "icd", config)),
        ("procedureMap", params.procedure_map, lambda u: load_code_map_uri(u, "procedure", config)),
        ("drugMap", params.drug_map, lambda u: load_drug_map_uri(u, config)),
    ]
    for key, uri, load in loaders:
        if uri is None:
            continue
        try:
            load(uri)
        except (MapLoadError, CodeMapError, DrugMapError) as exc:
            problems.append((key, str(exc)))
    return problems
