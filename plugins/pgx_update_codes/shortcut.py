"""The seed-compatible ``pgx update-codes`` shortcut as a one-stage run spec.

``pgx update-codes [--resume] [--years 2019,2020] [--age-bands …] [--workers-medical N]
[--chunk-rows N] [--dry-run]`` becomes a ``PipelineRun`` with one ``update-codes`` stage. The
older command line named neither the lake nor the maps, so:

* lake: ``--lake`` (a URI or a local path), else the ``PGX_LAKE`` environment variable, else
  ``s3://pgxdatalake`` (the :func:`pgx_core.paths.default_lake` rule every pgx path helper uses);
* target map: ``--target-map``, else ``target_mapping/target_icd_mapping.json`` under the lake's
  default state root — ``s3://pgx-repository/target_mapping/target_icd_mapping.json`` for an S3
  lake, ``<lake>/_state/target_mapping/target_icd_mapping.json`` for a local
  one. Only set when ``medical`` is among the datasets;
* ``--procedure-map``, ``--drug-map``, ``--datasets`` (default ``medical``) pass through;
* ``--workers-medical N`` → ``executor.maxParallel``; ``--chunk-rows N`` → ``chunkRows``;
  ``--dry-run`` → ``dryRun``; ``--years`` / ``--age-bands`` (comma lists) → ``years`` /
  ``ageBands``; ``--endpoint-url`` → ``s3.endpointUrl`` (MinIO, moto);
* ``--resume`` is accepted and is what pgx does anyway (resume is the default); ``--no-resume``
  redoes every partition (:func:`resume_requested` tells the CLI which);
* the legacy ``--no-merge``, ``--chunked`` and ``--threads N`` are accepted and ignored, each with a
  one-line note (:func:`legacy_notes`): pgx always rewrites whole partitions in place, always
  streams by row group, and sizes parallelism with ``--workers-medical`` / the executor.

The CLI validates the document like any spec file, so problems are reported with their
``spec.…`` key paths and exit 64.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgx_core import paths
from pgx_core.errors import UsageError
from pgx_core.runspec import API_VERSION, KIND

STAGE = "update-codes"
TARGET_MAP_KEY = "target_mapping/target_icd_mapping.json"
DEFAULT_TARGET_MAP = "s3://pgx-repository/" + TARGET_MAP_KEY  # under the default state root of S3 lakes
LEGACY_NOTES = {
    "no_merge": "note: --no-merge is ignored: pgx always rewrites each gold partition in place as one object",
    "chunked": "note: --chunked is ignored: pgx always streams partitions row group by row group",
    "threads": "note: --threads is ignored: use --workers-medical (executor.maxParallel) to cap parallelism",
}


def add_update_codes_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the shortcut's flags to an argparse (sub)parser (the CLI calls this)."""
    parser.add_argument("--lake", help="lake URI or local path (default: $PGX_LAKE, else s3://pgxdatalake)")
    parser.add_argument("--target-map", help="ICD target map URI (default: <repository>/" + TARGET_MAP_KEY + ")")
    parser.add_argument("--procedure-map", help="procedure-code map URI (optional)")
    parser.add_argument("--drug-map", help="drug map URI (pharmacy; optional)")
    parser.add_argument("--datasets", help="comma list of medical, pharmacy (default: medical)")
    parser.add_argument("--years", help="comma list of event years, e.g. 2019,2020 (default: the run's)")
    parser.add_argument("--age-bands", help="comma list of age bands, e.g. 65-74,75-84 (default: all)")
    parser.add_argument("--workers-medical", type=int, metavar="N", help="at most N partitions at once")
    parser.add_argument("--chunk-rows", type=int, metavar="N", help="rows per batch read and rewritten")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    parser.add_argument("--resume", action="store_true", help="accepted; resuming is the default")
    parser.add_argument("--no-resume", action="store_true", help="redo every partition")
    parser.add_argument("--endpoint-url", help="S3 endpoint URL (MinIO, moto)")
    parser.add_argument("--no-merge", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunked", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)


def _options(args: argparse.Namespace | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    base = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return {**base, **overrides}


def _as_uri(value: str) -> str:
    """URIs as given; a plain local path becomes an absolute ``file://`` URI."""
    if "://" in value:
        return value
    return "file://" + str(Path(value).expanduser().absolute())


def _split(value: Any, flag: str) -> list[str] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    out = [str(v).strip() for v in items if str(v).strip()]
    if not out:
        raise UsageError(f"{flag} needs at least one value, got {value!r}")
    return out


def _years(value: Any) -> list[int] | None:
    items = _split(value, "--years")
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"--years must be a comma list of years such as 2019,2020, got {value!r}") from None


def default_target_map(lake: str) -> str:
    """``target_mapping/target_icd_mapping.json`` under the lake's default state root."""
    return paths.join(paths.default_state_root(lake), TARGET_MAP_KEY)


def resume_requested(args: argparse.Namespace | Mapping[str, Any] | None = None, /, **overrides: Any) -> bool:
    """False only for ``--no-resume`` (``--resume`` is the default behaviour)."""
    return not bool(_options(args, overrides).get("no_resume"))


def legacy_notes(args: argparse.Namespace | Mapping[str, Any] | None = None, /, **overrides: Any) -> list[str]:
    """One line per legacy flag given (``--no-merge``, ``--chunked``, ``--threads``), for stderr."""
    opts = _options(args, overrides)
    return [note for key, note in LEGACY_NOTES.items() if opts.get(key) not in (None, False)]


def build_update_codes_spec(
    args: argparse.Namespace | Mapping[str, Any] | None = None, /, **overrides: Any
) -> dict[str, Any]:
    """A ``PipelineRun`` document running ``update-codes`` once, from the shortcut's options.

    ``args`` is the parsed namespace of :func:`add_update_codes_arguments` or a mapping with the
    same keys (``lake``, ``target_map``, ``procedure_map``, ``drug_map``, ``datasets``, ``years``,
    ``age_bands``, ``workers_medical``, ``chunk_rows``, ``dry_run``, ``endpoint_url``, ``name``);
    keyword ``overrides`` win. Lists may be comma strings or sequences. Raises
    :class:`UsageError` (exit 64) for malformed ``--years`` and empty lists; everything else is
    checked when the document is validated.
    """
    o = _options(args, overrides)
    lake = _as_uri(o.get("lake") or paths.default_lake()).rstrip("/")
    datasets = _split(o.get("datasets"), "--datasets") or ["medical"]
    params: dict[str, Any] = {"datasets": datasets}
    if "medical" in datasets:
        params["targetMap"] = _as_uri(o.get("target_map") or default_target_map(lake))
    elif o.get("target_map"):
        params["targetMap"] = _as_uri(o["target_map"])
    for key, name in (("procedure_map", "procedureMap"), ("drug_map", "drugMap")):
        if o.get(key):
            params[name] = _as_uri(o[key])
    years = _years(o.get("years"))
    if years is not None:
        params["years"] = years
    bands = _split(o.get("age_bands"), "--age-bands")
    if bands is not None:
        params["ageBands"] = bands
    if o.get("chunk_rows") is not None:
        params["chunkRows"] = o["chunk_rows"]
    if o.get("dry_run"):
        params["dryRun"] = True
    spec: dict[str, Any] = {"lake": lake, "stages": [{"use": STAGE, "with": params}]}
    if o.get("workers_medical") is not None:
        spec["executor"] = {"maxParallel": o["workers_medical"]}
    if o.get("endpoint_url"):
        spec["s3"] = {"endpointUrl": o["endpoint_url"]}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": o.get("name") or STAGE},
        "spec": spec,
    }


__all__ = [
    "DEFAULT_TARGET_MAP",
    "add_update_codes_arguments",
    "build_update_codes_spec",
    "default_target_map",
    "legacy_notes",
    "resume_requested",
]
