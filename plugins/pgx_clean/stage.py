"""The ``clean-pharmacy`` (clnph) and ``clean-medical`` (clnmd) stages: silver → gold.

One entity per silver partition (age band × event year) of the run's years and bands. The rules
live in :mod:`pgx_clean.rules`; this module wires them to storage and keeps memory bounded.

Memory design. A production partition averages ~18 M rows, far more than a work item's
``memoryBudgetMb``, so a partition is cleaned in *chunks* of whole members:

* Silver is sorted by the **raw** ``(mi_person_key, incurred_date, _source_file, _source_line)``
  (as impute writes it); gold is sorted by the **normalized** ``(mi_person_key, incurred_date,
  claim_id, _source_file, _source_line)`` and deduplicated on the normalized layout columns. Exact
  duplicates therefore share the normalized member key, which leads the gold order: a chunk that
  holds *every* row of a range of normalized member keys can be cleaned on its own, and the
  chunks' outputs concatenate in key order.
* For almost every row the raw key already is the normalized key ("plain" rows); they arrive in
  normalized-key order and are cut into chunks where the key changes. A member's rows never
  straddle two chunks.
* The rare rows whose raw key differs from its normalized key (stray whitespace, or a key that
  normalizes to NULL such as ``N/A``) sit elsewhere in the raw order. Pass 1 reads only the key
  column to find their normalized keys; pass 2 collects, from the few row groups that can hold
  them, every row of those members ("aside" rows), and cleans them as one table; pass 3 streams
  the plain rows chunk by chunk and merges the aside gold rows in by key (NULL keys last).
* Gold is written batch by batch with a :class:`pyarrow.parquet.ParquetWriter` in row groups of
  exactly :data:`GOLD_ROW_GROUP_ROWS` rows, each made contiguous first, so the bytes depend only
  on the gold rows — not on the chunk size, the budget or the path taken (byte-identical outputs).

Bound: peak memory ≈ fixed overhead (interpreter, pyarrow, one compressed silver row group in the
reader, two gold row groups) + ``WORKING_SET_FACTOR`` × silver row width × the larger of
(chunk rows, the largest single member's rows) + ≈ 2 × silver row width × the aside rows.
Chunks are sized so the first term fits ``memoryBudgetMb``; a member bigger than a chunk is still
processed whole (correctness first) and the aside rows are assumed few (they are whitespace-damaged
keys). A partition that fits one chunk takes the simple path: read it, clean it, write it.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pgx_clean.params import CleanMedicalParams, CleanPharmacyParams
from pgx_clean.rules import (
    Dataset,
    DrugMap,
    DrugMapError,
    clean_partition,
    gold_schema,
    normalize_strings,
    parse_drug_map_json,
    sort_indices_nulls_last,
)
from pgx_core.errors import ConservationError, DataError, InterruptedRun, ObjectNotFound, StorageError, scrub
from pgx_core.lake import paths
from pgx_core.lake.parquet import MB, ROW_GROUP_ROWS
from pgx_core.lake.parquet import FixedRowGroupWriter as GoldWriter
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_core.log import get_logger
from pgx_core.spec.runspec import Spec, StageParams, canonical_json
from pgx_core.stage import Data, Entity, EntityResult, Output, Stage, WorkContext, scan_partitions
from pgx_core.state import produced_checksum

log = get_logger(__name__)
OLDER_OBJECTS_COUNTED = 1000  # objects at an older silver location counted for its warning (1001: more)

# Gold row-group size: the core's fixed size (the bytes of a gold object depend on its rows only).
# 64 Ki rows keeps the footer of an 18 M-row partition small (~275 row groups).
GOLD_ROW_GROUP_ROWS = ROW_GROUP_ROWS
MIN_CHUNK_ROWS = 4_096
MAX_READ_BATCH_ROWS = 65_536
# Memory of one chunk in multiples of its silver (Arrow) bytes: the silver rows themselves,
# clean_partition's temporaries and gold output (measured ≈ 1.1× the silver on synthetic
# partitions of both datasets) and headroom for the read batch that completes the chunk.
WORKING_SET_FACTOR = 3.0
MEMBER_KEY = "mi_person_key"
HEARTBEAT_SECONDS = 5.0
_GOLD_ORDER = ("mi_person_key", "incurred_date", "claim_id", "_source_file", "_source_line")
_STAT_KEYS = ("duplicates_removed", "invalid_amount", "ndc_invalid")


# --------------------------------------------------------------------------------------------
# sizing


def plan_chunk_rows(memory_budget_mb: int, row_bytes: float) -> int:
    """Silver rows per chunk so that one chunk's working set fits ``memory_budget_mb``.

    Two gold row groups (the rows waiting for their row group and its contiguous copy) are set
    aside first; what remains holds ``WORKING_SET_FACTOR`` copies of the chunk.
    """
    width = max(row_bytes, 1.0)
    room = memory_budget_mb * MB - 2 * GOLD_ROW_GROUP_ROWS * width
    return max(MIN_CHUNK_ROWS, int(room / (WORKING_SET_FACTOR * width)))


def silver_row_bytes(pf: pq.ParquetFile) -> float:
    """Arrow bytes per silver row, measured on a sample of the first row group (0 when empty)."""
    if pf.metadata.num_rows == 0 or pf.num_row_groups == 0:
        return 0.0
    sample = next(pf.iter_batches(batch_size=2048, row_groups=[0]), None)
    if sample is None or sample.num_rows == 0:
        return 0.0
    return float(sample.nbytes / sample.num_rows)


# --------------------------------------------------------------------------------------------
# gold writer


# --------------------------------------------------------------------------------------------
# streaming clean


@dataclass
class _Piece:
    """Plain silver rows of one read batch with their normalized member keys (ascending)."""

    table: pa.Table
    keys: Any
    first: str
    last: str

    def head(self, n: int) -> _Piece:
        return _Piece(self.table.slice(0, n), self.keys.slice(0, n), self.first, self.keys[n - 1].as_py())

    def tail(self, n: int) -> _Piece:
        return _Piece(self.table.slice(n), self.keys.slice(n), self.keys[n].as_py(), self.last)


def _rows_before(pieces: list[_Piece], key: str) -> int:
    """Buffered rows whose key sorts before ``key``. Keys ascend across the pieces, so whole pieces
    are counted by their last key and only the piece where ``key`` starts is scanned: a long member
    costs O(pieces), not O(rows), per call."""
    before = 0
    for piece in pieces:
        if piece.last < key:
            before += piece.table.num_rows
            continue
        if piece.first < key:
            before += int(pc.sum(pc.less(piece.keys, key)).as_py() or 0)
        break
    return before


def _cut(pieces: list[_Piece]) -> int | None:
    """Rows before the last buffered member's first row: where the buffer can be cut (None: one member)."""
    return _rows_before(pieces, pieces[-1].last) or None


def _cut_within(pieces: list[_Piece], limit: int) -> int | None:
    """Where the buffer can be cut so that the head holds at most ``limit`` rows: before the
    member that row ``limit`` belongs to (the last boundary in the first ``limit`` rows). When one
    member fills all ``limit`` rows, before the last buffered member (:func:`_cut`) instead."""
    at = limit
    for piece in pieces:
        if at < piece.table.num_rows:
            return _rows_before(pieces, piece.keys[at].as_py()) or _cut(pieces)
        at -= piece.table.num_rows
    return _cut(pieces)


def _split(pieces: list[_Piece], n: int) -> tuple[list[_Piece], list[_Piece]]:
    """The first ``n`` buffered rows and the rest."""
    head: list[_Piece] = []
    for i, piece in enumerate(pieces):
        rows = piece.table.num_rows
        if n >= rows:
            head.append(piece)
            n -= rows
            if n == 0:
                return head, pieces[i + 1 :]
            continue
        return [*head, piece.head(n)], [piece.tail(n), *pieces[i + 1 :]]
    return head, []


class _Aside:
    """Gold rows of the members found off their raw-key position, merged into the plain stream."""

    def __init__(self, gold: pa.Table | None) -> None:
        self.gold = gold
        self.keys: Any = gold[MEMBER_KEY] if gold is not None else None
        self.pos = 0

    def merge_upto(self, gold: pa.Table) -> pa.Table:
        """``gold`` (a plain chunk's gold, sorted) with every remaining aside row of a key ≤ its last key."""
        if self.gold is None or self.pos >= self.gold.num_rows or gold.num_rows == 0:
            return gold
        hi = gold[MEMBER_KEY][gold.num_rows - 1]
        # Aside gold is sorted with NULL keys last; NULL compares as NULL and is not counted.
        n = int(pc.sum(pc.less_equal(self.keys.slice(self.pos), hi)).as_py() or 0)
        if n == 0:
            return gold
        merged = pa.concat_tables([gold, self.gold.slice(self.pos, n)])
        self.pos += n
        return merged.take(sort_indices_nulls_last(merged, _GOLD_ORDER))

    def rest(self) -> pa.Table | None:
        if self.gold is None or self.pos >= self.gold.num_rows:
            return None
        out = self.gold.slice(self.pos)
        self.pos = self.gold.num_rows
        return out


def _key_column(batch: pa.RecordBatch | pa.Table) -> Any:
    col = batch.column(batch.schema.get_field_index(MEMBER_KEY))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col if col.type == pa.string() else col.cast(pa.string())


def _aside_mask(norm: Any, odd_keys: Any) -> Any:
    """Rows whose normalized key is NULL or one of ``odd_keys`` (never NULL itself)."""
    return pc.or_(pc.is_null(norm), pc.is_in(norm, value_set=odd_keys))


def clean_stream(
    pf: pq.ParquetFile,
    dataset: Dataset,
    drug_map: DrugMap | None,
    *,
    chunk_rows: int,
    emit: Callable[[pa.Table], None],
    tick: Callable[[], None] = lambda: None,
) -> dict[str, int]:
    """Clean one silver Parquet file into gold tables passed to ``emit`` in gold order.

    Returns the summed :func:`~pgx_clean.rules.clean_partition` counters. ``tick`` is called
    between chunks (lease renewal, stop requests). See the module docstring for the design.
    """
    total = pf.metadata.num_rows
    counts: Counter[str] = Counter()
    if total <= chunk_rows:
        res = clean_partition(pf.read(), dataset, drug_map)
        counts.update(res.stats)
        emit(res.table)
        return dict(counts)

    batch_rows = max(1, min(MAX_READ_BATCH_ROWS, chunk_rows // 4))
    groups = range(pf.num_row_groups)

    def batches(rg: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        yield from pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=columns)

    # Pass 1: the normalized keys of rows whose raw key is not already normalized, and per row
    # group the range of raw keys (to find where plain rows of those members sit).
    odd: set[str] = set()
    odd_groups: set[int] = set()
    ranges: list[tuple[str, str] | None] = []
    for rg in groups:
        lo: str | None = None
        hi: str | None = None
        for batch in batches(rg, [MEMBER_KEY]):
            raw = _key_column(batch)
            norm = normalize_strings(raw)
            off = pc.fill_null(pc.not_equal(norm, raw), True)
            if pc.any(off).as_py():
                odd_groups.add(rg)
                odd.update(k for k in pc.unique(pc.filter(norm, off)).to_pylist() if k is not None)
            mm = pc.min_max(raw).as_py()
            if mm["min"] is not None:
                lo = mm["min"] if lo is None else min(lo, mm["min"])
                hi = mm["max"] if hi is None else max(hi, mm["max"])
        ranges.append((lo, hi) if lo is not None and hi is not None else None)
        tick()

    # Pass 2: every row of those members, cleaned together (they are few).
    odd_sorted = sorted(odd)
    odd_keys = pa.array(odd_sorted, pa.string())
    aside_groups = set(odd_groups)
    for rg, span in enumerate(ranges):
        if span is not None and bisect.bisect_right(odd_sorted, span[1]) > bisect.bisect_left(odd_sorted, span[0]):
            aside_groups.add(rg)
    aside = _Aside(None)
    if aside_groups:
        parts = []
        for rg in sorted(aside_groups):
            for batch in batches(rg):
                mask = _aside_mask(normalize_strings(_key_column(batch)), odd_keys)
                if pc.any(mask).as_py():
                    parts.append(pa.Table.from_batches([batch]).filter(mask))
            tick()
        if parts:
            res = clean_partition(pa.concat_tables(parts), dataset, drug_map)
            del parts
            counts.update(res.stats)
            aside = _Aside(res.table)

    # Pass 3: plain rows in chunks of whole members, aside rows merged in by key.
    def process(pieces: list[_Piece]) -> None:
        chunk = pa.concat_tables([p.table for p in pieces])
        res = clean_partition(chunk, dataset, drug_map)
        del chunk
        counts.update(res.stats)
        emit(aside.merge_upto(res.table))
        tick()

    pieces: list[_Piece] = []
    buffered = 0
    previous: str | None = None
    for rg in groups:
        for batch in batches(rg):
            table = pa.Table.from_batches([batch])
            norm = normalize_strings(_key_column(batch))
            if rg in aside_groups:
                keep = pc.invert(_aside_mask(norm, odd_keys))
                table, norm = table.filter(keep), pc.filter(norm, keep)
            n = table.num_rows
            if n == 0:
                continue
            first, last = norm[0].as_py(), norm[n - 1].as_py()
            unsorted = (previous is not None and first < previous) or (
                n > 1 and pc.any(pc.less(norm.slice(1), norm.slice(0, n - 1))).as_py()
            )
            if unsorted:
                raise DataError(
                    f"silver {dataset} partition is not sorted by mi_person_key as impute writes it; "
                    "it cannot be cleaned in bounded memory"
                )
            previous = last
            pieces.append(_Piece(table, norm, first, last))
            buffered += n
            if buffered >= chunk_rows:
                cut = _cut_within(pieces, chunk_rows)
                if cut is not None:  # else one member fills the buffer: keep reading (correctness first)
                    head, pieces = _split(pieces, cut)
                    buffered -= cut
                    process(head)
                    del head
    if pieces:
        process(pieces)
    rest = aside.rest()
    if rest is not None:
        emit(rest)
    if counts["rows_in"] != total:
        raise ConservationError(
            f"clean {dataset}: {counts['rows_in']} silver rows cleaned, but the silver object holds {total}"
        )
    return dict(counts)


# --------------------------------------------------------------------------------------------
# drug map I/O


def read_drug_map(store: ObjectStore, uri: str) -> DrugMap:
    """Read and validate a drug map (raises :class:`DrugMapError`, exit 64).

    A missing or unreadable object is a map problem too; transient storage errors propagate
    (exit 75: try again later, the spec itself may be fine).
    """
    try:
        data = store.read_bytes(uri)
    except ObjectNotFound:
        raise DrugMapError([f"no object at {uri}"]) from None
    except StorageError as exc:
        raise DrugMapError([f"cannot read {uri}: {scrub(str(exc))}"]) from None
    return parse_drug_map_json(data)


# --------------------------------------------------------------------------------------------
# stages

CP = TypeVar("CP", bound=StageParams)


class _CleanStage(Stage[CP], Generic[CP]):
    """Shared plan/process of both clean stages; subclasses fix the dataset and parameters."""

    dataset: ClassVar[Dataset]
    version = "1"
    plugin_name = "pgx-clean"

    # --- hooks for the dataset-specific parts ---------------------------------------------------
    def _input(self) -> str | None:
        return getattr(self.params, "input", None)

    def _drug_map_uri(self) -> str | None:
        return None

    def _drug_map(self, store_for: Callable[[str], ObjectStore]) -> DrugMap | None:
        uri = self._drug_map_uri()
        return None if uri is None else read_drug_map(store_for(uri), uri)

    # --- driver -------------------------------------------------------------------------------
    def silver_lake(self) -> str:
        """Root of the lake holding the silver input (the run's lake unless ``input`` says otherwise)."""
        given = self._input()
        if given is None:
            return self.run.lake
        lake = paths.lake_of_zone_root(paths.convert_raw_to_imputed_path(given, self.dataset), "silver", self.dataset)
        assert lake is not None  # the canonical prefix is the zone root of some lake
        return lake

    def _warn_older_layout(self, canonical: str) -> None:
        """An ``input`` in an older silver layout is read at the canonical prefix: say so, and say
        when objects lie at the older location, which pgx does not read (counted up to a cap)."""
        given = self._input()
        older = paths.older_silver_prefix(given, self.dataset) if given else None
        if older is None:
            return
        listed = itertools.islice(self.store_for(older).list(older), OLDER_OBJECTS_COUNTED + 1)
        left = sum(1 for info in listed if not info.uri.startswith(canonical))
        log.warning(
            "older silver layout: reading the canonical prefix",
            extra={"event": "input_mapped", "input": given, "canonical": canonical, "objects_not_read": left},
        )

    def plan(self) -> list[Entity]:
        ds = self.dataset
        lake = self.silver_lake()
        prefix = paths.build_zone_path("silver", ds, lake=lake)
        self._warn_older_layout(prefix)
        objects = scan_partitions(self.store_for(prefix), prefix, f"{ds}_data.parquet", f"{self.type_name} (silver)")
        state_store = self.store_for(self.run.state_root)
        imputed = self.producer(Data("silver", ds))  # its state holds silver's checksums
        entities = []
        for band in self.run.age_bands:
            for year in self.run.years:
                silver = paths.silver_object(lake, ds, band, year)
                info = objects.get((band, year))
                if info is None:
                    continue  # no silver for this cell: nothing to clean, any old gold is left alone
                entity_id = paths.partition_entity(ds, band, year)
                # Fingerprint silver by what impute produced (survives byte-identical rewrites);
                # the size guards against an object replaced behind impute's back.
                produced = produced_checksum(
                    state_store, self.run.state_root, lake, pipeline=imputed, entity_id=entity_id, uri=silver
                )
                fp = f"imputed={produced};size={info.size}" if produced else f"etag={info.etag};size={info.size}"
                entities.append(
                    Entity(
                        id=entity_id,
                        input_fingerprint=fp,
                        payload={
                            "silver": silver,
                            "gold": paths.gold_object(self.run.lake, ds, band, year),
                        },
                        size_bytes=info.size,
                    )
                )
        return entities

    def config_fingerprint(self) -> str:
        """Stage, version and the drug map's *content* fingerprint.

        Where the map or the silver input live is not part of it: moving an identical map does not
        change gold, and the input is fingerprinted per entity by its content.
        """
        drug_map = self._drug_map(self.store_for)
        blob = canonical_json(
            {
                "stage": self.type_name,
                "version": self.version,
                "drug_map": drug_map.fingerprint if drug_map is not None else None,
            }
        )
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    # --- worker -------------------------------------------------------------------------------
    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        ds = self.dataset
        silver, gold = entity.payload["silver"], entity.payload["gold"]
        drug_map = self._drug_map(ctx.store)

        last_beat = time.monotonic()

        def tick() -> None:
            nonlocal last_beat
            if ctx.stop_requested.is_set():
                raise InterruptedRun(f"Interrupted while cleaning {entity.id}")
            # The core renews the lease in the background too; an explicit renewal (a state write)
            # every few seconds is plenty and surfaces a lost lease early.
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                ctx.heartbeat()
                last_beat = time.monotonic()

        with ctx.store(silver).open_input(silver) as src:
            pf = pq.ParquetFile(src, pre_buffer=False, buffer_size=8 * MB)
            rows_in = pf.metadata.num_rows
            chunk = plan_chunk_rows(self.run.memory_budget_mb, silver_row_bytes(pf))
            with ctx.open_output(ctx.staging_uri(gold)) as out:
                writer = GoldWriter(out, gold_schema(ds))
                try:
                    counts = clean_stream(pf, ds, drug_map, chunk_rows=chunk, emit=writer.write, tick=tick)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
        stats = {k: counts.get(k, 0) for k in _STAT_KEYS if ds == "pharmacy" or k != "ndc_invalid"}
        return EntityResult(
            outputs=[Output(gold, writer.rows)],
            rows_in=rows_in,
            rows_out=writer.rows,
            stats=stats,
        )

    def check(self, entity: Entity, result: EntityResult) -> None:
        """Conservation: silver rows = gold rows + duplicates_removed; nothing quarantined."""
        dups = result.stats.get("duplicates_removed", 0)
        if result.rows_quarantined or result.rows_out_of_scope or result.rows_in != result.rows_out + dups:
            raise ConservationError(
                f"Row conservation broken for {self.type_name} entity {entity.id}: silver rows {result.rows_in} "
                f"!= gold rows {result.rows_out} + duplicates_removed {dups} "
                f"(quarantined {result.rows_quarantined}, out of scope {result.rows_out_of_scope}, both must be 0)"
            )

    def output_schema(self, output: Output) -> pa.Schema:
        return gold_schema(self.dataset)


class CleanPharmacyStage(_CleanStage[CleanPharmacyParams]):
    """Silver pharmacy → gold pharmacy, with ``ndc11`` and ``standardized_drug_name``."""

    type_name = "clean-pharmacy"
    tx = "clnph"
    script_name = "clean_pharmacy"
    dataset = "pharmacy"
    consumes = (Data("silver", "pharmacy"),)
    produces = (Data("gold", "pharmacy"),)
    Params = CleanPharmacyParams

    def _drug_map_uri(self) -> str | None:
        return self.params.drug_map

    @classmethod
    def validate_params(cls, params: CleanPharmacyParams, spec: Spec) -> list[tuple[str, str]]:
        """Load the drug map and report every problem of it under ``drugMap`` (exit 64)."""
        if params.drug_map is None:
            return []
        store = open_store(params.drug_map, StoreConfig.for_spec(spec.s3))
        try:
            read_drug_map(store, params.drug_map)
        except DrugMapError as exc:
            return [("drugMap", f"invalid drug map: {p}") for p in exc.problems]
        return []


class CleanMedicalStage(_CleanStage[CleanMedicalParams]):
    """Silver medical → gold medical, code columns trimmed and upper-cased."""

    type_name = "clean-medical"
    tx = "clnmd"
    script_name = "clean_medical"
    dataset = "medical"
    consumes = (Data("silver", "medical"),)
    produces = (Data("gold", "medical"),)
    Params = CleanMedicalParams


__all__ = [
    "GOLD_ROW_GROUP_ROWS",
    "CleanMedicalStage",
    "CleanPharmacyStage",
    "GoldWriter",
    "clean_stream",
    "plan_chunk_rows",
    "read_drug_map",
    "silver_row_bytes",
]
