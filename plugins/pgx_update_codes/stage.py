"""The ``update-codes`` (updcd) stage: pass 2, normalizing target codes in gold in place.

One entity per ``(dataset, age_band, event_year)`` gold object, with the same id as the clean entity
that produced it (``medical__age_band=65-74__event_year=2019``). The pure rules live in
:mod:`pgx_update_codes.rules`; this module decides *whether* a partition needs pass 2 and streams
it through the rules row group by row group. Promotion (backup first, atomic replacement, state)
is the core's.

**Lineage and resume.** Pass 2 replaces the object it reads, so the input object's checksum
cannot be the live object's: after our own rewrite that changes, and a rerun would redo
everything. The input fingerprint is instead the checksum with which *clean* produced the object
(``clean=<sha256>``), whenever the live object is clean's output or our rewrite of it:

1. live etag = clean's recorded etag → clean's untouched output;
2. live etag = the rewritten etag the core recorded on clean's state after our promotion → ours;
3. live etag = an output etag of our own completed state → ours (gold without clean state);
4. otherwise the Parquet footer is consulted: every object this stage writes carries provenance
   key-value metadata ``pgx.update_codes = {"input": <fingerprint>, "config": <maps>}``. Naming
   clean's current checksum it proves the object is our rewrite of clean's output even when the
   process was killed between the replacement and the state writes (the core records the
   rewrite on clean's state just after the replacement). Gold with no clean state at all is
   fingerprinted by the input its provenance names;
5. anything else (gold replaced by someone else) is fingerprinted by its etag and processed
   without touching clean's state (clean's own resume will then redo it).

The rewritten object is an ``Output(rewrites=("clean_<dataset>", entity id))`` so clean's resume
keeps accepting it. A map change is a configuration change: the maps' fingerprints are
the entity's ``config_extra`` (medical: target and procedure maps; pharmacy: drug map), so a new
target map reprocesses medical partitions and leaves pharmacy alone. A new map applies to gold as
it is now (pass 2 composes); to start again from clean's output, rerun clean.

**No-op.** A partition in which no value changes is not rewritten: ``EntityResult.unchanged``.
An object whose provenance already names this input and configuration (after ``--no-resume``, or
after a kill between replacement and state) is not even re-read through the rules: applying pass 2
twice is not always the same as once (the token path, see the rules' docstring), so it must never
happen by accident. In the second case the object is re-published byte for byte, only so that the
core records the rewrite on clean's state.

**Concurrent replacement.** Before returning, the live object's etag is checked against the one
planned; if someone (e.g. a clean run) replaced it meanwhile the entity fails with a conflict
(exit 3) rather than promote pass 2 of an outdated object over it.

**Dry run** (``dryRun``): per-column counts, no output, no backup, no staging object. Its entities
have their own ids (``<entity>__dry_run``) and an input fingerprint holding the run id, so a dry
run always reports, and the state of the real entity is never touched: a later real run processes
(or skips) exactly what it would have without the dry run.

**Memory.** The object is read with ``ParquetFile.iter_batches`` one row group at a time in batches
of ``chunkRows`` rows (default: sized from ``memoryBudgetMb``) and written with a ``ParquetWriter``:
every input row group becomes one output row group, except that a row group larger than a batch
becomes one row group per batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS, PROCEDURE_COLUMNS
from pgx_clean.rules import DrugMap

from pgx_core.errors import ConflictError, DataError, NoInput
from pgx_core.lake import paths
from pgx_core.lake.parquet import MB, row_parquet_options
from pgx_core.lake.storage import ObjectInfo, ObjectStore, StoreConfig
from pgx_core.spec.runspec import Spec, canonical_json
from pgx_core.stage import Data, Entity, EntityResult, Output, Stage, WorkContext, scan_partitions
from pgx_core.state import OutputRecord, PipelineState, StateStore
from pgx_update_codes.params import (
    UpdateCodesParams,
    load_code_map_uri,
    load_drug_map_uri,
    validate,
)
from pgx_update_codes.rules import CodeMap, add_stats, update_codes_table

PROVENANCE_KEY = b"pgx.update_codes"
DRY_RUN_SUFFIX = "dry_run"
_READ_BUFFER = 1 * MB
_MIN_CHUNK, _MAX_CHUNK = 1024, 1 << 20
# Arrow bytes held per row read: the batch, the rewritten columns, pyarrow temporaries, writer buffers.
_MEMORY_FACTOR = 4
_COPY_CHUNK = 8 * MB


def entity_id(dataset: str, age_band: str, event_year: int) -> str:
    """The clean entity id of a gold partition, which is also ours."""
    return paths.partition_entity(dataset, age_band, event_year)


@dataclass(frozen=True)
class Lineage:
    """Where the live gold object comes from, as far as resume is concerned."""

    source: str  # clean | rewritten | mine | provenance | foreign
    fingerprint: str
    record_rewrite: bool  # our output must be recorded on clean's state (Output.rewrites)


def read_provenance(store: ObjectStore, uri: str) -> dict[str, Any] | None:
    """The provenance this stage wrote into a gold object's footer, or None (reads the footer only).

    An unreadable footer is "no provenance": the entity is then processed and fails there, with
    its own error, instead of failing the whole plan.
    """
    meta: dict[bytes, bytes] = {}
    with contextlib.suppress(Exception), store.open_input(uri) as f:
        meta = pq.ParquetFile(f).metadata.metadata or {}
    return _parse_provenance(meta)


def _parse_provenance(meta: dict[bytes, bytes]) -> dict[str, Any] | None:
    raw = meta.get(PROVENANCE_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def classify(
    etag: str,
    uri: str,
    clean: OutputRecord | None,
    mine: PipelineState | None,
    provenance: Callable[[], dict[str, Any] | None],
) -> Lineage:
    """Decide the lineage of the live object (rules 1-5 of the module docstring).

    ``provenance`` is a zero-argument callable returning the footer provenance; it is only called
    when the etags do not settle the question.
    """
    if clean is not None and etag == clean.etag:
        return Lineage("clean", f"clean={clean.checksum}", True)
    if clean is not None and clean.rewritten_etag is not None and etag == clean.rewritten_etag:
        return Lineage("rewritten", f"clean={clean.checksum}", True)
    if (
        mine is not None
        and mine.status == "completed"
        and mine.input_fingerprint
        and any(o.uri == uri and o.etag == etag for o in mine.outputs)
    ):
        from_clean = clean is not None and mine.input_fingerprint == f"clean={clean.checksum}"
        return Lineage("mine", mine.input_fingerprint, from_clean)
    prov = provenance()
    if prov is not None and isinstance(prov.get("input"), str):
        if clean is not None and prov["input"] == f"clean={clean.checksum}":
            # Our rewrite of clean's current output whose recording on clean's state was lost.
            return Lineage("provenance", prov["input"], True)
        if clean is None:
            return Lineage("mine", prov["input"], False)
    return Lineage("foreign", f"etag={etag}", False)


class UpdateCodesStage(Stage[UpdateCodesParams]):
    """Pass 2 on gold, in place."""

    type_name = "update-codes"
    tx = "updcd"
    script_name = "update_codes"
    consumes = (Data("gold", "medical"), Data("gold", "pharmacy"))  # rewritten in place
    version = "1"
    plugin_name = "pgx-update-codes"
    Params = UpdateCodesParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Input schema per output URI, for the schema gate (same process: process() then gates).
        self._schemas: dict[str, pa.Schema] = {}

    # --- validation ---------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: UpdateCodesParams, spec: Spec) -> list[tuple[str, str]]:
        return validate(params, StoreConfig.for_spec(spec.s3))

    # --- driver -------------------------------------------------------------------------------
    def config_fingerprint(self) -> str:
        """Stage and version only. What shapes an entity's output beyond its input is the content of
        the maps that apply to its dataset: their fingerprints are the entity's ``config_extra``.
        Map URIs, the partition filters, ``chunkRows`` and ``dryRun`` are deliberately left out:
        moving a map or changing the batch size must not reprocess gold.
        """
        blob = canonical_json({"stage": self.type_name, "version": self.version})
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def _map_fingerprints(self) -> dict[str, str | None]:
        p, cfg = self.params, self.run.store_config
        return {
            "targetMap": load_code_map_uri(p.target_map, "icd", cfg).fingerprint if p.target_map else None,
            "procedureMap": load_code_map_uri(p.procedure_map, "procedure", cfg).fingerprint
            if p.procedure_map
            else None,
            "drugMap": load_drug_map_uri(p.drug_map, cfg).fingerprint if p.drug_map else None,
        }

    @staticmethod
    def _config_extra(dataset: str, fps: dict[str, str | None]) -> dict[str, str | None]:
        keys = ("targetMap", "procedureMap") if dataset == "medical" else ("drugMap",)
        return {"dataset": dataset, **{k: fps[k] for k in keys}}

    def _gold_partitions(self, store: ObjectStore, dataset: str) -> dict[tuple[str, int], ObjectInfo]:
        """One dataset's gold objects by partition; none is fine as long as another dataset has some."""
        try:
            prefix = paths.build_zone_path("gold", dataset, lake=self.run.lake)
            return scan_partitions(store, prefix, f"{dataset}_data.parquet", f"{self.type_name} (gold {dataset})")
        except NoInput:
            return {}

    def plan(self) -> list[Entity]:
        p, run = self.params, self.run
        fps = self._map_fingerprints()
        lake_store = self.store_for(run.lake)
        state_store = self.store_for(run.state_root)
        ours = StateStore(state_store, run.state_root, self.script_name)
        years = p.years or list(run.years)
        bands = p.age_bands or list(run.age_bands)
        live_by_dataset = {ds: self._gold_partitions(lake_store, ds) for ds in p.datasets}
        if not any(live_by_dataset.values()):
            where = " nor under ".join(paths.build_zone_path("gold", ds, lake=run.lake) for ds in p.datasets)
            raise NoInput(f"{self.type_name} found no gold object under {where}")
        entities: list[Entity] = []
        for dataset in p.datasets:
            maps = self._config_extra(dataset, fps)
            # The version is in here too (not only in config_fingerprint): this string is also the
            # footer provenance, and a new version of the rules must not look "already current".
            blob = canonical_json({**maps, "stage": self.type_name, "version": self.version})
            extra = "pass2:sha256:" + hashlib.sha256(blob.encode()).hexdigest()
            cleaned = self.producer(Data("gold", dataset))  # clean's state holds gold's checksums
            cleans = StateStore(state_store, run.state_root, cleaned)
            live = live_by_dataset[dataset]
            for year in years:
                for band in bands:
                    uri = paths.gold_object(run.lake, dataset, band, year)
                    info = live.get((band, year))
                    if info is None:
                        continue  # no gold partition: nothing to normalize
                    eid = entity_id(dataset, band, year)
                    state_id = paths.state_entity(run.lake, eid)
                    clean_state = cleans.read(state_id)
                    clean = next((o for o in clean_state.outputs if o.uri == uri), None) if clean_state else None
                    lineage = classify(
                        info.etag,
                        uri,
                        clean,
                        ours.read(state_id),
                        functools.partial(read_provenance, lake_store, uri),
                    )
                    payload = {
                        "uri": uri,
                        "dataset": dataset,
                        "age_band": band,
                        "event_year": year,
                        "etag": info.etag,
                        "input": lineage.fingerprint,
                        "source": lineage.source,
                        "config": extra,
                        "maps": maps,
                        "rewrites": [cleaned, eid] if lineage.record_rewrite else None,
                        "dry_run": p.dry_run,
                    }
                    if p.dry_run:
                        # Own ids and a per-run fingerprint: the real entity's state stays as it
                        # was, and a dry run always runs (and so always reports its counts).
                        entities.append(
                            Entity(
                                id=paths.safe_id(eid, DRY_RUN_SUFFIX),
                                input_fingerprint=f"{lineage.fingerprint};dry_run={run.run_id}",
                                payload=payload,
                                size_bytes=info.size,
                                config_extra=extra,
                            )
                        )
                    else:
                        entities.append(
                            Entity(
                                id=eid,
                                input_fingerprint=lineage.fingerprint,
                                payload=payload,
                                size_bytes=info.size,
                                config_extra=extra,
                            )
                        )
        return entities

    # --- worker -------------------------------------------------------------------------------
    def _maps(self, planned: dict[str, str | None]) -> tuple[CodeMap | None, CodeMap | None, DrugMap | None]:
        """Load the maps this dataset uses and check they are the ones that were planned."""
        p, cfg = self.params, self.run.store_config
        target = procedure = drug = None
        if "targetMap" in planned and p.target_map:
            target = load_code_map_uri(p.target_map, "icd", cfg)
        if "procedureMap" in planned and p.procedure_map:
            procedure = load_code_map_uri(p.procedure_map, "procedure", cfg)
        if "drugMap" in planned and p.drug_map:
            drug = load_drug_map_uri(p.drug_map, cfg)
        for key, loaded in (("targetMap", target), ("procedureMap", procedure), ("drugMap", drug)):
            if key in planned and (loaded.fingerprint if loaded is not None else None) != planned[key]:
                raise DataError(f"{key} changed after the run was planned; run again to use the new version")
        return target, procedure, drug

    def _chunk_rows(self, pf: Any) -> int:
        if self.params.chunk_rows:
            return self.params.chunk_rows
        meta = pf.metadata
        if meta.num_row_groups == 0 or meta.num_rows == 0:
            return _MIN_CHUNK
        # Probe the Arrow size of a few rows: Parquet sizes understate dictionary-encoded strings.
        probe = next(pf.iter_batches(batch_size=_MIN_CHUNK, row_groups=[0]), None)
        per_row = max(1, probe.nbytes // max(1, probe.num_rows)) if probe is not None else 1
        rows = self.run.memory_budget_mb * MB // (_MEMORY_FACTOR * per_row)
        return int(min(max(rows, _MIN_CHUNK), _MAX_CHUNK))

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        pl = entity.payload
        uri, dataset, dry = pl["uri"], pl["dataset"], bool(pl["dry_run"])
        store = ctx.store()
        provenance = {"input": pl["input"], "config": pl["config"]}
        with store.open_input(uri) as f:
            pf = pq.ParquetFile(f, buffer_size=_READ_BUFFER)
            meta = pf.metadata
            rows = int(meta.num_rows)
            schema = pf.schema_arrow
            self._schemas[uri] = schema
            result = EntityResult(rows_in=rows, rows_out=rows)
            if _parse_provenance(meta.metadata or {}) == provenance:
                # Already the result of pass 2 with these maps on this input: never apply it twice.
                result.stats = _zero_stats(dataset) | {"partitions.already_current": 1}
                if dry:
                    return result
                if pl["source"] == "provenance":
                    # Killed between replacement and state: re-publish the same bytes so the core
                    # records the rewrite on clean's state.
                    result.outputs.append(self._copy(ctx, store, uri, rows, pl))
                else:
                    result.unchanged.append(uri)
                self._check_unmoved(store, uri, pl["etag"])
                return result
            target, procedure, drug = self._maps(pl["maps"])
            stats = self._rewrite(
                ctx, pf, schema, dataset, maps=(target, procedure, drug), provenance=provenance, dry=dry, uri=uri
            )
        changed = any(v for k, v in stats.items() if k.startswith("changed."))
        result.stats = dict(stats)
        if dry:
            result.stats["partitions.would_rewrite" if changed else "partitions.unchanged"] = 1
            return result
        if changed or pl["source"] == "provenance":
            result.stats["partitions.rewritten"] = 1
            result.outputs.append(Output(uri, rows, rewrites=_rewrites(pl)))
        else:
            result.stats["partitions.unchanged"] = 1
            store.delete(ctx.staging_uri(uri))  # nothing changed: the staged copy is not needed
            result.unchanged.append(uri)
        self._check_unmoved(store, uri, pl["etag"])
        return result

    def _rewrite(
        self,
        ctx: WorkContext,
        pf: Any,
        schema: pa.Schema,
        dataset: str,
        *,
        maps: tuple[CodeMap | None, CodeMap | None, DrugMap | None],
        provenance: dict[str, Any],
        dry: bool,
        uri: str,
    ) -> dict[str, int]:
        """Stream the object through the rules, writing the result to staging unless ``dry``."""
        target, procedure, drug = maps
        stats = _zero_stats(dataset) if dataset == "medical" or drug is not None else {}
        chunk = self._chunk_rows(pf)
        out: Any = None
        writer: pq.ParquetWriter | None = None
        if not dry:
            metadata = {**(schema.metadata or {}), PROVENANCE_KEY: canonical_json(provenance).encode()}
            out = ctx.open_output(ctx.staging_uri(uri))
            writer = pq.ParquetWriter(out, schema.with_metadata(metadata), **row_parquet_options(schema))
        try:
            for i in range(pf.metadata.num_row_groups):
                for batch in pf.iter_batches(batch_size=chunk, row_groups=[i]):
                    new, part = update_codes_table(batch, dataset, target, procedure, drug)  # type: ignore[arg-type]
                    part.pop("rows_in", None)
                    part.pop("rows_out", None)
                    add_stats(stats, part)
                    if writer is not None and new.num_rows:
                        writer.write_batch(new, row_group_size=new.num_rows)
                    ctx.heartbeat()
        finally:
            if writer is not None:
                writer.close()
                out.close()
        return stats

    def _copy(self, ctx: WorkContext, store: ObjectStore, uri: str, rows: int, pl: dict[str, Any]) -> Output:
        with store.open_input(uri) as src, ctx.open_output(ctx.staging_uri(uri)) as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
        return Output(uri, rows, rewrites=_rewrites(pl))

    @staticmethod
    def _check_unmoved(store: ObjectStore, uri: str, etag: str) -> None:
        """Refuse to promote over an object someone replaced since it was planned (e.g. a clean run)."""
        info = store.head(uri)
        if info is None or info.etag != etag:
            raise ConflictError(f"{uri} was replaced or removed while pass 2 ran; run again")

    def output_schema(self, output: Output) -> pa.Schema | None:
        # The rewritten object has exactly the columns, order and types it had (metadata aside).
        return self._schemas.get(output.uri)


def _rewrites(pl: dict[str, Any]) -> tuple[str, str] | None:
    r = pl.get("rewrites")
    return (str(r[0]), str(r[1])) if r else None


def _zero_stats(dataset: str) -> dict[str, int]:
    """Every counter of a dataset at zero, so summaries have a stable shape."""
    if dataset == "medical":
        out = {}
        for c in ICD_DIAGNOSIS_COLUMNS:
            out[f"changed.{c}"] = 0
            out[f"unrecognized.{c}"] = 0
        out.update({f"changed.{c}": 0 for c in PROCEDURE_COLUMNS})
        return out
    return {"changed.standardized_drug_name": 0}
