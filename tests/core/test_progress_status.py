"""The terminal display (progress bars, log lines) and `pgx status`."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path

import pytest

from pgx_core.cli import ui
from pgx_core.run.worker import EntityOutcome
from tests.conftest import pgx
from tests.core.lake_helpers import input_table, put_table, write_spec


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_show_done_total_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui, "MIN_RATE_SECONDS", 0.0)
    err, out = _Tty(), _Tty()
    shown = ui.make_ui(False, err=err, out=out)
    assert isinstance(shown, ui.TerminalUi) and shown.live
    shown.update("ingest-pharmacy", EntityOutcome("e1", "completed", rows_in=1000), 1, 4)
    time.sleep(0.01)
    shown.update("ingest-pharmacy", EntityOutcome("e2", "completed", rows_in=1000), 2, 4)
    shown.update("impute", EntityOutcome("e3", "completed", rows_in=10), 1, 1)
    shown.close()
    text = err.getvalue()
    assert "ingest-pharmacy" in text and "2/4" in text and "rows/s" in text
    assert "impute" in text and "1/1" in text


def test_the_first_rate_waits_for_a_second_of_work() -> None:
    err = _Tty()
    shown = ui.make_ui(False, err=err, out=_Tty())
    shown.update("impute", EntityOutcome("e1", "completed", rows_in=10_000_000), 1, 9)
    shown.close()
    assert "… rows/s" in err.getvalue()  # not ten million rows a millisecond


def test_log_lines_print_above_the_bars() -> None:
    err = _Tty()
    shown = ui.make_ui(False, err=err, out=_Tty())
    handler = shown.log_handler()
    assert handler is not None
    shown.update("impute", None, 0, 3)
    record = logging.LogRecord("pgx.x", logging.WARNING, __file__, 1, "entity failed", None, None)
    record.event, record.entity = "entity_failed", "e7"
    handler.emit(record)
    shown.close()
    lines = [line.rsplit("\r", 1)[-1] for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err.getvalue()).split("\n")]
    logged = next(line for line in lines if "entity failed" in line)
    assert "WARNING" in logged and "entity=e7" in logged and "━" not in logged


def test_nothing_is_drawn_off_a_terminal_or_with_json() -> None:
    for as_json, err in ((False, io.StringIO()), (True, _Tty())):
        shown = ui.make_ui(as_json, err=err, out=io.StringIO())
        assert not shown.live and shown.log_handler() is None
        shown.update("s", None, 1, 2)
        with shown.starting("starting ray"):
            pass
        shown.close()
        assert err.getvalue() == ""


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
