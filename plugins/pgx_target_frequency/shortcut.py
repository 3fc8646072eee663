"""``pgx target-frequency``: the older ``6_target_frequency_analysis.py`` command line as a one-stage run.

The script named no lake: ``--lake``, else ``$PGX_LAKE``, else ``s3://pgxdatalake``. It reads the
lake's gold medical partitions and writes the reports under ``<lake>/gold/target_code/``.
``--codes-of-interest`` (comma list), ``--min-year``/``--max-year`` and ``--workers`` map to the
spec; ``--target-map`` gives the ICD map the suggested mappings are computed with. The script's
logging switches are accepted with a note (:data:`LEGACY`).
"""

from __future__ import annotations

import argparse
from typing import Any

from pgx_core.cli.shortcuts import (
    LegacyFlag,
    add_common_arguments,
    add_legacy_arguments,
    as_uri,
    default_lake,
    pipeline_run,
    years_between,
)

COMMAND = "target-frequency"
HELP = "seed-compatible: code frequencies of gold medical (6_target_frequency_analysis.py)"
_MEASURED = "every run summary records per-item durations and peak memory"
LEGACY = (
    LegacyFlag("--log-cpu", _MEASURED, takes_value=False),
    LegacyFlag("--log-s3", _MEASURED, takes_value=False),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codes-of-interest", help="comma list: restrict the suggested mappings to these codes")
    parser.add_argument("--target-map", help="ICD target map URI the suggested mappings are computed with")
    parser.add_argument("--min-year", type=int, help="first event year (default 2016)")
    parser.add_argument("--max-year", type=int, help="last event year (default 2020)")
    parser.add_argument("--workers", type=int, metavar="N", help="at most N partitions counted at once")
    add_common_arguments(parser, lake=True)
    add_legacy_arguments(parser, LEGACY, "6_target_frequency_analysis.py")


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PipelineRun`` document of ``pgx target-frequency`` with these arguments."""
    params: dict[str, Any] = {}
    codes = [c.strip() for c in (args.codes_of_interest or "").split(",") if c.strip()]
    if codes:
        params["codesOfInterest"] = codes
    if args.target_map:
        params["targetMap"] = as_uri(args.target_map)
    return pipeline_run(
        COMMAND,
        default_lake(args),
        {"use": "target-frequency", "with": params},
        args,
        years=years_between(args.min_year, args.max_year),
        max_parallel=args.workers,
    )


__all__ = ["COMMAND", "HELP", "LEGACY", "add_arguments", "build_spec"]
