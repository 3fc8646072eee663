"""Hook implementations of the built-in ingest plugin (``ingest`` and ``reprocess`` stages)."""

from typing import Any

from pgx_core.extend import Project
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_ingest.stage import IngestStage, ReprocessStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(IngestStage)
    registry.register(ReprocessStage)


@hookimpl
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    return [(10, {"use": "ingest", "name": f"ingest-{dt}", "with": {"dataType": dt}}) for dt in ("pharmacy", "medical")]
