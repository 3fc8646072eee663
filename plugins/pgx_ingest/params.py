"""Parameters of the ingest and reprocess stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pgx_core.spec.runspec import StageParams
from pgx_ingest import parse, repair

DataType = Literal["pharmacy", "medical"]


class IngestParams(StageParams):
    data_type: DataType = Field(description="pharmacy or medical")
    input: str | None = Field(
        default=None, description="URI prefix or glob of the raw files; default <lake>/raw/<dataType>/"
    )
    encoding: str = Field(default="cp1252", description="encoding of the raw files")
    delimiter: str = Field(default="|", min_length=1, max_length=1, description="field delimiter")
    quoting: bool = Field(default=False, description="fields may be enclosed in double quotes (the feed is not)")
    max_reject_rate: float = Field(default=0.01, ge=0, le=1, description="a file rejecting more lines fails (exit 2)")

    # The reader's own checks: what validates here is exactly what the parser reads.
    _enc = field_validator("encoding")(parse.check_encoding)
    _delim = field_validator("delimiter")(parse.check_delimiter)


class ReprocessParams(StageParams):
    data_type: DataType = Field(description="pharmacy or medical")
    encoding: str | None = Field(default=None, description="decode rejected lines with this encoding instead")
    pad_missing_fields: bool = Field(default=False, description="pad lines with too few fields with empty values")
    join_extra_fields_into: str | None = Field(
        default=None, description="column into which surplus fields are joined back with the delimiter"
    )
    delimiter: str = Field(default="|", min_length=1, max_length=1)

    @field_validator("encoding")
    @classmethod
    def _enc(cls, v: str | None) -> str | None:
        return None if v is None else repair.check_encoding(v)

    # Rejected lines were split by the ingest parser, so the feed's delimiter is one it accepts.
    _delim = field_validator("delimiter")(parse.check_delimiter)
