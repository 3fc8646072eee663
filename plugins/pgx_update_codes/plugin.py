"""Hook implementation of the built-in update-codes plugin (``update-codes`` stage)."""

from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_update_codes.stage import UpdateCodesStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(UpdateCodesStage)
