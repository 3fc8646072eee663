"""The built-in plugins' report sections: a whole pipeline (ingest → impute → clean) and its
report, and impute's and update-codes' sections from synthetic summaries."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from pgx_apcd import layout
from pgx_apcd.sample import generate

from pgx_core import hookspecs
from pgx_core.cli import report
from pgx_core.errors import UsageError
from pgx_core.lake.storage import StoreConfig
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import load_spec
from tests.support.report_helpers import CORE_CHARTS, RUN, images, synthetic_run

CANARY = "8675309042"  # a member key planted in the raw data; it must reach gold and never the report


# --- an end-to-end run: ingest → impute → clean, then the report ----------------------------------


def _plant_canary(raw: Path) -> None:
    """A new, valid pharmacy extract: the header and one claim (copied) whose member key is CANARY."""
    source = sorted((raw / "pharmacy").glob("*.txt"))[0]
    lines = source.read_bytes().split(b"\n")
    header, row = lines[0].rstrip(b"\r"), lines[1].rstrip(b"\r").split(b"|")
    key = layout.raw_columns("pharmacy").index("MI Person Key")
    row[key] = CANARY.encode()
    row[0] = b"20190615"  # incurred date inside the run's years, so the row reaches gold
    (raw / "pharmacy" / "Genomic_Screening_All_RX_Claims_Q22019.txt").write_bytes(
        header + b"\n" + b"|".join(row) + b"\n"
    )


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """``(lake dir, run id, spec path)`` of one run with rejects, quarantine, imputation and gold."""
    tmp = tmp_path_factory.mktemp("report")
    manifest = generate(tmp / "sample", rows=3000, seed=5, defects=True)
    lake = tmp / "lake"
    # A wrong-header file fails its entity (exit 2) and stops the run before impute; leave it out so
    # that one run reaches gold. Empty and header-only files and bad lines stay in.
    for f in manifest.files:
        if f.status != "SCHEMA_MISMATCH":
            dst = lake / "raw" / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp / "sample" / f.path, dst)
    _plant_canary(lake / "raw")
    stages = [
        *(
            {"use": "ingest", "name": f"ingest-{dt}", "with": {"dataType": dt, "maxRejectRate": 0.2}}
            for dt in layout.DATA_TYPES
        ),
        {"use": "impute"},
        {"use": "clean-pharmacy"},
        {"use": "clean-medical"},
    ]
    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "report-e2e"},
        "spec": {
            "lake": lake.as_uri(),
            # One year keeps the partition count (and the test's time) small.
            "partitions": {"years": [2019]},
            "executor": {"type": "local"},
            "stages": stages,
        },
    }
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    plugins = make_plugin_manager()
    runner = Runner(load_spec(spec_path, plugins.registry), plugins)
    assert runner.execute() == 0
    return lake, runner.run_id, spec_path


@pytest.fixture(scope="module")
def built(pipeline_run: tuple[Path, str, Path], tmp_path_factory: pytest.TempPathFactory) -> report.ReportPaths:
    lake, run_id, _ = pipeline_run
    return report.build_report(lake.as_uri(), run_id, tmp_path_factory.mktemp("out") / "rep")


def test_every_chart_is_embedded_and_written(built: report.ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    # update-codes did not run: no code chart, and no empty section either.
    assert {p.name for p in built.pngs} == {f"{n}.png" for n in (*CORE_CHARTS, "imputation")}
    assert sorted(images(page)) == sorted(p.read_bytes() for p in built.pngs)


def test_sections_and_figures(built: report.ReportPaths, pipeline_run: tuple[Path, str, Path]) -> None:
    lake, run_id, _ = pipeline_run
    page = built.html.read_text(encoding="utf-8")
    for title in (
        "Stages",
        "Rows through each stage",
        "Rejects and quarantine by reason",
        "Imputation provenance",
        "Partition sizes",
        "Durations",
        "All counters",
        "Backups",
    ):
        assert f"<h2>{title}</h2>" in page
    assert "Code normalization" not in page  # update-codes did not run: no empty section
    summaries = {d["script_name"]: d for d in report.load_summaries(lake.as_uri(), run_id)}
    assert list(summaries) == ["txt_to_parquet", "global_imputation", "clean_pharmacy", "clean_medical"]
    assert run_id in page and "report-e2e" in page and summaries["clean_medical"]["spec_fingerprint"] in page
    ingest = summaries["txt_to_parquet"]
    assert f"{ingest['totals']['rows_in']:,}" in page
    for reason, count in ingest["stats"]["rejects"].items():
        assert f'<td>{reason}</td><td class="n">{count:,}</td>' in page
    assert "<td>EMPTY_FILE</td>" in page and "<td>MISSING_MEMBER_KEY</td>" in page
    # The heat map covers gold of both datasets, from the clean summaries (the last to write them).
    parts = report.partitions(list(summaries.values()))
    assert {d: s for d, (s, _) in parts.items()} == {"medical": "clean_medical", "pharmacy": "clean_pharmacy"}
    gold_rows = sum(c.rows for _, cells in parts.values() for c in cells.values())
    assert (
        gold_rows
        == summaries["clean_pharmacy"]["totals"]["rows_out"] + summaries["clean_medical"]["totals"]["rows_out"]
    )
    assert {y for _, cells in parts.values() for _, y in cells} == {2019}


def test_no_member_key_reaches_the_report(built: report.ReportPaths, pipeline_run: tuple[Path, str, Path]) -> None:
    lake, _, _ = pipeline_run
    keys: set[str] = set()
    for obj in (lake / "bronze").rglob("*.parquet"):
        if "_rejects" not in obj.parts:
            keys.update(
                k.strip() for k in pq.read_table(obj, columns=["mi_person_key"])[0].to_pylist() if k and k.strip()
            )
    assert CANARY in keys  # planted, ingested…
    gold = [pq.read_table(p, columns=["mi_person_key"])[0].to_pylist() for p in (lake / "gold").rglob("*.parquet")]
    assert any(CANARY in col for col in gold)  # …and carried through to gold
    # A few hundred keys at most at this size: check them all (a sample would do for a big lake).
    sample = sorted(keys)
    page = built.html.read_text(encoding="utf-8")
    blobs = [page.encode(), *(p.read_bytes() for p in built.pngs), *images(page)]
    leaked = [k for k in sample if any(k.encode() in b for b in blobs)]
    assert leaked == []


def test_resolve_run_from_spec(pipeline_run: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    lake, run_id, spec_path = pipeline_run
    assert report.resolve_run(str(spec_path), None) == (lake.as_uri(), run_id, StoreConfig())
    assert report.resolve_run(str(spec_path), lake.as_uri() + "/")[1] == run_id
    with pytest.raises(UsageError, match="differs from the spec's lake"):
        report.resolve_run(str(spec_path), "file:///elsewhere")
    monkeypatch.setenv("PGX_LAKE", lake.as_uri())
    assert report.resolve_run(run_id, None)[:2] == (lake.as_uri(), run_id)


# --- synthetic summaries ------------------------------------------------------------------------


def test_impute_and_update_codes_add_their_sections(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    uri, config = lake
    synthetic_run(uri, config)
    built = report.build_report(uri, RUN, tmp_path / "r", config)
    page = built.html.read_text(encoding="utf-8")
    assert {p.name for p in built.pngs} == {f"{n}.png" for n in (*CORE_CHARTS, "imputation", "codes")}
    assert "<h2>Imputation provenance</h2>" in page
    assert "<h2>Code normalization</h2>" in page and "<td>primary_icd_diagnosis_code</td>" in page
    # By position: impute's after the rejects, update-codes' after the partitions.
    titles = re.findall(r"<h2>([^<]+)</h2>", page)
    assert titles.index("Imputation provenance") == titles.index("Rejects and quarantine by reason") + 1
    assert titles.index("Code normalization") == titles.index("Partition sizes") + 1


def test_a_failing_plugin_section_leaves_the_built_in_ones(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    class Broken:
        @hookspecs.hookimpl
        def pgx_report_sections(self, summaries: list[dict[str, Any]]) -> list[Any]:
            raise RuntimeError("cannot draw")

    uri, config = lake
    synthetic_run(uri, config)
    built = report.build_report(uri, RUN, tmp_path / "r", config, plugins=make_plugin_manager([("broken", Broken())]))
    page = built.html.read_text(encoding="utf-8")
    assert "<h2>Imputation provenance</h2>" in page and "<h2>Code normalization</h2>" in page
