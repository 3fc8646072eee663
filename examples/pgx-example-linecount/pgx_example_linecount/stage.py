"""The ``line-count`` stage: one entity per raw file, one Parquet report per file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pgx_core.lake import paths
from pgx_core.spec.runspec import StageParams
from pgx_core.stage import Entity, EntityResult, Output, Stage, WorkContext

SCHEMA = pa.schema([("source_file", pa.string()), ("lines", pa.int64()), ("bytes", pa.int64())])


class Params(StageParams):
    input: str | None = Field(default=None, description="prefix holding raw files; default <lake>/raw/")
    chunk_bytes: int = Field(default=8 << 20, ge=1024, description="read size")


class LineCount(Stage[Params]):
    type_name = "line-count"
    tx = "lncnt"
    script_name = "line_count"
    version = "1"
    plugin_name = "pgx-example-linecount"
    Params = Params

    def plan(self) -> list[Entity]:
        prefix = self.params.input or paths.join(self.run.lake, "raw") + "/"
        store = self.store_for(prefix)
        return [
            # The etag changes whenever the file's bytes change: a fine input fingerprint.
            Entity(
                id=paths.safe_id(paths.stem(o.uri)), input_fingerprint=o.etag, payload={"uri": o.uri}, size_bytes=o.size
            )
            for o in store.list(prefix)
            if paths.is_raw_text(o.uri)
        ]

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        uri = entity.payload["uri"]
        lines = size = 0
        last = b"\n"
        with ctx.store(uri).open_input(uri) as f:
            while chunk := f.read(self.params.chunk_bytes):
                lines += chunk.count(b"\n")
                size += len(chunk)
                last = chunk[-1:]
                ctx.heartbeat()
        if size and last != b"\n":
            lines += 1  # a last line without a line ending still counts
        final = paths.join(self.run.lake, "reports", "line_count", f"{entity.id}.parquet")
        table = pa.table({"source_file": [paths.stem(uri)], "lines": [lines], "bytes": [size]}, schema=SCHEMA)
        staged = ctx.staging_uri(final)
        with ctx.store(staged).open_output(staged) as out:
            pq.write_table(table, out)
        # One report row per file: rows in (files) = rows out.
        return EntityResult(outputs=[Output(final, rows=1)], rows_in=1, rows_out=1, stats={"lines": lines})

    def output_schema(self, output: Output) -> pa.Schema:
        return SCHEMA
