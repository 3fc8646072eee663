"""The older ``helpers_1997_13.s3_utils`` names, as adapters over :mod:`pgx_core` (a migration aid).

``zone_root``, ``build_zone_path`` and ``convert_raw_to_imputed_path`` are pgx's path helpers
(zone names may carry stray spaces or capitals, as the older helpers allowed; the ``brass`` zone
is gone). ``backup_s3_prefix`` is pgx's: a create-only ``backup_<stamp>/`` prefix, verified, and
returned. ``PipelineState`` and ``GlobalPipelineTracker`` are re-exported from
:mod:`helpers_1997_13.pipeline_state`. S3 settings come from the environment (``AWS_REGION``,
``AWS_ENDPOINT_URL`` and the standard credential chain); the lake from ``$PGX_LAKE``, else
``s3://pgxdatalake``.
"""

from __future__ import annotations

import logging

from helpers_1997_13.pipeline_state import GlobalPipelineTracker, PipelineState
from pgx_core.lake import backup, paths
from pgx_core.lake.paths import convert_raw_to_imputed_path


def zone_root(zone: str) -> str:
    """``<lake>/<zone>/`` for ``bronze``, ``silver`` or ``gold`` (else ``ValueError``)."""
    return paths.zone_root(zone.strip().lower())


def build_zone_path(
    zone: str,
    data_type: str | None = None,
    age_band: str | None = None,
    event_year: int | str | None = None,
    suffix: str = "",
) -> str:
    """A path inside a zone; silver adds ``imputed/`` (see :func:`pgx_core.lake.paths.build_zone_path`)."""
    return paths.build_zone_path(zone.strip().lower(), data_type, age_band, event_year, suffix)


def backup_s3_prefix(src_prefix: str, backup_root: str, logger: logging.Logger | None = None) -> str:
    """Copy every object under ``src_prefix`` to ``<backup_root>/backup_<stamp>/`` and return that prefix."""
    prefix = backup.backup_s3_prefix(src_prefix, backup_root)
    if logger is not None:
        logger.info("backed up %s to %s", src_prefix, prefix)
    return prefix


__all__ = [
    "GlobalPipelineTracker",
    "PipelineState",
    "backup_s3_prefix",
    "build_zone_path",
    "convert_raw_to_imputed_path",
    "zone_root",
]
