"""Parameters of the impute stage."""

from __future__ import annotations

from pydantic import Field

from pgx_core.spec.runspec import StageParams


class ImputeParams(StageParams):
    lookahead_years: int = Field(default=5, ge=0, le=20, description="max |row year - donor year| of a candidate")
    pharmacy_input: str | None = Field(
        default=None, description="bronze pharmacy prefix or glob; default <lake>/bronze/pharmacy/"
    )
    medical_input: str | None = Field(
        default=None, description="bronze medical prefix or glob; default <lake>/bronze/medical/"
    )
    buckets: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="number of buckets (member-key ranges); default: sized so one fits executor.memoryBudgetMb",
    )
