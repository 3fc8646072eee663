"""Hook implementations of the built-in ingest plugin (``ingest`` and ``reprocess`` stages)."""

from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_ingest.stage import IngestStage, ReprocessStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(IngestStage)
    registry.register(ReprocessStage)
