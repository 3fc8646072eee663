"""The ``ingest`` (txtpq) and ``reprocess`` (repro) stages: wiring of the pure parse/repair code to
the runtime. One entity per source file (ingest) or per rejects object (reprocess).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pgx_apcd import layout
from pgx_apcd.layout import DATA_TYPES

from pgx_core.errors import NoInput, UsageError
from pgx_core.lake import paths
from pgx_core.lake.parquet import MB, row_parquet_options
from pgx_core.stage import Data, Entity, EntityResult, Output, Stage, WorkContext
from pgx_core.state import produced_checksum
from pgx_ingest.params import IngestParams, ReprocessParams
from pgx_ingest.parse import REJECTS_SCHEMA, SCHEMA_MISMATCH, bronze_schema, ingest_stream
from pgx_ingest.repair import repair_rejects


def block_bytes(memory_budget_mb: int) -> int:
    """Raw bytes per parse block, sized so one file's ingest stays within the budget.

    Measured on 197 MB medical files (tests/plugins/test_ingest_stage.py): peak RSS above a
    one-line file's is about 11 blocks plus ~110 MB that does not depend on the budget (Arrow's
    pools and thread buffers): the raw block and the next one being parsed, Arrow's binary columns,
    transcoded strings and the Parquet writer's encoders for 113 columns.

    At most 24 MB: glibc serves allocations above its mmap threshold (32 MB at most) from fresh
    mappings whose pages fault in on every block. Measured on 1 M rows (8 files, two workers):
    blocks of 42 MB took 10.0-10.3 s, blocks of 12-30 MB 9.1-9.4 s, with lower peaks.
    """
    return int(min(max(memory_budget_mb * MB // 12, 4 * MB), 24 * MB))


def list_inputs(stage: Stage[Any], pattern: str) -> list[tuple[str, str, int]]:
    """``(uri, etag, size)`` of the raw files ingest reads under a prefix or glob, sorted.

    Raw files are objects whose name ends in ``.txt`` or ``.csv`` in any letter case and does not
    start with ``.`` (hidden files: editors' and upload tools' temporaries); under a prefix, every
    such object below it, sub-folders included; with a glob, those the glob matches.
    """
    prefix, glob = paths.split_glob(pattern)
    store = stage.store_for(prefix)
    out = []
    for info in store.list(prefix):
        if not paths.is_raw_text(info.uri) or info.uri.rsplit("/", 1)[-1].startswith("."):
            continue
        if glob is not None and not fnmatch.fnmatchcase(info.uri, glob):
            continue
        out.append((info.uri, info.etag, info.size))
    return out


class _ParquetSink:
    """Opens its Parquet writer on the first batch (so a file with no rejects writes no rejects object)."""

    def __init__(self, ctx: WorkContext, final: str, schema: pa.Schema) -> None:
        self.ctx, self.final, self.schema = ctx, final, schema
        self.rows = 0
        self._out: Any = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._out = self.ctx.open_output(self.ctx.staging_uri(self.final))
            self._writer = pq.ParquetWriter(self._out, self.schema, **row_parquet_options(self.schema))
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> bool:
        """Close; True when something was written."""
        if self._writer is None:
            return False
        self._writer.close()
        self._out.close()
        return True


class IngestStage(Stage[IngestParams]):
    """Raw pipe-delimited extracts → one bronze Parquet object per source file."""

    type_name = "ingest"
    tx = "txtpq"
    script_name = "txt_to_parquet"
    consumes = tuple(Data("raw", dt) for dt in DATA_TYPES)
    produces = tuple(Data("bronze", dt) for dt in DATA_TYPES)
    version = "1"
    plugin_name = "pgx-ingest"
    Params = IngestParams

    def plan(self) -> list[Entity]:
        p = self.params
        pattern = p.input or paths.raw_prefix(self.run.lake, p.data_type)
        found = list_inputs(self, pattern)
        if not found:
            raise NoInput(f"ingest of {p.data_type} found no raw .txt or .csv file under {pattern}")
        # Two sources never share a stem, hence never an entity, a bronze object or a state folder.
        stems = paths.source_stems([uri for uri, _, _ in found], self.run.lake)
        entities = []
        for uri, etag, size in found:
            stem = stems[uri]
            entities.append(
                Entity(
                    id=paths.safe_id(p.data_type, stem),
                    # The store's etag changes whenever the file's bytes do; with the size it is the
                    # content fingerprint that decides whether a file was already ingested.
                    input_fingerprint=f"size={size};etag={etag}",
                    payload={"uri": uri, "stem": stem},
                    size_bytes=size,
                )
            )
        return entities

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        p = self.params
        uri, stem = entity.payload["uri"], entity.payload["stem"]
        bronze = paths.bronze_object(self.run.lake, p.data_type, stem)
        rejects_uri = paths.bronze_rejects_object(self.run.lake, p.data_type, stem)
        rows = _ParquetSink(ctx, bronze, bronze_schema(p.data_type))
        rejects = _ParquetSink(ctx, rejects_uri, REJECTS_SCHEMA)
        with ctx.store(uri).open_input(uri) as src:
            res = ingest_stream(
                src,
                data_type=p.data_type,
                source_stem=stem,
                encoding=p.encoding,
                delimiter=p.delimiter,
                quoting=p.quoting,
                block_bytes=block_bytes(self.run.memory_budget_mb),
                on_rows=_beating(rows.write, ctx),
                on_rejects=rejects.write,
            )
        wrote_rows, wrote_rejects = rows.close(), rejects.close()
        stats = {f"rejects.{reason}": n for reason, n in res.reasons.items() if reason != SCHEMA_MISMATCH}
        result = EntityResult(rows_in=res.data_lines, rows_out=res.rows, rows_quarantined=res.rejected, stats=stats)
        store = ctx.store()
        repro = paths.bronze_repro_object(self.run.lake, p.data_type, stem)
        if res.status is not None:
            result.stats[res.status] = 1
        if res.status == SCHEMA_MISMATCH:
            diff = res.schema_diff.describe() if res.schema_diff else "header differs"
            result.data_error = f"SCHEMA_MISMATCH in {stem}: header differs from the {p.data_type} layout ({diff})"
            return result
        if wrote_rows:
            result.outputs.append(Output(bronze, res.rows))
        elif store.exists(bronze):
            result.deletes.append(bronze)  # the source is now empty: its old bronze must not stay live
        if wrote_rejects:
            result.outputs.append(Output(rejects_uri, res.rejected, kind="rejects", promote_on_failure=True))
        elif store.exists(rejects_uri):
            result.deletes.append(rejects_uri)  # fixed source: the old rejects no longer apply
        if store.exists(repro):
            result.deletes.append(repro)  # recovered rows of the old content no longer apply
        if res.data_lines and res.rejected / res.data_lines > p.max_reject_rate:
            result.data_error = (
                f"reject rate {res.rejected / res.data_lines:.4f} of {stem} exceeds maxRejectRate "
                f"{p.max_reject_rate} ({res.rejected} of {res.data_lines} lines)"
            )
        return result

    def output_schema(self, output: Output) -> pa.Schema:
        return REJECTS_SCHEMA if output.kind == "rejects" else bronze_schema(self.params.data_type)


def _beating(write: Any, ctx: WorkContext) -> Any:
    """Wrap a batch sink so that long files keep their lease alive."""

    def inner(batch: pa.RecordBatch) -> None:
        write(batch)
        ctx.heartbeat()

    return inner


class ReprocessStage(Stage[ReprocessParams]):
    """Re-parse rejected lines with repairs; recovered rows go to ``<stem>.repro.parquet``.

    Idempotent: recovered rows already in the repro object are kept and merged with the newly
    recovered ones, so running it again never loses a recovery.
    """

    type_name = "reprocess"
    tx = "repro"
    script_name = "reprocess_txt_to_parquet"
    consumes = tuple(Data("bronze", dt) for dt in DATA_TYPES)  # the rejects, rewritten in place
    version = "1"
    plugin_name = "pgx-ingest"
    Params = ReprocessParams

    def plan(self) -> list[Entity]:
        p = self.params
        if p.join_extra_fields_into and p.join_extra_fields_into not in layout.columns(p.data_type):
            raise UsageError(f"joinExtraFieldsInto must name a {p.data_type} column, got {p.join_extra_fields_into!r}")
        prefix = paths.join(self.run.lake, "bronze", "_rejects", p.data_type) + "/"
        store = self.store_for(prefix)
        entities = []
        for info in store.list(prefix):
            if not info.uri.endswith(".rejects.parquet"):
                continue
            stem = info.uri.rsplit("/", 1)[1].removesuffix(".rejects.parquet")
            ingest_id = paths.safe_id(p.data_type, stem)
            # Fingerprint the rejects by what ingest produced: our own rewrite of them does not count.
            produced = produced_checksum(
                self.store_for(self.run.state_root),
                self.run.state_root,
                self.run.lake,
                pipeline=self.producer(Data("bronze", p.data_type)),
                entity_id=ingest_id,
                uri=info.uri,
            )
            fp = f"ingested={produced}" if produced else f"etag={info.etag}"
            entities.append(
                Entity(
                    id=ingest_id,
                    input_fingerprint=fp,
                    payload={"uri": info.uri, "stem": stem},
                    size_bytes=info.size,
                )
            )
        return entities

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        p = self.params
        stem = entity.payload["stem"]
        rejects_uri = entity.payload["uri"]
        repro_uri = paths.bronze_repro_object(self.run.lake, p.data_type, stem)
        store = ctx.store()
        with store.open_input(rejects_uri) as f:
            rejects = pq.read_table(f)
        previous = None
        if store.exists(repro_uri):
            with store.open_input(repro_uri) as f:
                previous = pq.read_table(f)
        recovered, remaining = repair_rejects(
            rejects,
            data_type=p.data_type,
            encoding=p.encoding,
            pad_missing_fields=p.pad_missing_fields,
            join_extra_fields_into=p.join_extra_fields_into,
            delimiter=p.delimiter,
        )
        merged = recovered if previous is None else pa.concat_tables([previous, recovered])
        merged = merged.sort_by([("_source_line", "ascending")])
        stats = {f"recovered.{r}": n for r, n in _reason_counts(rejects, remaining).items()}
        stats.update({f"remaining.{r}": n for r, n in _counts(remaining).items()})
        outputs = []
        if recovered.num_rows:
            outputs.append(self._write(ctx, repro_uri, merged, bronze_schema(p.data_type), None))
            outputs.append(self._write(ctx, rejects_uri, remaining, REJECTS_SCHEMA, ("txt_to_parquet", entity.id)))
        before = previous.num_rows if previous is not None else 0
        # Rows conserved across both objects: rejects in (+ recovered before) = repro out + rejects out.
        return EntityResult(
            outputs=outputs,
            rows_in=rejects.num_rows + before,
            rows_out=merged.num_rows,
            rows_quarantined=remaining.num_rows,
            stats=stats,
            unchanged=[] if recovered.num_rows else [rejects_uri],
        )

    def _write(
        self, ctx: WorkContext, final: str, table: pa.Table, schema: pa.Schema, rewrites: tuple[str, str] | None
    ) -> Output:
        with ctx.open_output(ctx.staging_uri(final)) as out:
            pq.write_table(table.cast(schema), out, **row_parquet_options(schema))
        return Output(
            final, table.num_rows, kind="rejects" if final.endswith(".rejects.parquet") else "data", rewrites=rewrites
        )

    def output_schema(self, output: Output) -> pa.Schema:
        return REJECTS_SCHEMA if output.kind == "rejects" else bronze_schema(self.params.data_type)


def _counts(t: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in t.group_by("reason").aggregate([("reason", "count")]).to_pylist():
        out[row["reason"]] = row["reason_count"]
    return out


def _reason_counts(before: pa.Table, after: pa.Table) -> dict[str, int]:
    """Recovered lines per original reason (lines of ``before`` not in ``after``)."""
    kept = set(after.column("_source_line").to_pylist())
    out: dict[str, int] = {}
    for line, reason in zip(
        before.column("_source_line").to_pylist(), before.column("reason").to_pylist(), strict=True
    ):
        if line not in kept:
            out[reason] = out.get(reason, 0) + 1
    return out
