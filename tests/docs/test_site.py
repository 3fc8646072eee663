"""The documentation site: docs/cli.md matches the parser, and mkdocs builds the site with no broken link."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgx_core.cli import build_parser, docgen
from pgx_core.pluginmanager import make_plugin_manager
from tests.conftest import REPO

DOCS = REPO / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --- cli.md ---------------------------------------------------------------------------------------


def test_cli_reference_is_current() -> None:
    assert docgen.main([str(DOCS / "runspec.md"), str(DOCS / "cli.md")]) == 0, (
        "docs/cli.md or docs/runspec.md is stale: run python -m pgx_core.cli.docgen --write"
    )


def test_check_mode_checks_every_generated_document_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()
    for name in docgen.DOCUMENTS:
        shutil.copy(DOCS / name, tmp_path / "docs" / name)
    monkeypatch.chdir(tmp_path)
    assert docgen.main([]) == 0
    stale = tmp_path / "docs" / "cli.md"
    stale.write_text(read("cli.md").replace("| `--show` |", "| `--shown` |"), encoding="utf-8")
    assert docgen.main([]) == 1
    assert docgen.main(["--write"]) == 0
    assert stale.read_text(encoding="utf-8") == read("cli.md")


def test_cli_check_mode_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    text = read("cli.md")
    section = re.search(r"^## pgx status\n.*?(?=^## )", text, re.M | re.S)
    assert section is not None
    stale.write_text(text.replace(section.group(0), ""), encoding="utf-8")  # a command gone missing
    assert docgen.main([str(stale)]) == 1
    assert docgen.main(["--write", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text


def test_cli_reference_ignores_disabled_and_third_party_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only pgx's own distribution counts: neither PGX_DISABLE_PLUGINS nor installed plugins change the page."""
    monkeypatch.setenv("PGX_DISABLE_PLUGINS", "apcd,clean")
    text = read("cli.md")
    assert docgen.render(text, docgen.CLI_SECTIONS) == text
    assert os.environ["PGX_DISABLE_PLUGINS"] == "apcd,clean"  # set aside while generating, then restored


def own_commands(parser: argparse.ArgumentParser, own_plugins: set[str]) -> list[str]:
    """The core's sub-commands and those pgx's own plugins add, in the parser's order."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, sp in sub.choices.items():
        command_def = sp.get_default("command_def")
        if command_def is None or command_def.plugin in own_plugins:
            out.append(name)
    return out


def test_every_subcommand_and_global_option_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGX_DISABLE_PLUGINS", raising=False)
    plugins = make_plugin_manager()
    parser = build_parser(plugins)
    commands = own_commands(parser, {i.name for i in plugins.infos if i.distribution == "pgx"})
    assert {"validate", "plan", "run", "status", "rollback", "render", "report"} <= set(commands)
    text = read("cli.md")
    assert re.findall(r"^## pgx (\S+)$", text, re.M) == commands  # each once, in the parser's order
    for name in commands:
        assert f"](#pgx-{name})" in text, f"the command index of cli.md does not link pgx {name}"
        assert f"```text\npgx {name}" in text, f"cli.md has no usage line for pgx {name}"
    global_section = text[text.index("## Global options\n") : text.index("## Commands\n")]
    documented = re.findall(r"^\| `(--[a-z-]+)", global_section, re.M)
    assert documented == ["--json", "--log-level", "--version"]


def test_the_sub_commands_of_a_command_are_documented_a_level_down() -> None:
    text = read("cli.md")
    runs = text[text.index("## pgx runs\n") : text.index("## pgx report\n")]
    assert re.findall(r"^### (pgx runs \S+)$", runs, re.M) == ["pgx runs list", "pgx runs get", "pgx runs logs"]
    for action in ("list", "get", "logs"):
        assert f"](#pgx-runs-{action})" in runs and f"```text\npgx runs {action}" in runs
    assert "| `--tail N` |  | only the last N lines (default: all) |" in runs


# --- mkdocs ---------------------------------------------------------------------------------------

# Not `-q`: mkdocs 1.6 raises its logger to ERROR under --quiet, so warnings are not counted and
# --strict lets a broken link pass (mkdocs issue #4126). The output is captured instead.
MKDOCS_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # (Material's end-of-life banner on every build)


def mkdocs_build(site: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("material", reason="mkdocs-material is in the test extra")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    if config is not None:
        cmd += ["-f", str(config)]
    return subprocess.run(cmd, cwd=REPO, env=MKDOCS_ENV, capture_output=True, text=True, timeout=120, check=False)


def test_site_builds_strictly(tmp_path: Path) -> None:
    out = mkdocs_build(tmp_path / "site")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()


def test_nav_lists_every_page() -> None:
    nav = re.findall(r"^\s+- [^:\n]+: (\S+\.md)$", (REPO / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert nav[0] == "index.md"
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))
    index = read("index.md")
    for page in nav[1:]:
        assert f"]({page})" in index, f"docs/index.md does not link {page}"


@pytest.mark.parametrize(
    ("breakage", "warning"),
    [
        ("[a missing page](missing-page.md)", "missing-page.md"),
        ("[a missing anchor](operations.md#no-such-heading)", "#no-such-heading"),
        ("[outside the docs](../README.md)", "../README.md"),
    ],
    ids=["missing-page", "missing-anchor", "outside-docs"],
)
def test_a_broken_link_fails_the_build(tmp_path: Path, breakage: str, warning: str) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as f:
        f.write(f"\nSee {breakage}.\n")
    out = mkdocs_build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert out.returncode != 0, out.stderr[-3000:]
    assert warning in out.stderr, out.stderr[-3000:]


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    out = mkdocs_build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert out.returncode != 0 and "orphan.md" in out.stderr, out.stderr[-3000:]
