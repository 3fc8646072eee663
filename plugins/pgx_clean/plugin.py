"""Hook implementations of the built-in clean plugin (``clean-pharmacy`` and ``clean-medical``)."""

from typing import Any

from pgx_clean import shortcut
from pgx_clean.stage import CleanMedicalStage, CleanPharmacyStage
from pgx_core.extend import Commands, Project
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(CleanPharmacyStage)
    registry.register(CleanMedicalStage)


@hookimpl
def pgx_add_commands(commands: Commands) -> None:
    commands.add_shortcut(shortcut)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    pharmacy: dict[str, Any] = {"use": "clean-pharmacy"}
    if "drugMap" in project.files:
        pharmacy["with"] = {"drugMap": project.files["drugMap"].as_uri()}
    return [(30, pharmacy), (31, {"use": "clean-medical"})]
