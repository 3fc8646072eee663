"""The ``impute`` stage (glimp): bronze → silver by global demographic imputation.

Out of core, in three fan-outs over the executor (step 8):

1. **shuffle** (prepare): every bronze object is read in row-group ranges sized to the budget; each
   range's rows are ordered by ``bucket_of(mi_person_key)`` and written to one scratch file with one
   record batch per bucket, so a member's rows from every object and both data types can be gathered.
2. **buckets** (prepare): bucket ``k`` reads its batches from every shuffle file and runs
   :func:`pgx_impute.rules.impute_bucket` — all rows of its members are present — writing sorted
   fragments per output object (silver partition, quarantine, profiles of a year) to scratch.
3. **assembly** (the entities): each output object is a streaming k-way merge of its fragments
   (:mod:`pgx_impute.merge`), staged and promoted by the core like any other output.

The bucket count is sized from the bronze row groups' uncompressed bytes so that one bucket fits
``memoryBudgetMb``; the output bytes do not depend on it (fixed row groups, total sort orders).
Scratch lives under the run's staging prefix and is removed with it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pgx_apcd.layout import AGE_BANDS, DATA_TYPES

from pgx_core import failpoints, paths
from pgx_core.errors import ConservationError, NoInput
from pgx_core.log import get_logger
from pgx_core.parquet import MB, ROW_GROUP_ROWS, FixedRowGroupWriter
from pgx_core.stage import Entity, EntityResult, Output, RunInfo, Stage, WorkContext
from pgx_core.storage import ObjectStore, StoreConfig, open_store
from pgx_impute import rules
from pgx_impute.merge import merge_sorted
from pgx_impute.params import ImputeParams

log = get_logger(__name__)
QUARANTINE = "quarantine"
DEMOGRAPHICS = "demographics"
SILVER_SORT = rules.SORT_KEYS
PROFILE_SORT = ("mi_person_key", "data_type")
# Scratch (shuffle files, fragments) is Arrow IPC with LZ4-compressed buffers: written once and read
# once by pgx itself, it needs no encoding. Measured on 1 M rows, Parquet scratch cost 13 s of a
# 45 s single-process impute (3.7 s shuffle writes, 6.7 s fragment writes, 2.6 s fragment reads).
SCRATCH_IPC = pa.ipc.IpcWriteOptions(compression="lz4")
# Assembly merges one fragment per bucket and holds one batch of each, plus the round being
# sorted: ~MERGE_FACTOR x buckets x batch bytes. Fragments are written in batches sized so that this
# fits the budget whatever the bucket count (which grows with the input). The floor of
# MIN_MERGE_BATCH_ROWS makes that hold up to budget / (3 x 64 x row bytes) buckets: ~1,000 at
# 256 MB and ~16,000 at 4 GB for 1.4 KB silver rows; past that a two-level merge would be needed.
MERGE_FACTOR = 3
MAX_MERGE_BATCH_ROWS = ROW_GROUP_ROWS // 8
MIN_MERGE_BATCH_ROWS = 64


def merge_batch_rows(memory_budget_mb: int, n_buckets: int, row_bytes: float) -> int:
    """Rows per fragment batch so that merging ``n_buckets`` fragments fits ``memory_budget_mb``."""
    fit = int(memory_budget_mb * MB / (MERGE_FACTOR * max(n_buckets, 1) * max(row_bytes, 1.0)))
    return max(MIN_MERGE_BATCH_ROWS, min(MAX_MERGE_BATCH_ROWS, fit))


# --- work items (module-level functions: they run on executor workers) ---------------------------


@dataclass(frozen=True)
class ShuffleItem:
    run: RunInfo
    data_type: str
    uri: str
    row_groups: tuple[int, ...]
    n_buckets: int
    out_uri: str


@dataclass(frozen=True)
class BucketItem:
    run: RunInfo
    bucket: int
    n_buckets: int
    sources: tuple[tuple[str, str, int], ...]  # (data_type, shuffle file uri, record batch)
    years: tuple[int, ...]
    lookahead_years: int
    scratch: str


def _store(config: StoreConfig, uri: str) -> ObjectStore:
    return open_store(uri, config)


def shuffle(item: ShuffleItem) -> dict[str, Any]:
    """Order one range of a bronze object by bucket; one record batch per bucket. Returns the index."""
    failpoints.hit("impute_shuffle")
    store = _store(item.run.store_config, item.uri)
    with store.open_input(item.uri) as f:
        table = pq.ParquetFile(f).read_row_groups(list(item.row_groups))
    buckets = rules.bucket_of(table["mi_person_key"], item.n_buckets)
    order = pc.sort_indices(
        pa.table({"b": buckets, "i": pa.array(range(table.num_rows), pa.int64())}),
        sort_keys=[("b", "ascending"), ("i", "ascending")],
    )
    table = table.take(order).combine_chunks()
    buckets = buckets.take(order)
    index: list[tuple[int, int]] = []  # (bucket, record batch of the shuffle file)
    with store.open_output(item.out_uri) as sink, pa.ipc.new_file(sink, table.schema, options=SCRATCH_IPC) as writer:
        offset = 0
        for entry in sorted(pc.value_counts(buckets).to_pylist(), key=lambda e: e["values"]):
            n = int(entry["counts"])
            writer.write_batch(table.slice(offset, n).to_batches()[0])  # one chunk: one batch
            index.append((int(entry["values"]), len(index)))
            offset += n
    return {"uri": item.out_uri, "data_type": item.data_type, "rows": table.num_rows, "index": index}


def impute_one_bucket(item: BucketItem) -> dict[str, Any]:
    """Run the rules on all rows of one bucket's members; write sorted fragments per output object."""
    store = _store(item.run.store_config, item.scratch)
    by_type: dict[str, list[pa.Table]] = {dt: [] for dt in DATA_TYPES}
    for data_type, uri, batch in item.sources:
        with store.open_input(uri) as f:
            by_type[data_type].append(pa.Table.from_batches([pa.ipc.open_file(f).get_batch(batch)]))
    bronze = {dt: pa.concat_tables(ts) if ts else rules.bronze_schema(dt).empty_table() for dt, ts in by_type.items()}
    del by_type
    res = rules.impute_bucket(bronze, item.years, item.lookahead_years)
    del bronze
    fragments: dict[str, tuple[str, int]] = {}

    def put(key: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        uri = paths.join(item.scratch, "frag", key, f"b{item.bucket:06d}.arrow")
        with store.open_output(uri) as sink, pa.ipc.new_file(sink, table.schema, options=SCRATCH_IPC) as writer:
            rows = merge_batch_rows(item.run.memory_budget_mb, item.n_buckets, table.nbytes / table.num_rows)
            writer.write_table(table, max_chunksize=rows)
        fragments[key] = (uri, table.num_rows)

    for dt in DATA_TYPES:
        for band, year, rows in rules.silver_partitions(res.silver[dt]):
            put(_partition_key(dt, band, year), rows)
        put(f"{dt}__{QUARANTINE}", res.quarantine[dt])
    for year in item.years:
        profiles = res.profiles.filter(pc.equal(res.profiles["event_year"], year)).drop_columns(["event_year"])
        put(f"{DEMOGRAPHICS}__event_year={year}", profiles)
    return {
        "bucket": item.bucket,
        "fragments": fragments,
        "rows_in": res.rows_in,
        "silver": {dt: res.rows_out(dt) for dt in DATA_TYPES},
        "quarantined": {dt: res.rows_quarantined(dt) for dt in DATA_TYPES},
        "out_of_scope": res.out_of_scope,
        "stats": res.stats,
    }


def _partition_key(data_type: str, band: str, year: int) -> str:
    return paths.safe_id(data_type, f"age_band={band}", f"event_year={year}")


# --- the stage -----------------------------------------------------------------------------------


class ImputeStage(Stage[ImputeParams]):
    type_name = "impute"
    tx = "glimp"
    script_name = "global_imputation"
    version = "1"
    plugin_name = "pgx-impute"
    Params = ImputeParams
    input_known_after_prepare = True  # which partitions get rows is known after the shuffle
    _with_rows: frozenset[str] = frozenset()

    # -- inputs ------------------------------------------------------------------------------
    def _input_pattern(self, data_type: str) -> str:
        given = self.params.pharmacy_input if data_type == "pharmacy" else self.params.medical_input
        return given or paths.join(self.run.lake, "bronze", data_type) + "/"

    def bronze_objects(self) -> list[tuple[str, str, int, str]]:
        """``(data_type, uri, size, etag)`` of every bronze object (ingest and reprocess outputs)."""
        out = []
        for dt in DATA_TYPES:
            pattern = self._input_pattern(dt)
            prefix, glob = paths.split_glob(pattern)
            for info in self.store_for(prefix).list(prefix):
                if not info.uri.endswith(".parquet") or "/_rejects/" in info.uri:
                    continue
                if glob is not None and not fnmatch.fnmatchcase(info.uri, glob):
                    continue
                out.append((dt, info.uri, info.size, info.etag))
        return out

    def plan(self) -> list[Entity]:
        objects = self.bronze_objects()
        # Global imputation over nothing would plan every partition empty, and so delete silver.
        missing = [self._input_pattern(dt) for dt in DATA_TYPES if not any(o[0] == dt for o in objects)]
        if missing:
            raise NoInput(f"impute found no bronze Parquet object under {' nor under '.join(missing)}")
        digest = hashlib.sha256()
        for dt, uri, size, etag in objects:
            digest.update(f"{dt}|{uri}|{size}|{etag}\n".encode())
        # Global imputation: every bronze row may change any output, so all entities share one
        # input fingerprint over all bronze objects (and the run's years, which decide scope).
        digest.update(f"years={','.join(map(str, self.run.years))}".encode())
        fp = "sha256:" + digest.hexdigest()
        # Silver first: a smoke run (--limit N) writes silver partitions before anything else.
        entities = []
        for dt in DATA_TYPES:
            for year in self.run.years:
                for band in AGE_BANDS:
                    entities.append(
                        Entity(
                            id=_partition_key(dt, band, year),
                            input_fingerprint=fp,
                            payload={"kind": "silver", "data_type": dt, "band": band, "year": year},
                        )
                    )
        for year in self.run.years:
            entities.append(
                Entity(
                    id=f"{DEMOGRAPHICS}__event_year={year}",
                    input_fingerprint=fp,
                    payload={"kind": DEMOGRAPHICS, "year": year},
                )
            )
        entities.extend(
            Entity(id=f"{dt}__{QUARANTINE}", input_fingerprint=fp, payload={"kind": QUARANTINE, "data_type": dt})
            for dt in DATA_TYPES
        )
        return entities

    def _scratch(self) -> str:
        return paths.join(paths.staging_root(self.run.lake, self.run.run_id), "_scratch", "impute")

    def _manifest_uri(self) -> str:
        return paths.join(self._scratch(), "manifest.json")

    # -- prepare: shuffle and buckets --------------------------------------------------------
    def prepare(self, entities: list[Entity], fan_out: Callable[..., Iterator[Any]]) -> None:
        objects = self.bronze_objects()
        budget = self.run.memory_budget_mb * MB
        ranges: list[tuple[str, str, list[int]]] = []
        total_bytes = 0
        total_rows = dict.fromkeys(DATA_TYPES, 0)
        for dt, uri, _size, _etag in objects:
            with self.store_for(uri).open_input(uri) as f:
                pf = pq.ParquetFile(f)
                meta = pf.metadata
                # Parquet sizes say little about memory (dictionary-encoded sizes were 8-14x below
                # Arrow's on sample data): measure Arrow bytes per row on the first row group.
                row_bytes = pf.read_row_group(0).nbytes / max(meta.row_group(0).num_rows, 1) if meta.num_rows else 0
            total_rows[dt] += meta.num_rows
            # Shuffle ranges of ~1/4 of the budget: the range, its bucket-ordered copy and the writer.
            current: list[int] = []
            acc = 0
            for i in range(meta.num_row_groups):
                size = int(meta.row_group(i).num_rows * row_bytes)
                total_bytes += size
                if current and acc + size > budget // 4:
                    ranges.append((dt, uri, current))
                    current, acc = [], 0
                current.append(i)
                acc += size
            if current:
                ranges.append((dt, uri, current))
        if not any(total_rows.values()):
            where = " and ".join(self._input_pattern(dt) for dt in DATA_TYPES)
            raise NoInput(f"impute's bronze input holds no rows ({where})")
        n_buckets = self.params.buckets or rules.estimate_bucket_count(total_bytes, self.run.memory_budget_mb)
        scratch = self._scratch()
        items = [
            ShuffleItem(self.run, dt, uri, tuple(rgs), n_buckets, paths.join(scratch, "shuffle", f"s{i:06d}.arrow"))
            for i, (dt, uri, rgs) in enumerate(ranges)
        ]
        per_bucket: dict[int, list[tuple[str, str, int]]] = {b: [] for b in range(n_buckets)}
        shuffled = dict.fromkeys(DATA_TYPES, 0)
        started = time.monotonic()
        for done in fan_out(shuffle, items):
            shuffled[done["data_type"]] += done["rows"]
            for bucket, batch in done["index"]:
                per_bucket[bucket].append((done["data_type"], done["uri"], batch))
        if shuffled != total_rows:  # never trust a count we did not make ourselves
            raise ConservationError(f"impute shuffle moved {shuffled} rows, bronze holds {total_rows}")
        log.info("impute shuffle done", extra={"event": "impute_shuffled", "rows": sum(shuffled.values()),
                                               "ranges": len(items), "buckets": n_buckets,
                                               "duration_sec": round(time.monotonic() - started, 3)})
        started = time.monotonic()
        bucket_items = [
            BucketItem(
                self.run, b, n_buckets, tuple(sorted(srcs)), self.run.years, self.params.lookahead_years, scratch
            )
            for b, srcs in sorted(per_bucket.items())
            if srcs
        ]
        fragments: dict[str, list[tuple[str, int]]] = {}
        totals: dict[str, dict[str, int]] = {dt: {} for dt in DATA_TYPES}
        counts = {k: dict.fromkeys(DATA_TYPES, 0) for k in ("rows_in", "silver", "quarantined", "out_of_scope")}
        for res in fan_out(impute_one_bucket, bucket_items):
            for key, (uri, rows) in res["fragments"].items():
                fragments.setdefault(key, []).append((uri, rows))
            for dt in DATA_TYPES:
                for k, per_type in counts.items():
                    per_type[dt] += res[k][dt]
                for name, n in res["stats"][dt].items():
                    totals[dt][name] = totals[dt].get(name, 0) + n
        for dt in DATA_TYPES:
            accounted = counts["silver"][dt] + counts["quarantined"][dt] + counts["out_of_scope"][dt]
            if counts["rows_in"][dt] != total_rows[dt] or accounted != total_rows[dt]:
                raise ConservationError(
                    f"impute {dt}: bronze rows {total_rows[dt]} != silver {counts['silver'][dt]} + quarantined "
                    f"{counts['quarantined'][dt]} + out of scope {counts['out_of_scope'][dt]}"
                )
        log.info("impute buckets done", extra={"event": "impute_bucketed", "buckets": len(bucket_items),
                                               "fragments": sum(len(v) for v in fragments.values()),
                                               "duration_sec": round(time.monotonic() - started, 3)})
        manifest = {
            "buckets": n_buckets,
            "fragments": {k: sorted(v) for k, v in sorted(fragments.items())},
            "counts": counts,
            "stats": totals,
        }
        self.store_for(scratch).write_bytes(self._manifest_uri(), json.dumps(manifest).encode())
        self._with_rows = frozenset(fragments)

    def has_input(self, entity: Entity) -> bool:
        """Whether the shuffle gave ``entity`` rows (its output will hold some)."""
        return entity.id in self._with_rows

    # -- assembly: one output object per entity ----------------------------------------------
    def _final(self, payload: dict[str, Any]) -> str:
        kind = payload["kind"]
        if kind == "silver":
            return paths.silver_object(self.run.lake, payload["data_type"], payload["band"], payload["year"])
        if kind == QUARANTINE:
            return paths.silver_quarantine_object(self.run.lake, payload["data_type"])
        return paths.demographics_object(self.run.lake, payload["year"])

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        store = ctx.store()
        manifest_uri = self._manifest_uri()
        info = store.head(manifest_uri)  # a missing manifest fails in the read, as any missing object
        manifest = _read_manifest(self.run.store_config, manifest_uri, info.etag if info else "")
        payload = entity.payload
        final = self._final(payload)
        frags = [(uri, rows) for uri, rows in manifest["fragments"].get(entity.id, [])]
        rows = sum(r for _, r in frags)
        result = EntityResult()
        if payload["kind"] == QUARANTINE:
            dt = payload["data_type"]
            counts = manifest["counts"]
            stats = dict(manifest["stats"][dt])
            stats[f"rows.{dt}.bronze"] = counts["rows_in"][dt]
            stats[f"rows.{dt}.silver"] = counts["silver"][dt]
            # This entity carries its data type's rows that do not reach silver, so that the
            # summary's totals add up: bronze rows = silver + quarantined + out of scope.
            result = EntityResult(
                rows_in=counts["quarantined"][dt] + counts["out_of_scope"][dt],
                rows_out=0,
                rows_quarantined=counts["quarantined"][dt],
                rows_out_of_scope=counts["out_of_scope"][dt],
                stats=stats,
            )
        elif payload["kind"] == "silver":
            result = EntityResult(rows_in=rows, rows_out=rows)
        else:
            result = EntityResult(stats={"profiles": rows})
        if not frags:
            if store.exists(final):
                result.deletes.append(final)  # no rows any more: the old object must not stay live
            return result
        sort = PROFILE_SORT if payload["kind"] == DEMOGRAPHICS else SILVER_SORT
        schema = self.output_schema(Output(final, rows, kind=payload["kind"]))
        staged = ctx.staging_uri(final)
        with ctx.open_output(staged) as sink:
            writer = FixedRowGroupWriter(sink, schema)

            def emit(table: pa.Table) -> None:
                writer.write(table.cast(schema))
                ctx.heartbeat()

            merge_sorted([partial(_batches, store, uri) for uri, _ in frags], sort, emit)
            writer.close()
        if writer.rows != rows:
            raise ConservationError(f"impute assembly of {entity.id}: wrote {writer.rows} rows, fragments hold {rows}")
        result.outputs.append(Output(final, rows, kind=payload["kind"]))
        return result

    def output_schema(self, output: Output) -> pa.Schema:
        if output.kind == DEMOGRAPHICS:
            return demographics_schema()
        dt = "pharmacy" if "/pharmacy/" in output.uri else "medical"
        return quarantine_schema(dt) if output.kind == QUARANTINE else silver_schema(dt)


@lru_cache(maxsize=2)
def _read_manifest(config: StoreConfig, uri: str, etag: str) -> dict[str, Any]:
    """The bucket manifest, parsed once per worker process and version (it lists every fragment of
    every output, so re-parsing it for each of ~100 entities grows with the bucket count).
    Callers must not mutate it."""
    manifest: dict[str, Any] = json.loads(_store(config, uri).read_bytes(uri))
    return manifest


def _batches(store: ObjectStore, uri: str) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """A fragment's batches, each with whether more follow (the merge needs no look-ahead)."""
    with store.open_input(uri) as f:
        reader = pa.ipc.open_file(f)
        n = reader.num_record_batches
        for i in range(n):
            yield reader.get_batch(i), i + 1 < n


def silver_schema(data_type: str) -> pa.Schema:
    """Bronze columns, then the six ``*_imputed``, then the six ``*_source``."""
    fields = list(rules.bronze_schema(data_type))
    fields.append(pa.field("age_imputed", pa.int16()))
    fields += [pa.field(c, pa.string()) for c in rules.IMPUTED_COLUMNS[1:]]
    fields += [pa.field(c, pa.string()) for c in rules.SOURCE_COLUMNS]
    return pa.schema(fields)


def quarantine_schema(data_type: str) -> pa.Schema:
    return pa.schema([*rules.bronze_schema(data_type), pa.field("reason", pa.string())])


def demographics_schema() -> pa.Schema:
    return pa.schema(
        [
            ("mi_person_key", pa.string()),
            ("data_type", pa.string()),
            ("rows", pa.int64()),
            ("age", pa.int16()),
            ("gender", pa.string()),
            ("race", pa.string()),
            ("zip", pa.string()),
            ("county", pa.string()),
            ("payer", pa.string()),
        ]
    )
