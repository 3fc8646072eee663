"""The ``impute`` stage (glimp): bronze → silver by global demographic imputation.

Out of core, in fan-outs over the executor (step 8):

0. **sample** (prepare): the member keys of every bronze range are sampled (key column only) and
   cut into ``n`` ranges of about equal rows: the **ordered buckets** of :mod:`pgx_impute.partition`.
1. **shuffle** (prepare): every bronze object is read in row-group ranges sized to the budget; each
   range's rows are grouped by bucket and written to one scratch file with one record batch per
   bucket, so a member's rows from every object and both data types can be gathered.
2. **buckets** (prepare): bucket ``k`` reads its batches from every shuffle file and runs
   :func:`pgx_impute.rules.impute_bucket` — all rows of its members are present — writing its piece
   of every output object (silver partition, quarantine, profiles of a year), sorted, to a few
   scratch files (one per schema). Small buckets run several to a work item, the rules once on a
   run of them, and join their pieces (:func:`bucket_group_size`, :func:`run_bytes`,
   :class:`_Pieces`); each scratch level is deleted once the next has read it.
3. **assembly** (the entities): each output object is its buckets' pieces in bucket order. Buckets
   are key ranges, so the pieces follow each other in output order and are streamed one after the
   other; only rows whose raw key sorts out of bucket order (padded or empty keys), kept apart by
   every bucket, are merged in (:func:`chains`, :mod:`pgx_impute.merge`). Staged and promoted by the
   core like any other output.

The bucket count is sized from the bronze row groups' uncompressed bytes so that one bucket fits
``memoryBudgetMb``; the output bytes do not depend on it (fixed row groups, total sort orders).
Scratch lives under the run's staging prefix and is removed with it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pgx_apcd.layout import AGE_BANDS, DATA_TYPES

from pgx_core import failpoints
from pgx_core.errors import ConservationError, NoInput
from pgx_core.lake import paths
from pgx_core.lake.parquet import MB, ROW_GROUP_ROWS, FixedRowGroupWriter
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_core.log import get_logger
from pgx_core.stage import Data, Entity, EntityResult, Output, RunInfo, Stage, WorkContext
from pgx_impute import partition, rules
from pgx_impute.merge import merge_sorted, sort_key
from pgx_impute.params import ImputeParams

log = get_logger(__name__)
QUARANTINE = "quarantine"
DEMOGRAPHICS = "demographics"
SILVER_SORT = rules.SORT_KEYS
PROFILE_SORT = ("mi_person_key", "data_type")
KEY_COLUMN = "mi_person_key"
# Scratch (shuffle files, pieces) is Arrow IPC: written once and read once by pgx itself, it needs
# no encoding (measured on 1 M rows, Parquet scratch cost 13 s of a 45 s single-process impute).
# Its buffers are LZ4-compressed only on a remote store, where bytes cost network time: LZ4 costs
# ~1.5 ms to write and ~0.5 ms to read a small batch of 115 columns (0.2 and 0.03 ms plain), which
# dominated impute with hundreds of buckets on a local disk.
_SCRATCH_IPC = {True: pa.ipc.IpcWriteOptions(compression="lz4"), False: pa.ipc.IpcWriteOptions()}


def _scratch_ipc(store: ObjectStore) -> pa.ipc.IpcWriteOptions:
    return _SCRATCH_IPC[store.remote]


# Assembly holds one batch per chain of pieces plus the round being sorted: ~MERGE_FACTOR x chains x
# batch bytes. In-order pieces form one chain whatever the bucket count and get half the budget;
# out-of-order pieces (rare: padded keys) may form a chain each and share the other half.
MERGE_FACTOR = 3
MAX_MERGE_BATCH_ROWS = ROW_GROUP_ROWS // 8
MIN_MERGE_BATCH_ROWS = 64


def merge_batch_rows(memory_budget_mb: int, n_sources: int, row_bytes: float) -> int:
    """Rows per piece batch so that merging ``n_sources`` chains of them fits ``memory_budget_mb``."""
    fit = int(memory_budget_mb * MB / (MERGE_FACTOR * max(n_sources, 1) * max(row_bytes, 1.0)))
    return max(MIN_MERGE_BATCH_ROWS, min(MAX_MERGE_BATCH_ROWS, fit))


# --- work items (module-level functions: they run on executor workers) ---------------------------


@dataclass(frozen=True)
class SampleItem:
    run: RunInfo
    uri: str
    row_groups: tuple[int, ...]
    quota: int


@dataclass(frozen=True)
class ShuffleItem:
    run: RunInfo
    data_type: str
    uri: str
    row_groups: tuple[int, ...]
    cuts_uri: str  # the bucket cuts (JSON list of member keys); n buckets = len + 1
    out_uri: str
    stride: int = 1  # >1: batches of `stride` consecutive buckets (a two-level shuffle's first level)


@dataclass(frozen=True)
class GatherItem:
    """The second level of a two-level shuffle: one group of buckets from a few first-level files."""

    run: RunInfo
    data_type: str
    buckets: tuple[int, int]  # first and end (exclusive) bucket of the group
    sources: tuple[tuple[str, int], ...]  # (first-level file uri, record batch of this group)
    cuts_uri: str
    out_uri: str


BucketSources = dict[int, list[tuple[str, str, int]]]  # bucket -> [(data_type, scratch file, batch)]
Run = tuple[int, tuple[tuple[str, str, int], ...]]  # (first bucket, the (data_type, uri, batch)s of its buckets)


@dataclass(frozen=True)
class BucketItem:
    """Consecutive buckets run by one work item in runs of them (:func:`join_runs`), one run in memory."""

    run: RunInfo
    runs: tuple[Run, ...]
    n_buckets: int
    years: tuple[int, ...]
    lookahead_years: int
    scratch: str


def _store(config: StoreConfig, uri: str) -> ObjectStore:
    return open_store(uri, config)


def sample_keys(item: SampleItem) -> tuple[list[str], int]:
    """Evenly spaced member keys of one bronze range (its key column only), and its row count."""
    store = _store(item.run.store_config, item.uri)
    with store.open_input(item.uri) as f:
        keys = pq.ParquetFile(f).read_row_groups(list(item.row_groups), columns=[KEY_COLUMN])[KEY_COLUMN]
    return partition.sample(partition.member_keys(keys), item.quota), len(keys)


@lru_cache(maxsize=4)
def _cuts(config: StoreConfig, uri: str) -> tuple[str, ...]:
    """The bucket cuts, read once per worker process."""
    return tuple(json.loads(_store(config, uri).read_bytes(uri)))


def shuffle(item: ShuffleItem) -> dict[str, Any]:
    """Group one range of a bronze object by bucket; one record batch per bucket. Returns the index."""
    failpoints.hit("impute_shuffle")
    store = _store(item.run.store_config, item.uri)
    with store.open_input(item.uri) as f:
        table = pq.ParquetFile(f).read_row_groups(list(item.row_groups))
    cuts = _cuts(item.run.store_config, item.cuts_uri)[item.stride - 1 :: item.stride]
    table, bounds = _group_by_bucket(table, cuts)
    parts = {b: table.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(len(bounds) - 1)}
    index = _write_batches(store, item.out_uri, table.schema, parts)
    return {"uri": item.out_uri, "data_type": item.data_type, "rows": table.num_rows, "index": index}


def gather(item: GatherItem) -> dict[str, Any]:
    """Split one group's batches from a few first-level files into one batch per bucket of the
    group: all of them grouped at once, so each bucket is one slice (splitting each
    batch and concatenating a bucket's slices cost ~1,900 slices and 44 x 115 concatenations a
    gather at 1,912 buckets). Returns the index, as :func:`shuffle` does."""
    store = _store(item.run.store_config, item.out_uri)
    table = pa.concat_tables([_read_batch(store, uri, batch) for uri, batch in item.sources])
    table, bounds = _group_by_bucket(table, _cuts(item.run.store_config, item.cuts_uri))
    parts = {b: table.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(*item.buckets)}
    index = _write_batches(store, item.out_uri, table.schema, parts)
    return {"uri": item.out_uri, "data_type": item.data_type, "rows": table.num_rows, "index": index}


def _group_by_bucket(table: pa.Table, cuts: Sequence[str]) -> tuple[pa.Table, list[int]]:
    """The rows grouped by bucket of ``cuts`` (single-chunk; a bucket's rows keep their order, so do
    a member's) and the row offsets of each bucket in them (:func:`partition.group_by_bucket`). The
    rules sort a bucket themselves: within one its rows may come in any order."""
    order, bounds = partition.group_by_bucket(partition.member_keys(table[KEY_COLUMN]), cuts)
    return (table if order is None else table.take(order)).combine_chunks(), bounds


def _read_batch(store: ObjectStore, uri: str, batch: int) -> pa.Table:
    """One record batch of a scratch file, as a table."""
    with store.open_input(uri) as f:
        return pa.Table.from_batches([pa.ipc.open_file(f).get_batch(batch)])


def _write_batches(
    store: ObjectStore, uri: str, schema: pa.Schema, parts: dict[int, pa.Table]
) -> list[tuple[int, int, int]]:
    """One scratch file with one record batch per bucket that has rows (each a single-chunk slice):
    ``(bucket, batch, Arrow bytes)``."""
    index: list[tuple[int, int, int]] = []
    options = _scratch_ipc(store)
    with store.open_output(uri, durable=False) as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for bucket, table in sorted(parts.items()):
            if table.num_rows:
                writer.write_batch(table.to_batches()[0])  # one chunk: one batch
                index.append((bucket, len(index), table.nbytes))
    return index


def impute_buckets(item: BucketItem) -> dict[str, Any]:
    """Run the rules on each bucket of the item in turn (all rows of its members); write its sorted
    piece of every output. Small pieces of consecutive buckets are joined (:class:`_Pieces`)."""
    store = _store(item.run.store_config, item.scratch)
    totals = _Totals()
    with contextlib.ExitStack() as stack:
        readers = _Readers(store)
        stack.callback(readers.close)
        pieces = _Pieces(item, store, stack)
        for bucket, sources in item.runs:
            res = _impute_run(sources, readers, item)
            pieces.bucket = bucket
            for dt in DATA_TYPES:
                body, runs = rules.silver_partition_runs(res.silver[dt])
                groups = [(_partition_key(dt, band, year), offset, n) for band, year, offset, n in runs]
                pieces.put(dt, body, groups, SILVER_SORT)
                quarantine, output = res.quarantine[dt], _quarantine_key(dt)
                pieces.put(output, quarantine, [(output, 0, quarantine.num_rows)], SILVER_SORT)
            totals.add(
                {"rows_in": res.rows_in, "silver": {dt: res.rows_out(dt) for dt in DATA_TYPES},
                 "quarantined": {dt: res.rows_quarantined(dt) for dt in DATA_TYPES}, "out_of_scope": res.out_of_scope},
                res.stats,
            )  # fmt: skip
            for year in item.years:
                profiles = res.profiles.filter(pc.equal(res.profiles["event_year"], year)).drop_columns(["event_year"])
                key = _demographics_key(year)
                pieces.put(DEMOGRAPHICS, profiles, [(key, 0, profiles.num_rows)], PROFILE_SORT)
            del res
        pieces.flush()
    return {"pieces": pieces.index, "counts": totals.counts, "stats": totals.stats}


_COUNTS = ("rows_in", "silver", "quarantined", "out_of_scope")


@dataclass
class _Totals:
    """Row counts (``rows_in``, ``silver``, ``quarantined``, ``out_of_scope``) and rule counters,
    per data type, summed over buckets."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: dict.fromkeys(DATA_TYPES, 0) for k in _COUNTS}
    )
    stats: dict[str, dict[str, int]] = field(default_factory=lambda: {dt: {} for dt in DATA_TYPES})

    def add(self, counts: dict[str, dict[str, int]], stats: dict[str, dict[str, int]]) -> None:
        for dt in DATA_TYPES:
            for k, per_type in self.counts.items():
                per_type[dt] += counts[k][dt]
            for name, n in stats[dt].items():
                self.stats[dt][name] = self.stats[dt].get(name, 0) + n


def run_bytes(memory_budget_mb: int) -> int:
    """Bronze bytes (Arrow) that one call of the rules may take: its peak, ~PEAK_FACTOR x that,
    is the budget — the size :func:`rules.estimate_bucket_count` gives a bucket."""
    return int(memory_budget_mb * MB / rules.PEAK_FACTOR["arrow"])


def join_runs(buckets: Sequence[Run], sizes: dict[int, int], limit: int) -> list[Run]:
    """Consecutive buckets joined into runs of at most ``limit`` bronze bytes (``sizes``: per
    bucket), a bucket larger than that alone. Buckets are ranges of member keys and the rules work
    per member, so the rules on a run give what they give on its buckets one by one: buckets far
    smaller than the budget (a count forced by ``with.buckets``, a scale model) cost the rules'
    fixed ~100 kernel calls and their pieces once per run, not per bucket, as Spark's adaptive
    execution coalesces small shuffle partitions. Planned from the sizes the shuffle measured, so
    an item never holds the next run while the rules work on one."""
    runs: list[Run] = []
    sources: list[tuple[str, str, int]] = []
    first, size = -1, 0
    for bucket, srcs in buckets:
        if sources and size + sizes.get(bucket, 0) > limit:
            runs.append((first, tuple(sources)))
            sources, size = [], 0
        first = bucket if not sources else first
        sources.extend(srcs)
        size += sizes.get(bucket, 0)
    if sources:
        runs.append((first, tuple(sources)))
    return runs


def _impute_run(sources: Sequence[tuple[str, str, int]], readers: _Readers, item: BucketItem) -> rules.BucketResult:
    """The rules on one run of buckets: its batches of both data types, read through the item's open files."""
    by_type: dict[str, list[pa.Table]] = {dt: [] for dt in DATA_TYPES}
    for data_type, uri, batch in sources:
        by_type[data_type].append(readers.batch(uri, batch))
    bronze = {dt: pa.concat_tables(ts) if ts else rules.bronze_schema(dt).empty_table() for dt, ts in by_type.items()}
    del by_type
    return rules.impute_bucket(bronze, item.years, item.lookahead_years)


class _Readers:
    """Open scratch files of one work item, the most recent :data:`OPEN_READERS` kept: consecutive
    buckets read their batches from the same shuffle files."""

    OPEN_READERS = 64

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.open: dict[str, tuple[BinaryIO, pa.ipc.RecordBatchFileReader]] = {}  # uri -> file, reader; oldest first

    def batch(self, uri: str, batch: int) -> pa.Table:
        if uri in self.open:
            self.open[uri] = self.open.pop(uri)  # most recent last
        else:
            if len(self.open) >= self.OPEN_READERS:
                self.open.pop(next(iter(self.open)))[0].close()
            f = self.store.open_input(uri)
            self.open[uri] = f, pa.ipc.open_file(f)
        return pa.Table.from_batches([self.open[uri][1].get_batch(batch)])

    def close(self) -> None:
        for f, _reader in self.open.values():
            f.close()
        self.open.clear()


@dataclass
class _Waiting:
    """One output's in-order pieces not yet written: slices of their buckets' tables."""

    kind: str
    bucket: int
    first: bytes = b""
    last: bytes = b""
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0

    def add(self, part: pa.Table, first: bytes, last: bytes) -> None:
        self.first = self.first if self.rows else first
        self.last = last
        self.tables.append(part)
        self.rows += part.num_rows


def _end_keys(table: pa.Table, rows: Sequence[int], sort: Sequence[str]) -> list[bytes]:
    """The sort keys of a few rows of ``table`` (a piece's first and last): computing them for every
    row only to keep two per piece cost a pass over the key columns per bucket."""
    picked = table.select(list(sort)).take(pa.array(rows, pa.int64()))
    return [bytes(k) for k in sort_key(picked, sort).to_pylist()]


class _Pieces:
    """A work item's pieces of the outputs, written as batch runs into one scratch file per schema
    (``kind``), and their index: per output, where each piece lies, its first and last sort key and
    its (first) bucket.

    Buckets are key ranges run in key order, so one output's in-order pieces of consecutive buckets
    join into one piece: a small one waits (until its output has an assembly batch of rows, or the
    waiting pieces of all outputs an eighth of the budget) and is written with the next ones. With
    thousands of small buckets that divides the pieces — batches written, index entries, reads at
    assembly — by the buckets per item; a bucket as large as the budget allows writes at once."""

    def __init__(self, item: BucketItem, store: ObjectStore, stack: contextlib.ExitStack) -> None:
        self.item, self.store, self.stack = item, store, stack
        self.bucket = item.runs[0][0]  # the (first) bucket being put
        self.writers: dict[str, tuple[str, Any]] = {}  # kind -> (uri, IPC writer)
        self.batches: dict[str, int] = {}
        self.index: dict[str, list[dict[str, Any]]] = {}
        self.waiting: dict[str, _Waiting] = {}
        self.waiting_bytes = 0
        self.max_waiting_bytes = item.run.memory_budget_mb * MB // 8

    def _writer(self, kind: str, schema: pa.Schema) -> tuple[str, Any]:
        if kind not in self.writers:
            uri = paths.join(self.item.scratch, "pieces", kind, f"b{self.item.runs[0][0]:06d}.arrow")
            sink = self.stack.enter_context(self.store.open_output(uri, durable=False))
            options = _scratch_ipc(self.store)
            self.writers[kind] = uri, self.stack.enter_context(pa.ipc.new_file(sink, schema, options=options))
            self.batches[kind] = 0
        return self.writers[kind]

    def put(self, kind: str, table: pa.Table, groups: Sequence[tuple[str, int, int]], sort: Sequence[str]) -> None:
        """Take the pieces of ``table`` (sorted; rows ``offset:offset+n`` of each group ``(output,
        offset, n)`` belong to that output). A piece costs a slice, whatever its size, and the keys
        of its two ends."""
        if table.num_rows == 0:
            return
        mask = partition.in_order(table[KEY_COLUMN])
        row_bytes = table.nbytes / table.num_rows
        waits = False
        if pc.all(mask).as_py():
            groups = [g for g in groups if g[2]]
            ends = _end_keys(table, [r for _o, offset, n in groups for r in (offset, offset + n - 1)], sort)
            for i, (output, offset, n) in enumerate(groups):
                waits |= self._join(output, kind, table.slice(offset, n), (ends[2 * i], ends[2 * i + 1]), row_bytes)
        else:
            for output, offset, n in groups:
                # Rows whose raw key sorts out of bucket order go apart, so that the rest stays a chain.
                part, part_mask = table.slice(offset, n), mask.slice(offset, n)
                for in_order, rows in ((True, part.filter(part_mask)), (False, part.filter(pc.invert(part_mask)))):
                    if not rows.num_rows:
                        continue
                    first, last = _end_keys(rows, [0, rows.num_rows - 1], sort)
                    if in_order:
                        waits |= self._join(output, kind, rows, (first, last), row_bytes)
                    else:
                        piece = _Waiting(kind, self.bucket)
                        piece.add(rows, first, last)
                        self._write(output, piece, in_order=False)
        if waits:  # a waiting slice keeps the whole table alive
            self.waiting_bytes += table.nbytes
            if self.waiting_bytes > self.max_waiting_bytes:
                self.flush()

    def _join(self, output: str, kind: str, part: pa.Table, ends: tuple[bytes, bytes], row_bytes: float) -> bool:
        """Add an in-order piece to its output's waiting one; write them if that makes a batch.
        Whether the piece waits."""
        waiting = self.waiting.pop(output, None) or _Waiting(kind, self.bucket)
        waiting.add(part, *ends)
        if waiting.rows >= self._batch_rows(row_bytes, in_order=True):
            self._write(output, waiting, in_order=True)
            return False
        self.waiting[output] = waiting
        return True

    def flush(self) -> None:
        """Write every waiting piece."""
        for output, waiting in self.waiting.items():
            self._write(output, waiting, in_order=True)
        self.waiting.clear()
        self.waiting_bytes = 0

    def _batch_rows(self, row_bytes: float, *, in_order: bool) -> int:
        # An out-of-order piece may be merged with one from every bucket: smaller batches.
        sources = 2 if in_order else 2 * self.item.n_buckets
        return merge_batch_rows(self.item.run.memory_budget_mb, sources, row_bytes)

    def _write(self, output: str, piece: _Waiting, *, in_order: bool) -> None:
        table = pa.concat_tables(piece.tables).combine_chunks() if len(piece.tables) > 1 else piece.tables[0]
        uri, writer = self._writer(piece.kind, table.schema)
        rows = self._batch_rows(table.nbytes / table.num_rows, in_order=in_order)
        first = self.batches[piece.kind]
        for batch in table.to_batches(max_chunksize=rows):
            writer.write_batch(batch)
            self.batches[piece.kind] += 1
        self.index.setdefault(output, []).append(
            {"uri": uri, "batch": first, "batches": self.batches[piece.kind] - first, "rows": table.num_rows,
             "first": piece.first.decode(), "last": piece.last.decode(), "bucket": piece.bucket}
        )  # fmt: skip


def chains(pieces: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The pieces of one output grouped into chains: in each chain every piece's keys all come after
    the previous piece's, so a chain reads in output order one piece after the other. Pieces taken
    by first key, each into the first chain it extends (fewest chains for intervals: ordered buckets
    give one chain, plus one per overlapping out-of-order piece)."""
    out: list[list[dict[str, Any]]] = []
    for piece in sorted(pieces, key=lambda p: (p["first"], p["bucket"])):
        for chain in out:
            if chain[-1]["last"] < piece["first"]:
                chain.append(piece)
                break
        else:
            out.append([piece])
    return out


# What a scratch read costs beyond its bytes (a request: open, footer, first byte, one more table to
# concatenate) and what the second level's pass costs per byte (read, split, write), on a local disk
# and on an object store over the network. Local: measured here on 1 M rows (19,200 reads of 300
# buckets x 64 ranges cost ~22 s; the gather pass over 4 GB of Arrow 19 s). S3: its usual first-
# byte latency and a per-connection throughput of ~100 MB/s each way.
_READ_COST_SEC = {False: 0.001, True: 0.02}
_BYTE_COST_SEC = {False: 1 / 200e6, True: 2 / 100e6}


def shuffle_stride(ranges: int, n_buckets: int, arrow_bytes: int = 0, *, remote: bool = True) -> int:
    """Buckets per first-level batch: 1 (one level) unless a second level saves more in reads than
    its extra pass over the data costs. With a stride of ``s`` ≈ √buckets the reads are ranges x
    groups (gather) plus buckets x ranges / s x 2 data types (buckets), instead of ranges x
    buckets; the extra pass writes and reads all ``arrow_bytes`` once more."""
    stride = math.isqrt(max(n_buckets - 1, 0)) + 1
    if stride == 1:
        return 1
    groups = -(-n_buckets // stride)
    saved = ranges * n_buckets - (ranges * groups + n_buckets * -(-ranges // stride) * 2)
    worth = saved * _READ_COST_SEC[remote] > arrow_bytes * _BYTE_COST_SEC[remote]
    return stride if saved > 0 and worth else 1


# Buckets one work item runs: enough that an item carries ~ITEM_BYTES of bronze (a bucket as large
# as a 2 GB budget allows is an item of its own; thousands of small ones share), yet at least
# MIN_ITEMS items for the workers to share.
ITEM_BYTES = 256 * MB
MIN_ITEMS = 32


def bucket_group_size(n_buckets: int, arrow_bytes: int) -> int:
    """Consecutive buckets per work item."""
    per_bucket = max(arrow_bytes / max(n_buckets, 1), 1.0)
    return max(1, min(math.ceil(ITEM_BYTES / per_bucket), n_buckets // MIN_ITEMS))


def _partition_key(data_type: str, band: str, year: int) -> str:
    return paths.partition_entity(data_type, band, year)


def _quarantine_key(data_type: str) -> str:
    return paths.safe_id(data_type, QUARANTINE)


def _demographics_key(year: int) -> str:
    return paths.safe_id(DEMOGRAPHICS, f"event_year={year}")


# --- the stage -----------------------------------------------------------------------------------


class ImputeStage(Stage[ImputeParams]):
    type_name = "impute"
    tx = "glimp"
    script_name = "global_imputation"
    consumes = tuple(Data("bronze", dt) for dt in DATA_TYPES)
    produces = (*(Data("silver", dt) for dt in DATA_TYPES), Data("silver", DEMOGRAPHICS))
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
                    id=_demographics_key(year),
                    input_fingerprint=fp,
                    payload={"kind": DEMOGRAPHICS, "year": year},
                )
            )
        entities.extend(
            Entity(id=_quarantine_key(dt), input_fingerprint=fp, payload={"kind": QUARANTINE, "data_type": dt})
            for dt in DATA_TYPES
        )
        return entities

    def _scratch(self) -> str:
        return paths.join(paths.staging_root(self.run.lake, self.run.run_id), "_scratch", "impute")

    def _drop_scratch(self, *levels: str) -> None:
        """Delete scratch levels no later phase reads: the shuffle's copies of bronze would otherwise
        stay (each level is a copy of all bronze, in Arrow) until the run's staging is removed."""
        for level in levels:
            prefix = paths.join(self._scratch(), level) + "/"
            self.store_for(prefix).delete_prefix(prefix)

    def _manifest_uri(self, name: str) -> str:
        return paths.join(self._scratch(), "manifest", f"{name}.json")

    # -- prepare: sample, shuffle and buckets --------------------------------------------------
    def prepare(self, entities: list[Entity], fan_out: Callable[..., Iterator[Any]]) -> None:
        bronze = self._ranges(self.bronze_objects())
        if not any(bronze.rows.values()):
            where = " and ".join(self._input_pattern(dt) for dt in DATA_TYPES)
            raise NoInput(f"impute's bronze input holds no rows ({where})")
        n_buckets = self.params.buckets or rules.estimate_bucket_count(bronze.arrow_bytes, self.run.memory_budget_mb)
        scratch = self._scratch()
        cuts_uri = paths.join(scratch, "cuts.json")
        cuts = self._sample_cuts(bronze, n_buckets, fan_out)
        self.store_for(scratch).write_bytes(cuts_uri, json.dumps(cuts).encode())
        per_bucket, sizes = self._shuffle(bronze, cuts_uri, n_buckets, fan_out)
        pieces, totals = self._impute_buckets(per_bucket, sizes, n_buckets, bronze.arrow_bytes, fan_out)
        self._drop_scratch("shuffle", "gather")  # every bucket has read them: assembly reads the pieces
        for dt in DATA_TYPES:
            counts = totals["counts"]
            accounted = counts["silver"][dt] + counts["quarantined"][dt] + counts["out_of_scope"][dt]
            if counts["rows_in"][dt] != bronze.rows[dt] or accounted != bronze.rows[dt]:
                raise ConservationError(
                    f"impute {dt}: bronze rows {bronze.rows[dt]} != silver {counts['silver'][dt]} + quarantined "
                    f"{counts['quarantined'][dt]} + out of scope {counts['out_of_scope'][dt]}"
                )
        store = self.store_for(scratch)
        store.write_bytes(self._manifest_uri("_totals"), json.dumps({"buckets": n_buckets, **totals}).encode())
        for entity in entities:  # one small index per output: an entity reads only its own
            index = sorted(pieces.get(entity.id, []), key=lambda p: (p["bucket"], p["first"]))
            store.write_bytes(self._manifest_uri(entity.id), json.dumps(index).encode())
        self._with_rows = frozenset(pieces)

    def _ranges(self, objects: list[tuple[str, str, int, str]]) -> _Bronze:
        """Row-group ranges of every bronze object: shuffle ranges of ~1/4 of the budget in Arrow
        bytes (the range, its ordered copy and the writer), sample ranges of ~1/8 of it in key bytes."""
        budget = self.run.memory_budget_mb * MB
        bronze = _Bronze()
        for dt, uri, _size, _etag in objects:
            with self.store_for(uri).open_input(uri) as f:
                pf = pq.ParquetFile(f)
                meta = pf.metadata
                # Parquet sizes say little about memory (dictionary-encoded sizes were 8-14x below
                # Arrow's on sample data): measure Arrow bytes per row on the first row group.
                first = pf.read_row_group(0) if meta.num_rows else None
            bronze.rows[dt] += meta.num_rows
            if first is None:
                continue
            row_bytes = first.nbytes / max(first.num_rows, 1)
            key_bytes = first[KEY_COLUMN].nbytes / max(first.num_rows, 1) * 4  # sorting and sampling
            shuffle, sample = _Packer(budget // 4), _Packer(budget // 8)
            for i in range(meta.num_row_groups):
                n = meta.row_group(i).num_rows
                bronze.arrow_bytes += int(n * row_bytes)
                for packer, size in ((shuffle, n * row_bytes), (sample, n * key_bytes)):
                    packer.add(i, n, size)
            bronze.shuffle += [(dt, uri, rgs, n) for rgs, n in shuffle.done()]
            bronze.sample += [(dt, uri, rgs, n) for rgs, n in sample.done()]
        return bronze

    def _sample_cuts(self, bronze: _Bronze, n_buckets: int, fan_out: Callable[..., Iterator[Any]]) -> list[str]:
        if n_buckets <= 1:
            return []
        total = sum(bronze.rows.values())
        items = [
            SampleItem(self.run, uri, tuple(rgs), partition.quota(rows, total, n_buckets))
            for _dt, uri, rgs, rows in bronze.sample
        ]
        started = time.monotonic()
        samples = list(fan_out(sample_keys, items))
        cuts = partition.split_points(samples, n_buckets)
        log.info(
            "impute sample done",
            extra={
                "event": "impute_sampled",
                "ranges": len(items),
                "buckets": n_buckets,
                "keys": sum(len(k) for k, _ in samples),
                "duration_sec": round(time.monotonic() - started, 3),
            },
        )
        return cuts

    def _shuffle(
        self, bronze: _Bronze, cuts_uri: str, n_buckets: int, fan_out: Callable[..., Iterator[Any]]
    ) -> tuple[BucketSources, dict[int, int]]:
        """Bucket ``b``'s batches, ``(data_type, scratch file, batch)``, and its Arrow bytes. One
        level: every range writes a batch per bucket, which each bucket then reads from every range
        (ranges x buckets reads). Two levels when that is many: ranges write a batch per group of
        ``stride`` buckets, gather items regroup those per bucket, and a bucket reads only its
        group's files."""
        scratch = self._scratch()
        remote = self.store_for(scratch).remote
        stride = shuffle_stride(len(bronze.shuffle), n_buckets, bronze.arrow_bytes, remote=remote)
        items = [
            ShuffleItem(self.run, dt, uri, tuple(rgs), cuts_uri, paths.join(scratch, "shuffle", f"s{i:06d}.arrow"),
                        stride)
            for i, (dt, uri, rgs, _rows) in enumerate(bronze.shuffle)
        ]  # fmt: skip
        started = time.monotonic()
        per_bucket, sizes = self._collect(fan_out(shuffle, items), bronze.rows, "shuffle")
        if stride > 1:
            gathers = []
            for group, sources in sorted(per_bucket.items()):
                buckets = (group * stride, min(n_buckets, (group + 1) * stride))
                for dt in DATA_TYPES:
                    mine = [(uri, batch) for d, uri, batch in sources if d == dt]
                    for i in range(0, len(mine), stride):
                        out = paths.join(scratch, "gather", f"g{group:06d}-{dt}-{i // stride:06d}.arrow")
                        gathers.append(GatherItem(self.run, dt, buckets, tuple(mine[i : i + stride]), cuts_uri, out))
            per_bucket, sizes = self._collect(fan_out(gather, gathers), bronze.rows, "gather")
            self._drop_scratch("shuffle")  # regrouped: the buckets read the gather files
        log.info(
            "impute shuffle done",
            extra={
                "event": "impute_shuffled",
                "rows": sum(bronze.rows.values()),
                "ranges": len(items),
                "stride": stride,
                "buckets": len(per_bucket),
                "duration_sec": round(time.monotonic() - started, 3),
            },
        )
        return per_bucket, sizes

    @staticmethod
    def _collect(
        done: Iterator[dict[str, Any]], rows: dict[str, int], what: str
    ) -> tuple[BucketSources, dict[int, int]]:
        """Each bucket's batches and its Arrow bytes."""
        per_bucket: BucketSources = {}
        sizes: dict[int, int] = {}
        moved = dict.fromkeys(DATA_TYPES, 0)
        for res in done:
            moved[res["data_type"]] += res["rows"]
            for bucket, batch, nbytes in res["index"]:
                per_bucket.setdefault(bucket, []).append((res["data_type"], res["uri"], batch))
                sizes[bucket] = sizes.get(bucket, 0) + nbytes
        if moved != rows:  # never trust a count we did not make ourselves
            raise ConservationError(f"impute {what} moved {moved} rows, bronze holds {rows}")
        return per_bucket, sizes

    def _impute_buckets(
        self,
        per_bucket: BucketSources,
        sizes: dict[int, int],
        n_buckets: int,
        arrow_bytes: int,
        fan_out: Callable[..., Iterator[Any]],
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
        buckets = [(b, tuple(sorted(srcs))) for b, srcs in sorted(per_bucket.items())]
        size, limit = bucket_group_size(n_buckets, arrow_bytes), run_bytes(self.run.memory_budget_mb)
        items = [
            BucketItem(self.run, tuple(join_runs(buckets[i : i + size], sizes, limit)), n_buckets, self.run.years,
                       self.params.lookahead_years, self._scratch())
            for i in range(0, len(buckets), size)
        ]  # fmt: skip
        pieces: dict[str, list[dict[str, Any]]] = {}
        totals = _Totals()
        started = time.monotonic()
        for res in fan_out(impute_buckets, items):
            for key, ps in res["pieces"].items():
                pieces.setdefault(key, []).extend(ps)
            totals.add(res["counts"], res["stats"])
        log.info(
            "impute buckets done",
            extra={
                "event": "impute_bucketed",
                "buckets": n_buckets,
                "items": len(items),
                "pieces": sum(len(v) for v in pieces.values()),
                "duration_sec": round(time.monotonic() - started, 3),
            },
        )
        return pieces, {"counts": totals.counts, "stats": totals.stats}

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

    def _result(self, entity: Entity, rows: int, store: ObjectStore) -> EntityResult:
        """The entity's counts. The quarantine entity also carries its data type's rows that do not
        reach silver, so that the summary's totals add up: bronze = silver + quarantined + out of scope."""
        payload = entity.payload
        if payload["kind"] == "silver":
            return EntityResult(rows_in=rows, rows_out=rows)
        if payload["kind"] != QUARANTINE:
            return EntityResult(stats={"profiles": rows})
        totals = json.loads(store.read_bytes(self._manifest_uri("_totals")))
        dt, counts = payload["data_type"], totals["counts"]
        stats = dict(totals["stats"][dt])
        stats[f"rows.{dt}.bronze"] = counts["rows_in"][dt]
        stats[f"rows.{dt}.silver"] = counts["silver"][dt]
        return EntityResult(
            rows_in=counts["quarantined"][dt] + counts["out_of_scope"][dt],
            rows_out=0,
            rows_quarantined=counts["quarantined"][dt],
            rows_out_of_scope=counts["out_of_scope"][dt],
            stats=stats,
        )

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        store = ctx.store()
        pieces: list[dict[str, Any]] = json.loads(store.read_bytes(self._manifest_uri(entity.id)))
        rows = sum(p["rows"] for p in pieces)
        final = self._final(entity.payload)
        result = self._result(entity, rows, store)
        if not pieces:
            if store.exists(final):
                result.deletes.append(final)  # no rows any more: the old object must not stay live
            return result
        kind = entity.payload["kind"]
        schema = self.output_schema(Output(final, rows, kind=kind))
        with ctx.open_output(ctx.staging_uri(final)) as sink:
            writer = FixedRowGroupWriter(sink, schema)

            def emit(table: pa.Table) -> None:
                writer.write(table if table.schema == schema else table.cast(schema))
                ctx.heartbeat()

            groups = chains(pieces)
            if len(groups) == 1:  # ordered buckets: the pieces follow each other in output order
                for batch, _more in _chain_batches(store, groups[0]):
                    emit(pa.Table.from_batches([batch]))
            else:
                sort = PROFILE_SORT if kind == DEMOGRAPHICS else SILVER_SORT
                merge_sorted([partial(_chain_batches, store, c) for c in groups], sort, emit)
            writer.close()
        if writer.rows != rows:
            raise ConservationError(f"impute assembly of {entity.id}: wrote {writer.rows} rows, pieces hold {rows}")
        result.outputs.append(Output(final, rows, kind=kind))
        return result

    def output_schema(self, output: Output) -> pa.Schema:
        if output.kind == DEMOGRAPHICS:
            return demographics_schema()
        dt = "pharmacy" if "/pharmacy/" in output.uri else "medical"
        return quarantine_schema(dt) if output.kind == QUARANTINE else silver_schema(dt)


def _chain_batches(store: ObjectStore, chain: Sequence[dict[str, Any]]) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """The batches of a chain of pieces, in order, each with whether more follow."""
    for n, piece in enumerate(chain):
        with store.open_input(piece["uri"]) as f:
            reader = pa.ipc.open_file(f)
            first, count = piece["batch"], piece["batches"]
            for i in range(first, first + count):
                yield reader.get_batch(i), n + 1 < len(chain) or i + 1 < first + count


@dataclass
class _Bronze:
    """Bronze as impute reads it: rows per data type, Arrow bytes, and the row-group ranges of the
    shuffle and of the key sample, each ``(data_type, uri, row groups, rows)``."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATA_TYPES, 0))
    arrow_bytes: int = 0
    shuffle: list[tuple[str, str, list[int], int]] = field(default_factory=list)
    sample: list[tuple[str, str, list[int], int]] = field(default_factory=list)


class _Packer:
    """Consecutive row groups packed into ranges of at most ``limit`` bytes (at least one each)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.ranges: list[tuple[list[int], int]] = []
        self.current: list[int] = []
        self.rows = 0
        self.size = 0.0

    def add(self, row_group: int, rows: int, size: float) -> None:
        if self.current and self.size + size > self.limit:
            self.ranges.append((self.current, self.rows))
            self.current, self.rows, self.size = [], 0, 0.0
        self.current.append(row_group)
        self.rows += rows
        self.size += size

    def done(self) -> list[tuple[list[int], int]]:
        if self.current:
            self.ranges.append((self.current, self.rows))
            self.current = []
        return self.ranges


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
