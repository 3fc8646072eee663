from __future__ import annotations

import time
from pathlib import Path

import pytest

from pgx_core.errors import SpecError
from pgx_core.hookspecs import hookimpl
from pgx_core.pluginmanager import Plugins, make_plugin_manager
from pgx_core.spec.runspec import StageParams, load_spec, parse_yaml, validate_document
from pgx_core.stage import StageRegistry
from tests.support import pgx_teststage
from tests.support.pgx_teststage import CopyTable


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


# ---- a spec cannot reach outside the lake or exhaust the process --------------------------------


class NestedParams(StageParams):
    """Parameters of a stand-in third-party stage: URIs nested in dicts and lists."""

    sources: dict[str, list[str]] = {}
    note: str = ""


class NestedStage(CopyTable):
    type_name = "nested-uris"
    Params = NestedParams  # type: ignore[assignment]


class NestedPlugin:
    @hookimpl
    def pgx_register_stages(self, registry: StageRegistry) -> None:
        registry.register(NestedStage)


@pytest.fixture
def more_plugins() -> Plugins:
    return make_plugin_manager([("teststage", pgx_teststage), ("nested", NestedPlugin())], entrypoints=False)


def problems(exc: pytest.ExceptionInfo[SpecError]) -> dict[str, str]:
    return {p.path: p.message for p in exc.value.problems}


NO_PARENT = "must not contain a '..' path segment (it would address storage outside the prefix named)"


def test_parent_segments_are_refused_in_roots_and_stage_uris(more_plugins: Plugins) -> None:
    bad = doc(
        lake="s3://pgxdatalake/..",
        stateRoot="file:///srv/state/../../etc",
        backupRoot="s3://backups/a/../b/",
        stages=[
            {
                "use": "copy-table",
                "with": {"input": "file:///tmp/lake/raw/../../../home/", "fail": ["ok", "s3://b/x/.."]},
            },
            {"use": "nested-uris", "with": {"sources": {"main": ["s3://b/./ok/", "file:///d/../x"]}, "note": "a/../b"}},
        ],
    )
    with pytest.raises(SpecError) as err:
        validate_document(bad, "x", more_plugins.registry)
    got = problems(err)
    assert set(got) == {
        "spec.lake",
        "spec.stateRoot",
        "spec.backupRoot",
        "spec.stages[0].with.input",
        "spec.stages[0].with.fail[1]",
        "spec.stages[1].with.sources.main[1]",
    }
    assert got["spec.lake"] == f"lake {NO_PARENT}"
    assert got["spec.stateRoot"] == f"URI {NO_PARENT}"
    assert got["spec.stages[1].with.sources.main[1]"] == NO_PARENT
    # '.' segments, '..' inside a name and strings that are not URIs are harmless.
    fine = doc(
        lake="file:///tmp/./lake",
        stages=[{"use": "nested-uris", "with": {"sources": {"a": ["s3://b/x..y/..z/", "../relative"]}}}],
    )
    assert validate_document(fine, "x", more_plugins.registry).spec.lake == "file:///tmp/./lake"


def test_parent_segments_are_reported_even_when_the_stage_block_is_otherwise_invalid(more_plugins: Plugins) -> None:
    bad = doc(stages=[{"use": "copy-table", "with": {"input": "s3://b/../c", "delaySec": "slow"}}])
    with pytest.raises(SpecError) as err:
        validate_document(bad, "x", more_plugins.registry)
    assert set(problems(err)) == {"spec.stages[0].with.input", "spec.stages[0].with.delaySec"}


@pytest.mark.parametrize("lake", ["file:///", "file:////", "file:///.", "file:///./", "file:///./."])
def test_filesystem_root_is_not_a_lake(plugins: Plugins, lake: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_document(doc(lake=lake), "x", plugins.registry)
    assert problems(err) == {"spec.lake": "lake must not be the filesystem root; name a directory (file:///data/lake)"}


def billion_laughs(levels: int = 9) -> str:
    """A spec whose ``fail`` list expands to 10**levels strings through nested aliases."""
    lines = ["x-lol0: &l0 [" + ", ".join(['"lolpayload"'] * 10) + "]"]
    lines += [f"x-lol{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return (
        "\n".join(lines)
        + f"""
apiVersion: pgx.io/v1alpha1
kind: PipelineRun
metadata: {{name: bomb}}
spec:
  lake: file:///tmp/lake
  stages:
    - use: copy-table
      with: {{fail: *l{levels - 1}}}
"""
    )


def test_alias_bomb_fails_fast_without_echoing_the_payload(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(path, plugins.registry)
    assert time.perf_counter() - start < 1.0
    assert problems(err) == {
        "": "expands to more than 100,000 nodes once its YAML aliases are expanded (a run spec has a few "
        "hundred); aliases that multiply content are refused"
    }
    assert "lolpayload" not in str(err.value)
    assert len(str(err.value)) < 400


def test_recursive_alias_and_deep_nesting_are_refused(plugins: Plugins) -> None:
    with pytest.raises(SpecError, match="contains a recursive alias"):
        parse_yaml("x-loop: &a [*a]\nspec: {}\n", "x")
    with pytest.raises(SpecError, match="nests deeper than"):
        parse_yaml("[" * 1000 + "]" * 1000, "x")  # deeper than PyYAML can recurse
    with pytest.raises(SpecError, match="nests deeper than"):
        parse_yaml("[" * 150 + "]" * 150, "x")


def test_ordinary_anchors_and_aliases_still_work(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        """\
apiVersion: pgx.io/v1alpha1
kind: PipelineRun
metadata: {name: anchors}
spec:
  lake: &lake file:///tmp/lake
  backupRoot: file:///tmp/backups/
  stages:
    - use: copy-table
      name: a
      with: &common {zone: silver, fail: &skip [e1, e2], delaySec: 0}
    - use: copy-table
      name: b
      with: {<<: *common, loseRows: *skip}
"""
    )
    rs = load_spec(path, plugins.registry)
    assert rs.spec.lake == "file:///tmp/lake"
    b = rs.stages[1].params.model_dump()
    assert b["zone"] == "silver" and b["fail"] == ["e1", "e2"] and b["lose_rows"] == ["e1", "e2"]
    # The expanded size counts every alias, but stays far below the bound for a real spec.
    assert parse_yaml(billion_laughs(levels=4), "x")["spec"]["stages"][0]["with"]["fail"][9][9][9][9] == "lolpayload"


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"  # noqa: S105 - a made-up key that must never be echoed


@pytest.mark.parametrize(
    "url",
    [f"http://minio:{SECRET}@minio:9000", f"https://AKIA:{SECRET}@s3.example.com", f"ftp://u:{SECRET}@minio"],
)
def test_credentials_in_the_endpoint_are_refused_without_echo(plugins: Plugins, url: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_document(doc(s3={"endpointUrl": url}), "x", plugins.registry)
    assert problems(err) == {
        "spec.s3.endpointUrl": "must not contain credentials: credentials come from the standard AWS credential "
        "chain only (environment, shared config, IRSA)"
    }
    assert SECRET not in str(err.value) and "minio:" not in str(err.value)


@pytest.mark.parametrize("url", ["minio:9000", "ftp://minio", "http://", "http://:9000", "http://minio:port", 42])
def test_endpoint_must_be_an_http_url_with_a_host(plugins: Plugins, url: object) -> None:
    with pytest.raises(SpecError) as err:
        validate_document(doc(s3={"endpointUrl": url}), "x", plugins.registry)
    assert problems(err) == {
        "spec.s3.endpointUrl": "must be an http:// or https:// URL with a host, such as http://minio:9000"
    }


def test_good_endpoints_are_kept(plugins: Plugins) -> None:
    for url in ("http://minio:9000", "https://s3.us-east-1.amazonaws.com", "http://127.0.0.1:5000/", None):
        rs = validate_document(doc(s3={"endpointUrl": url}), "x", plugins.registry)
        assert rs.spec.s3.endpoint_url == url


def test_all_containment_problems_are_reported_at_once(more_plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        f"""\
apiVersion: pgx.io/v1alpha1
kind: PipelineRun
metadata: {{name: many}}
spec:
  lake: file:///
  backupRoot: s3://backups/../other/
  s3: {{endpointUrl: "http://user:{SECRET}@minio:9000"}}
  executor: {{type: spark}}
  stages:
    - use: copy-table
      with: {{input: "file:///data/raw/../../etc/", delaySec: slow}}
    - use: nested-uris
      with: {{sources: {{main: ["s3://b/../c"]}}}}
"""
    )
    with pytest.raises(SpecError) as err:
        load_spec(path, more_plugins.registry)
    assert set(problems(err)) == {
        "spec.lake",
        "spec.backupRoot",
        "spec.s3.endpointUrl",
        "spec.executor.type",
        "spec.stages[0].with.input",
        "spec.stages[0].with.delaySec",
        "spec.stages[1].with.sources.main[0]",
    }
    assert "filesystem root" in problems(err)["spec.lake"]
    assert SECRET not in str(err.value)
    assert str(err.value).startswith(f"Invalid run spec {path}: 7 problems")
