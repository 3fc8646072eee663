"""Parameters of the ingest and reprocess stages (SPEC §6.1, §6.2)."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator

from pgx_core.runspec import StageParams

DataType = Literal["pharmacy", "medical"]


def _check_encoding(v: str | None) -> str | None:
    if v is not None:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"must be a Python codec name such as cp1252 or latin-1, got {v!r}") from None
    return v


class IngestParams(StageParams):
    data_type: DataType = Field(description="pharmacy or medical")
    input: str | None = Field(
        default=None, description="URI prefix or glob of the raw files; default <lake>/raw/<dataType>/"
    )
    encoding: str = Field(default="cp1252", description="encoding of the raw files")
    delimiter: str = Field(default="|", min_length=1, max_length=1, description="field delimiter")
    quoting: bool = Field(default=False, description="fields may be enclosed in double quotes (the feed is not)")
    max_reject_rate: float = Field(default=0.01, ge=0, le=1, description="a file rejecting more lines fails (exit 2)")

    _enc = field_validator("encoding")(_check_encoding)


class ReprocessParams(StageParams):
    data_type: DataType = Field(description="pharmacy or medical")
    encoding: str | None = Field(default=None, description="decode rejected lines with this encoding instead")
    pad_missing_fields: bool = Field(default=False, description="pad lines with too few fields with empty values")
    join_extra_fields_into: str | None = Field(
        default=None, description="column into which surplus fields are joined back with the delimiter"
    )
    delimiter: str = Field(default="|", min_length=1, max_length=1)

    _enc = field_validator("encoding")(_check_encoding)
