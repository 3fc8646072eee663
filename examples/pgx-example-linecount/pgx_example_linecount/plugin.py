"""Hook implementations only: register the stage."""

from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_example_linecount.stage import LineCount


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(LineCount)
