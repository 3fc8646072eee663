"""``pgx report`` (pgx_core.cli.report): a self-contained HTML page and PNG charts built from
summaries only. The core's own sections, from synthetic summaries; the built-in plugins' sections
and a whole pipeline's report are tested in tests/plugins/test_report_sections.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgx_core import hookspecs
from pgx_core.cli import report
from pgx_core.errors import UsageError
from pgx_core.extend import Chart, ReportSection
from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store
from pgx_core.pluginmanager import make_plugin_manager
from tests.support.report_helpers import CORE_CHARTS, OLDER, PNG_MAGIC, RUN, images, summary, synthetic_run


def test_report_of_synthetic_summaries(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    uri, config = lake
    synthetic_run(uri, config)
    assert report.run_ids(open_store(uri, config), uri) == [RUN, OLDER]
    built = report.build_report(uri, RUN, tmp_path / "r", config)
    page = built.html.read_text(encoding="utf-8")
    # Every built-in plugin is disabled: the core draws its own sections from any summary.
    assert {p.name for p in built.pngs} == {f"{n}.png" for n in CORE_CHARTS}
    assert "Imputation provenance" not in page and "Code normalization" not in page
    embedded = images(page)
    assert len(embedded) == page.count("<img") == len(built.pngs)
    assert all(img.startswith(PNG_MAGIC) for img in embedded)
    for png in built.pngs:  # the page embeds exactly the files written next to it
        assert png.parent == built.html.parent / "charts" and png.read_bytes() in embedded
    assert not re.search(r"<script|<link|src=\"(?!data:)|url\(", page)  # nothing to fetch, nothing to run
    # Run order, whichever plugin wrote each summary.
    order = [page.index(f"<td>{s}</td>") for s in ("txt_to_parquet", "global_imputation", "update_codes", "line_count")]
    assert order == sorted(order)
    assert "<h2>Failed and locked entities</h2>" in page and "header differs" in page
    assert '<td>TOO_FEW_FIELDS</td><td class="n">3</td>' in page
    assert "<td>SCHEMA_MISMATCH</td>" in page and "<td>lines</td>" in page
    # The partitions come from the entity ids of whichever stage last wrote them.
    assert {d: s for d, (s, _) in report.partitions(report.load_summaries(uri, RUN, config)).items()} == {
        "medical": "global_imputation"
    }
    assert 'class="st partial">partial</span> (exit 2)' in page
    assert OLDER not in page


def test_report_errors(local_lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGX_LAKE", raising=False)
    with pytest.raises(UsageError, match="has no summaries"):
        report.build_report(local_lake, RUN, tmp_path)
    with pytest.raises(UsageError, match="needs the lake"):
        report.resolve_run(RUN, None)
    with pytest.raises(UsageError, match="neither a run spec file nor a run id"):
        report.resolve_run("yesterday", local_lake)
    assert report.resolve_run(RUN, local_lake + "/")[:2] == (local_lake, RUN)
    assert report.default_out_dir(RUN) == Path(f"pgx-report-{RUN}")


def test_stage_walls_and_partition_ids() -> None:
    docs = [summary("a", "a", elapsed=2.0), summary("b", "b", elapsed=5.5)]
    assert report.stage_walls(docs) == ([("a", 2.0), ("b", 3.5)], True)
    docs[1]["start_time"] = "2026-11-26T10:15:02.000Z"  # per-stage start times: duration_sec is per stage
    assert report.stage_walls(docs) == ([("a", 2.0), ("b", 5.5)], False)
    assert paths.entity_partition("pgx_lake__v2__medical__age_band=95-114__event_year=2016") == (
        "medical",
        "95-114",
        2016,
    )
    for bad in (
        "local__medical__quarantine",
        "age_band=1__event_year=2",
        "local__m__age_band=__event_year=2019",
        "local__m__age_band=0-12__event_year=20x9",
    ):
        assert paths.entity_partition(bad) is None


def test_resolve_run_picks_the_latest_run_of_that_spec(local_lake: str, tmp_path: Path) -> None:
    synthetic_run(local_lake, StoreConfig())  # RUN and OLDER, both of "nightly"
    newer = "20261127T000000Z-0000beef"  # newer, but another spec's run on the same lake
    doc = summary("txt_to_parquet", "txtpq", elapsed=1.0, run_id=newer, run_name="adhoc")
    open_store(local_lake).write_bytes(
        paths.summary_object(local_lake, "txt_to_parquet", newer), json.dumps(doc).encode()
    )
    spec = tmp_path / "nightly.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "pgx.io/v1alpha1",
                "kind": "PipelineRun",
                "metadata": {"name": "nightly"},
                "spec": {"lake": local_lake, "stages": [{"use": "line-count"}]},
            }
        )
    )
    assert report.resolve_run(str(spec), None)[1] == RUN
    spec.write_text(spec.read_text().replace("name: nightly", "name: weekly"))
    with pytest.raises(UsageError, match="no run of 'weekly' has summaries"):
        report.resolve_run(str(spec), None)


def test_plugin_sections_go_by_position_and_a_failing_one_leaves_the_rest(
    lake: tuple[str, StoreConfig], tmp_path: Path
) -> None:
    class Broken:
        @hookspecs.hookimpl
        def pgx_report_sections(self, summaries: list[dict[str, Any]]) -> list[Any]:
            raise RuntimeError("cannot draw")

    class Lines:
        @hookspecs.hookimpl
        def pgx_report_sections(self, summaries: list[dict[str, Any]]) -> list[ReportSection]:
            lines = sum(d["stats"].get("lines", 0) for d in summaries)
            chart = Chart("lines", report.chart_stage_durations([("line_count", 1.0)], False), "lines counted")
            return [ReportSection("lines", "Lines counted", (chart, f"<p>{lines:,} lines</p>"), position=20)]

    uri, config = lake
    synthetic_run(uri, config)
    plugins = make_plugin_manager([("broken", Broken()), ("lines", Lines())])
    built = report.build_report(uri, RUN, tmp_path / "r", config, plugins=plugins)
    page = built.html.read_text(encoding="utf-8")
    assert "<h2>Lines counted</h2>" in page and "<p>1,003 lines</p>" in page
    assert page.index("<h2>Rejects and quarantine by reason</h2>") < page.index("<h2>Lines counted</h2>")
    assert page.index("<h2>Lines counted</h2>") < page.index("<h2>Partition sizes</h2>")
    assert {p.name for p in built.pngs} == {f"{n}.png" for n in (*CORE_CHARTS, "lines")}
