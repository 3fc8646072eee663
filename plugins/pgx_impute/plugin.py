"""Hook implementations of the built-in impute plugin."""

from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_impute.stage import ImputeStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(ImputeStage)
