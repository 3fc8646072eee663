"""Hook implementation of the built-in target-frequency plugin (``target-frequency`` stage)."""

from typing import Any

from pgx_core.extend import Commands, Project
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_target_frequency import shortcut
from pgx_target_frequency.stage import TargetFrequencyStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(TargetFrequencyStage)


@hookimpl
def pgx_add_commands(commands: Commands) -> None:
    commands.add_shortcut(shortcut)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    if "targetMap" not in project.files:
        return []
    return [(50, {"use": "target-frequency", "with": {"targetMap": project.files["targetMap"].as_uri()}})]
