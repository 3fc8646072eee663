"""What plugins hand the core through the hooks beyond stages: commands, project files, report sections.

These are plain values: the core decides when to call them and what to do with them, so a plugin
never reaches into the command line, the project folder or the report page itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pgx_core.errors import PluginError


@dataclass(frozen=True)
class Command:
    """One ``pgx`` sub-command: ``configure`` adds its arguments, ``run`` runs it and returns the exit code.

    A shortcut command (``shortcut`` set) is run by the core instead: ``shortcut.build_spec(args)``
    gives a one-stage run spec that runs exactly as ``pgx run`` runs one.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int] | None = None
    shortcut: ModuleType | None = None
    plugin: str = ""


class Commands:
    """The commands plugins add (:func:`pgx_core.hookspecs.pgx_add_commands`)."""

    def __init__(self, reserved: Sequence[str]) -> None:
        self._reserved = set(reserved)
        self._commands: dict[str, Command] = {}
        self._plugin = ""

    def add(self, command: Command) -> None:
        """Add a command. Its name must be new: the core's commands and other plugins' come first."""
        if command.name in self._reserved or command.name in self._commands:
            owner = self._commands[command.name].plugin if command.name in self._commands else "pgx"
            raise PluginError(f"Plugin {self._plugin} adds the command {command.name}, which {owner} already has")
        self._commands[command.name] = Command(
            command.name, command.help, command.configure, command.run, command.shortcut, self._plugin
        )

    def add_shortcut(self, module: ModuleType) -> None:
        """Add a shortcut: a module with ``COMMAND``, ``HELP``, ``LEGACY``, ``add_arguments(parser)``,
        ``build_spec(args)`` and optionally ``extra_notes(args)`` (see :mod:`pgx_core.cli.shortcuts`)."""
        self.add(Command(module.COMMAND, module.HELP, module.add_arguments, shortcut=module))

    def __iter__(self) -> Any:
        return iter(self._commands.values())


@dataclass
class Project:
    """A project folder being set up by ``pgx init`` or ``pgx demo``: the spec's lake is ``root/lake``."""

    root: Path
    sample_rows: int
    seed: int = 7
    files: dict[str, Path] = field(default_factory=dict)
    readme: list[str] = field(default_factory=list)

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def add_file(self, key: str, path: Path) -> None:
        """Name a file the project's stages use (e.g. ``targetMap``), for :func:`pgx_project_stages`."""
        self.files[key] = path

    def add_readme(self, text: str) -> None:
        """A paragraph (Markdown) of the project's README."""
        self.readme.append(text.strip())


@dataclass(frozen=True)
class Chart:
    """A PNG chart of a report section: embedded in the page and written beside it as ``<name>.png``."""

    name: str
    png: bytes
    alt: str


@dataclass(frozen=True)
class ReportSection:
    """One section of ``pgx report``: ``parts`` are HTML strings and charts, in order.

    The HTML must hold aggregate figures only (summaries never carry a data value); escape text
    with :func:`pgx_core.cli.report.escape`.
    """

    anchor: str
    title: str
    parts: tuple[str | Chart, ...]
    position: int = 50


__all__ = ["Chart", "Command", "Commands", "Project", "ReportSection"]
