"""The seed-compatible ``pgx clean`` shortcut: its run spec validates and runs like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pgx_clean.rules import clean_partition
from pgx_clean.shortcut import build_clean_spec

from pgx_core.errors import SpecError, UsageError
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.runner import Runner
from pgx_core.runspec import validate_document
from tests.plugins.test_clean_stage import gold_path, make_silver, write_silver

pytestmark = pytest.mark.integration


def test_shortcut_reads_an_older_silver_layout_and_writes_gold_under_the_output_root(tmp_path: Path) -> None:
    silver_lake, out = tmp_path / "in", tmp_path / "out"
    silvers = {}
    for band in ("65-74", "75-84"):
        silvers[band] = make_silver("medical", 40, seed=len(band) + ord(band[0]))
        write_silver(silver_lake, "medical", band, 2019, silvers[band])
    # The older scripts were given e.g. s3://bucket/silver/medical/**/*.parquet.
    glob = f"{silver_lake}/silver/medical/**/*.parquet"  # a plain path: turned into a file:// URI
    doc = build_clean_spec("medical", glob, str(out), limit=1)
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
    summary = out / "pgx_pipeline" / "clean_medical" / f"run_id={runner.run_id}" / "summary.json"
    assert json.loads(summary.read_text())["totals"]["completed"] == 1


def test_shortcut_problems_are_usage_errors() -> None:
    registry = make_plugin_manager().registry
    with pytest.raises(UsageError, match="--job must be one of pharmacy, medical"):
        build_clean_spec("dental", None, "file:///tmp/x")
    with pytest.raises(UsageError, match="drug map applies to --job pharmacy only"):
        build_clean_spec("medical", None, "file:///tmp/x", drug_map="file:///tmp/m.json")
    doc = build_clean_spec("pharmacy", "s3://bucket/bronze/pharmacy/*.parquet", "s3://bucket")
    with pytest.raises(SpecError) as err:
        validate_document(doc, "pgx clean", registry)
    assert [p.path for p in err.value.problems] == ["spec.stages[0].with.input"]
    assert "must be a silver prefix or glob" in str(err.value)
