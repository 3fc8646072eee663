"""``pgx update-codes``: the older ``7_update_codes.py`` command line as a one-stage run.

The script named neither the lake nor the maps, so:

* lake: ``--lake`` (a URI or a local path), else ``$PGX_LAKE``, else ``s3://pgxdatalake``;
* target map: ``--target-map`` (or the script's ``--icd-target-map``), or with ``--use-suggested``
  the suggested map ``pgx target-frequency`` wrote to ``<lake>/gold/target_code/``, else
  ``target_mapping/target_icd_mapping.json`` under the lake's default state root —
  ``s3://pgx-repository/…`` for an S3 lake, ``<lake>/_state/…`` for a local one; only set when
  ``medical`` is among the datasets;
* ``--procedure-map`` (the script's ``--cpt-map``), ``--drug-map``, ``--datasets`` (default
  ``medical``), ``--years`` / ``--age-bands`` (comma lists) and ``--chunk-rows`` (0: sized from the
  memory budget) map to the stage's parameters; ``--dry-run`` (the script's ``--no-apply``) to
  ``dryRun``; ``--workers``, else the largest of ``--workers-medical`` / ``--workers-pharmacy``, to
  ``executor.maxParallel``;
* ``--resume`` is what pgx does anyway; the script's other flags are accepted with a note each
  (:data:`LEGACY`): pgx rewrites whole partitions in place, streams by row group, and keeps its
  own state.
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
)
from pgx_core.errors import ArgumentError
from pgx_core.lake import paths

COMMAND = "update-codes"
HELP = "seed-compatible: pass-2 target-code normalization of gold (7_update_codes.py)"
TARGET_MAP_KEY = "target_mapping/target_icd_mapping.json"
_STATE = "pgx keeps resumable state under its state root and stages under <lake>/_staging/"
_SHOWN = "pgx shows progress on a terminal and records durations and peak memory in the run summary"
LEGACY = (
    LegacyFlag("--no-merge", "pgx always rewrites each gold partition in place as one object", takes_value=False),
    LegacyFlag("--chunked", "pgx always streams partitions row group by row group", takes_value=False),
    LegacyFlag("--threads", "use --workers-medical (executor.maxParallel) to cap parallelism"),
    LegacyFlag("--icd-map", "ICD codes are normalized with the target map (--target-map) and the fixed rules"),
    LegacyFlag(
        "--fail-on-missing-mapping",
        "unmapped codes stay unchanged and are counted as unrecognized in the run summary",
        takes_value=False,
    ),
    LegacyFlag("--log-cpu", _SHOWN, takes_value=False),
    LegacyFlag("--log-s3", _SHOWN, takes_value=False),
    LegacyFlag("--show-progress", _SHOWN, takes_value=False),
    LegacyFlag("--progress-deep", _SHOWN, takes_value=False),
    LegacyFlag("--checkpoint-suffix", _STATE),
    LegacyFlag("--staging-suffix", _STATE),
    LegacyFlag("--duckdb-mem-limit", "work items are sized by executor.memoryBudgetMb"),
    LegacyFlag("--target-file-size-mb", "each partition stays one object"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-map",
        "--icd-target-map",
        dest="target_map",
        help=f"ICD target map URI (default: <repository>/{TARGET_MAP_KEY})",
    )
    parser.add_argument(
        "--use-suggested",
        action="store_true",
        help="use the suggested ICD map pgx target-frequency wrote (<lake>/gold/target_code/) as the target map",
    )
    parser.add_argument("--procedure-map", "--cpt-map", dest="procedure_map", help="procedure-code map URI (optional)")
    parser.add_argument("--drug-map", help="drug map URI (pharmacy; optional)")
    parser.add_argument("--datasets", help="comma list of medical, pharmacy (default: medical)")
    parser.add_argument("--years", help="comma list of event years, e.g. 2019,2020 (default: the run's)")
    parser.add_argument("--age-bands", help="comma list of age bands, e.g. 65-74,75-84 (default: all)")
    parser.add_argument("--workers", type=int, metavar="N", help="at most N partitions at once")
    parser.add_argument("--workers-medical", type=int, metavar="N", help="the same, the older script's name")
    parser.add_argument("--workers-pharmacy", type=int, metavar="N", help="the same, the older script's name")
    parser.add_argument("--chunk-rows", type=int, metavar="N", help="rows per batch read and rewritten")
    parser.add_argument(
        "--dry-run", "--no-apply", dest="dry_run", action="store_true", help="report what would change; write nothing"
    )
    add_common_arguments(parser, lake=True)
    add_legacy_arguments(parser, LEGACY, "7_update_codes.py")


def _split(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise ArgumentError(f"{flag} needs at least one value, got {value!r}")
    return out


def _years(value: str | None) -> list[int] | None:
    items = _split(value, "--years")
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ArgumentError(f"--years must be a comma list of years such as 2019,2020, got {value!r}") from None


def default_target_map(lake: str) -> str:
    """``target_mapping/target_icd_mapping.json`` under the lake's default state root."""
    return paths.join(paths.default_state_root(lake), TARGET_MAP_KEY)


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PipelineRun`` document of ``pgx update-codes`` with these arguments (``UsageError``: 64)."""
    lake = default_lake(args)
    datasets = _split(args.datasets, "--datasets") or ["medical"]
    params: dict[str, Any] = {"datasets": datasets}
    if args.use_suggested and args.target_map:
        raise ArgumentError("--use-suggested and --target-map both name the target map: give one")
    if args.use_suggested:
        params["targetMap"] = paths.target_code_objects(lake)[2]
    elif "medical" in datasets or args.target_map:
        params["targetMap"] = as_uri(args.target_map or default_target_map(lake))
    for key, name in (("procedure_map", "procedureMap"), ("drug_map", "drugMap")):
        if getattr(args, key):
            params[name] = as_uri(getattr(args, key))
    years = _years(args.years)
    if years is not None:
        params["years"] = years
    bands = _split(args.age_bands, "--age-bands")
    if bands is not None:
        params["ageBands"] = bands
    if args.chunk_rows:  # the older script's 0 meant "not chunked": pgx sizes batches by memory then
        params["chunkRows"] = args.chunk_rows
    if args.dry_run:
        params["dryRun"] = True
    per_dataset = [w for w in (args.workers_medical, args.workers_pharmacy) if w is not None]
    workers = args.workers if args.workers is not None else max(per_dataset, default=None)
    return pipeline_run(COMMAND, lake, {"use": COMMAND, "with": params}, args, max_parallel=workers)


__all__ = ["COMMAND", "HELP", "LEGACY", "add_arguments", "build_spec", "default_target_map"]
