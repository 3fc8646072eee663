"""The ``target-frequency`` (tgtfq) stage: code-frequency reports from gold medical.

Writes three objects under ``gold/target_code/`` (:func:`pgx_core.lake.paths.target_code_prefix`):
``icd_frequency_by_position.parquet``, ``procedure_code_frequency.parquet`` and
``suggested_icd_mappings.json``. The counting rules live in :mod:`pgx_target_frequency.rules`.

**Entities.** The reports are three objects built from every gold medical partition, so they are
one unit of state: a single entity ``target_code`` whose input fingerprint is the list of
``(event_year, age_band, etag)`` of the partitions in the run's scope (any partition added,
removed or rewritten — e.g. by update-codes — redoes the report; a rerun on unchanged gold skips).
Per-partition entities would need a combine step that runs after all of them, which the stage
contract (entities run unordered, in parallel) cannot express; and partials kept as lake objects
would be state outside the state store. Instead the counting fans out in :meth:`prepare`: one
task per partition counts it (streaming, batch by batch) into a small partial under the run's
scratch, in parallel on the executor; :meth:`process` then writes the reports partition by
partition, in report order, so only one partition's counts are in memory at a time. Partials are
an optimization, not state: a partial that is missing or was counted from another version of
the partition is recounted inline, and a killed run recounts everything (counting reads only the
eleven code columns). A partition replaced while the report is built fails the entity (exit 3)
instead of reporting a mixture.

**Suppression.** Counts below 11 must be suppressed in any report that leaves the lake. These
reports exist to be looked at and shared (they hold no member data, so they are exactly what gets
exported), and pgx has no separate export step that could suppress later. So the lake copies are
suppressed too, by default: ``suppressBelow`` (default 11) — a count below it is written as NULL,
the row is kept. Exact counts remain derivable from gold by whoever has gold access; a team that
wants exact in-lake copies (never to be shared) sets ``suppressBelow: 0``, which is recorded in
the configuration fingerprint like every parameter. Each partition holds the complete counts of
its ``(event_year, age_band)`` keys, so suppressing partition by partition is suppressing the
merged totals. The reports carry no totals, so no complementary suppression is needed.

**Suggested mappings.** ``{observed code: normalization}`` for every distinct ICD diagnosis code
observed in the partitions whose pass-2 normalization (with ``targetMap`` if given) differs from
it, optionally restricted to ``codesOfInterest``; key-sorted JSON. It is itself a valid target map.
Read before update-codes it lists what pass 2 would change; after it, what pass 2 left behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS
from pgx_update_codes.params import load_code_map_uri
from pgx_update_codes.rules import CodeMap, CodeMapError

from pgx_core.errors import ConflictError
from pgx_core.lake import paths
from pgx_core.lake.parquet import MB, PARQUET_OPTS
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_core.spec.runspec import Spec, canonical_json
from pgx_core.stage import Data, Entity, EntityResult, Output, Stage, WorkContext, scan_partitions
from pgx_target_frequency.params import TargetFrequencyParams
from pgx_target_frequency.rules import (
    ICD_FREQUENCY_SCHEMA,
    PROCEDURE_FREQUENCY_SCHEMA,
    FrequencyPartial,
    merge_partials,
    partition_partial,
    suggested_icd_mappings,
    suppress_small_counts,
)

ENTITY_ID = "target_code"
COLUMNS = (*ICD_DIAGNOSIS_COLUMNS, "procedure_code")
_PARTIAL_ETAG = b"pgx.etag"
_PARTIAL_ROWS = b"pgx.rows"
_MIN_CHUNK, _MAX_CHUNK = 1024, 1 << 20
_MEMORY_FACTOR = 4
_MERGE_EVERY = 8  # batch partials merged in groups: bounded by distinct codes, not by rows


def report_uris(lake: str) -> tuple[str, str, str]:
    """``(icd report, procedure report, suggested mappings)`` URIs."""
    return paths.target_code_objects(lake)


def _scratch(ctx: WorkContext, part: dict[str, Any]) -> tuple[str, str]:
    name = paths.safe_id(f"age_band={part['age_band']}", f"event_year={part['event_year']}")
    return (
        ctx.scratch_uri("target_frequency", f"{name}.icd.parquet"),
        ctx.scratch_uri("target_frequency", f"{name}.procedure.parquet"),
    )


@dataclass(frozen=True)
class CountTask:
    """One partition to count on a worker (picklable)."""

    store_config: StoreConfig
    uri: str
    event_year: int
    age_band: str
    etag: str
    chunk_rows: int | None
    memory_budget_mb: int
    icd_out: str
    procedure_out: str


def _chunk_rows(pf: Any, chunk_rows: int | None, memory_budget_mb: int) -> int:
    if chunk_rows:
        return chunk_rows
    if pf.metadata.num_rows == 0:
        return _MIN_CHUNK
    probe = next(pf.iter_batches(batch_size=_MIN_CHUNK, columns=list(COLUMNS)), None)
    per_row = max(1, probe.nbytes // max(1, probe.num_rows)) if probe is not None else 1
    return int(min(max(memory_budget_mb * MB // (_MEMORY_FACTOR * per_row), _MIN_CHUNK), _MAX_CHUNK))


def count_partition(
    store: ObjectStore,
    uri: str,
    event_year: int,
    age_band: str,
    *,
    chunk_rows: int | None,
    memory_budget_mb: int,
    heartbeat: Callable[[], None] = lambda: None,
) -> tuple[FrequencyPartial, int, str]:
    """Count one gold medical partition batch by batch: ``(partial, rows, etag read)``.

    Raises :class:`ConflictError` if the object was replaced while it was read.
    """
    before = store.head(uri)
    if before is None:
        raise ConflictError(f"{uri} was removed while the target-frequency report was built; run again")
    partials: list[FrequencyPartial] = []
    rows = 0
    with store.open_input(uri) as f:
        pf = pq.ParquetFile(f, buffer_size=MB)
        chunk = _chunk_rows(pf, chunk_rows, memory_budget_mb)
        for batch in pf.iter_batches(batch_size=chunk, columns=list(COLUMNS)):
            partials.append(partition_partial(batch, event_year, age_band))
            rows += batch.num_rows
            if len(partials) >= _MERGE_EVERY:
                partials = [merge_partials(partials)]
            heartbeat()
    after = store.head(uri)
    if after is None or after.etag != before.etag:
        raise ConflictError(f"{uri} was replaced while the target-frequency report was built; run again")
    return merge_partials(partials), rows, before.etag


def _write_partial(store: ObjectStore, uri: str, table: pa.Table, etag: str, rows: int) -> None:
    meta = {_PARTIAL_ETAG: etag.encode(), _PARTIAL_ROWS: str(rows).encode()}
    with store.open_output(uri) as f:
        pq.write_table(table.replace_schema_metadata(meta), f, **PARQUET_OPTS)


def count_to_scratch(task: CountTask) -> int:
    """Fan-out work item: count a partition into its scratch partials; returns the rows counted.

    A partition that changed since planning is left out (no partial): the report entity recounts
    it and fails there with a conflict, instead of the whole stage failing here.
    """
    store = open_store(task.uri, task.store_config)
    try:
        partial, rows, etag = count_partition(
            store,
            task.uri,
            task.event_year,
            task.age_band,
            chunk_rows=task.chunk_rows,
            memory_budget_mb=task.memory_budget_mb,
        )
    except ConflictError:
        return 0
    if etag != task.etag:
        return 0
    _write_partial(store, task.icd_out, partial.icd, etag, rows)
    _write_partial(store, task.procedure_out, partial.procedure, etag, rows)
    return rows


class TargetFrequencyStage(Stage[TargetFrequencyParams]):
    """Code-frequency reports and suggested mappings from gold medical."""

    type_name = "target-frequency"
    tx = "tgtfq"
    script_name = "target_frequency_analysis"
    consumes = (Data("gold", "medical"),)
    produces = (Data("gold", "target_code"),)
    version = "1"
    plugin_name = "pgx-target-frequency"
    Params = TargetFrequencyParams

    @classmethod
    def validate_params(cls, params: TargetFrequencyParams, spec: Spec) -> list[tuple[str, str]]:
        if params.target_map is None:
            return []
        try:
            load_code_map_uri(params.target_map, "icd", StoreConfig.for_spec(spec.s3))
        except (CodeMapError, ValueError) as exc:  # MapLoadError is a ValueError
            return [("targetMap", str(exc))]
        return []

    def _target_map(self) -> CodeMap | None:
        p = self.params
        return load_code_map_uri(p.target_map, "icd", self.run.store_config) if p.target_map else None

    # --- driver -------------------------------------------------------------------------------
    def plan(self) -> list[Entity]:
        run = self.run
        prefix = paths.build_zone_path("gold", "medical", lake=run.lake)
        live = scan_partitions(self.store_for(prefix), prefix, "medical_data.parquet", f"{self.type_name} (gold)")
        parts: list[dict[str, Any]] = []
        for year in run.years:
            for band in run.age_bands:  # the layout's band order: the report's order
                info = live.get((band, year))
                if info is not None:
                    parts.append(
                        {"uri": info.uri, "event_year": year, "age_band": band, "etag": info.etag, "size": info.size}
                    )
        if not parts:
            return []  # no gold medical in scope: nothing to report (existing reports stay)
        target = self._target_map()
        fp = canonical_json([[p["event_year"], p["age_band"], p["etag"]] for p in parts])
        return [
            Entity(
                id=ENTITY_ID,
                input_fingerprint="sha256:" + hashlib.sha256(fp.encode()).hexdigest(),
                payload={"partitions": parts, "targetMap": target.fingerprint if target else None},
                size_bytes=sum(int(p["size"]) for p in parts),
                # The map's content (not its URI) shapes the suggestions.
                config_extra=target.fingerprint if target else "",
            )
        ]

    def prepare(self, entities: list[Entity], fan_out: Callable[..., Iterator[Any]]) -> None:
        """Count every partition in parallel into the run's scratch (an optimization, see above)."""
        ctx = WorkContext(self.run, ENTITY_ID, self.store_for)
        tasks = []
        for ent in entities:
            for part in ent.payload["partitions"]:
                icd_out, procedure_out = _scratch(ctx, part)
                tasks.append(
                    CountTask(
                        self.run.store_config,
                        part["uri"],
                        int(part["event_year"]),
                        part["age_band"],
                        part["etag"],
                        self.params.chunk_rows,
                        self.run.memory_budget_mb,
                        icd_out,
                        procedure_out,
                    )
                )
        for _ in fan_out(count_to_scratch, tasks):
            pass

    # --- worker -------------------------------------------------------------------------------
    def _partial(self, ctx: WorkContext, part: dict[str, Any]) -> tuple[FrequencyPartial, int]:
        """The partition's counts: its scratch partial if counted from the planned version, else now."""
        store = ctx.store()
        icd_uri, procedure_uri = _scratch(ctx, part)
        tables = []
        for uri in (icd_uri, procedure_uri):
            got = store.read_versioned(uri)
            if got is None:
                break
            table = pq.read_table(pa.BufferReader(got[0]))
            meta = table.schema.metadata or {}
            if meta.get(_PARTIAL_ETAG, b"").decode() != part["etag"]:
                break
            tables.append(table)
        if len(tables) == 2:
            rows = int((tables[0].schema.metadata or {})[_PARTIAL_ROWS])
            return FrequencyPartial(
                tables[0].replace_schema_metadata(None), tables[1].replace_schema_metadata(None)
            ), rows
        partial, rows, etag = count_partition(
            store,
            part["uri"],
            int(part["event_year"]),
            part["age_band"],
            chunk_rows=self.params.chunk_rows,
            memory_budget_mb=self.run.memory_budget_mb,
            heartbeat=ctx.heartbeat,
        )
        if etag != part["etag"]:
            raise ConflictError(f"{part['uri']} was replaced since the report was planned; run again")
        return partial, rows

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        p = self.params
        icd_uri, procedure_uri, suggestions_uri = report_uris(self.run.lake)
        stats = {"partitions": 0, "suppressed.icd": 0, "suppressed.procedure": 0}
        counts = {"icd": 0, "procedure": 0}
        observed = pa.array([], pa.string())
        rows = 0
        with (
            ctx.open_output(ctx.staging_uri(icd_uri)) as icd_out,
            ctx.open_output(ctx.staging_uri(procedure_uri)) as procedure_out,
        ):
            icd_writer = pq.ParquetWriter(icd_out, ICD_FREQUENCY_SCHEMA, **PARQUET_OPTS)
            procedure_writer = pq.ParquetWriter(procedure_out, PROCEDURE_FREQUENCY_SCHEMA, **PARQUET_OPTS)
            for part in entity.payload["partitions"]:
                partial, n = self._partial(ctx, part)
                rows += n
                stats["partitions"] += 1
                # Distinct codes only, deduplicated as we go: bounded by the code vocabulary.
                observed = pc.unique(pa.chunked_array([observed, pc.unique(partial.icd["code"])], pa.string()))
                for kind, table, writer in (
                    ("icd", partial.icd, icd_writer),
                    ("procedure", partial.procedure, procedure_writer),
                ):
                    if table.num_rows == 0:
                        continue
                    # Each partition holds the complete counts of its (year, band) keys, so
                    # suppressing it now is suppressing the final totals.
                    out = suppress_small_counts(table, p.suppress_below)
                    stats[f"suppressed.{kind}"] += out["frequency"].null_count
                    counts[kind] += out.num_rows
                    writer.write_table(out)
                ctx.heartbeat()
            icd_writer.close()
            procedure_writer.close()
        suggestions = suggested_icd_mappings(observed, self._target_map(), p.codes_of_interest)
        with ctx.open_output(ctx.staging_uri(suggestions_uri)) as f:
            f.write(json.dumps(suggestions, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
        store = ctx.store()
        for part in entity.payload["partitions"]:
            info = store.head(part["uri"])
            if info is None or info.etag != part["etag"]:
                raise ConflictError(f"{part['uri']} was replaced while the report was built; run again")
        stats.update({"report_rows.icd": counts["icd"], "report_rows.procedure": counts["procedure"]})
        stats["suggested_mappings"] = len(suggestions)
        return EntityResult(
            outputs=[
                Output(icd_uri, counts["icd"], kind="report"),
                Output(procedure_uri, counts["procedure"], kind="report"),
                Output(suggestions_uri, len(suggestions), kind="report"),
            ],
            # Every gold row read is counted (a row with no code simply contributes nothing).
            rows_in=rows,
            rows_out=rows,
            stats=stats,
        )

    def output_schema(self, output: Output) -> pa.Schema | None:
        icd, procedure, _ = report_uris(self.run.lake)
        return {icd: ICD_FREQUENCY_SCHEMA, procedure: PROCEDURE_FREQUENCY_SCHEMA}.get(output.uri)
