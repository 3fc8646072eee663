"""The third-party example plugin, installed as its own distribution, runs through `pgx run`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import line_count_project, pgx

pytestmark = pytest.mark.integration


def test_example_plugin_runs_through_pgx_run(tmp_path: Path) -> None:
    lake, spec = line_count_project(
        tmp_path,
        {
            "pharmacy/a.txt": b"h1|h2\r\nx|y\r\nz|w",  # 3 lines, the last without a line ending
            "pharmacy/b.csv": b"h\n" + b"v\n" * 999,
            "pharmacy/ignored.json": b"{}",
        },
    )
    proc = pgx("run", str(spec), "--json", check=True)
    run_id = json.loads(proc.stdout)["run_id"]
    a = pq.read_table(lake / "reports" / "line_count" / "a.parquet").to_pylist()
    b = pq.read_table(lake / "reports" / "line_count" / "b.parquet").to_pylist()
    assert a == [{"source_file": "a", "lines": 3, "bytes": 15}]
    assert b == [{"source_file": "b", "lines": 1000, "bytes": 2000}]
    summary = json.loads((lake / "pgx_pipeline" / "line_count" / f"run_id={run_id}" / "summary.json").read_text())
    assert summary["plugin"] == {"name": "pgx-example-linecount", "version": "0.1.0"}
    assert summary["totals"]["completed"] == 2 and summary["stats"] == {"lines": 1003}
    # Resume: a second run skips both files.
    again = json.loads(pgx("run", str(spec), "--json", check=True).stdout)["run_id"]
    summary2 = json.loads((lake / "pgx_pipeline" / "line_count" / f"run_id={again}" / "summary.json").read_text())
    assert summary2["totals"]["skipped"] == 2
