"""``pgx report`` (pgx_core.cli.report): a self-contained HTML page and PNG charts built from summaries only."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from pgx_apcd import layout
from pgx_apcd.sample import generate

from pgx_core.cli import report
from pgx_core.errors import UsageError
from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import load_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CANARY = "8675309042"  # a member key planted in the raw data; it must reach gold and never the report
_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


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


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in _IMG.findall(page)]


def test_every_chart_is_embedded_and_written(built: report.ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    names = {p.name for p in built.pngs}
    assert names == {
        f"{n}.png" for n in ("rows", "rejects", "imputation", "partitions", "stage_durations", "entity_durations")
    }
    images = _images(page)
    assert len(images) == page.count("<img") == len(built.pngs)
    assert all(img.startswith(PNG_MAGIC) for img in images)
    for png in built.pngs:
        assert png.parent == built.html.parent / "charts" and png.read_bytes().startswith(PNG_MAGIC)
        assert png.read_bytes() in images  # the page embeds exactly the files written next to it
    # Self-contained: nothing to fetch, nothing to run.
    assert not re.search(r"<script|<link|src=\"(?!data:)|url\(", page)


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
    blobs = [page.encode(), *(p.read_bytes() for p in built.pngs), *_images(page)]
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


# --- synthetic summaries: the generic and special cases, on both stores ---------------------------

RUN = "20261126T101500Z-3f9c2a7e"
OLDER = "20261125T101500Z-00000000"


def _summary(
    script: str,
    tx: str,
    *,
    elapsed: float,
    status: str = "success",
    code: int = 0,
    stats: dict[str, Any] | None = None,
    entities: list[dict[str, Any]] | None = None,
    run_id: str = RUN,
    run_name: str = "nightly",
) -> dict[str, Any]:
    ents = entities or []
    return {
        "schema_version": 1,
        "tx": tx,
        "script_name": script,
        "run_id": run_id,
        "run_name": run_name,
        "start_time": "2026-11-26T10:15:00.000Z",
        "end_time": "2026-11-26T10:16:00.000Z",
        "duration_sec": elapsed,
        "status": status,
        "status_code": code,
        "totals": {
            "entities": len(ents),
            "completed": sum(e["status"] == "completed" for e in ents),
            "skipped": sum(e["status"] == "skipped" for e in ents),
            "failed": sum(e["status"] == "failed" for e in ents),
            "locked": 0,
            "rows_in": sum(e.get("rows_in", 0) for e in ents),
            "rows_out": sum(e.get("rows_out", 0) for e in ents),
            "rows_quarantined": 0,
        },
        "stats": stats or {},
        "entities": ents,
        "stages": [{"name": script, "type": tx}],
        "plugin": {"name": "p", "version": "1"},
        "spec_fingerprint": "sha256:abc",
        "backups": [],
        "error": None,
    }


def _ent(entity: str, status: str = "completed", rows: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "entity": entity,
        "stage": "s",
        "status": status,
        "attempts": 1,
        "rows_in": rows,
        "rows_out": rows,
        "duration_sec": 0.5,
        **extra,
    }


def _synthetic_run(lake: str, config: StoreConfig) -> None:
    store = open_store(lake, config)
    docs = [
        _summary(
            "txt_to_parquet",
            "txtpq",
            elapsed=2.0,
            status="partial",
            code=2,
            stats={"SCHEMA_MISMATCH": 1, "rejects": {"TOO_FEW_FIELDS": 3}},
            entities=[
                _ent("bkt__x__pharmacy__Q1"),
                _ent("bkt__x__medical__Q2", "failed", 0, error="SCHEMA_MISMATCH in Q2: header differs"),
            ],
        ),
        _summary(
            "global_imputation",
            "glimp",
            elapsed=5.0,
            stats={"sources": {"age": {"original": 90, "imputed_from_medical": 10}}},
            entities=[
                _ent("bkt__x__medical__age_band=65-74__event_year=2019", rows=7),
                _ent("bkt__x__medical__age_band=unknown__event_year=2020", rows=3),
                _ent("bkt__x__medical__quarantine", rows=0),
            ],
        ),
        _summary(
            "update_codes",
            "updcd",
            elapsed=6.5,
            stats={"changed": {"primary_icd_diagnosis_code": 4}, "unrecognized": {"primary_icd_diagnosis_code": 1}},
        ),
        _summary("line_count", "lncnt", elapsed=7.0, stats={"lines": 1003}, entities=[_ent("local__a")]),
        _summary("txt_to_parquet", "txtpq", elapsed=1.0, run_id=OLDER),
    ]
    for doc in docs:
        store.write_bytes(paths.summary_object(lake, doc["script_name"], doc["run_id"]), json.dumps(doc).encode())


def test_report_of_synthetic_summaries(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    uri, config = lake
    _synthetic_run(uri, config)
    assert report.run_ids(open_store(uri, config), uri) == [RUN, OLDER]
    built = report.build_report(uri, RUN, tmp_path / "r", config)
    page = built.html.read_text(encoding="utf-8")
    assert {p.name for p in built.pngs} == {
        f"{n}.png"
        for n in ("rows", "rejects", "imputation", "partitions", "codes", "stage_durations", "entity_durations")
    }
    assert len(_images(page)) == len(built.pngs)
    # Pipeline order, third-party stages after the known ones.
    order = [page.index(f"<td>{s}</td>") for s in ("txt_to_parquet", "global_imputation", "update_codes", "line_count")]
    assert order == sorted(order)
    assert "<h2>Code normalization</h2>" in page and "<td>primary_icd_diagnosis_code</td>" in page
    assert "<h2>Failed and locked entities</h2>" in page and "header differs" in page
    assert "<td>SCHEMA_MISMATCH</td>" in page and "<td>lines</td>" in page
    # clean did not run: the partitions are impute's silver ones
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
    docs = [_summary("a", "a", elapsed=2.0), _summary("b", "b", elapsed=5.5)]
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
    _synthetic_run(local_lake, StoreConfig())  # RUN and OLDER, both of "nightly"
    newer = "20261127T000000Z-0000beef"  # newer, but another spec's run on the same lake
    doc = _summary("txt_to_parquet", "txtpq", elapsed=1.0, run_id=newer, run_name="adhoc")
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
                "spec": {"lake": local_lake, "stages": [{"use": "ingest", "with": {"dataType": "pharmacy"}}]},
            }
        )
    )
    assert report.resolve_run(str(spec), None)[1] == RUN
    spec.write_text(spec.read_text().replace("name: nightly", "name: weekly"))
    with pytest.raises(UsageError, match="no run of 'weekly' has summaries"):
        report.resolve_run(str(spec), None)


def test_a_failing_plugin_section_leaves_the_rest(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    from pgx_core import hookspecs
    from pgx_core.pluginmanager import make_plugin_manager

    class Broken:
        @hookspecs.hookimpl
        def pgx_report_sections(self, summaries: list[dict[str, Any]]) -> list[Any]:
            raise RuntimeError("cannot draw")

    uri, config = lake
    _synthetic_run(uri, config)
    built = report.build_report(uri, RUN, tmp_path / "r", config, plugins=make_plugin_manager([("broken", Broken())]))
    page = built.html.read_text(encoding="utf-8")
    assert "<h2>Imputation provenance</h2>" in page and "<h2>Code normalization</h2>" in page
