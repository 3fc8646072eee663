from __future__ import annotations

from pathlib import Path

import pytest

from pgx_core.errors import SpecError
from pgx_core.pluginmanager import Plugins, make_plugin_manager
from pgx_core.runspec import load_spec, validate_document
from tests.support import pgx_teststage


@pytest.fixture
def plugins() -> Plugins:
    return make_plugin_manager([("teststage", pgx_teststage)], entrypoints=False)


def doc(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {"lake": "file:///tmp/lake", "stages": [{"use": "copy-table"}]}
    base.update(spec)
    return {"apiVersion": "pgx.io/v1alpha1", "kind": "PipelineRun", "metadata": {"name": "t"}, "spec": base}


def test_defaults_are_filled(plugins: Plugins) -> None:
    rs = validate_document(doc(), "t.yaml", plugins.registry)
    s = rs.spec
    assert s.state_root == "file:///tmp/lake/_state"
    assert s.backup_root == "file:///tmp/lake/_backups/"
    assert s.executor.type == "ray" and s.executor.memory_budget_mb == 2048
    assert s.partitions.years == [2016, 2017, 2018, 2019, 2020]
    assert s.lease_ttl_seconds == 60
    assert rs.stages[0].name == "copy-table"
    with_ = rs.canonical()["spec"]["stages"][0]["with"]
    expected = {"input": None, "delaySec": 0.0, "fail": [], "loseRows": [], "zone": "gold"}
    assert {k: with_[k] for k in expected} == expected  # every default written out, camelCase keys


def test_s3_lake_defaults_state_root(plugins: Plugins) -> None:
    rs = validate_document(doc(lake="s3://pgxdatalake"), "t.yaml", plugins.registry)
    assert rs.spec.state_root == "s3://pgx-repository"
    assert rs.spec.backup_root == "s3://pgxdatalake/_backups/"


def test_fingerprint_is_canonical(plugins: Plugins) -> None:
    a = validate_document(doc(), "a.yaml", plugins.registry)
    b = validate_document(
        doc(executor={"type": "ray"}, stages=[{"use": "copy-table", "with": {"zone": "gold"}}]),
        "b.yaml",
        plugins.registry,
    )
    c = validate_document(doc(stages=[{"use": "copy-table", "with": {"zone": "silver"}}]), "c.yaml", plugins.registry)
    assert a.fingerprint() == b.fingerprint()  # defaults written out or not: same canonical form
    assert a.fingerprint() != c.fingerprint()
    assert a.fingerprint().startswith("sha256:") and len(a.fingerprint()) == 7 + 64


def test_every_problem_is_reported_at_once(plugins: Plugins) -> None:
    bad = doc(
        executor={"type": "spark"},
        colour="blue",
        stages=[{"use": "copy-table", "with": {"delaySec": "slow"}}, {"use": "nope"}],
    )
    with pytest.raises(SpecError) as err:
        validate_document(bad, "bad.yaml", plugins.registry)
    got = {p.path: p.message for p in err.value.problems}
    assert set(got) == {"spec.executor.type", "spec.colour", "spec.stages[0].with.delaySec", "spec.stages[1].use"}
    assert got["spec.colour"] == "is not a known key (unknown keys are errors)"
    assert "'spark'" in got["spec.executor.type"] and "'ray'" in got["spec.executor.type"]
    assert got["spec.stages[0].with.delaySec"].endswith("got 'slow'")
    assert got["spec.stages[1].use"] == "unknown stage type 'nope'; available: copy-table"
    assert str(err.value).startswith("Invalid run spec bad.yaml: 4 problems")


def test_missing_and_structural_problems(plugins: Plugins) -> None:
    with pytest.raises(SpecError) as err:
        validate_document(
            {"apiVersion": "v1", "kind": "PipelineRun", "metadata": {}, "spec": {"stages": []}}, "x", plugins.registry
        )
    got = {p.path: p.message for p in err.value.problems}
    assert got["metadata.name"] == "is required but missing"
    assert got["spec.lake"] == "is required but missing"
    assert "apiVersion" in got
    assert "spec.stages" in got


def test_uris_duplicate_names_and_bands(plugins: Plugins) -> None:
    bad = doc(
        lake="/tmp/lake",
        stateRoot="file://relative",
        partitions={"ageBands": ["65-74", "70-80"], "years": [2019, 3000]},
        stages=[{"use": "copy-table"}, {"use": "copy-table"}],
    )
    with pytest.raises(SpecError) as err:
        validate_document(bad, "x", plugins.registry)
    got = {p.path: p.message for p in err.value.problems}
    assert "must start with s3:// or file:///" in got["spec.lake"]
    assert "absolute file:///PATH" in got["spec.stateRoot"]
    assert "['70-80']" in got["spec.partitions.ageBands"]
    assert "[3000]" in got["spec.partitions.years"]


def test_duplicate_stage_names(plugins: Plugins) -> None:
    bad = doc(stages=[{"use": "copy-table"}, {"use": "copy-table"}])
    with pytest.raises(SpecError, match="repeated: copy-table"):
        validate_document(bad, "x", plugins.registry)


def test_yaml_errors_and_files(plugins: Plugins, tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="is not valid YAML at line"):
        load_spec(p, plugins.registry)
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(tmp_path / "missing.yaml", plugins.registry)


def test_select_stages(plugins: Plugins) -> None:
    rs = validate_document(
        doc(stages=[{"use": "copy-table", "name": "a"}, {"use": "copy-table", "name": "b"}]), "x", plugins.registry
    )
    assert [s.name for s in rs.select(["b"])] == ["b"]
    with pytest.raises(SpecError, match="--stage 'c' is not a stage of this spec"):
        rs.select(["c"])
