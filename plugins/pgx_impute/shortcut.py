"""``pgx impute``: the older ``2_global_imputation.py`` command line as a one-stage run.

``--output-root`` is what it was for the script: the silver zone root ``<lake>/silver/imputed``
(default ``s3://pgxdatalake/silver/imputed``, or ``$PGX_LAKE``'s); the lake is what precedes it.
``--pharmacy-input`` / ``--medical-input`` (bronze prefixes or globs) and ``--lookahead-years`` map
to the stage's parameters; the script's other flags are accepted with a note (:data:`LEGACY`).
"""

from __future__ import annotations

import argparse
from typing import Any

from pgx_core.cli.shortcuts import (
    LegacyFlag,
    add_common_arguments,
    add_legacy_arguments,
    as_uri,
    lake_of_output_root,
    pipeline_run,
)
from pgx_core.lake import paths

COMMAND = "impute"
HELP = "seed-compatible: global imputation of bronze into silver (2_global_imputation.py)"
LEGACY = (
    LegacyFlag("--tmp-dir", "pgx stages its intermediates under <lake>/_staging/<run_id>/ and removes them"),
    LegacyFlag(
        "--no-demographics-lookup",
        "pgx always writes the demographic profiles to <lake>/silver/imputed/demographics/",
        takes_value=False,
    ),
    LegacyFlag(
        "--create-raw-silver",
        "silver keeps every bronze column beside the imputed ones; there is no separate raw silver",
        takes_value=False,
    ),
    LegacyFlag("--aggregate-root", "run summaries go to <lake>/pgx_pipeline/global_imputation/run_id=<run_id>/"),
    LegacyFlag("--threads", "pgx sizes work items by executor.memoryBudgetMb; the executor sets parallelism"),
    LegacyFlag("--mem-gb", "pgx sizes work items by executor.memoryBudgetMb (memory stays within it)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pharmacy-input", help="bronze pharmacy prefix or glob (default: <lake>/bronze/pharmacy/)")
    parser.add_argument("--medical-input", help="bronze medical prefix or glob (default: <lake>/bronze/medical/)")
    parser.add_argument(
        "--output-root",
        help="the silver zone root <lake>/silver/imputed (default: that of $PGX_LAKE, else s3://pgxdatalake)",
    )
    parser.add_argument("--lookahead-years", type=int, metavar="N", help="max |row year - donor year| (default 5)")
    add_common_arguments(parser)
    add_legacy_arguments(parser, LEGACY, "2_global_imputation.py")


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PipelineRun`` document of ``pgx impute`` with these arguments (``UsageError``: 64)."""
    root = args.output_root or paths.build_zone_path("silver")
    lake = lake_of_output_root(root, "silver")
    params: dict[str, Any] = {}
    if args.pharmacy_input:
        params["pharmacyInput"] = as_uri(args.pharmacy_input)
    if args.medical_input:
        params["medicalInput"] = as_uri(args.medical_input)
    if args.lookahead_years is not None:
        params["lookaheadYears"] = args.lookahead_years
    return pipeline_run(COMMAND, lake, {"use": "impute", "with": params}, args)


__all__ = ["COMMAND", "HELP", "LEGACY", "add_arguments", "build_spec"]
