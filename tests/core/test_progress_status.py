"""Progress bar rendering and `pgx status`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from pgx_core.cli.progress import Progress
from pgx_core.run.worker import EntityOutcome
from tests.conftest import pgx
from tests.core.lake_helpers import input_table, put_table, write_spec


def test_progress_bar_shows_done_total_rate_and_eta() -> None:
    out = io.StringIO()
    bar = Progress(enabled=True, stream=out)
    bar.update("ingest-pharmacy", EntityOutcome("e1", "completed", rows_in=1000), 1, 4)
    time.sleep(0.01)
    bar.update("ingest-pharmacy", EntityOutcome("e2", "completed", rows_in=1000), 2, 4)
    bar.update("impute", EntityOutcome("e3", "completed", rows_in=10), 1, 1)
    bar.close()
    text = out.getvalue()
    assert "ingest-pharmacy" in text and "2/4" in text and "rows/s" in text and "ETA" in text
    assert "impute" in text and "1/1" in text
    assert text.count("\n") == 2  # one finished line per stage


def test_progress_is_silent_when_disabled() -> None:
    out = io.StringIO()
    bar = Progress(enabled=False, stream=out)
    bar.update("s", None, 1, 2)
    bar.close()
    assert out.getvalue() == ""


def test_status_counts_entities(tmp_path: Path, teststage: Path) -> None:
    from pgx_core.lake.storage import StoreConfig, open_store

    lake = (tmp_path / "lake").as_uri()
    store = open_store(lake)
    for i in range(3):
        put_table(store, f"{lake}/input/p{i}.parquet", input_table(5, i))
    spec = write_spec(tmp_path, lake, StoreConfig(), fail=["p2"])
    assert pgx("run", str(spec)).returncode == 2
    doc = json.loads(pgx("status", str(spec), "--json", check=True).stdout)
    [row] = doc["stages"]
    assert row["counts"] == {"completed": 2, "failed": 1, "pending": 0, "locked": 0}
    assert len(row["last_run_ids"]) == 1
    human = pgx("status", str(spec), check=True).stdout
    assert "completed     2" in human and "failed     1" in human
