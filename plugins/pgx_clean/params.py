"""Parameters of the clean stages: ``clean-pharmacy`` and ``clean-medical``."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from pgx_core.lake import paths
from pgx_core.spec.runspec import StageParams


def _check_uri(value: str, what: str) -> str:
    if value.startswith("s3://") and len(value) > 5 and value[5] != "/":
        return value
    if value.startswith("file:///"):
        return value
    raise ValueError(f"{what} must be an s3://BUCKET/KEY or file:///ABS/PATH URI, got {value!r}")


def _check_input(value: str | None, data_type: str) -> str | None:
    """Accept the canonical silver prefix and the older layouts ``convert_raw_to_imputed_path`` knows."""
    if value is None:
        return None
    _check_uri(value, "input")
    if re.search(r"/(age_band|event_year)=", value):
        raise ValueError(
            f"input names partitions ({value!r}): give the dataset's silver prefix and choose partitions with "
            "spec.partitions (ageBands, years)"
        )
    try:
        paths.convert_raw_to_imputed_path(value, data_type)
    except ValueError as exc:
        raise ValueError(
            f"input must be a {data_type} silver prefix or glob (…/silver/imputed/{data_type}/, "
            f"…/silver/{data_type}/…, …/silver/imputed/{data_type}_partitioned/**/*.parquet): {exc}"
        ) from None
    return value


_INPUT_HELP = (
    "silver prefix or glob to read; older layouts (…/silver/<type>/…, …/silver/imputed/<type>_partitioned/…) "
    "are mapped to the canonical prefix. Default: <lake>/silver/imputed/<type>/"
)


class CleanPharmacyParams(StageParams):
    input: str | None = Field(default=None, description=_INPUT_HELP)
    drug_map: str | None = Field(
        default=None,
        description="URI of a JSON {variant: canonical} drug-name map (s3:// or file:///); optional",
    )

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | None) -> str | None:
        return _check_input(v, "pharmacy")

    @field_validator("drug_map")
    @classmethod
    def _drug_map(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v, "drugMap")


class CleanMedicalParams(StageParams):
    input: str | None = Field(default=None, description=_INPUT_HELP)

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | None) -> str | None:
        return _check_input(v, "medical")
