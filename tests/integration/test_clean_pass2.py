"""Clean's resume survives update-codes rewriting its gold in place, and vice versa."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.plugins.test_clean_stage import BAND, MEDICAL, YEAR, gold_path, make_silver, run, summary, write_silver
from tests.plugins.test_clean_stage import write_spec as clean_spec

pytestmark = pytest.mark.integration


def test_gold_rewritten_by_update_codes_does_not_make_clean_redo_its_work(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_silver(lake, "medical", BAND, YEAR, make_silver("medical", 80, seed=9))
    target_map = tmp_path / "target.json"
    target_map.write_text(json.dumps({"J690": "J69.0"}))
    update = {"use": "update-codes", "with": {"targetMap": target_map.as_uri()}}
    spec = clean_spec(tmp_path, lake, [MEDICAL, update])
    code, first = run(spec)
    assert code == 0
    passed = summary(lake, "update_codes", first.run_id)
    assert passed["totals"]["completed"] == 1 and sum(passed["stats"]["changed"].values()) > 0  # really rewritten
    gold = gold_path(lake, "medical", BAND, YEAR)
    rewritten = gold.read_bytes()
    assert pq.read_table(gold).num_rows == summary(lake, "clean_medical", first.run_id)["totals"]["rows_out"]
    code, again = run(spec)
    assert code == 0
    assert summary(lake, "clean_medical", again.run_id)["totals"]["skipped"] == 1
    assert summary(lake, "update_codes", again.run_id)["totals"]["skipped"] == 1
    assert gold.read_bytes() == rewritten
