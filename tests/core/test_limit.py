"""``--limit N`` smoke runs: N entities that need work run, the rest wait for a later run, and the
command says what it did. Real ``pgx run`` processes on a local lake."""

from __future__ import annotations

import json
from pathlib import Path

from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store
from tests.conftest import pgx
from tests.core.lake_helpers import input_table, put_table, summaries, write_spec


def test_successive_limited_runs_each_do_the_next_entity_and_say_so(tmp_path: Path, teststage: Path) -> None:
    lake = tmp_path / "lake"
    store = open_store(lake.as_uri())
    for i in range(3):
        put_table(store, paths.join(lake.as_uri(), "input", f"p{i}.parquet"), input_table(5 + i, salt=10 * i))
    spec = str(write_spec(tmp_path, lake.as_uri(), StoreConfig()))
    said = []
    for _ in range(3):
        proc = pgx("run", spec, "--limit", "1")
        assert proc.returncode == 0, proc.stderr[-1000:]
        said.append(proc.stdout.splitlines()[0])
    # Before: every limited run picked the first entity in plan order, done by the first run.
    assert said == [
        "stage copy-table: 1 completed, 0 already done; 2 more left for a later run (--limit 1)",
        "stage copy-table: 1 completed, 1 already done; 1 more left for a later run (--limit 1)",
        "stage copy-table: 1 completed, 2 already done; 0 more left for a later run (--limit 1)",
    ]
    assert sorted(p.name for p in (lake / "gold" / "test_copy").iterdir()) == ["p0.parquet", "p1.parquet", "p2.parquet"]
    again = pgx("run", spec, "--limit", "1")
    assert again.returncode == 0
    assert again.stdout.startswith("stage copy-table: nothing to do, all 3 entities were already completed")
    docs = sorted(summaries(store, lake.as_uri()), key=lambda d: d["totals"]["skipped"])  # one per run
    assert [d["stages"][0]["deferred"] for d in docs] == [2, 1, 0, 0]
    assert all(d["stages"][0]["limit"] == 1 for d in docs)


def test_plan_shows_what_a_limited_run_leaves_for_later(tmp_path: Path, teststage: Path) -> None:
    lake = tmp_path / "lake"
    store = open_store(lake.as_uri())
    for i in range(3):
        put_table(store, paths.join(lake.as_uri(), "input", f"p{i}.parquet"), input_table(3, salt=i))
    spec = str(write_spec(tmp_path, lake.as_uri(), StoreConfig()))
    doc = json.loads(pgx("plan", spec, "--limit", "2", "--json", check=True).stdout)
    [stage] = doc["stages"]
    assert [len(stage[k]) for k in ("run", "skip", "deferred")] == [2, 0, 1]
    assert stage["limit_picks_after_prepare"] is False  # copy-table knows its input when it plans
    human = pgx("plan", spec, "--limit", "2", check=True).stdout
    assert "2 to run, 0 skipped, 1 left for a later run (--limit 2)" in human


def test_the_closing_report_names_what_a_limit_left_and_why() -> None:
    from pgx_core.cli import _stage_lines
    from pgx_core.run.summary import StageTally

    t = StageTally("impute", "impute", limit=1, deferred=3, without_input=14)
    t.totals.update(entities=2, completed=1, skipped=1)
    t.outputs = [f"file:///l/silver/x{i}.parquet" for i in range(7)]
    assert _stage_lines(t) == [
        "stage impute: 1 completed, 1 already done; 3 more left for a later run (--limit 1); "
        "14 without input rows wait for a run without --limit",
        *[f"  wrote file:///l/silver/x{i}.parquet" for i in range(5)],
        "  … and 2 more objects (--json lists them all)",
    ]
    done = StageTally("impute", "impute", limit=1, without_input=14)
    done.totals.update(entities=93, skipped=93)
    assert _stage_lines(done) == [
        "stage impute: nothing to do with --limit, every entity with input rows is done; "
        "14 without input rows wait for a run without --limit"
    ]
    empty = StageTally("update-codes", "update-codes")
    assert _stage_lines(empty) == ["stage update-codes: nothing in scope, no input matched the run's partitions"]
