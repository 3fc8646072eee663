"""What every seed-compatible shortcut shares: the older scripts' command lines as one-stage runs.

A shortcut (``pgx impute``, ``pgx clean``, ``pgx target-frequency``, ``pgx update-codes``) lives with
its stage's plugin and turns the older script's flags into a ``PipelineRun`` document, which is then
validated and run exactly like ``pgx run`` would run it: same state, resume, promotion, summaries.
This module holds the parts they share — common flags, the flags of the older scripts that pgx
decides by itself (accepted, each with one line saying what pgx does instead), zone roots given as
``--output-root``, and the document's run-wide keys.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pgx_core.errors import ArgumentError
from pgx_core.lake import paths
from pgx_core.lake.storage import SCHEMES
from pgx_core.spec.runspec import API_VERSION, DEFAULT_YEARS, KIND


@dataclass(frozen=True)
class LegacyFlag:
    """A flag of an older script that pgx accepts but does not need: ``instead`` says why."""

    flag: str
    instead: str
    takes_value: bool = True

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def add_common_arguments(parser: argparse.ArgumentParser, *, lake: bool = False) -> None:
    """Flags every shortcut takes; ``lake=True`` adds ``--lake`` (commands whose older script
    named no output root)."""
    if lake:
        parser.add_argument("--lake", help="lake URI or local path (default: $PGX_LAKE, else s3://pgxdatalake)")
    parser.add_argument("--limit", type=int, metavar="N", help="smoke run: process N entities that have input")
    parser.add_argument("--resume", action="store_true", help="accepted: resuming is what pgx always does")
    parser.add_argument("--no-resume", action="store_true", help="redo every entity, even those already done")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto; default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--executor", choices=["local", "ray"], help="override executor.type (default: ray)")
    parser.add_argument("--print-spec", action="store_true", help="print the generated run spec and exit")


def add_legacy_arguments(parser: argparse.ArgumentParser, flags: Iterable[LegacyFlag], script: str) -> None:
    """The older script's flags pgx does not need, in a help group of their own."""
    group = parser.add_argument_group(f"accepted from {script} (pgx decides these itself)")
    for f in flags:
        if f.takes_value:
            group.add_argument(f.flag, dest=f.dest, metavar="VALUE", help=f"ignored: {f.instead}")
        else:
            group.add_argument(f.flag, dest=f.dest, action="store_true", help=f"ignored: {f.instead}")


def legacy_notes(args: argparse.Namespace, flags: Iterable[LegacyFlag]) -> list[str]:
    """One line per legacy flag that was given, for standard error."""
    return [
        f"note: {f.flag} is accepted and ignored: {f.instead}"
        for f in flags
        if getattr(args, f.dest, None) not in (None, False)
    ]


def notes(shortcut: ModuleType, args: argparse.Namespace) -> list[str]:
    """The note lines a shortcut prints on standard error: one per flag of its older script that
    was given (its ``LEGACY``), then those of its optional ``extra_notes(args)``."""
    extra = getattr(shortcut, "extra_notes", None)
    return legacy_notes(args, shortcut.LEGACY) + (extra(args) if extra is not None else [])


def as_uri(value: str) -> str:
    """URIs as given; a plain local path becomes an absolute ``file://`` URI.

    Glob characters are kept literally (``Path.as_uri`` would percent-encode them).
    """
    if "://" in value:
        return value
    return "file://" + str(Path(value).expanduser().absolute())


def lake_of_output_root(output_root: str, zone: str, data_type: str | None = None) -> str:
    """The lake of an ``--output-root`` that names a zone root, as the older scripts' did.

    ``<lake>/silver/imputed`` for impute, ``<lake>/gold/<dataset>`` for clean; anything else is a
    :class:`UsageError` (exit 64) showing the form expected for the value given.
    """
    uri = as_uri(output_root)
    lake = paths.lake_of_zone_root(uri, zone, data_type)
    if lake is None:
        expected = paths.build_zone_path(zone, data_type, lake="<lake>").rstrip("/")
        # The lake the value most likely meant: what precedes its first zone folder, if anything.
        guess = re.split(r"/(?:bronze|silver|gold)(?:/|$)", uri.rstrip("/"), maxsplit=1)[0]
        scheme, _, rest = guess.partition("://")
        hint = f" (for this lake: {paths.build_zone_path(zone, data_type, lake=guess).rstrip('/')})"
        raise ArgumentError(
            f"--output-root must be the zone root {expected}, as for the older script; got {output_root}"
            + (hint if scheme in SCHEMES and rest.strip("/") else "")
        )
    return lake


def years_between(min_year: int | None, max_year: int | None) -> list[int] | None:
    """``--min-year`` / ``--max-year`` as the run's event years; a missing end is that of the default
    years (2016–2020), widened to include the given one."""
    if min_year is None and max_year is None:
        return None
    if min_year is not None and max_year is not None and min_year > max_year:
        raise ArgumentError(f"--min-year {min_year} is after --max-year {max_year}")
    low = min_year if min_year is not None else min(DEFAULT_YEARS[0], max_year or DEFAULT_YEARS[0])
    high = max_year if max_year is not None else max(DEFAULT_YEARS[-1], low)
    return list(range(low, high + 1))


def pipeline_run(
    name: str,
    lake: str,
    stage: dict[str, Any],
    args: argparse.Namespace,
    *,
    years: list[int] | None = None,
    age_bands: list[str] | None = None,
    max_parallel: int | None = None,
) -> dict[str, Any]:
    """The ``PipelineRun`` document of a one-stage shortcut, with the run-wide keys its flags set."""
    spec: dict[str, Any] = {"lake": lake.rstrip("/")}
    if getattr(args, "endpoint_url", None):
        spec["s3"] = {"endpointUrl": args.endpoint_url}
    partitions: dict[str, Any] = {}
    if years is not None:
        partitions["years"] = years
    if age_bands is not None:
        partitions["ageBands"] = age_bands
    if partitions:
        spec["partitions"] = partitions
    if max_parallel is not None:
        spec["executor"] = {"maxParallel": max_parallel}
    if getattr(args, "limit", None) is not None:
        spec["limit"] = args.limit
    spec["stages"] = [stage]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def default_lake(args: argparse.Namespace) -> str:
    """``--lake`` (a URI or a local path), else ``$PGX_LAKE``, else ``s3://pgxdatalake``."""
    return as_uri(getattr(args, "lake", None) or paths.default_lake()).rstrip("/")


__all__ = [
    "LegacyFlag",
    "add_common_arguments",
    "add_legacy_arguments",
    "as_uri",
    "default_lake",
    "lake_of_output_root",
    "legacy_notes",
    "notes",
    "pipeline_run",
    "years_between",
]
