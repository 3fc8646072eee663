"""Parameters of the target-frequency stage."""

from __future__ import annotations

from pydantic import Field, field_validator

from pgx_core.spec.runspec import StageParams
from pgx_target_frequency.rules import SUPPRESSION_THRESHOLD


class TargetFrequencyParams(StageParams):
    target_map: str | None = Field(
        default=None,
        description="URI of the JSON ICD target map used to compute suggested mappings (as update-codes would)",
    )
    codes_of_interest: list[str] | None = Field(
        default=None, description="restrict suggested mappings to these target codes (compared in flat form)"
    )
    suppress_below: int = Field(
        default=SUPPRESSION_THRESHOLD,
        ge=0,
        description="frequencies below this are written as NULL (small-cell suppression); 0 keeps exact counts",
    )
    chunk_rows: int | None = Field(
        default=None, ge=1, description="rows per batch read; default sized from memoryBudgetMb"
    )

    @field_validator("target_map")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None or v.startswith("file:///") or (v.startswith("s3://") and len(v) > 5 and v[5] != "/"):
            return v
        raise ValueError(f"must be a JSON object's URI, s3://BUCKET/KEY or file:///ABS/PATH, got {v!r}")

    @field_validator("codes_of_interest")
    @classmethod
    def _codes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v or any(not c.strip() for c in v):
            raise ValueError("must be a non-empty list of non-empty codes")
        return sorted(set(v))
