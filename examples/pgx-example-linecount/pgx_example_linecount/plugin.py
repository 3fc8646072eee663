"""Hook implementations only: register the stage, and add it to new projects (`pgx init`, `pgx demo`)."""

from typing import Any

from pgx_core.extend import Project
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_example_linecount.stage import LineCount


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(LineCount)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    return [(90, {"use": "line-count"})]
