"""The `pgx` command line through a real subprocess: exit codes, messages, JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgx_core import hookspecs
from tests.conftest import pgx

THREE_ERRORS = """\
apiVersion: pgx.io/v1alpha1
kind: PipelineRun
metadata: {name: three-errors}
spec:
  lake: file:///tmp/x
  executor: {type: spark}
  limit: -1
  stages:
    - use: line-count
      with: {chunkBytes: tiny}
"""


def test_validate_reports_three_errors_with_paths_and_exits_64(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(THREE_ERRORS)
    proc = pgx("validate", str(spec))
    assert proc.returncode == 64
    err = proc.stderr
    assert f"Invalid run spec {spec}: 3 problems" in err
    assert f"{spec}: spec.executor.type: input should be 'ray' or 'local'; got 'spark'" in err
    assert f"{spec}: spec.limit: input should be greater than or equal to 1; got -1" in err
    assert f"{spec}: spec.stages[0].with.chunkBytes: input should be a valid integer" in err
    assert "Traceback" not in err
    doc = json.loads(pgx("validate", str(spec), "--json").stdout)
    assert [p["path"] for p in doc["problems"]] == [
        "spec.executor.type",
        "spec.limit",
        "spec.stages[0].with.chunkBytes",
    ]


def test_unknown_stage_type_lists_available_ones(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        THREE_ERRORS.replace("line-count", "clean-everything")
        .replace("executor: {type: spark}", "")
        .replace("limit: -1", "")
        .replace("with: {chunkBytes: tiny}", "")
    )
    proc = pgx("validate", str(spec))
    assert proc.returncode == 64
    assert "spec.stages[0].use: unknown stage type 'clean-everything'; available: " in proc.stderr
    assert "line-count" in proc.stderr
    assert "ingest" not in proc.stderr  # a disabled plugin's stages are not offered


def test_broken_plugin_is_named_and_run_does_not_crash(plugin_site: Callable[..., Path], tmp_path: Path) -> None:
    plugin_site("pgx-broken", "broken", "pgx_broken_mod", "import not_a_module_anywhere\n")
    listing = pgx("plugins")
    assert listing.returncode == 0
    assert (
        "broken" in listing.stdout and "FAILED TO LOAD: ModuleNotFoundError: No module named <value>" in listing.stdout
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "apiVersion: pgx.io/v1alpha1\nkind: PipelineRun\nmetadata: {name: b}\n"
        f"spec:\n  lake: {(tmp_path / 'lake').as_uri()}\n  stages:\n    - use: broken-stage\n"
    )
    proc = pgx("run", str(spec))
    assert proc.returncode == 64
    assert "unknown stage type 'broken-stage'" in proc.stderr
    assert "plugin broken failed to load: ModuleNotFoundError" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_64_with_the_usage_line(tmp_path: Path) -> None:
    for args, command in (
        (("run",), "run"),  # SPEC missing
        (("frobnicate",), ""),
        (("rollback", "x.yaml"), "rollback"),  # --run-id is required
        (("render", "x.yaml", "--target", "job", "--workers", "2"), "render"),  # found after parsing
    ):
        proc = pgx(*args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert proc.stderr.startswith(f"usage: pgx {command}".rstrip()), (args, proc.stderr)


def test_version_and_plugins_json() -> None:
    assert pgx("--version").stdout.strip() == "pgx 0.1.0"
    doc = json.loads(pgx("plugins", "--json").stdout)
    [linecount] = doc["plugins"]  # every built-in plugin is disabled here
    assert linecount["name"] == "linecount" and linecount["stages"] == ["line-count"]
    assert linecount["distribution"] == "pgx-example-linecount"


def test_a_bad_run_id_is_a_usage_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "apiVersion: pgx.io/v1alpha1\nkind: PipelineRun\nmetadata: {name: rb}\n"
        "spec: {lake: 'file:///tmp/x', stages: [{use: line-count}]}\n"
    )
    proc = pgx("rollback", str(spec), "--run-id", "yesterday")
    assert proc.returncode == 64, proc.stderr
    assert "expected a run id such as 20261126T101500Z-3f9c2a7e, got 'yesterday'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_closed_stdout_ends_quietly_with_the_commands_own_code() -> None:
    import subprocess
    import sys

    # The reader is gone before pgx writes a byte (as `pgx plugins | head -0` would leave it).
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgx_core", "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert err == ""


def test_controller_without_kubeconfig_is_one_line(tmp_path: Path) -> None:
    proc = pgx(
        "controller", env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": ""}
    )
    assert proc.returncode == 64
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "no Kubernetes configuration" in proc.stderr


def test_a_plugin_whose_commands_fail_leaves_every_other_command_working() -> None:
    from pgx_core import cli
    from pgx_core.extend import Command
    from pgx_core.pluginmanager import make_plugin_manager

    class Broken:
        @hookspecs.hookimpl
        def pgx_add_commands(self, commands: Any) -> None:
            raise RuntimeError("cannot add")

    class Hello:
        @hookspecs.hookimpl
        def pgx_add_commands(self, commands: Any) -> None:
            commands.add(Command("hello", "say hello", lambda parser: None, lambda args: 0))

    plugins = make_plugin_manager([("broken", Broken()), ("hello", Hello())])
    parser = cli.build_parser(plugins)
    assert parser.parse_args(["plugins"]).command == "plugins"
    assert parser.parse_args(["hello"]).command == "hello"
    broken = next(i for i in plugins.infos if i.name == "broken")
    assert broken.error is not None and "cannot add" in broken.error


def test_a_plugin_may_not_take_a_core_command() -> None:
    from pgx_core import cli
    from pgx_core.extend import Command
    from pgx_core.pluginmanager import make_plugin_manager

    class Greedy:
        @hookspecs.hookimpl
        def pgx_add_commands(self, commands: Any) -> None:
            commands.add(Command("run", "mine", lambda parser: None, lambda args: 0))

    plugins = make_plugin_manager([("greedy", Greedy())])
    parser = cli.build_parser(plugins)
    assert parser.parse_args(["run", "spec.yaml"]).func is cli.cmd_run
    greedy = next(i for i in plugins.infos if i.name == "greedy")
    assert greedy.error is not None and "the command run, which pgx already has" in greedy.error
