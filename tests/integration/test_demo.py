"""``pgx demo``: the embedded default, end to end, and what a rerun leaves in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import pgx

pytestmark = pytest.mark.integration


def test_demo_runs_every_stage_and_a_rerun_keeps_the_report_of_the_work(tmp_path: Path) -> None:
    where = tmp_path / "demo"
    args = ("--json", "demo", "--dir", str(where), "--rows", "3000", "--executor", "local")
    first = json.loads(pgx(*args, check=True, timeout=600).stdout)
    assert first["exit_code"] == 0
    assert {"raw", "bronze", "silver", "gold", "pgx_pipeline"} <= set(first["objects"])
    page = Path(first["report"])
    assert page == where / "report" / "report.html"
    drawn = page.read_text(encoding="utf-8")
    assert first["run_id"] in drawn and "Imputation provenance" in drawn

    again = json.loads(pgx(*args, check=True, timeout=600).stdout)
    assert again["exit_code"] == 0 and again["run_id"] != first["run_id"]
    # Nothing was left to do: the page still shows the run that did the work, not one of zeros.
    assert again["report"] == str(page) and page.read_text(encoding="utf-8") == drawn
