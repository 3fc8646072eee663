"""The walls of the house: import contracts that bite, and a core that works with every built-in plugin disabled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import line_count_project, pgx
from tests.core.conftest import BUILT_IN

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PLUGIN_COMMANDS = ("init", "demo", "sample", "impute", "clean", "update-codes", "target-frequency")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts on ``tree`` (a copy of the packages)."""
    env = {"PYTHONPATH": f"{tree}:{tree / 'plugins'}", "PATH": str(LINT_IMPORTS.parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and the contracts, to break on purpose."""
    copy = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "pgx_core", copy / "pgx_core", ignore=ignore)
    shutil.copytree(ROOT / "plugins", copy / "plugins", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_copy_keeps_every_contract(tree: Path) -> None:
    proc = _lint_imports(tree)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "body", "broken"),
    [
        ("pgx_core/run/leak.py", "import pgx_impute\n", "The core never names a plugin BROKEN"),
        ("pgx_core/lake/leak.py", "from pgx_core.run import runner\n", "pgx_core.lake.leak -> pgx_core.run.runner"),
        ("pgx_core/k8s/leak.py", "from pgx_core.run import worker\n", "pgx_core.k8s.leak -> pgx_core.run.worker"),
        ("pgx_core/spec/leak.py", "import ray\n", "pgx_core.spec.leak -> ray"),
        ("plugins/pgx_clean/leak.py", "import boto3\n", "pgx_clean.leak -> boto3"),
        ("plugins/pgx_impute/leak.py", "import pgx_clean\n", "pgx_impute.leak -> pgx_clean"),
    ],
)
def test_a_module_across_a_wall_breaks_the_build(tree: Path, module: str, body: str, broken: str) -> None:
    leak = tree / module
    leak.write_text(f'"""Crosses a wall on purpose."""\n\n{body}')
    try:
        proc = _lint_imports(tree)
    finally:
        leak.unlink()
    assert proc.returncode != 0
    assert broken in " ".join(proc.stdout.split()), proc.stdout[-3000:]


# --- the core alone ----------------------------------------------------------------------------

ALONE = {"PGX_DISABLE_PLUGINS": ",".join(BUILT_IN)}


def _commands(monkeypatch: pytest.MonkeyPatch, disabled: str) -> set[str]:
    import argparse

    from pgx_core.cli import build_parser

    monkeypatch.setenv("PGX_DISABLE_PLUGINS", disabled)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_help_lists_no_command_of_a_disabled_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    core = {
        "validate", "plan", "run", "status", "rollback", "backup", "plugins", "render", "controller", "runs", "report",
    }  # fmt: skip
    assert _commands(monkeypatch, "") == core | set(PLUGIN_COMMANDS)
    # The example plugin adds a stage to new projects, so init and demo stay; nothing built-in does.
    assert _commands(monkeypatch, ALONE["PGX_DISABLE_PLUGINS"]) == core | {"init", "demo"}
    assert _commands(monkeypatch, ALONE["PGX_DISABLE_PLUGINS"] + ",linecount") == core
    assert "impute" not in pgx("--help", env=ALONE, check=True).stdout


def test_plugins_and_a_third_party_stage_work_with_every_built_in_plugin_disabled(tmp_path: Path) -> None:
    listed = json.loads(pgx("--json", "plugins", env=ALONE, check=True).stdout)["plugins"]
    assert [p["name"] for p in listed] == ["linecount"] and listed[0]["stages"] == ["line-count"]
    _, spec = line_count_project(tmp_path, {"medical/q1.txt": b"h\nx\ny\n"})
    assert pgx("validate", str(spec), env=ALONE).returncode == 0
    run = pgx("run", str(spec), "--json", env=ALONE)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["stages"][0]["totals"]["completed"] == 1
    # A stage of a disabled plugin is an unknown stage type: a spec error (64), not a crash.
    spec.write_text(spec.read_text().replace("use: line-count", "use: impute"))
    refused = pgx("validate", str(spec), env=ALONE)
    assert refused.returncode == 64 and "impute" in refused.stderr


def test_the_core_tests_see_no_built_in_plugin() -> None:
    """tests/core/conftest.py disables each plugin pgx's distribution registers, read from its entry points."""
    from pgx_core.pluginmanager import make_plugin_manager

    assert {"apcd", "ingest", "impute", "clean", "update_codes", "target_frequency"} <= set(BUILT_IN)
    assert {i.distribution for i in make_plugin_manager().infos} == {"pgx-example-linecount"}
