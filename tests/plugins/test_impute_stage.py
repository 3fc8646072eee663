"""The impute stage end to end: shuffle, buckets, assembly, promotion (issue 6 acceptance)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from pgx_apcd import layout
from pgx_apcd.sample import generate
from pgx_impute import rules
from pgx_impute.stage import (
    MAX_MERGE_BATCH_ROWS,
    MERGE_FACTOR,
    MIN_MERGE_BATCH_ROWS,
    demographics_schema,
    merge_batch_rows,
    quarantine_schema,
    silver_schema,
)

from pgx_core.run.runner import Runner
from tests.conftest import local_spec, run_spec

INGEST = [
    {"use": "ingest", "name": f"ingest-{dt}", "with": {"dataType": dt, "maxRejectRate": 0.2}}
    for dt in layout.DATA_TYPES
]


@pytest.fixture(scope="module")
def bronze_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with bronze ingested from a defect-laden sample (quarantine reasons present)."""
    tmp = tmp_path_factory.mktemp("impute")
    generate(tmp / "sample", rows=8000, seed=11, defects=True)
    lake = tmp / "lake"
    for dt in layout.DATA_TYPES:
        (lake / "raw" / dt).mkdir(parents=True)
        for f in (tmp / "sample" / dt).glob("*.txt"):
            if f.stat().st_size and "SCHEMA" not in f.name:
                shutil.copy(f, lake / "raw" / dt / f.name)
    code, _ = run(write_spec(tmp, lake, INGEST, "ingest"))
    assert code in (0, 2)  # wrong-header files fail; their siblings load
    shutil.rmtree(lake / "raw")
    return lake


def write_spec(tmp: Path, lake: Path, stages: list[dict[str, Any]], name: str, executor: str = "local") -> Path:
    return local_spec(tmp, lake, stages, name, executor={"type": executor})


def run(path: Path) -> tuple[int, Runner]:
    return run_spec(path)


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "bronze", dst / "bronze")
    return dst


def zone_digest(lake: Path, zone: str) -> dict[str, str]:
    return {
        str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((lake / zone).rglob("*.parquet"))
    }


def summary(lake: Path, run_id: str) -> dict[str, Any]:
    return json.loads((lake / "pgx_pipeline" / "global_imputation" / f"run_id={run_id}" / "summary.json").read_text())


def test_assembly_batches_shrink_as_buckets_grow_so_the_merge_fits_the_budget() -> None:
    row_bytes = 1400.0  # a silver medical row in Arrow
    for buckets in (1, 12, 96, 500):
        rows = merge_batch_rows(256, buckets, row_bytes)
        assert rows <= MAX_MERGE_BATCH_ROWS
        assert MERGE_FACTOR * buckets * rows * row_bytes <= 256 << 20
    assert merge_batch_rows(256, 96, row_bytes) < merge_batch_rows(256, 12, row_bytes) < MAX_MERGE_BATCH_ROWS
    assert merge_batch_rows(4096, 1, row_bytes) == MAX_MERGE_BATCH_ROWS
    assert merge_batch_rows(256, 100_000, row_bytes) == MIN_MERGE_BATCH_ROWS  # a floor, not a bound any more


def test_bucket_counts_give_byte_identical_silver(bronze_lake: Path, tmp_path: Path) -> None:
    digests = []
    for n in (1, 3, 17):
        lake = clone(bronze_lake, tmp_path / f"b{n}")
        code, _ = run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": n}}], f"b{n}"))
        assert code == 0
        digests.append(zone_digest(lake, "silver"))
    assert digests[0] == digests[1] == digests[2]
    assert any("_quarantine" in k for k in digests[0]) and any("demographics" in k for k in digests[0])


def pad_some_keys(lake: Path) -> int:
    """Give every fifth bronze row a raw key with ASCII whitespace around it (same member): rows
    that sort out of bucket order. Returns how many were padded."""
    padded = 0
    for path in sorted((lake / "bronze").rglob("*.parquet")):
        if "_rejects" in str(path):
            continue
        table = pq.read_table(path)
        keys = table["mi_person_key"].to_pylist()
        pads = (" {}", "{} ", "\t{}\t", "  {}")
        for i in range(0, len(keys), 5):
            if keys[i] and keys[i].strip():
                keys[i] = pads[(i // 5) % len(pads)].format(keys[i].strip())
                padded += 1
        index = table.schema.get_field_index("mi_person_key")
        table = table.set_column(index, table.schema.field(index), pa.array(keys, pa.string()))
        pq.write_table(table, path)
    return padded


def test_padded_keys_and_hundreds_of_buckets_give_byte_identical_silver(bronze_lake: Path, tmp_path: Path) -> None:
    """Ordered buckets stream each output's pieces in bucket order; padded keys sort elsewhere and
    are merged in. 1, 7 and 300 buckets (~30 rows each, at the smallest budget: buckets share items
    and join their pieces) must give the same bytes."""
    digests = []
    for n, budget in ((1, 2048), (7, 2048), (300, 64)):
        lake = clone(bronze_lake, tmp_path / f"p{n}")
        assert pad_some_keys(lake) > 1000
        stages = [{"use": "impute", "with": {"buckets": n}}]
        spec = local_spec(tmp_path, lake, stages, f"p{n}", executor={"type": "local", "memoryBudgetMb": budget})
        code, runner = run(spec)
        assert code == 0, summary(lake, runner.run_id)["error"]
        digests.append(zone_digest(lake, "silver"))
    assert digests[0] == digests[1] == digests[2]
    silver = pq.read_table(next((tmp_path / "p300" / "silver" / "imputed" / "medical").rglob("*.parquet")))
    keys = list(zip(*(silver[c].to_pylist() for c in rules.SORT_KEYS), strict=True))
    assert keys == sorted(keys)
    assert any(k[0] != k[0].strip() for k in keys)  # padded keys reached silver, in raw-key order


def test_small_buckets_run_the_rules_together_and_give_the_same_silver(
    bronze_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 small buckets: the rules run once per bucket when a run may hold no more than one, a
    few times per item when runs are small, once per item at the budget's run size — same bytes."""
    from pgx_impute import rules, stage

    calls: list[int] = []
    real = rules.impute_bucket

    def counted(*args: Any, **kwargs: Any) -> rules.BucketResult:
        calls[-1] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rules, "impute_bucket", counted)
    digests = []
    for name, limit in (("alone", 0), ("few", 200_000), ("budget", None)):
        if limit is not None:
            monkeypatch.setattr(stage, "run_bytes", lambda _mb, limit=limit: limit)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(rules, "impute_bucket", counted)
        lake = clone(bronze_lake, tmp_path / name)
        pad_some_keys(lake)
        spec = local_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 300}}], name,
                          executor={"type": "local", "memoryBudgetMb": 64})  # fmt: skip
        calls.append(0)
        assert run(spec)[0] == 0
        digests.append(zone_digest(lake, "silver"))
    items = -(-300 // stage.bucket_group_size(300, 1 << 30))
    assert calls[0] >= 290  # (buckets with rows)
    assert items < calls[1] < calls[0] // 2
    assert calls[2] == items
    assert digests[0] == digests[1] == digests[2]


def test_an_item_reads_a_run_only_when_the_rules_are_done_with_the_previous_one(
    bronze_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory: while the rules work on a bucket as large as the budget allows, the next one is not
    in memory yet (runs are planned from the sizes the shuffle measured, not found by reading)."""
    from pgx_impute import rules, stage

    events: list[str] = []
    real_rules, real_read = rules.impute_bucket, stage._Readers.batch

    def rules_spy(*args: Any, **kwargs: Any) -> rules.BucketResult:
        events.append("rules")
        return real_rules(*args, **kwargs)

    def read_spy(self: stage._Readers, uri: str, batch: int) -> pa.Table:
        events.append("read")
        return real_read(self, uri, batch)

    runs: list[int] = []
    real_item = stage.impute_buckets

    def item_spy(item: stage.BucketItem) -> dict[str, Any]:
        runs.extend(len(sources) for _bucket, sources in item.runs)
        return real_item(item)

    monkeypatch.setattr(rules, "impute_bucket", rules_spy)
    monkeypatch.setattr(stage._Readers, "batch", read_spy)
    monkeypatch.setattr(stage, "impute_buckets", item_spy)
    monkeypatch.setattr(stage, "run_bytes", lambda _mb: 0)  # a run per bucket, as full buckets are
    monkeypatch.setattr(stage, "bucket_group_size", lambda *_a: 40)  # one item: its events in order
    lake = clone(bronze_lake, tmp_path / "l")
    assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 40}}], "runs"))[0] == 0
    reads_before = [len(chunk) for chunk in "".join("r" if e == "read" else "|" for e in events).split("|")[:-1]]
    assert len(runs) >= 38 and reads_before == runs  # before the rules on a run: that run's batches only


def test_a_two_level_shuffle_gives_the_same_silver(
    bronze_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many ranges and buckets the shuffle regroups in two levels; forced both ways here, the
    two must give the same bytes."""
    from pgx_impute import stage

    strides: list[int] = []

    def forced(stride: int) -> Callable[..., int]:
        def choose(*_args: object, **_kwargs: object) -> int:
            strides.append(stride)
            return stride

        return choose

    digests = []
    for name, stride in (("one", 1), ("two", 7)):
        lake = clone(bronze_lake, tmp_path / name)
        pad_some_keys(lake)
        monkeypatch.setattr(stage, "shuffle_stride", forced(stride))
        assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 40}}], name))[0] == 0
        digests.append(zone_digest(lake, "silver"))
    assert strides == [1, 7]
    assert digests[0] == digests[1]


def test_small_buckets_share_work_items_and_join_their_pieces(
    bronze_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 buckets of ~30 rows: items of consecutive buckets, whose in-order pieces of one output
    join into one — the index and the assembly reads grow with the items, not with the buckets
    (here with the rules run on each bucket alone, as buckets the budget fills are)."""
    from pgx_impute import stage

    items: list[tuple[int, dict[str, int]]] = []
    real = stage.impute_buckets

    def spy(item: stage.BucketItem) -> dict[str, Any]:
        res = real(item)
        items.append((len(item.runs), {out: len(ps) for out, ps in res["pieces"].items()}))
        return res

    monkeypatch.setattr(stage, "impute_buckets", spy)
    monkeypatch.setattr(stage, "run_bytes", lambda _mb: 0)
    lake = clone(bronze_lake, tmp_path / "l")
    assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 300}}], "joined"))[0] == 0
    size = stage.bucket_group_size(300, 1 << 30)
    assert 290 <= sum(n for n, _ in items) <= 300 and len(items) <= -(-300 // size)  # (buckets with rows)
    assert sorted(n for n, _ in items)[1] == size  # all full but the last
    # One piece per output per item (quarantine also holds rows with no key, which sort apart).
    assert all(count == 1 for _, pieces in items for out, count in pieces.items() if "quarantine" not in out)


def test_runs_join_consecutive_buckets_up_to_the_limit_and_a_large_bucket_stands_alone() -> None:
    from pgx_impute.stage import join_runs

    buckets = [(b, (("medical", f"g{b}", 0), ("pharmacy", f"g{b}", 1))) for b in range(6)]
    sizes = {0: 40, 1: 50, 2: 300, 3: 10, 4: 20, 5: 90}
    runs = join_runs(buckets, sizes, 100)
    assert [first for first, _ in runs] == [0, 2, 3, 5]  # 40+50 | 300 alone | 10+20 | 90
    assert [len(sources) for _, sources in runs] == [4, 2, 4, 2]
    assert runs[0][1] == buckets[0][1] + buckets[1][1]  # the buckets' batches, in bucket order
    assert join_runs(buckets, sizes, 0) == buckets  # a run per bucket


def test_buckets_per_item_grow_only_when_buckets_are_small() -> None:
    from pgx_impute.stage import ITEM_BYTES, MIN_ITEMS, bucket_group_size

    mb = 1 << 20
    assert bucket_group_size(1912, 1912 * 700 * mb) == 1  # 1.4 B rows at 2 GB: a bucket is an item
    assert bucket_group_size(6, 6 * mb) == 1  # few buckets: one each, for the workers to share
    assert bucket_group_size(1912, 1000 * mb) == 1912 // MIN_ITEMS  # the scale model: at least MIN_ITEMS items
    assert bucket_group_size(100_000, 100_000 * mb) == ITEM_BYTES // mb


def test_scratch_levels_are_deleted_once_read(
    bronze_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shuffle level is a copy of all bronze: none is left by the time assembly runs."""
    from pgx_impute import stage

    monkeypatch.setattr(stage, "shuffle_stride", lambda *_a, **_k: 7)  # two levels: shuffle and gather
    left: list[str] = []
    real = stage.ImputeStage.process

    def spy(self: stage.ImputeStage, entity: Any, ctx: Any) -> Any:
        scratch = self._scratch()
        left.extend(i.uri for level in ("shuffle", "gather") for i in ctx.store().list(f"{scratch}/{level}/"))
        pieces = list(ctx.store().list(f"{scratch}/pieces/"))
        assert pieces, "assembly reads the pieces"
        return real(self, entity, ctx)

    monkeypatch.setattr(stage.ImputeStage, "process", spy)
    lake = clone(bronze_lake, tmp_path / "l")
    assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 40}}], "dropped"))[0] == 0
    assert left == []


def test_the_shuffle_goes_two_level_when_the_reads_it_saves_cost_more_than_its_extra_pass() -> None:
    from pgx_impute.stage import shuffle_stride

    gib = 1 << 30
    # 1.4 B rows (~1.4 TB of Arrow) at 2 GB: 2,700 ranges x 2,000 buckets = 5.4 M reads on S3.
    assert shuffle_stride(2700, 2000, 1400 * gib, remote=True) == 45
    assert shuffle_stride(2700, 2000, 1400 * gib, remote=False) == 1  # local reads are cheap
    assert shuffle_stride(24, 12, gib) == 1  # 1 M rows at 256 MB: a few hundred reads
    assert shuffle_stride(2, 300, gib) == 1  # few ranges: nothing to save
    assert shuffle_stride(64, 300, gib, remote=True) == 18  # 19,200 reads become 3,488
    assert shuffle_stride(1, 1) == 1


def test_silver_layout_schema_order_and_conservation(bronze_lake: Path, tmp_path: Path) -> None:
    lake = clone(bronze_lake, tmp_path / "l")
    code, runner = run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 4}}], "imp"))
    assert code == 0
    doc = summary(lake, runner.run_id)
    t, st = doc["totals"], doc["stats"]
    bronze_rows = sum(
        pq.read_metadata(p).num_rows for p in (lake / "bronze").rglob("*.parquet") if "_rejects" not in str(p)
    )
    assert t["rows_in"] == bronze_rows == t["rows_out"] + t["rows_quarantined"] + st["out_of_scope"]
    assert st["quarantined"]["MISSING_MEMBER_KEY"] > 0 and st["quarantined"]["INVALID_INCURRED_DATE"] > 0
    for field in rules.FIELDS:
        assert sum(st["sources"][field].values()) == t["rows_out"]
    silver_rows = 0
    for dt in layout.DATA_TYPES:
        assert st["rows"][dt]["bronze"] == st["rows"][dt]["silver"] + sum(
            e["rows_quarantined"] for e in doc["entities"] if e["entity"].endswith(f"{dt}__quarantine")
        ) + next(e["stats"]["out_of_scope"] for e in doc["entities"] if e["entity"].endswith(f"{dt}__quarantine"))
        for p in sorted((lake / "silver" / "imputed" / dt).rglob("*.parquet")):
            assert p.name == f"{dt}_data.parquet"
            table = pq.read_table(p)
            assert table.schema.equals(silver_schema(dt))
            silver_rows += table.num_rows
            band = p.parent.parent.name.removeprefix("age_band=")
            year = int(p.parent.name.removeprefix("event_year="))
            assert set(pc.unique(pc.utf8_slice_codeunits(table["incurred_date"], 0, 4)).to_pylist()) == {str(year)}
            bands = rules.age_band(table["age_imputed"])
            assert set(pc.unique(bands).to_pylist()) == {band}
            keys = list(zip(*(table[c].to_pylist() for c in rules.SORT_KEYS), strict=True))
            assert keys == sorted(keys)  # sorted on the raw values
        q = pq.read_table(lake / "silver" / "_quarantine" / dt / f"{dt}_quarantine.parquet")
        assert q.schema.equals(quarantine_schema(dt))
        assert set(q["reason"].to_pylist()) <= set(rules.QUARANTINE_REASONS)
    assert silver_rows == t["rows_out"]
    demo = pq.read_table(next((lake / "silver" / "imputed" / "demographics").rglob("*.parquet")))
    assert demo.schema.equals(demographics_schema())
    keys = list(zip(demo["mi_person_key"].to_pylist(), demo["data_type"].to_pylist(), strict=True))
    assert keys == sorted(keys)


def test_rerun_skips_and_writes_nothing(bronze_lake: Path, tmp_path: Path) -> None:
    lake = clone(bronze_lake, tmp_path / "r")
    spec = write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "rerun")
    assert run(spec)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in (lake / "silver").rglob("*")}
    code, again = run(spec)
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in (lake / "silver").rglob("*")} == before
    doc = summary(lake, again.run_id)
    assert doc["totals"]["skipped"] == doc["totals"]["entities"] and doc["totals"]["completed"] == 0


@pytest.mark.ray
def test_ray_and_local_identical(bronze_lake: Path, tmp_path: Path, ray_session: None) -> None:
    a = clone(bronze_lake, tmp_path / "a")
    b = clone(bronze_lake, tmp_path / "b")
    assert run(write_spec(tmp_path, a, [{"use": "impute", "with": {"buckets": 3}}], "loc"))[0] == 0
    assert run(write_spec(tmp_path, b, [{"use": "impute", "with": {"buckets": 3}}], "ray", executor="ray"))[0] == 0
    assert zone_digest(a, "silver") == zone_digest(b, "silver")


def test_years_out_of_scope_are_counted_not_written(bronze_lake: Path, tmp_path: Path) -> None:
    lake = clone(bronze_lake, tmp_path / "y")
    path = write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "years")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["partitions"] = {"years": [2019]}
    path.write_text(yaml.safe_dump(doc))
    code, runner = run(path)
    assert code == 0
    years = {p.name for p in (lake / "silver" / "imputed").rglob("event_year=*")}
    assert years == {"event_year=2019"}
    s = summary(lake, runner.run_id)
    assert s["stats"]["out_of_scope"] > s["totals"]["rows_out"]  # most rows are in other years


def test_an_input_glob_matching_nothing_changes_nothing_and_exits_2(bronze_lake: Path, tmp_path: Path) -> None:
    """It deleted every silver partition (with backups) and exited 0."""
    lake = clone(bronze_lake, tmp_path / "g")
    assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "first"))[0] == 0
    before = zone_digest(lake, "silver")
    nothing = f"{lake.as_uri()}/bronze/pharmacy/no_such_extract_*.parquet"
    stages = [{"use": "impute", "with": {"buckets": 2, "pharmacyInput": nothing}}]
    code, runner = run(write_spec(tmp_path, lake, stages, "nomatch"))
    assert code == 2
    assert zone_digest(lake, "silver") == before
    assert not (lake / "_backups").exists()
    doc = summary(lake, runner.run_id)
    assert doc["status"] == "error" and doc["totals"]["entities"] == 0
    assert doc["error"] == f"impute found no bronze Parquet object under {nothing}"


def test_a_limited_run_writes_the_first_entities_that_have_rows(bronze_lake: Path, tmp_path: Path) -> None:
    """``--limit 1`` ran the first entity in plan order — a quarantine object or a partition the
    shuffle left empty — wrote no silver, and reported success."""
    lake = clone(bronze_lake, tmp_path / "l")
    path = write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "limited")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["partitions"] = {"years": [2001, 2016]}  # 2001 holds no event: its partitions come first, empty
    doc["spec"]["limit"] = 2
    path.write_text(yaml.safe_dump(doc))
    code, runner = run(path)
    assert code == 0
    written = sorted(str(p.relative_to(lake)) for p in (lake / "silver").rglob("*.parquet"))
    assert written == [
        "silver/imputed/pharmacy/age_band=0-12/event_year=2016/pharmacy_data.parquet",
        "silver/imputed/pharmacy/age_band=13-24/event_year=2016/pharmacy_data.parquet",
    ]
    [stage] = summary(lake, runner.run_id)["stages"]
    assert stage["totals"]["completed"] == 2 and stage["limit"] == 2
    # 44 entities: 2 types x 2 years x 10 bands, 2 demographics, 2 quarantine. The 21 of 2001 and
    # the quarantine objects of a lake without quarantined rows have no input.
    with_rows = {p.parent.parent.name + p.parent.name + p.name for p in (lake / "silver").rglob("*.parquet")}
    assert len(with_rows) == 2
    assert stage["deferred"] + 2 + stage["without_input"] == 44 and stage["without_input"] >= 21


def test_limited_runs_end_with_everything_with_rows_done_and_exit_0(bronze_lake: Path, tmp_path: Path) -> None:
    """Once every entity with rows was done, a limited impute raised "no input" (exit 2) for the
    partitions the shuffle left empty."""
    lake = clone(bronze_lake, tmp_path / "loop")
    path = write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "loop")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["partitions"] = {"years": [2001, 2019]}
    path.write_text(yaml.safe_dump(doc))
    completed = []
    for _ in range(6):
        code, runner = run_spec(path, limit=10)
        assert code == 0
        completed.append(runner.tallies[0].totals["completed"])
        if completed[-1] == 0:
            break
    assert completed[-1] == 0 and sum(completed) > 10  # several limited runs, then nothing left with rows
    last = runner.tallies[0]
    assert last.deferred == 0 and last.without_input >= 21 and last.error is None
    code, runner = run_spec(path)  # without a limit the empty partitions are recorded as done too
    assert code == 0 and runner.tallies[0].totals["completed"] == last.without_input
    code, runner = run_spec(path)
    assert code == 0 and runner.tallies[0].totals["skipped"] == 44


def test_bronze_that_holds_no_rows_is_no_input_and_silver_stays(bronze_lake: Path, tmp_path: Path) -> None:
    """Bronze objects with zero rows planned every partition empty: silver was deleted, exit 0."""
    lake = clone(bronze_lake, tmp_path / "z")
    assert run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "first"))[0] == 0
    before = zone_digest(lake, "silver")
    for f in (lake / "bronze").rglob("*.parquet"):
        if "_rejects" not in f.parts:
            pq.write_table(pq.read_table(f).slice(0, 0), f)
    code, runner = run(write_spec(tmp_path, lake, [{"use": "impute", "with": {"buckets": 2}}], "empty"))
    assert code == 2
    assert zone_digest(lake, "silver") == before
    assert "impute's bronze input holds no rows" in summary(lake, runner.run_id)["error"]
