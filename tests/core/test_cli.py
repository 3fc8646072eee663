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
    assert "line-count" in proc.stderr and "ingest" in proc.stderr


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
        (("clean", "--job", "medical", "--output-root", str(tmp_path / "silver/imputed"), "--drug-map", "m.json"),
         "clean"),  # arguments that do not go together (found after parsing)
        (("update-codes", "--use-suggested", "--target-map", "t.json", "--lake", str(tmp_path)), "update-codes"),
    ):  # fmt: skip
        proc = pgx(*args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert proc.stderr.startswith(f"usage: pgx {command}".rstrip()), (args, proc.stderr)


def test_version_and_plugins_json() -> None:
    assert pgx("--version").stdout.strip() == "pgx 0.1.0"
    doc = json.loads(pgx("plugins", "--json").stdout)
    names = {p["name"]: p for p in doc["plugins"]}
    assert names["ingest"]["stages"] == ["ingest", "reprocess"]
    assert names["linecount"]["distribution"] == "pgx-example-linecount"


def test_seed_compatible_shortcuts_map_flags_onto_one_stage_specs() -> None:
    import yaml

    imp = pgx(
        "impute",
        "--pharmacy-input",
        "s3://b/bronze/pharmacy/*.parquet",
        "--output-root",
        "s3://b/silver/imputed",
        "--lookahead-years",
        "3",
        "--limit",
        "3",
        "--tmp-dir",
        "/scratch",
        "--no-demographics-lookup",
        "--log-level",
        "info",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(imp.stdout)
    assert doc["spec"]["lake"] == "s3://b" and doc["spec"]["limit"] == 3
    assert doc["spec"]["stages"] == [
        {"use": "impute", "with": {"pharmacyInput": "s3://b/bronze/pharmacy/*.parquet", "lookaheadYears": 3}}
    ]
    assert [n.split()[1] for n in imp.stderr.strip().splitlines()] == ["--tmp-dir", "--no-demographics-lookup"]
    cln = pgx(
        "clean",
        "--job",
        "medical",
        "--raw-medical",
        "s3://b/silver/medical/**/*.parquet",
        "--output-root",
        "s3://b/gold/medical/",
        "--run-mode",
        "subprocess",
        "--print-spec",
        check=True,
    )
    assert yaml.safe_load(cln.stdout)["spec"]["stages"][0]["use"] == "clean-medical"
    assert cln.stderr.strip().splitlines() == [
        "note: --run-mode is accepted and ignored: pgx runs the clean stage itself, on its executor (local or Ray)",
        "note: s3://b/silver/medical/**/*.parquet is an older silver layout: pgx reads the canonical "
        "s3://b/silver/imputed/medical/",
    ]
    tgt = pgx(
        "target-frequency",
        "--lake",
        "s3://b",
        "--codes-of-interest",
        "F1120, R69",
        "--workers",
        "4",
        "--min-year",
        "2019",
        "--max-year",
        "2019",
        "--log-cpu",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(tgt.stdout)
    assert doc["spec"]["stages"] == [{"use": "target-frequency", "with": {"codesOfInterest": ["F1120", "R69"]}}]
    assert doc["spec"]["partitions"] == {"years": [2019]} and doc["spec"]["executor"] == {"maxParallel": 4}
    assert tgt.stderr.startswith("note: --log-cpu is accepted and ignored")
    upd = pgx(
        "update-codes",
        "--lake",
        "s3://b",
        "--resume",
        "--years",
        "2019",
        "--workers-medical",
        "4",
        "--chunk-rows",
        "250000",
        "--no-merge",
        "--chunked",
        "--threads",
        "8",
        "--no-apply",
        "--cpt-map",
        "s3://b/maps/cpt.json",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(upd.stdout)
    assert doc["spec"]["executor"]["maxParallel"] == 4
    [stage] = doc["spec"]["stages"]
    assert stage["use"] == "update-codes" and stage["with"]["years"] == [2019] and stage["with"]["chunkRows"] == 250000
    assert stage["with"]["dryRun"] is True and stage["with"]["procedureMap"] == "s3://b/maps/cpt.json"
    notes = upd.stderr.strip().splitlines()
    assert len(notes) == 3 and all(n.startswith("note: --") and "ignored" in n for n in notes)


def test_every_flag_of_the_older_scripts_is_accepted() -> None:
    """The older scripts' whole command lines parse (values invented, flags theirs)."""
    from pgx_core.cli import build_parser
    from pgx_core.cli.shortcuts import notes

    parser = build_parser()
    older = {
        "impute": "--pharmacy-input p --medical-input m --output-root s3://b/silver/imputed --lookahead-years 5 "
        "--tmp-dir /t --no-demographics-lookup --create-raw-silver --log-level INFO --aggregate-root s3://b/x "
        "--threads 16 --mem-gb 1024",
        "clean": "--job pharmacy --raw-pharmacy r --raw-medical r --pharmacy-input p --medical-input m "
        "--output-root o --tmp-dir t --min-year 2016 --max-year 2020 --min-rows 1 --limit 1 --pairs 65-74,2019 "
        "--pairs-file f --workers 6 --retries 1 --lookahead-years 5 --dry-run --run-mode subprocess "
        "--pharmacy-module a --medical-module b --pharmacy-script c --medical-script d --demographics-lookup l "
        "--python-bin p --log-level INFO",
        "target-frequency": "--codes-of-interest A,B --workers 4 --min-year 2016 --max-year 2020 --log-cpu --log-s3",
        "update-codes": "--icd-map i --cpt-map c --icd-target-map t --drug-map d --years 2019 "
        "--age-bands 65-74 --no-apply --threads 1 --fail-on-missing-mapping --workers 4 --workers-medical 4 "
        "--workers-pharmacy 8 --log-cpu --log-s3 --resume --chunked --show-progress --progress-deep --no-merge "
        "--checkpoint-suffix .ok --chunk-rows 0 --staging-suffix .s/ --duckdb-mem-limit 8GB --target-file-size-mb 512",
    }
    for command, flags in older.items():
        args = parser.parse_args([command, *flags.split()])
        assert args.command == command
        notes(args.command_def.shortcut, args)
        if command != "clean":  # its invented --pairs-file does not exist (test_clean_shortcut covers it)
            assert args.command_def.shortcut.build_spec(args)["spec"]["stages"][0]["use"].startswith(command)


def test_a_bad_run_id_is_a_usage_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("apiVersion: pgx.io/v1alpha1\nkind: PipelineRun\nmetadata: {name: rb}\n"
                    "spec: {lake: 'file:///tmp/x', stages: [{use: ingest, with: {dataType: pharmacy}}]}\n")
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
    from pgx_core.pluginmanager import make_plugin_manager

    class Broken:
        @hookspecs.hookimpl
        def pgx_add_commands(self, commands: Any) -> None:
            raise RuntimeError("cannot add")

    plugins = make_plugin_manager([("broken", Broken())])
    parser = cli.build_parser(plugins)
    assert parser.parse_args(["plugins"]).command == "plugins"
    assert parser.parse_args(["impute", "--print-spec"]).command == "impute"
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
