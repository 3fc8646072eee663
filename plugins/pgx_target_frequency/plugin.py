"""Hook implementation of the built-in target-frequency plugin (``target-frequency`` stage)."""

from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry
from pgx_target_frequency.stage import TargetFrequencyStage


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(TargetFrequencyStage)
