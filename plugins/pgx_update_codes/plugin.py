"""Hook implementation of the built-in update-codes plugin (``update-codes`` stage)."""

from typing import Any

from pgx_core.extend import Commands, Project, ReportSection
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_update_codes import shortcut
from pgx_update_codes.stage import UpdateCodesStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(UpdateCodesStage)


@hookimpl
def pgx_add_commands(commands: Commands) -> None:
    commands.add_shortcut(shortcut)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    if "targetMap" not in project.files:  # the stage needs a map
        return []
    return [
        (
            40,
            {
                "use": "update-codes",
                "with": {"datasets": ["medical"], "targetMap": project.files["targetMap"].as_uri()},
            },
        )
    ]


@hookimpl
def pgx_report_sections(summaries: list[dict[str, Any]]) -> list[ReportSection]:
    from pgx_update_codes import report  # noqa: PLC0415 - matplotlib only when a report is drawn

    return report.sections(summaries)
