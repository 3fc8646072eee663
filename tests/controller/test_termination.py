"""The termination message ``pgx run`` leaves for pgx controller: what it holds, and its size."""

from __future__ import annotations

import json
from pathlib import Path

from pgx_core.k8s import termination
from tests.conftest import line_count_project, pgx


def test_pgx_run_writes_its_result_where_kubernetes_keeps_it(tmp_path: Path) -> None:
    lake, spec = line_count_project(tmp_path, {"medical/q1.txt": b"h\nx\ny\n", "pharmacy/q2.txt": b"h\n"})
    out = tmp_path / "termination-log"
    run = pgx("run", str(spec), "--json", env={termination.PATH_ENV: str(out)})
    assert run.returncode == 0, run.stderr[-2000:]
    doc = termination.parse(out.read_text(encoding="utf-8"))
    assert doc is not None
    assert doc["runId"] == json.loads(run.stdout)["run_id"] and doc["exitCode"] == 0
    assert doc["lastStage"] == "line-count" and doc["summaries"] == f"{lake.as_uri()}/pgx_pipeline/"
    assert doc["totals"] == {"entities": 2, "completed": 2, "skipped": 0, "failed": 0, "locked": 0}
    assert doc["stages"] == [{"stage": "line-count", **doc["totals"]}]


def test_outside_a_container_nothing_is_written() -> None:
    assert not Path(termination.PATH).exists()  # this machine is no pod
    assert termination.write("{}") is False


def test_the_message_stays_within_what_kubernetes_keeps() -> None:
    totals = dict.fromkeys(termination.COUNTS, 123456)
    many = [(f"stage-with-a-long-name-{i:03d}", totals) for i in range(60)]
    text = termination.message("20261207T000000Z-00000000", 2, many, "s3://bucket/prefix/pgx_pipeline/")
    assert len(text.encode()) <= termination.LIMIT
    doc = termination.parse(text)
    assert doc is not None and "stages" not in doc  # the per-stage detail went, the totals stayed
    assert doc["totals"]["completed"] == 60 * 123456 and doc["lastStage"] == "stage-with-a-long-name-059"
    assert termination.parse("Error: pgx crashed") is None and termination.parse('{"other": 1}') is None
