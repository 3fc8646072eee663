"""The seed-compatible ``pgx clean`` shortcut: its run spec validates and runs like any other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pgx_clean.rules import clean_partition

from pgx_core.cli import build_parser
from pgx_core.errors import SpecError, UsageError
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import validate_document
from tests.plugins.test_clean_stage import gold_path, make_silver, write_silver

pytestmark = pytest.mark.integration


def clean_spec(*argv: str) -> dict[str, Any]:
    """The run spec ``pgx clean ARGV`` builds (parsed by the real CLI parser)."""
    args = build_parser().parse_args(["clean", *argv])
    doc: dict[str, Any] = args.command_def.shortcut.build_spec(args)
    return doc


def test_shortcut_reads_an_older_silver_layout_and_writes_gold_under_the_output_root(tmp_path: Path) -> None:
    silver_lake, out = tmp_path / "in", tmp_path / "out"
    silvers = {}
    for band in ("65-74", "75-84"):
        silvers[band] = make_silver("medical", 40, seed=len(band) + ord(band[0]))
        write_silver(silver_lake, "medical", band, 2019, silvers[band])
    # The older scripts were given e.g. s3://bucket/silver/medical/**/*.parquet.
    glob = f"{silver_lake}/silver/medical/**/*.parquet"  # a plain path: turned into a file:// URI
    doc = clean_spec("--job", "medical", "--raw-medical", glob, "--output-root", f"{out}/gold/medical", "--limit", "1")
    assert doc["spec"]["lake"] == out.as_uri() and doc["spec"]["limit"] == 1
    assert doc["spec"]["stages"] == [{"use": "clean-medical", "with": {"input": "file://" + glob}}]
    plugins = make_plugin_manager()
    spec = validate_document(json.loads(json.dumps(doc)), "pgx clean", plugins.registry)
    runner = Runner(spec, plugins, executor="local")
    assert int(runner.execute()) == 0
    # limit 1: the first partition in plan order only; gold lands in the output root, not the input lake.
    assert pq.read_table(gold_path(out, "medical", "65-74", 2019)).equals(
        clean_partition(silvers["65-74"], "medical").table
    )
    assert not gold_path(out, "medical", "75-84", 2019).exists()
    assert not (silver_lake / "gold").exists()
    summary = json.loads(
        (out / "pgx_pipeline" / "clean_medical" / f"run_id={runner.run_id}" / "summary.json").read_text()
    )
    assert summary["totals"]["completed"] == 1
    assert summary["stages"][0]["limit"] == 1 and summary["stages"][0]["deferred"] == 1


def test_shortcut_maps_the_older_partition_and_worker_flags() -> None:
    root = ("--output-root", "s3://b/gold/pharmacy")
    doc = clean_spec("--job", "pharmacy", *root, "--min-year", "2018", "--workers", "6")
    assert doc["spec"]["partitions"] == {"years": [2018, 2019, 2020]}
    assert doc["spec"]["executor"] == {"maxParallel": 6}
    doc = clean_spec(
        "--job", "pharmacy", *root, "--pairs", "65-74,2019;75-84/2019;age_band=65-74/event_year=2020 ; 75-84 2020"
    )
    assert doc["spec"]["partitions"] == {"years": [2019, 2020], "ageBands": ["65-74", "75-84"]}
    doc = clean_spec("--job", "pharmacy", *root, "--raw-pharmacy", "s3://b/silver/pharmacy/*.parquet")
    assert doc["spec"]["stages"][0]["with"] == {"input": "s3://b/silver/pharmacy/*.parquet"}


def test_shortcut_problems_are_usage_errors(tmp_path: Path) -> None:
    registry = make_plugin_manager().registry
    root = ("--output-root", "s3://b/gold/medical")
    with pytest.raises(UsageError, match="--job global-imputation is pgx impute"):
        clean_spec("--job", "global-imputation", *root)
    with pytest.raises(UsageError, match="--drug-map applies to --job pharmacy only"):
        clean_spec("--job", "medical", *root, "--drug-map", "file:///tmp/m.json")
    with pytest.raises(UsageError, match="--pharmacy-input / --raw-pharmacy do not apply to --job medical"):
        clean_spec("--job", "medical", *root, "--pharmacy-input", "s3://b/silver/pharmacy/")
    with pytest.raises(UsageError, match="not a full grid"):
        clean_spec("--job", "medical", *root, "--pairs", "65-74,2019;75-84,2020")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# band,year\n65-74,2019\n")
    assert clean_spec("--job", "medical", *root, "--pairs-file", str(pairs))["spec"]["partitions"] == {
        "years": [2019],
        "ageBands": ["65-74"],
    }
    with pytest.raises(UsageError, match="expected band,year"):
        clean_spec("--job", "medical", *root, "--pairs", "65-74")
    with pytest.raises(UsageError, match=r"--pairs-file /no/such/pairs: cannot read it \(No such file or directory\)"):
        clean_spec("--job", "medical", *root, "--pairs-file", "/no/such/pairs")
    assert clean_spec("--job", "medical", *root, "--min-year", "2021")["spec"]["partitions"] == {"years": [2021]}
    assert clean_spec("--job", "medical", *root, "--max-year", "2014")["spec"]["partitions"] == {
        "years": [2014]
    }
    with pytest.raises(UsageError, match="--min-year 2020 is after --max-year 2019"):
        clean_spec("--job", "medical", *root, "--min-year", "2020", "--max-year", "2019")
    doc = clean_spec(
        "--job",
        "pharmacy",
        "--pharmacy-input",
        "s3://b/bronze/pharmacy/*.parquet",
        "--output-root",
        "s3://b/gold/pharmacy",
    )
    with pytest.raises(SpecError) as err:
        validate_document(doc, "pgx clean", registry)
    assert [p.path for p in err.value.problems] == ["spec.stages[0].with.input"]
    assert "must be a pharmacy silver prefix or glob" in str(err.value)
    # Another dataset's silver, or one partition of it, was read as the whole of this dataset's.
    for given, says in (
        ("s3://b/silver/imputed/medical/", "is medical silver, not pharmacy"),
        ("s3://b/silver/imputed/pharmacy/age_band=65-74/event_year=2019/*.parquet", "input names partitions"),
    ):
        doc = clean_spec("--job", "pharmacy", "--pharmacy-input", given, "--output-root", "s3://b/gold/pharmacy")
        with pytest.raises(SpecError) as err:
            validate_document(doc, "pgx clean", registry)
        assert [p.path for p in err.value.problems] == ["spec.stages[0].with.input"] and says in str(err.value)


def test_objects_left_in_an_older_silver_layout_are_named_never_read_silently(tmp_path: Path) -> None:
    from tests.conftest import pgx

    lake = tmp_path / "lake"
    write_silver(lake, "medical", "65-74", 2019, make_silver("medical", 30, seed=3))
    old = lake / "silver" / "medical" / "part-0.parquet"  # what the older scripts wrote
    old.parent.mkdir(parents=True)
    pq.write_table(make_silver("medical", 5, seed=4), old)
    proc = pgx(
        "clean",
        "--job",
        "medical",
        "--raw-medical",
        f"{lake}/silver/medical/*.parquet",
        "--output-root",
        f"{lake}/gold/medical",
        "--executor",
        "local",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    canonical = f"{lake.as_uri()}/silver/imputed/medical/"
    assert (
        f"note: {lake.as_uri()}/silver/medical/*.parquet is an older silver layout: pgx reads the canonical {canonical}"
        in proc.stderr
    )
    [event] = [json.loads(ln) for ln in proc.stderr.splitlines() if '"input_mapped"' in ln]
    assert event["level"] == "warning" and event["canonical"] == canonical and event["objects_not_read"] == 1
    assert gold_path(lake, "medical", "65-74", 2019).exists()
