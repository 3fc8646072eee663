"""Hook implementations of the built-in clean plugin (``clean-pharmacy`` and ``clean-medical``)."""

from pgx_clean.stage import CleanMedicalStage, CleanPharmacyStage
from pgx_core.hookspecs import hookimpl
from pgx_core.stage import StageRegistry


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(CleanPharmacyStage)
    registry.register(CleanMedicalStage)
