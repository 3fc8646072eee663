"""Hook implementations of the built-in impute plugin."""

from typing import Any

from pgx_core.extend import Commands, Project, ReportSection
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_impute import shortcut
from pgx_impute.stage import ImputeStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(ImputeStage)


@hookimpl
def pgx_add_commands(commands: Commands) -> None:
    commands.add_shortcut(shortcut)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    return [(20, {"use": "impute"})]


@hookimpl
def pgx_report_sections(summaries: list[dict[str, Any]]) -> list[ReportSection]:
    from pgx_impute import report  # noqa: PLC0415 - matplotlib only when a report is drawn

    return report.sections(summaries)
